"""
``awx-connection demo``: one connection's whole life, in a few seconds.

Runs against the embedded fake provider (real HTTP on 127.0.0.1) and a
SQLite file in a temporary directory, with a manual clock shared by both so
"five minutes later" takes no time. Every lifecycle event is printed as it
happens. The script is also the shortest complete example of the API.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
import tempfile
from pathlib import Path

from .._config import Config, Endpoints, TimingPolicy
from .._crypto import KeyRing
from .._errors import ConnectionRevokedError
from .._events import ConnectionEvent
from .._manager import ConnectionManager
from ..stores import SQLiteStore
from ..testing import FakeAirwallex, Fault, FaultKind, ManualClock
from ._output import emit_json, event_json

__all__ = ["demo", "run_demo"]

REDIRECT_URI = "http://127.0.0.1:8000/airwallex/callback"


def _mask(url: str) -> str:
    """Hide ``state`` and the PKCE challenge when showing a URL."""
    return re.sub(r"(state|code_challenge)=[^&]+", r"\1=********", url)


def _print_event(event: ConnectionEvent) -> None:
    source = event.source.value if event.source else "(new)"
    account = f"  account={event.account_id}" if event.account_id else ""
    print(
        f"  event #{event.sequence:<2} {source:>11} -> {event.dest.value:<11} "
        f"[{event.trigger.value}] {event.reason}{account}"
    )


async def run_demo(*, quiet: bool = False) -> list[ConnectionEvent]:
    """Drive one connection from ``pending`` to ``revoked``; return its events."""
    say = (lambda *_: None) if quiet else print
    clock = ManualClock()
    seen: list[ConnectionEvent] = []
    async with FakeAirwallex(clock=clock, redirect_uris=[REDIRECT_URI]) as fake:
        config = Config(
            client_id=fake.client_id,
            client_secret=fake.client_secret,
            redirect_uri=REDIRECT_URI,
            endpoints=Endpoints.from_base_url(fake.base_url),
            timing=TimingPolicy(backoff_base=0.01, backoff_max=0.05),
            default_scopes=("account_details:read", "balance:read"),
        )
        with tempfile.TemporaryDirectory(prefix="awx-demo-") as tmp:
            db = Path(tmp) / "connections.db"
            say(f"fake Airwallex on {fake.base_url}; store sqlite:///{db}")
            # A throwaway key for a throwaway file, so the demo needs no environment;
            # production reads KeyRing.from_env() (a store without keys is refused).
            store = SQLiteStore(db, keys=KeyRing.generate())
            async with ConnectionManager(
                config, store=store, clock=clock, keepalive=False, settle=False
            ) as awx:
                awx.subscribe(seen.append)
                if not quiet:
                    awx.subscribe(_print_event)

                say("\n1. begin: send the customer to the authorize URL")
                request = await awx.begin_authorization(sign_up=True, external_id="customer-42")
                say(f"  {_mask(request.url)}")

                say("\n2. the customer signs up and consents (simulated); Airwallex redirects back")
                callback = fake.approve(request.url)
                connection = await awx.complete_authorization(callback)
                say(f"  connection {connection.id} is {connection.state.value}")

                say("\n3. call the API on the customer's behalf")
                response = await awx.request(connection.id, "GET", "/api/v1/account/")
                async with response:
                    account = await response.json()
                name = account["account_details"]["business_details"]["business_name"]
                say(f"  GET /api/v1/account/ -> {response.status}, {name} ({account['id']})")

                say("\n4. five minutes later the access token has expired: refresh and rotate")
                clock.advance(300)
                await awx.access_token(connection.id)

                say("\n5. the next refresh's response is lost after Airwallex rotated the token")
                fake.inject(Fault(FaultKind.DROP_AFTER_COMMIT, grant_type="refresh_token"))
                clock.advance(300)
                await awx.access_token(connection.id)
                counters = fake.counters
                say(
                    f"  recovered inside the {config.timing.grace:.0f} s grace window: "
                    f"grace re-issues={counters.grace_reissues}, "
                    f"reuse violations={counters.reuse_violations}"
                )

                say("\n6. the customer disconnects the app in Airwallex")
                fake.disconnect(account["id"])
                try:
                    response = await awx.request(connection.id, "GET", "/api/v1/account/")
                    response.release()
                except ConnectionRevokedError as exc:
                    say(f"  the library noticed: {exc}")
                final = await awx.get(connection.id)
                say(f"\nfinal state: {final.state.value}; {len(seen)} events")
    return seen


def demo(args: argparse.Namespace) -> int:
    """
    ``awx-connection demo``: run it; exit 0 when the connection ended
    ``revoked``. With ``--json``, no narrative: each event as ``events tail
    --json`` prints it.
    """
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="  log %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr if args.json else sys.stdout,
    )
    events = asyncio.run(run_demo(quiet=args.json))
    if args.json:
        for event in events:
            emit_json(event_json(event))
    states = [e.dest.value for e in events]
    return 0 if states and states[-1] == "revoked" else 1
