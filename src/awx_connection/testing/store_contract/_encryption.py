"""
The cases of promise 6, secrets at rest, for a store that encrypts them.

Each writes with one key ring and reads with another (or with none), so
they need ``store_factory``: stores over one data set, built with any keys.
"""

from __future__ import annotations

import logging
import secrets

import pytest

from ... import DecryptionError  # the public name: its private home is moving
from ..._crypto import KeyRing
from ..._errors import StoreError
from ..._records import ConnectionSummary
from ._data import StoreFactory, insert_record, opened, update_record, walk

__all__ = ["EncryptionCases"]


class EncryptionCases:
    """Secrets at rest: rows another ring sealed, plaintext rows, key rotation."""

    async def test_summaries_are_read_without_the_keys(
        self, store_factory: StoreFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """
        A row sealed with a key the ring lacks is left out of ``list_connections``
        but summarised: a summary decrypts nothing, and the keep-alive pass that
        reads it then meets the row's ``DecryptionError`` on its full read.
        """
        async with opened(store_factory(KeyRing.generate("lost"))) as store:
            sealed_away = await insert_record(store, "x1", created_at=1.0)
        async with opened(store_factory(KeyRing.generate("kept"))) as store:
            kept = await insert_record(store, "a", created_at=2.0)
            with caplog.at_level(logging.ERROR, logger="awx_connection.stores"):
                assert [ConnectionSummary.of(sealed_away), ConnectionSummary.of(kept)] == (
                    await store.list_summaries(limit=5)
                )
            assert [] == caplog.records
            assert [kept] == await store.list_connections()

    async def test_unreadable_rows_are_left_out_of_pages_without_shortening_them(
        self, store_factory: StoreFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """
        Rows sealed with a key the ring lacks are logged once each and skipped; a
        page is still filled from the rows after them, so only the last page is
        short and a walk neither stops early nor repeats a row.
        """
        lost = KeyRing.generate("lost")
        kept = KeyRing.generate("kept")
        async with opened(store_factory(lost)) as store:
            for connection_id, created_at in [("x1", 1.0), ("x2", 2.0), ("x3", 2.0), ("x4", 5.0)]:
                await insert_record(store, connection_id, created_at=created_at)
        async with opened(store_factory(kept)) as store:
            for connection_id, created_at in [("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0)]:
                await insert_record(store, connection_id, created_at=created_at)
            with caplog.at_level(logging.ERROR, logger="awx_connection.stores"):
                # Keys: a 1.0, x1 1.0, b 2.0, x2 2.0, x3 2.0, c 3.0, d 4.0, x4 5.0.
                assert [["a", "b"], ["c", "d"], []] == await walk(store, 2)
        logged = sorted(
            connection_id
            for connection_id in ("x1", "x2", "x3", "x4")
            for entry in caplog.records
            if f"{connection_id!r}" in entry.getMessage()
        )
        assert ["x1", "x2", "x3", "x4"] == logged
        assert {logging.ERROR} == {entry.levelno for entry in caplog.records}

    async def test_rotate_keys_seals_plaintext_rows_only_when_asked(
        self, store_factory: StoreFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """
        With keys, a row holding plaintext secrets does not read and
        rotate_keys() reports it (an ERROR naming it, a StoreError saying
        'keys seal') while rotating the rest; rotate_keys(seal_plaintext=True)
        seals it, with a WARNING naming it.
        """
        k1, k2 = secrets.token_bytes(32), secrets.token_bytes(32)
        async with opened(store_factory(None)) as store:
            plain = await insert_record(store, "plain", created_at=1.0)
        async with opened(store_factory(KeyRing([("k1", k1)]))) as store:
            sealed = await insert_record(store, "sealed", created_at=2.0)
        async with opened(store_factory(KeyRing([("k2", k2), ("k1", k1)]))) as store:
            with pytest.raises(
                DecryptionError, match=r"'plain'.*plaintext, not an encrypted envelope"
            ):
                await store.get("plain")
            with caplog.at_level(logging.WARNING, logger="awx_connection.stores"):
                with pytest.raises(StoreError, match=r"re-encrypted 1 .*'plain'.*keys seal"):
                    await store.rotate_keys()
                assert [sealed] == await store.list_connections()
                assert 1 == await store.rotate_keys(seal_plaintext=True)
                assert 0 == await store.rotate_keys()
            assert [plain, sealed] == await store.list_connections()
        levels = [(r.levelno, "'plain'" in r.getMessage()) for r in caplog.records]
        assert [(logging.ERROR, True), (logging.ERROR, True), (logging.WARNING, True)] == levels
        async with opened(store_factory(KeyRing([("k2", k2)]))) as store:
            assert [plain, sealed] == await store.list_connections()

    async def test_rotate_keys_reseals_every_row_with_the_newest_key(
        self,
        store_factory: StoreFactory,
    ) -> None:
        """After rotating [k1] to [k2, k1], every row opens with k2 alone and keeps its version."""
        k1, k2 = secrets.token_bytes(32), secrets.token_bytes(32)
        async with opened(store_factory(KeyRing([("k1", k1)]))) as store:
            records = [await insert_record(store, "c1"), await insert_record(store, "c2")]
            records.append(await update_record(store, await insert_record(store, "c3")))
            records.append(
                await insert_record(store, "bare", tokens=None, code=None, authorization=None)
            )
        async with opened(store_factory(KeyRing([("k2", k2), ("k1", k1)]))) as store:
            assert 3 == await store.rotate_keys()
            assert 0 == await store.rotate_keys()
            assert sorted(records, key=lambda r: r.id) == await store.list_connections()
        async with opened(store_factory(KeyRing([("k2", k2)]))) as store:
            assert records == [await store.get(record.id) for record in records]
            assert [2] == [r.version for r in records if r.id == "c3"]

    async def test_rotate_keys_without_keys_raises_store_error(
        self,
        store_factory: StoreFactory,
    ) -> None:
        """A store opened with keys=None has no key to rotate to."""
        async with opened(store_factory(None)) as store:
            await insert_record(store)
            with pytest.raises(StoreError, match="keys"):
                await store.rotate_keys()
