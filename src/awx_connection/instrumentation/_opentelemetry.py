"""
OpenTelemetry metrics for a :class:`~awx_connection.ConnectionManager`.

Written against the OpenTelemetry *API* only: the application chooses the
SDK, readers and exporters. ``opentelemetry`` is imported when an
:class:`OpenTelemetryInstrumentation` is created, not when this module is.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Self, final

from .._states import ConnectionState, Trigger
from ._core import REFRESH_BUCKETS, EventMetrics

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

    from .._manager import ConnectionManager

__all__ = ["OpenTelemetryInstrumentation"]


def _our_version() -> str | None:
    try:
        return version("awx-connection")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return None


@final
class OpenTelemetryInstrumentation:
    """
    Export a manager's lifecycle through the OpenTelemetry metrics API.

    ::

        provider = MeterProvider(metric_readers=[reader])  # the SDK's, yours
        async with ConnectionManager(config, store=store) as awx:
            async with OpenTelemetryInstrumentation(awx, meter_provider=provider):
                ...

    The meter is named ``awx_connection``. With ``namespace="awx_connection"``
    (the default) the instruments are the ones the Prometheus
    instrumentation exports, with the same attributes:

    * ``awx_connection.transitions`` (counter, ``trigger``);
    * ``awx_connection.refreshes`` (counter, ``outcome``, ``trigger``);
    * ``awx_connection.refresh.duration`` (histogram in seconds, ``outcome``);
    * ``awx_connection.connections`` (observable gauge, ``state``): exact
      counts, seeded from the store by :meth:`start`. It reports nothing
      before :meth:`start` and after :meth:`close`, rather than zeros that
      would be false.

    Attribute values are only states, triggers and outcomes, never an id or
    a secret. The gauge follows this process's transitions; with replicas,
    call :meth:`resync` periodically (see the Prometheus class).

    Args:
        manager: The manager to observe.
        meter_provider: Where to create the meter; the global provider
            (``opentelemetry.metrics.get_meter_provider()``) by default.
        namespace: Prefix of every instrument name.

    Raises:
        ImportError: ``opentelemetry-api`` is not installed (the
            ``awx-connection[opentelemetry]`` extra).
    """

    def __init__(
        self,
        manager: ConnectionManager,
        *,
        meter_provider: MeterProvider | None = None,
        namespace: str = "awx_connection",
    ) -> None:
        try:
            from opentelemetry import metrics
        except ImportError as exc:  # pragma: no cover - the test extra installs it
            msg = (
                "OpenTelemetryInstrumentation needs opentelemetry-api: "
                "pip install 'awx-connection[opentelemetry]'"
            )
            raise ImportError(msg) from exc
        provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
        self._sink = _Sink(provider.get_meter("awx_connection", _our_version()), namespace)
        self._metrics = EventMetrics(manager, self._sink)
        self._sink.metrics = self._metrics

    async def start(self) -> None:
        """
        Subscribe to the manager and count its connections by state from the
        store. Calling it again only re-seeds.

        Raises:
            RuntimeError: After :meth:`close`.
        """
        await self._metrics.start()

    async def resync(self) -> None:
        """Re-read the store and adopt newer states (for replicas)."""
        await self._metrics.resync()

    def close(self) -> None:
        """
        Unsubscribe; the gauge stops reporting. Idempotent. (The OpenTelemetry
        API cannot remove instruments; counters keep their last values.)
        """
        self._sink.metrics = None
        self._metrics.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


@final
class _Sink:
    """The four instruments, written by :class:`EventMetrics` (see ``_core.Sink``)."""

    def __init__(self, meter: Meter, namespace: str) -> None:
        #: Whose counts the gauge reports; None before wiring and after close.
        self.metrics: EventMetrics | None = None
        self._transitions = meter.create_counter(
            f"{namespace}.transitions",
            unit="{transition}",
            description="Connection state transitions, by trigger.",
        )
        self._refreshes = meter.create_counter(
            f"{namespace}.refreshes",
            unit="{refresh}",
            description="Finished token refreshes, by outcome and the trigger that ended them.",
        )
        self._duration = meter.create_histogram(
            f"{namespace}.refresh.duration",
            unit="s",
            description="Seconds from refresh_started to the refresh's outcome.",
            explicit_bucket_boundaries_advisory=REFRESH_BUCKETS,
        )
        # Observable rather than an UpDownCounter: it reads the exact counts
        # when collected, and can say nothing while they are not known.
        meter.create_observable_gauge(
            f"{namespace}.connections",
            callbacks=[self._observe_connections],
            unit="{connection}",
            description="Connections in each state.",
        )

    def _observe_connections(self, options: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation

        metrics = self.metrics
        if metrics is None or not metrics.seeded:
            return []
        # Called by the SDK's reader, possibly from its own thread: the
        # counts dict never changes size, so copying it is safe.
        counts = dict(metrics.counts)
        return [Observation(n, {"state": state.value}) for state, n in counts.items()]

    def transition(self, trigger: Trigger) -> None:
        self._transitions.add(1, {"trigger": trigger.value})

    def refresh(self, outcome: str, trigger: Trigger, seconds: float | None) -> None:
        self._refreshes.add(1, {"outcome": outcome, "trigger": trigger.value})
        if seconds is not None:
            self._duration.record(seconds, {"outcome": outcome})

    def connections(
        self, counts: dict[ConnectionState, int], changed: Iterable[ConnectionState]
    ) -> None:
        """Nothing to push: the observable gauge reads the counts when collected."""
