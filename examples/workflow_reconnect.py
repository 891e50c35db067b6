"""
Workflow: when a connection is lost, ask the customer to reconnect.

A subscriber on ``Intent.NEEDS_CUSTOMER`` (the connection ended revoked,
invalidated, expired, denied or failed) calls ``manager.reauthorize()``:
the same connection (same id, same history) goes back to ``pending`` with a
fresh authorize URL, and the customer is notified with that link. Once they
approve, the connection is ``active`` again.

The authorize URL is valid for ``TimingPolicy.state_ttl`` (10 minutes): fine
for an in-app banner or a notification the customer sees now. For an email
read hours later, link to a route of your own app that calls
``reauthorize()`` when clicked.

It runs against the embedded fake provider:

    python examples/workflow_reconnect.py
"""

from __future__ import annotations

import asyncio

from awx_connection import (
    Config,
    ConnectionEvent,
    ConnectionManager,
    ConnectionUnusableError,
    Endpoints,
    Intent,
    KeyRing,
)
from awx_connection.stores import SQLiteStore
from awx_connection.testing import FakeAirwallex, ManualClock

REDIRECT_URI = "http://127.0.0.1:8000/airwallex/callback"
DAY = 86400.0


class Reconnect:
    """Notify the customer of a lost connection, with a link to reconnect it."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        #: The links "sent", in order (in production: your mailer or in-app inbox).
        self.outbox: asyncio.Queue[str] = asyncio.Queue()

    async def on_lost(self, event: ConnectionEvent) -> None:
        """Reopen the connection for authorization and tell its customer."""
        request = await self.manager.reauthorize(event.connection_id)
        who = event.external_id or event.account_id
        print(f"notify {who}: your Airwallex connection is {event.dest.value} ({event.reason})")
        print(f"  reconnect here: {request.url}")
        await self.outbox.put(request.url)


async def main() -> None:
    clock = ManualClock()
    async with FakeAirwallex(clock=clock, redirect_uris=[REDIRECT_URI]) as fake:
        config = Config(
            client_id=fake.client_id,
            client_secret=fake.client_secret,
            redirect_uri=REDIRECT_URI,
            endpoints=Endpoints.from_base_url(fake.base_url),
            default_scopes=("account_details:read",),
        )
        store = SQLiteStore("reconnect.db", keys=KeyRing.generate())
        async with ConnectionManager(config, store=store, clock=clock) as manager:
            reconnect = Reconnect(manager)
            manager.subscribe(reconnect.on_lost, intents=[Intent.NEEDS_CUSTOMER])

            async def connect(customer: str, *, sign_up: bool) -> str:
                request = await manager.begin_authorization(external_id=customer, sign_up=sign_up)
                connection = await manager.complete_authorization(fake.approve(request.url))
                assert connection.account_id is not None
                return connection.id

            alice = await connect("alice", sign_up=False)
            await connect("bob", sign_up=True)

            # Alice unlinks the app in Airwallex; the next refresh is refused.
            fake.disconnect((await manager.get(alice)).account_id or "")
            clock.advance(600)
            try:
                await manager.access_token(alice)
            except ConnectionUnusableError as exc:
                print("alice's token:", exc)
            link = await asyncio.wait_for(reconnect.outbox.get(), 10)

            # Alice follows the link and approves: the same connection is back.
            connection = await manager.complete_authorization(fake.approve(link))
            print(f"alice reconnected: {connection.id} is {connection.state.value}")

            # Nobody used either connection for 91 days (and keep-alive was
            # off): both refresh tokens aged out, both customers are notified.
            clock.advance(91 * DAY)
            report = await manager.keepalive_pass()
            print(f"keep-alive: {report.expired} expired")
            for _ in range(report.expired):
                await asyncio.wait_for(reconnect.outbox.get(), 10)


if __name__ == "__main__":
    asyncio.run(main())
