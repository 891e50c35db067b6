"""
Workflow: start onboarding when a connection becomes usable.

The hook subscribes to ``Intent.CONNECTED`` and reads the customer's account
through ``manager.request()`` (the library adds the bearer token and
refreshes it if needed). Two details every real hook needs, shown here:

* subscribe to the intent, not to the state ``active``: that state is also
  entered after every token rotation (``refreshing -> active``), which is
  not a new customer; ``CONNECTED`` is only a code exchange that returned
  tokens;
* the hook must be idempotent: a reconnect connects the same account again.

It runs against the embedded fake provider:

    python examples/workflow_onboarding.py
"""

from __future__ import annotations

import asyncio

from awx_connection import (
    Config,
    ConnectionEvent,
    ConnectionManager,
    Endpoints,
    Intent,
    KeyRing,
)
from awx_connection.stores import SQLiteStore
from awx_connection.testing import FakeAirwallex, ManualClock

REDIRECT_URI = "http://127.0.0.1:8000/airwallex/callback"


class Onboarding:
    """
    Your onboarding workflow, started once per Airwallex account.

    It is an async subscriber: it awaits an API call, and the library gives
    each async subscriber its own queue, so a slow onboarding never delays a
    transition or another subscriber.
    """

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        #: Accounts already onboarded (in production: a table, keyed by account).
        self.started: dict[str, str] = {}
        self.done = asyncio.Event()

    async def on_connected(self, event: ConnectionEvent) -> None:
        """Fetch the account and start onboarding it (a refresh never gets here)."""
        if event.account_id in self.started:
            return  # a reconnect: onboarding already ran for this account
        response = await self.manager.request(event.connection_id, "GET", "/api/v1/account/")
        async with response:
            response.raise_for_status()
            account = await response.json()
        name = account["account_details"]["business_details"]["business_name"]
        self.started[account["id"]] = name
        print(f"start onboarding: {name} ({account['id']}) via {event.connection_id}")
        self.done.set()


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
        store = SQLiteStore("onboarding.db", keys=KeyRing.generate())
        async with ConnectionManager(config, store=store, clock=clock) as manager:
            onboarding = Onboarding(manager)
            manager.subscribe(onboarding.on_connected, intents=[Intent.CONNECTED])

            # The customer connects (the fake plays the customer's browser).
            request = await manager.begin_authorization(external_id="customer-7")
            connection = await manager.complete_authorization(fake.approve(request.url))
            await asyncio.wait_for(onboarding.done.wait(), 10)

            # Ten minutes later the access token is refreshed: active again,
            # but not CONNECTED, so no second onboarding.
            clock.advance(600)
            await manager.access_token(connection.id)
            history = [e.dest.value for e in await manager.history(connection.id)]
            print("states:", " -> ".join(history))
        # Closing the manager lets async subscribers finish their queues: the
        # rotation's events never reached the hook.
        print("onboarded accounts:", len(onboarding.started))


if __name__ == "__main__":
    asyncio.run(main())
