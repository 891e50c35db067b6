"""
The store contract suite: the cases every built-in store passes, for your own.

A :class:`~awx_connection.Store` of your own (another database, a cache in
front of one) must keep the promises the manager relies on (listed in the
:class:`~awx_connection.Store` protocol). This package holds the cases that
check them, the same ones ``MemoryStore``, ``SQLiteStore`` and
``PostgresStore`` pass in this project's CI. Subclass :class:`StoreContract`
and give it your store::

    import pytest
    from awx_connection.testing.store_contract import StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        async def store(self, keys):  # keys: a fresh KeyRing for each case
            store = MyStore(..., keys=keys)
            await store.open()
            yield store
            await store.aclose()

A store that encrypts secrets at rest subclasses
:class:`EncryptingStoreContract` instead and provides ``store_factory``: a
callable from a key ring (or ``None``, plaintext allowed) to an unopened
store over one and the same data set for the whole case (one file, one
schema), which the default ``store`` fixture then opens with ``keys``::

    class TestMyDurableStore(EncryptingStoreContract):
        @pytest.fixture
        def store_factory(self, tmp_path):
            return lambda keys: MyStore(tmp_path / "db", keys=keys, allow_plaintext=keys is None)

Needs pytest and pytest-asyncio (``pip install 'awx-connection[testing]'``)
with ``asyncio_mode = "auto"``, as the cases are coroutines. Importing
:mod:`awx_connection` or :mod:`awx_connection.testing` never imports this
package, nor pytest. The helpers it is written with (:func:`make_record`,
:func:`insert_record`, ...) are exported for a store's own extra cases.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from ..._crypto import KeyRing
from ..._store import Store
from ._connections import ConnectionCases
from ._data import (
    StoreFactory,
    insert_page_fixture,
    insert_record,
    make_event,
    make_record,
    next_version,
    opened,
    update_record,
    walk,
)
from ._encryption import EncryptionCases
from ._leases import LeaseCases
from ._outbox import OutboxCases
from ._relays import RelayCases
from ._text import TextCases
from ._webhooks import WebhookCases

__all__ = [
    "EncryptingStoreContract",
    "StoreContract",
    "StoreFactory",
    "insert_page_fixture",
    "insert_record",
    "make_event",
    "make_record",
    "next_version",
    "opened",
    "update_record",
    "walk",
]


class StoreContract(ConnectionCases, LeaseCases, OutboxCases, WebhookCases, RelayCases, TextCases):
    """
    Every promise of the :class:`~awx_connection.Store` contract, as pytest
    cases run against the ``store`` fixture.

    Fixtures to provide in the subclass: ``store`` (an opened store, closed
    after the case), or ``store_factory`` (see :class:`EncryptingStoreContract`),
    from which the default ``store`` opens one with ``keys``. Fixtures it
    provides: ``keys``, a fresh :class:`~awx_connection.KeyRing` per case,
    for a store that encrypts (others ignore it).

    A store passes only if each case passes: the records come back equal,
    compare-and-swap has one winner among concurrent writers, leases,
    outbox positions, offsets, waits, webhook claims, relay leases and
    dead letters behave as
    documented, and bad text is refused alike.
    """

    @pytest.fixture
    def keys(self) -> KeyRing:
        """A fresh key ring for each case."""
        return KeyRing.generate()

    @pytest.fixture
    def store_factory(self) -> StoreFactory | None:
        """Unopened stores over one data set, by key ring; ``None``: override ``store``."""
        return None

    @pytest_asyncio.fixture
    async def store(
        self, store_factory: StoreFactory | None, keys: KeyRing
    ) -> AsyncIterator[Store]:
        """``store_factory(keys)``, opened, and closed after the case."""
        if store_factory is None:
            pytest.fail(
                f"{type(self).__name__} must provide the 'store' fixture (an opened store) "
                "or 'store_factory' (keys -> an unopened store)"
            )
        async with opened(store_factory(keys)) as store:
            yield store


class EncryptingStoreContract(StoreContract, EncryptionCases):
    """
    :class:`StoreContract`, and the cases of secrets at rest: rows sealed
    with a key the ring lacks are left out of listings but summarised,
    plaintext rows are refused until ``rotate_keys(seal_plaintext=True)``,
    and ``rotate_keys`` reseals every row with the newest key.

    Those cases write with one key ring and read with another, so the
    subclass must provide ``store_factory``: a callable from a
    :class:`~awx_connection.KeyRing`, or ``None`` (a store that accepts
    plaintext: ``allow_plaintext=True``), to an unopened store, where every
    store it builds during a case reaches the same data (file, schema).
    """

    @pytest.fixture
    def store_factory(self) -> StoreFactory | None:
        """Override: keys -> an unopened store over this case's data."""
        pytest.fail(f"{type(self).__name__} must provide the 'store_factory' fixture")
