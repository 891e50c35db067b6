"""
One customer, several links: what happens when the same ``external_id``
connects twice, or is reauthorized while a link is out, and ``find()`` by
customer or account, newest first, on the memory store, a real SQLite file
and a real PostgreSQL schema, against the real fake Airwallex.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from awx_connection import (
    Config,
    ConnectionEvent,
    ConnectionManager,
    ConnectionState,
    Intent,
    InvalidArgumentError,
    KeyRing,
    ProviderError,
    Store,
    UnknownStateError,
)
from awx_connection.stores import MemoryStore, PostgresStore, SQLiteStore
from awx_connection.testing import FakeAirwallex, Fault, FaultKind, ManualClock

S = ConnectionState


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "memory":
        return MemoryStore()
    if request.param == "sqlite":
        return SQLiteStore(tmp_path / "awx.db", keys=KeyRing.generate())
    dsn = request.getfixturevalue("postgres_dsn")
    schema = request.getfixturevalue("postgres_schema")
    return PostgresStore(dsn, keys=KeyRing.generate(), schema=schema)


async def test_a_customer_who_connects_twice_has_two_connections_newest_first(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, store: Store
) -> None:
    """Two begins for one external_id: two links, both work, two connections; find() lists both."""
    async with ConnectionManager(awx_config, store=store, clock=awx_clock, keepalive=False) as awx:
        connected: list[ConnectionEvent] = []
        awx.subscribe(connected.append, intents=[Intent.CONNECTED])
        first = await awx.begin_authorization(external_id="customer-7")
        awx_clock.advance(5)
        second = await awx.begin_authorization(external_id="customer-7")
        other = await awx.begin_authorization(external_id="customer-8")
        assert first.connection_id != second.connection_id

        found = await awx.find(external_id="customer-7")
        assert [second.connection_id, first.connection_id] == [c.id for c in found]
        assert {S.PENDING} == {c.state for c in found}

        # Both links work, in either order; each becomes its own connection
        # (here to the same Airwallex account: the fake's default customer).
        await awx.complete_authorization(awx_fake.approve(second.url))
        await awx.complete_authorization(awx_fake.approve(first.url))
        found = await awx.find(external_id="customer-7")
        assert [second.connection_id, first.connection_id] == [c.id for c in found]
        assert {S.ACTIVE} == {c.state for c in found}
        assert 2 == len(connected)
        by_account = await awx.find(account_id=found[0].account_id)
        assert [second.connection_id, first.connection_id] == [c.id for c in by_account]

        # Keeping one: disconnect the other; find() still lists it, revoked.
        await awx.revoke(first.connection_id)
        assert [S.ACTIVE, S.REVOKED] == [c.state for c in await awx.find(external_id="customer-7")]
        assert [other.connection_id] == [c.id for c in await awx.find(external_id="customer-8")]
        assert [] == await awx.find(external_id="nobody")


async def test_reauthorize_while_a_link_is_out_retires_that_link(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, store: Store
) -> None:
    """The old link's callback is refused and changes nothing; the new one connects, once."""
    async with ConnectionManager(awx_config, store=store, clock=awx_clock, keepalive=False) as awx:
        connected: list[ConnectionEvent] = []
        awx.subscribe(connected.append, intents=[Intent.CONNECTED])
        old = await awx.begin_authorization(external_id="customer-7")
        new = await awx.reauthorize(old.connection_id)
        assert old.connection_id == new.connection_id
        before = await awx.get(old.connection_id)
        assert "customer-7" == before.external_id

        with pytest.raises(UnknownStateError):
            await awx.complete_authorization(awx_fake.approve(old.url))
        assert before == await awx.get(old.connection_id)

        done = await awx.complete_authorization(awx_fake.approve(new.url))
        assert S.ACTIVE is done.state
        assert "customer-7" == done.external_id
        assert [old.connection_id] == [e.connection_id for e in connected]
        assert [done.id] == [c.id for c in await awx.find(external_id="customer-7")]


async def test_reauthorize_while_the_exchange_is_unfinished_drops_the_code(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, store: Store
) -> None:
    """An authorized connection whose exchange failed transiently goes back to pending."""
    async with ConnectionManager(awx_config, store=store, clock=awx_clock, keepalive=False) as awx:
        begun = await awx.begin_authorization(external_id="customer-7")
        attempts = awx_config.timing.max_attempts
        awx_fake.inject(
            Fault(FaultKind.SERVER_ERROR, grant_type="authorization_code", times=attempts)
        )
        with pytest.raises(ProviderError):
            await awx.complete_authorization(awx_fake.approve(begun.url))
        assert S.AUTHORIZED is (await awx.get(begun.connection_id)).state

        again = await awx.reauthorize(begun.connection_id)
        assert S.PENDING is (await awx.get(begun.connection_id)).state
        done = await awx.complete_authorization(awx_fake.approve(again.url))
        assert S.ACTIVE is done.state


async def test_find_needs_a_filter_of_valid_text(awx_manager: ConnectionManager) -> None:
    """No filter (it would list every connection) or a non-string: a typed error."""
    with pytest.raises(InvalidArgumentError):
        await awx_manager.find()
    with pytest.raises(InvalidArgumentError):
        await awx_manager.find(external_id=42)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        await awx_manager.find(external_id="\ud800")
