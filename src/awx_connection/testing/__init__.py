"""
Test doubles for code that uses awx_connection.

:class:`FakeAirwallex` is a local Airwallex OAuth provider (authorize, token
endpoint with rotation, grace window and reuse detection, a small API, fault
injection) on a real socket. Share a :class:`ManualClock` between it and the
library under test to move time without sleeping; across processes, share a
:class:`FileClock` instead. :class:`TcpProxy` cuts a real database off for a
while (a store outage) without touching the server. :func:`consent_form`
reads the consent page of a fake in another process, as a browser would.

:mod:`awx_connection.testing.store_contract` checks a store of your own with
the cases every built-in store passes; it needs pytest, so nothing here
imports it.

This is a public namespace, so it only re-exports; the implementation lives in
the private ``_fake*`` modules.
"""

from .._clock import FileClock, ManualClock
from ._consent import ConsentForm, consent_form
from ._fake import FakeAirwallex
from ._fake_types import FakeCounters, FakeProviderError, Fault, FaultKind
from ._proxy import TcpProxy

__all__ = [
    "ConsentForm",
    "FakeAirwallex",
    "FakeCounters",
    "FakeProviderError",
    "Fault",
    "FaultKind",
    "FileClock",
    "ManualClock",
    "TcpProxy",
    "consent_form",
]
