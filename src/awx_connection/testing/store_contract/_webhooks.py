"""
The cases of :class:`~awx_connection.WebhookLedger`: one claim wins, a
handled id stays handled, a released or lapsed claim can be taken, and
handled ids are pruned with the events.
"""

from __future__ import annotations

import asyncio

from ..._store import Store
from ..._webhooks import WebhookClaim

__all__ = ["WebhookCases"]


class WebhookCases:
    """Webhook ids: claimed once, then handled."""

    async def test_a_webhook_id_is_claimed_once_then_handled(self, store: Store) -> None:
        """One claim wins; others see BUSY until it is handled, then HANDLED."""
        assert WebhookClaim.CLAIMED is await store.claim_webhook("e1", owner="a", now=10, until=70)
        assert WebhookClaim.BUSY is await store.claim_webhook("e1", owner="b", now=11, until=71)
        # The same owner again (a retried call) holds it still.
        assert WebhookClaim.CLAIMED is await store.claim_webhook("e1", owner="a", now=12, until=72)
        await store.finish_webhook("e1", owner="b", at=13)  # not b's: nothing happens
        assert WebhookClaim.BUSY is await store.claim_webhook("e1", owner="b", now=14, until=74)
        await store.finish_webhook("e1", owner="a", at=15)
        for owner in ("a", "b"):
            assert WebhookClaim.HANDLED is await store.claim_webhook(
                "e1", owner=owner, now=16, until=76
            )
        await store.release_webhook("e1", owner="a")  # handled stays handled
        assert WebhookClaim.HANDLED is await store.claim_webhook("e1", owner="c", now=17, until=77)
        assert WebhookClaim.CLAIMED is await store.claim_webhook("e2", owner="c", now=17, until=77)

    async def test_a_released_or_lapsed_webhook_claim_can_be_taken(self, store: Store) -> None:
        """Handling failed (released) or its holder died (claim ran out): a retry claims it."""
        assert WebhookClaim.CLAIMED is await store.claim_webhook("e1", owner="a", now=10, until=70)
        await store.release_webhook("e1", owner="b")  # not b's to release
        assert WebhookClaim.BUSY is await store.claim_webhook("e1", owner="b", now=11, until=71)
        await store.release_webhook("e1", owner="a")
        assert WebhookClaim.CLAIMED is await store.claim_webhook("e1", owner="b", now=12, until=72)
        assert WebhookClaim.BUSY is await store.claim_webhook("e1", owner="c", now=71, until=131)
        assert WebhookClaim.CLAIMED is await store.claim_webhook("e1", owner="c", now=72, until=132)

    async def test_concurrent_claims_of_one_webhook_id_have_one_winner(self, store: Store) -> None:
        """Twenty claims at once, through the store's own concurrency: exactly one wins."""
        claims = await asyncio.gather(
            *(store.claim_webhook("e1", owner=f"o{n}", now=10, until=70) for n in range(20))
        )
        assert 1 == claims.count(WebhookClaim.CLAIMED)
        assert 19 == claims.count(WebhookClaim.BUSY)

    async def test_webhook_ids_are_pruned_with_events(self, store: Store) -> None:
        """prune_events forgets webhook ids older than the cutoff, keeps newer ones."""
        for event_id, at in (("old", 100.0), ("new", 5000.0)):
            await store.claim_webhook(event_id, owner="a", now=at, until=at + 60)
            await store.finish_webhook(event_id, owner="a", at=at)
        await store.prune_events(before=1000.0)
        assert WebhookClaim.CLAIMED is await store.claim_webhook(
            "old", owner="b", now=6000, until=1
        )
        assert WebhookClaim.HANDLED is await store.claim_webhook(
            "new", owner="b", now=6000, until=1
        )
