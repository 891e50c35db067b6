"""
Workflow: flag a connection when Airwallex says its account needs action.

Airwallex posts ``account.action_required`` (say, a KYC document is due) to
your webhook endpoint. ``webhook_handler(manager)`` verifies the signature,
drops duplicates and resolves the account to your connections; a webhook
subscriber then flags them, so your dashboard can ask the customer to act.

Here the embedded fake provider posts real signed webhooks to a real aiohttp
server on 127.0.0.1:

    python examples/workflow_flag_action_required.py
"""

from __future__ import annotations

import asyncio
import secrets

from aiohttp import web

from awx_connection import (
    Config,
    ConnectionManager,
    Endpoints,
    KeyRing,
    WebhookEvent,
)
from awx_connection.aiohttp import webhook_handler
from awx_connection.stores import SQLiteStore
from awx_connection.testing import FakeAirwallex, ManualClock

REDIRECT_URI = "http://127.0.0.1:8000/airwallex/callback"
WEBHOOK_PATH = "/airwallex/webhooks"


class ActionRequired:
    """
    Connections whose account needs the customer's attention.

    The library keeps no flags of yours on a connection: the flag lives in
    your own table, keyed by connection id.
    """

    def __init__(self) -> None:
        self.flags: dict[str, str] = {}

    def on_webhook(self, event: WebhookEvent) -> None:
        """Flag every connection of the account the event names."""
        reason = str(event.data.get("reason", "action required"))
        for connection_id in event.connection_ids:
            self.flags[connection_id] = reason
            print(f"flagged {connection_id} (account {', '.join(event.account_ids)}): {reason}")


async def main() -> None:
    clock = ManualClock()
    webhook_secret = secrets.token_urlsafe(32)
    async with FakeAirwallex(clock=clock, redirect_uris=[REDIRECT_URI]) as fake:
        config = Config(
            client_id=fake.client_id,
            client_secret=fake.client_secret,
            redirect_uri=REDIRECT_URI,
            endpoints=Endpoints.from_base_url(fake.base_url),
            default_scopes=("account_details:read",),
            webhook_secrets=(webhook_secret,),
        )
        store = SQLiteStore("action_required.db", keys=KeyRing.generate())
        async with ConnectionManager(config, store=store, clock=clock) as manager:
            action_required = ActionRequired()
            manager.subscribe_webhooks(
                action_required.on_webhook, names=["account.action_required"]
            )

            # Your web app's webhook endpoint, on a free port.
            app = web.Application()
            app.router.add_post(WEBHOOK_PATH, webhook_handler(manager))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, "127.0.0.1", 0).start()
                port = runner.addresses[0][1]
                fake.set_webhook(f"http://127.0.0.1:{port}{WEBHOOK_PATH}", webhook_secret)

                request = await manager.begin_authorization(external_id="customer-9")
                connection = await manager.complete_authorization(fake.approve(request.url))
                assert connection.account_id is not None

                # Airwallex asks the customer for a document.
                sent = fake.send_webhook(
                    "account.action_required", connection.account_id, {"reason": "kyc_rfi"}
                )
                await fake.flush_webhooks()  # the delivery has been answered
                print("our endpoint answered:", fake.webhooks.answers[sent["id"]])
            finally:
                await runner.cleanup()
        print("flagged connections:", action_required.flags)


if __name__ == "__main__":
    asyncio.run(main())
