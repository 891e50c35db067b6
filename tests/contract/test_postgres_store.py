"""
The store contract, run against :class:`~awx_connection.stores.PostgresStore`
in a fresh schema per case, with a fresh key ring.

Needs the real server (``postgres_dsn`` in ``tests/conftest.py``: skipped
without one, failed under ``CI=true``); deselect with ``-m "not postgres"``.
What only several replicas can show is in ``tests/integration/test_postgres.py``.
"""

from __future__ import annotations

import pytest

from awx_connection.stores import PostgresStore
from awx_connection.testing.store_contract import EncryptingStoreContract, StoreFactory

pytestmark = pytest.mark.postgres


class TestPostgresStore(EncryptingStoreContract):
    """Every contract case, the key-ring cases included, in one schema per case."""

    @pytest.fixture
    def store_factory(self, postgres_dsn: str, postgres_schema: str) -> StoreFactory:
        # keys=None: plaintext, which is the point of the cases that pass it.
        return lambda keys: PostgresStore(
            postgres_dsn, keys=keys, schema=postgres_schema, allow_plaintext=keys is None
        )
