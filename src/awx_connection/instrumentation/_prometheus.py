"""
Prometheus metrics for a :class:`~awx_connection.ConnectionManager`.

``prometheus_client`` is imported when a :class:`PrometheusInstrumentation`
is created, not when this module is: ``awx_connection.instrumentation``
stays importable with only the other extra installed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Self, final

from .._states import ConnectionState, Trigger
from ._core import FAILED, REFRESH_BUCKETS, REFRESH_FAILURE_TRIGGERS, SUCCEEDED, EventMetrics

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    from .._manager import ConnectionManager

__all__ = ["PrometheusInstrumentation"]


@final
class PrometheusInstrumentation:
    """
    Export a manager's lifecycle as Prometheus metrics.

    ::

        async with ConnectionManager(config, store=store) as awx:
            async with PrometheusInstrumentation(awx):
                ...  # serve /metrics with prometheus_client as usual

    With ``namespace="awx_connection"`` (the default) it registers:

    * ``awx_connection_transitions_total{trigger}``: every transition;
    * ``awx_connection_refreshes_total{outcome,trigger}``: finished
      refreshes, ``outcome="succeeded"`` (trigger ``refreshed``) or
      ``outcome="failed"`` with the trigger that ended it
      (``refresh_aborted``, ``revoke``, ``invalidate``, ``expire``);
    * ``awx_connection_refresh_duration_seconds{outcome}``: a histogram of
      refresh latency, from ``refresh_started`` to the refresh's outcome;
    * ``awx_connection_connections{state}``: connections in each state,
      seeded from the store by :meth:`start` and kept exact from then on.

    Label values are only states, triggers and outcomes, never a connection
    id, account id or anything secret: the number of series is fixed
    whatever the number of connections. Every series exists from the start
    (at 0), so ``rate()`` and alerts work before the first failure.

    The metrics are registered in :meth:`start`, after the counts were
    seeded, so a scrape never sees a half-counted gauge; :meth:`close`
    unregisters them. One instance per manager and registry: two managers in
    one process need two registries or two namespaces.

    The gauge follows this process's transitions. With several replicas,
    each replica's gauge drifts from the others' changes: call
    :meth:`resync` periodically, or export the gauge from one process.

    Args:
        manager: The manager to observe.
        registry: Where to register; ``prometheus_client.REGISTRY`` by default.
        namespace: Prefix of every metric name.

    Raises:
        ImportError: ``prometheus-client`` is not installed (the
            ``awx-connection[prometheus]`` extra).
    """

    def __init__(
        self,
        manager: ConnectionManager,
        *,
        registry: CollectorRegistry | None = None,
        namespace: str = "awx_connection",
    ) -> None:
        try:
            from prometheus_client import REGISTRY
        except ImportError as exc:  # pragma: no cover - the test extra installs it
            msg = (
                "PrometheusInstrumentation needs prometheus-client: "
                "pip install 'awx-connection[prometheus]'"
            )
            raise ImportError(msg) from exc
        self._registry: CollectorRegistry = REGISTRY if registry is None else registry
        self._registered = False
        self._sink = _Sink(namespace)
        self._metrics = EventMetrics(manager, self._sink)

    @property
    def registry(self) -> CollectorRegistry:
        """The registry the metrics are (or will be) registered in."""
        return self._registry

    async def start(self) -> None:
        """
        Subscribe to the manager, count its connections by state from the
        store, then register the metrics. Calling it again only re-seeds.

        Raises:
            RuntimeError: After :meth:`close`.
            ValueError: The registry already has metrics of these names.
        """
        await self._metrics.start()
        if not self._registered:
            done = []
            try:
                for collector in self._sink.collectors():
                    self._registry.register(collector)
                    done.append(collector)
            except ValueError:
                # A name clash: leave the registry as it was.
                for collector in done:
                    self._registry.unregister(collector)
                raise
            self._registered = True

    async def resync(self) -> None:
        """Re-read the store and adopt newer states (for replicas; see the class)."""
        await self._metrics.resync()

    def close(self) -> None:
        """Unsubscribe and unregister the metrics. Idempotent."""
        self._metrics.close()
        if self._registered:
            for collector in self._sink.collectors():
                self._registry.unregister(collector)
            self._registered = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


@final
class _Sink:
    """The four metrics, created unregistered, written by :class:`EventMetrics`."""

    def __init__(self, namespace: str) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        # registry=None: created unregistered; PrometheusInstrumentation.start()
        # registers them once the gauge is seeded.
        self.transitions = Counter(
            "transitions",
            "Connection state transitions, by trigger.",
            ["trigger"],
            namespace=namespace,
            registry=None,
        )
        self.refreshes = Counter(
            "refreshes",
            "Finished token refreshes, by outcome and the trigger that ended them.",
            ["outcome", "trigger"],
            namespace=namespace,
            registry=None,
        )
        self.duration = Histogram(
            "refresh_duration_seconds",
            "Seconds from refresh_started to the refresh's outcome.",
            ["outcome"],
            namespace=namespace,
            registry=None,
            buckets=REFRESH_BUCKETS,
        )
        self.states = Gauge(
            "connections",
            "Connections in each state.",
            ["state"],
            namespace=namespace,
            registry=None,
        )
        # Every series from the start, at 0: rate() and absent-series alerts
        # work before the first failure.
        for trigger in Trigger:
            self.transitions.labels(trigger=trigger.value)
        self.refreshes.labels(outcome=SUCCEEDED, trigger=Trigger.REFRESHED.value)
        for trigger in REFRESH_FAILURE_TRIGGERS:
            self.refreshes.labels(outcome=FAILED, trigger=trigger.value)
        for outcome in (SUCCEEDED, FAILED):
            self.duration.labels(outcome=outcome)
        for state in ConnectionState:
            self.states.labels(state=state.value)

    def collectors(self) -> tuple[Counter, Counter, Histogram, Gauge]:
        return (self.transitions, self.refreshes, self.duration, self.states)

    def transition(self, trigger: Trigger) -> None:
        self.transitions.labels(trigger=trigger.value).inc()

    def refresh(self, outcome: str, trigger: Trigger, seconds: float | None) -> None:
        self.refreshes.labels(outcome=outcome, trigger=trigger.value).inc()
        if seconds is not None:
            self.duration.labels(outcome=outcome).observe(seconds)

    def connections(
        self, counts: dict[ConnectionState, int], changed: Iterable[ConnectionState]
    ) -> None:
        for state in changed:
            self.states.labels(state=state.value).set(counts[state])
