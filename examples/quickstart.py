"""
Embed awx-connection in a service: the smallest complete program.

It runs against the fake provider so it works anywhere; for real Airwallex,
build the config with ``Config.from_env()`` (AWX_CLIENT_ID, AWX_CLIENT_SECRET,
AWX_REDIRECT_URI, AWX_ENVIRONMENT) and serve the callback from your web app.

    python examples/quickstart.py
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


def on_connected(event: ConnectionEvent) -> None:
    """A workflow hook: runs once a connection becomes usable (never on a refresh)."""
    print(f"connection {event.connection_id} is connected to account {event.account_id}")


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
        # Secrets are encrypted at rest; in production: KeyRing.from_env().
        store = SQLiteStore("quickstart.db", keys=KeyRing.generate())
        async with ConnectionManager(config, store=store, clock=clock) as awx:
            awx.subscribe(on_connected, intents=[Intent.CONNECTED])

            # 1. Your "Connect Airwallex" button redirects the customer here.
            request = await awx.begin_authorization(external_id="customer-42")

            # 2. Airwallex redirects back to your callback route with ?code=&state=.
            callback_url = fake.approve(request.url)  # the fake plays the customer
            connection = await awx.complete_authorization(callback_url)

            # 3. Call the API on the customer's behalf; tokens refresh by themselves.
            clock.advance(600)
            response = await awx.request(connection.id, "GET", "/api/v1/account/")
            async with response:
                print("account:", (await response.json())["id"])


if __name__ == "__main__":
    asyncio.run(main())
