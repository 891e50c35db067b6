"""
The store contract, run against :class:`~awx_connection.stores.SQLiteStore`,
with a fresh key ring per case, so every case also runs through encryption.
What only a file can do is in ``test_sqlite_file.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from awx_connection.stores import SQLiteStore
from awx_connection.testing.store_contract import EncryptingStoreContract, StoreFactory


class TestSQLiteStore(EncryptingStoreContract):
    """Every contract case, the key-ring cases included, on one file per case."""

    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        # keys=None: plaintext, which is the point of the cases that pass it.
        return lambda keys: SQLiteStore(
            tmp_path / "awx.db", keys=keys, allow_plaintext=keys is None
        )
