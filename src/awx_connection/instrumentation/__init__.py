"""
Metrics for a :class:`~awx_connection.ConnectionManager`, for Prometheus or
OpenTelemetry, fed by its lifecycle events.

A namespace of its own because each exporter needs an optional extra
(``awx-connection[prometheus]``, ``awx-connection[opentelemetry]``) that
the core never needs: only users who want metrics import this package.
Even then a library is imported only when its class is instantiated, so one
extra is enough for the class it serves, and ``import awx_connection``
imports neither. Both classes read the same events the same way
(``_core.py``) and export the same instruments.

For counters without any dependency, see
:meth:`~awx_connection.ConnectionManager.statistics`.
"""

from ._opentelemetry import OpenTelemetryInstrumentation
from ._prometheus import PrometheusInstrumentation

__all__ = ["OpenTelemetryInstrumentation", "PrometheusInstrumentation"]
