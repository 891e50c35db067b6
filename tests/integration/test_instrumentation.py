"""
awx_connection.instrumentation: run a lifecycle against the fake, then scrape.

Each exporter is read back the way a user's monitoring reads it: Prometheus
through the text exposition format, OpenTelemetry through an SDK reader.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from awx_connection import (
    Config,
    Connection,
    ConnectionEvent,
    ConnectionManager,
    ConnectionRevokedError,
    ConnectionState,
    KeyRing,
    Trigger,
)
from awx_connection.instrumentation import (
    OpenTelemetryInstrumentation,
    PrometheusInstrumentation,
)
from awx_connection.stores import SQLiteStore
from awx_connection.testing import FakeAirwallex, Fault, FaultKind, ManualClock

Connect = Callable[..., Awaitable[Connection]]

#: Every label value an exporter may use: states, triggers, outcomes.
ALLOWED_LABEL_VALUES = (
    {s.value for s in ConnectionState} | {t.value for t in Trigger} | {"succeeded", "failed"}
)


async def lifecycle(
    manager: ConnectionManager, fake: FakeAirwallex, clock: ManualClock, connect: Connect
) -> Connection:
    """
    The demo's story: connect; expiry and a refresh; a lost refresh response
    recovered in the grace window; the customer disconnects and the next
    API call finds out (a failed refresh ending in ``revoke``).
    """
    connection = await connect(external_id="tenant-1")
    assert connection.account_id is not None
    clock.advance(fake.access_token_ttl + 1)
    await manager.access_token(connection.id)
    fake.inject(Fault(FaultKind.DROP_AFTER_COMMIT, grant_type="refresh_token"))
    clock.advance(fake.access_token_ttl + 1)
    await manager.access_token(connection.id)
    assert 1 == fake.counters.grace_reissues
    fake.disconnect(connection.account_id)
    with pytest.raises(ConnectionRevokedError):
        await manager.request(connection.id, "GET", "/api/v1/account/")
    return connection


#: What the lifecycle produces, per trigger.
LIFECYCLE_TRANSITIONS = {
    "begin": 1,
    "code_received": 1,
    "exchanged": 1,
    "refresh_started": 3,
    "refreshed": 2,
    "revoke": 1,
}


# -- Prometheus -------------------------------------------------------------


def scrape(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, keyed by sample name and labels."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_prometheus_counts_a_whole_lifecycle(
    awx_manager: ConnectionManager,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    awx_connect: Connect,
) -> None:
    """Transitions, refresh outcomes, latency and the state gauge match the story exactly."""
    registry = CollectorRegistry()
    async with PrometheusInstrumentation(awx_manager, registry=registry):
        await lifecycle(awx_manager, awx_fake, awx_clock, awx_connect)
        samples = scrape(registry)

    for trigger in Trigger:
        expected = LIFECYCLE_TRANSITIONS.get(trigger.value, 0)
        assert expected == sample(
            samples, "awx_connection_transitions_total", trigger=trigger.value
        ), trigger
    refreshes = "awx_connection_refreshes_total"
    assert 2 == sample(samples, refreshes, outcome="succeeded", trigger="refreshed")
    assert 1 == sample(samples, refreshes, outcome="failed", trigger="revoke")
    for name in ("refresh_aborted", "invalidate", "expire"):
        assert 0 == sample(samples, refreshes, outcome="failed", trigger=name)
    duration = "awx_connection_refresh_duration_seconds"
    assert 2 == sample(samples, duration + "_count", outcome="succeeded")
    assert 1 == sample(samples, duration + "_count", outcome="failed")
    assert 0 < sample(samples, duration + "_sum", outcome="succeeded")
    assert 2 == sample(samples, duration + "_bucket", outcome="succeeded", le="+Inf")
    for state in ConnectionState:
        expected = 1 if state is ConnectionState.REVOKED else 0
        assert expected == sample(samples, "awx_connection_connections", state=state.value)


async def test_prometheus_label_values_are_only_states_triggers_and_outcomes(
    awx_manager: ConnectionManager,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    awx_connect: Connect,
) -> None:
    """No connection id, account id or token ever becomes a label value."""
    registry = CollectorRegistry()
    async with PrometheusInstrumentation(awx_manager, registry=registry):
        connection = await lifecycle(awx_manager, awx_fake, awx_clock, awx_connect)
        text = generate_latest(registry).decode()
        labels = {label for _name, labels in scrape(registry) for label in labels}
    assert {"outcome", "state", "trigger", "le"} == {key for key, _value in labels}
    for key, value in labels:
        assert key == "le" or value in ALLOWED_LABEL_VALUES, (key, value)
    assert connection.id not in text
    assert str(connection.account_id) not in text
    assert not any(secret in text for secret in awx_fake.issued_secrets())


async def test_prometheus_start_seeds_the_gauge_from_the_store(
    awx_manager: ConnectionManager, awx_connect: Connect
) -> None:
    """Connections that existed before start() are counted by state; no transition is."""
    await awx_connect()
    await awx_connect()
    await awx_manager.begin_authorization()
    registry = CollectorRegistry()
    async with PrometheusInstrumentation(awx_manager, registry=registry) as metrics:
        samples = scrape(registry)
        assert 2 == sample(samples, "awx_connection_connections", state="active")
        assert 1 == sample(samples, "awx_connection_connections", state="pending")
        assert 0 == sample(samples, "awx_connection_transitions_total", trigger="begin")

        await metrics.resync()  # the store agrees with what we know: nothing moves
        assert 2 == sample(scrape(registry), "awx_connection_connections", state="active")


async def test_prometheus_close_unsubscribes_and_unregisters(
    awx_manager: ConnectionManager, awx_connect: Connect
) -> None:
    """After close() the registry is empty and a new instrumentation can register again."""
    registry = CollectorRegistry()
    metrics = PrometheusInstrumentation(awx_manager, registry=registry)
    assert b"" == generate_latest(registry)  # nothing is registered before start()
    await metrics.start()
    metrics.close()
    metrics.close()
    assert b"" == generate_latest(registry)
    await awx_connect()
    with pytest.raises(RuntimeError):
        await metrics.start()
    async with PrometheusInstrumentation(awx_manager, registry=registry):
        assert 1 == sample(scrape(registry), "awx_connection_connections", state="active")


async def test_prometheus_name_clash_leaves_the_registry_untouched(
    awx_manager: ConnectionManager,
) -> None:
    """A second instrumentation on the same registry and namespace fails and registers nothing."""
    registry = CollectorRegistry()
    async with PrometheusInstrumentation(awx_manager, registry=registry):
        before = generate_latest(registry)
        second = PrometheusInstrumentation(awx_manager, registry=registry)
        with pytest.raises(ValueError, match="Duplicated"):
            await second.start()
        second.close()
        assert before == generate_latest(registry)
    other = PrometheusInstrumentation(awx_manager, registry=registry, namespace="other")
    async with other:
        assert "other_connections" in generate_latest(registry).decode()


async def test_prometheus_resync_adopts_another_replicas_transitions(
    awx_fake: FakeAirwallex, awx_config: Config, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """A transition written by another process shows in the gauge after resync()."""
    keys = KeyRing.generate()
    db = tmp_path / "awx.db"
    async with (
        ConnectionManager(awx_config, store=SQLiteStore(db, keys=keys), clock=awx_clock) as here,
        ConnectionManager(awx_config, store=SQLiteStore(db, keys=keys), clock=awx_clock) as there,
    ):
        request = await here.begin_authorization()
        connection = await here.complete_authorization(awx_fake.approve(request.url))
        registry = CollectorRegistry()
        async with PrometheusInstrumentation(here, registry=registry) as metrics:
            await there.revoke(connection.id)
            assert 1 == sample(scrape(registry), "awx_connection_connections", state="active")
            await metrics.resync()
            samples = scrape(registry)
            assert 0 == sample(samples, "awx_connection_connections", state="active")
            assert 1 == sample(samples, "awx_connection_connections", state="revoked")


class RacingManager:
    """
    Stands in for a manager whose store answers slowly: while ``connections()``
    is awaited, the test publishes events, as a busy manager would.
    """

    def __init__(self, snapshot: list[Connection]) -> None:
        self.snapshot = snapshot
        self.callback: Callable[[ConnectionEvent], object] | None = None
        self.listing = asyncio.Event()
        self.answer = asyncio.Event()

    def subscribe(self, callback: Callable[[ConnectionEvent], object]) -> RacingManager:
        self.callback = callback
        return self  # the "subscription": all the instrumentation does is unsubscribe

    def unsubscribe(self) -> None:
        self.callback = None

    async def connections(self) -> list[Connection]:
        self.listing.set()
        await self.answer.wait()
        return self.snapshot

    def publish(self, event: ConnectionEvent) -> None:
        assert self.callback is not None
        self.callback(event)


def stored(connection_id: str, sequence: int, state: ConnectionState) -> Connection:
    """A connection as the store lists it."""
    return Connection(
        id=connection_id,
        state=state,
        reason="test",
        account_id=None,
        external_id=None,
        scopes=(),
        access_expires_at=None,
        refresh_expires_at=None,
        token_generation=0,
        version=sequence,
        sequence=sequence,
        created_at=0.0,
        updated_at=0.0,
    )


def started_refresh(connection_id: str, sequence: int) -> ConnectionEvent:
    return ConnectionEvent(
        connection_id,
        sequence,
        Trigger.REFRESH_STARTED,
        ConnectionState.ACTIVE,
        ConnectionState.REFRESHING,
        "test",
        0.0,
    )


async def test_prometheus_gauge_orders_events_and_the_seed_by_sequence() -> None:
    """
    Events racing start()'s store read count once, whichever is newer: the
    store read before the event's write, or the event published after the read.
    """
    manager = RacingManager(
        [
            stored("conn_old_read", 3, ConnectionState.ACTIVE),  # read before event 4
            stored("conn_late_event", 4, ConnectionState.REFRESHING),  # event 4 comes later
        ]
    )
    registry = CollectorRegistry()
    metrics = PrometheusInstrumentation(manager, registry=registry)  # type: ignore[arg-type]
    starting = asyncio.create_task(metrics.start())
    await manager.listing.wait()
    manager.publish(started_refresh("conn_old_read", 4))
    manager.answer.set()
    await starting
    manager.publish(started_refresh("conn_late_event", 4))
    samples = scrape(registry)
    assert 2 == sample(samples, "awx_connection_connections", state="refreshing")
    assert 0 == sample(samples, "awx_connection_connections", state="active")
    metrics.close()
    assert manager.callback is None


# -- OpenTelemetry ----------------------------------------------------------


def collect(reader: InMemoryMetricReader) -> dict[str, dict[frozenset[tuple[str, Any]], Any]]:
    """Every data point of one collection: instrument name -> attributes -> point."""
    data = reader.get_metrics_data()
    if data is None:  # nothing was measured at all
        return {}
    return {
        metric.name: {
            frozenset((point.attributes or {}).items()): point for point in metric.data.data_points
        }
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def value(points: dict[frozenset[tuple[str, Any]], Any], **attributes: str) -> Any:
    return points[frozenset(attributes.items())].value


async def test_opentelemetry_counts_a_whole_lifecycle(
    awx_manager: ConnectionManager,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    awx_connect: Connect,
) -> None:
    """The OpenTelemetry instruments report the same numbers as the Prometheus metrics."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        async with OpenTelemetryInstrumentation(awx_manager, meter_provider=provider):
            await lifecycle(awx_manager, awx_fake, awx_clock, awx_connect)
            metrics = collect(reader)
    finally:
        provider.shutdown()

    transitions = metrics["awx_connection.transitions"]
    assert LIFECYCLE_TRANSITIONS == {
        dict(attributes)["trigger"]: point.value for attributes, point in transitions.items()
    }
    refreshes = metrics["awx_connection.refreshes"]
    assert 2 == value(refreshes, outcome="succeeded", trigger="refreshed")
    assert 1 == value(refreshes, outcome="failed", trigger="revoke")
    assert 2 == len(refreshes)
    durations = metrics["awx_connection.refresh.duration"]
    succeeded = durations[frozenset({("outcome", "succeeded")})]
    assert isinstance(succeeded, HistogramDataPoint)
    assert 2 == succeeded.count
    assert 0 < succeeded.sum
    assert 1 == durations[frozenset({("outcome", "failed")})].count
    connections = metrics["awx_connection.connections"]
    for state in ConnectionState:
        expected = 1 if state is ConnectionState.REVOKED else 0
        assert expected == value(connections, state=state.value), state


async def test_opentelemetry_gauge_is_silent_until_seeded_and_after_close(
    awx_manager: ConnectionManager, awx_connect: Connect
) -> None:
    """The gauge reports seeded counts only between start() and close(), never made-up zeros."""
    await awx_connect()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        metrics = OpenTelemetryInstrumentation(awx_manager, meter_provider=provider)
        assert "awx_connection.connections" not in collect(reader)
        await metrics.start()
        connections = collect(reader)["awx_connection.connections"]
        assert 1 == value(connections, state="active")
        metrics.close()
        await awx_connect()
        assert "awx_connection.connections" not in collect(reader)
        assert "awx_connection.transitions" not in collect(reader)
    finally:
        provider.shutdown()


# -- optional means optional -------------------------------------------------


def test_importing_the_library_imports_no_metrics_library() -> None:
    """awx_connection (and even awx_connection.instrumentation) import neither extra's library."""
    code = (
        "import sys, awx_connection, awx_connection.instrumentation\n"
        "print(sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('prometheus_client', 'opentelemetry')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert "[]" == result.stdout.strip()


def test_instrumentation_all_is_sorted() -> None:
    """The namespace's __all__ is in sorted() order, like every public __all__."""
    import awx_connection.instrumentation as instrumentation

    assert sorted(instrumentation.__all__) == list(instrumentation.__all__)
