"""
The store contract, run against :class:`~awx_connection.stores.MemoryStore`;
and what only the memory store does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from awx_connection.stores import MemoryStore
from awx_connection.testing.store_contract import StoreContract, insert_record, opened


class TestMemoryStore(StoreContract):
    """Every contract case; memory encrypts nothing, so not the key-ring cases."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[MemoryStore]:
        async with opened(MemoryStore()) as store:
            yield store


async def test_memory_store_has_nothing_to_rotate() -> None:
    """Nothing is encrypted in memory, so rotate_keys rewrites nothing, sealing or not."""
    store = MemoryStore()
    await insert_record(store)
    assert 0 == await store.rotate_keys()
    assert 0 == await store.rotate_keys(seal_plaintext=True)
