"""
A state machine of connections against the fake provider (hypothesis).

Hypothesis drives one to three connections through API calls, clock jumps,
forced refreshes, injected token-endpoint faults, user disconnects, signed
webhooks, reauthorizations and process restarts, in any order. After every
step it checks what the library promises: the provider never sees a stale
refresh token; whenever the library would present its refresh token the
provider would accept it; every stored history is gap-free and agrees with
the stored state; versions never go back; nothing secret is logged or shown.

The library is asyncio; hypothesis' rules are plain functions. The machine
owns one event loop and runs each step to completion on it, so no work of one
step overlaps the next.

Budgets: the ``ci`` profile (``CI=true``) runs a fixed, derandomized budget;
``HYPOTHESIS_PROFILE=hunt`` runs many more, longer examples locally.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import tempfile
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from awx_connection import (
    TRANSITIONS,
    AwxConnectionError,
    Config,
    ConnectionEvent,
    ConnectionManager,
    ConnectionRecord,
    ConnectionRevokedError,
    ConnectionState,
    ConnectionUnusableError,
    Endpoints,
    IllegalTransitionError,
    KeyRing,
    NetworkError,
    ProviderError,
    ProviderUnavailableError,
    TimingPolicy,
    Trigger,
)
from awx_connection._webhooks import sign
from awx_connection.stores import SQLiteStore
from awx_connection.testing import FakeAirwallex, Fault, FaultKind, ManualClock

# Hypothesis profiles (ci, dev, hunt) are registered in tests/conftest.py.

S = ConnectionState
T = TypeVar("T")

REDIRECT = "http://127.0.0.1:8000/airwallex/callback"
WEBHOOK_SECRET = "whsec_stateful_Lk2v9PqR7sT1"
KEY_MATERIAL = KeyRing.new_key()
KEYS = KeyRing.parse(f"k1:{KEY_MATERIAL}")
#: close_timeout=0: every aclose() is as abrupt as a crash (a rotation in
#: flight is cancelled mid-request); tests/integration/test_shutdown.py covers the
#: graceful close.
TIMING = TimingPolicy(backoff_base=0.0002, backoff_max=0.001, resume_delay=0.001, close_timeout=0)
#: How long after the first maybe-processed attempt the library still retries.
DEADLINE = TIMING.grace - TIMING.grace_margin
#: States ``reauthorize()`` accepts.
REAUTHORIZABLE = next(t.sources for t in TRANSITIONS if t.trigger is Trigger.REAUTHORIZE)
DAY = 86400

#: Clock jumps: small, across the refresh skew, past the grace deadline, past
#: the access token, to keep-alive age, past the refresh token.
JUMPS = st.one_of(
    st.integers(0, 30),
    st.integers(40, 90),
    st.integers(230, 400),
    st.sampled_from([40 * DAY, 91 * DAY]),
)
FAULTS = st.sampled_from(
    [
        (FaultKind.DROP_AFTER_COMMIT, 503),
        (FaultKind.SERVER_ERROR, 503),
        (FaultKind.SERVER_ERROR, 500),
        (FaultKind.SERVER_ERROR_AFTER_COMMIT, 503),
        (FaultKind.RATE_LIMIT, 503),
        (FaultKind.MALFORMED_AFTER_COMMIT, 503),
    ]
)

_LOG_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


class Captured(logging.Handler):
    """Every log record, formatted with its ``extra`` fields and traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        extras = " ".join(f"{k}={v!r}" for k, v in vars(record).items() if k not in _LOG_FIELDS)
        self.lines.append(f"{self.format(record)} {extras}")


def query_param(url: str, name: str) -> str:
    return parse_qs(urlsplit(url).query)[name][0]


class Connections(RuleBasedStateMachine):
    """Connections of one manager (restarted at will) against one fake provider."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(tempfile.mkdtemp(prefix="awx-stateful-"))
        self.capture = Captured()
        root = logging.getLogger()
        self.root_level = root.level
        root.addHandler(self.capture)
        root.setLevel(logging.DEBUG)
        self.clock = ManualClock()
        self.fake = FakeAirwallex(clock=self.clock, redirect_uris=[REDIRECT])
        self.run(self.fake.start())
        self.config = Config(
            client_id=self.fake.client_id,
            client_secret=self.fake.client_secret,
            redirect_uri=REDIRECT,
            endpoints=Endpoints.from_base_url(self.fake.base_url),
            timing=TIMING,
            default_scopes=("account_details:read",),
            webhook_secrets=(WEBHOOK_SECRET,),
        )
        self.manager = self.open_manager()
        self.ids: list[str] = []
        self.account_of: dict[str, str] = {}
        self.accounts: list[str] = []
        self.versions: dict[str, int] = {}
        #: Secrets the fake does not list: every state and PKCE verifier handed
        #: out, the webhook secret and the encryption key.
        self.auth_secrets: set[str] = {WEBHOOK_SECRET, KEY_MATERIAL}
        self.shown: list[str] = []
        self.checked_lines = 0
        self.webhook_serial = 0
        self.last_webhook: bytes | None = None

    # -- plumbing -------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def call(
        self, coro: Coroutine[Any, Any, T], allowed: tuple[type[AwxConnectionError], ...]
    ) -> tuple[T | None, AwxConnectionError | None]:
        """Run *coro*; a typed error of an *allowed* class is returned, anything else fails."""
        try:
            return self.run(coro), None
        except AwxConnectionError as exc:
            self.shown.append(f"{exc} {exc!r}")
            event(f"raised {type(exc).__name__}")
            assert isinstance(exc, allowed), f"unexpected {exc!r}"
            return None, exc

    def open_manager(self) -> ConnectionManager:
        store = SQLiteStore(self.tmp / "awx.db", keys=KEYS)
        # settle=False: no flight of the manager's own between steps. The
        # rules start every flight, so hypothesis can replay a run exactly
        # (test_durable.py covers the settling).
        manager = ConnectionManager(self.config, store=store, clock=self.clock, settle=False)
        self.run(manager.open())
        manager.subscribe(lambda published: self.shown.append(repr(published)))
        return manager

    def record(self, connection_id: str) -> ConnectionRecord:
        record = self.run(self.manager.store.get(connection_id))
        assert record is not None
        return record

    def pick(self, index: int) -> str:
        return self.ids[index % len(self.ids)]

    def remember_authorization(self, connection_id: str, url: str) -> None:
        self.auth_secrets.add(query_param(url, "state"))
        authorization = self.record(connection_id).authorization
        assert authorization is not None
        assert authorization.code_verifier is not None
        self.auth_secrets.add(authorization.code_verifier.reveal())

    def signed(self, body: bytes, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
        timestamp = str(int(self.clock.now() * 1000))
        return {"x-timestamp": timestamp, "x-signature": sign(secret, timestamp, body)}

    def teardown(self) -> None:
        try:
            self.run(self.manager.aclose())
            self.run(self.fake.aclose())
            self.run(self.loop.shutdown_asyncgens())
            self.run(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()
            root = logging.getLogger()
            root.removeHandler(self.capture)
            root.setLevel(self.root_level)
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- setup ----------------------------------------------------------------------------

    @initialize(accounts=st.lists(st.integers(0, 2), min_size=1, max_size=3))
    def connect(self, accounts: list[int]) -> None:
        """Connect one to three connections; equal numbers share an Airwallex account."""
        self.accounts = [self.fake.create_account() for _ in range(3)]
        for n, account_index in enumerate(accounts):
            account = self.accounts[account_index]
            request = self.run(self.manager.begin_authorization(external_id=f"customer-{n}"))
            self.remember_authorization(request.connection_id, request.url)
            callback = self.fake.approve(request.url, account_id=account)
            connection = self.run(self.manager.complete_authorization(callback))
            assert (S.ACTIVE, account) == (connection.state, connection.account_id)
            self.ids.append(connection.id)
            self.account_of[connection.id] = account

    # -- using the connections ------------------------------------------------------------

    @rule(index=st.integers(0, 2))
    def access_token(self, index: int) -> None:
        """access_token() hands out a token of a live grant, or a typed error."""
        connection_id = self.pick(index)
        token, error = self.call(
            self.manager.access_token(connection_id), (ConnectionUnusableError, ProviderError)
        )
        record = self.record(connection_id)
        if error is None:
            assert token is not None
            assert S.ACTIVE is record.state
            assert self.fake.grant_status(token) in ("active", "revoked")
        elif isinstance(error, ConnectionUnusableError):
            assert record.state is error.state

    @rule(index=st.integers(0, 2))
    def api_call(self, index: int) -> None:
        """request() reaches the connection's own account, or raises a typed error."""
        connection_id = self.pick(index)

        async def get_account() -> tuple[int, Any]:
            response = await self.manager.request(connection_id, "GET", "/api/v1/account/")
            async with response:
                return response.status, await response.json()

        answer, error = self.call(get_account(), (ConnectionUnusableError, ProviderError))
        record = self.record(connection_id)
        if error is None:
            assert answer is not None
            assert (200, self.account_of[connection_id]) == (answer[0], answer[1]["id"])
            assert S.ACTIVE is record.state
        elif isinstance(error, ConnectionUnusableError):
            assert record.state is error.state

    @rule(index=st.integers(0, 2))
    def force_refresh(self, index: int) -> None:
        """refresh() rotates to a newer generation, or raises a typed error."""
        connection_id = self.pick(index)
        before = self.record(connection_id)
        connection, error = self.call(
            self.manager.refresh(connection_id), (ConnectionUnusableError, ProviderError)
        )
        if error is None:
            assert connection is not None
            assert S.ACTIVE is connection.state
            assert before.tokens is not None
            assert connection.token_generation is not None
            assert connection.token_generation > before.tokens.generation

    @rule()
    def keepalive(self) -> None:
        """A keep-alive pass accounts for every due connection and never raises."""
        report = self.run(self.manager.keepalive_pass())
        assert report.rotated + report.expired + report.failed <= report.checked

    # -- time and faults ------------------------------------------------------------------

    @rule(seconds=JUMPS)
    def advance_clock(self, seconds: int) -> None:
        """Time passes for the library and the provider alike."""
        self.clock.advance(seconds)

    @rule(index=st.integers(0, 2), offset=st.integers(-70, 5))
    def advance_to_refresh_expiry(self, index: int, offset: int) -> None:
        """Time reaches (about) the moment a connection's refresh token ages out."""
        tokens = self.record(self.pick(index)).tokens
        if tokens is not None and tokens.refresh_expires_at + offset > self.clock.now():
            self.clock.advance(tokens.refresh_expires_at + offset - self.clock.now())

    @rule(
        fault=FAULTS,
        times=st.integers(1, 5),
        grant_type=st.sampled_from(["refresh_token", None]),
    )
    def inject_fault(
        self, fault: tuple[FaultKind, int], times: int, grant_type: str | None
    ) -> None:
        """Queue lost responses, 5xx, 429s or malformed 200s for the next token requests."""
        kind, status = fault
        self.fake.inject(Fault(kind, grant_type=grant_type, status=status, times=times))

    @rule()
    def clear_faults(self) -> None:
        """The provider recovers."""
        self.fake.clear_faults()

    # -- the customer and the provider ----------------------------------------------------

    @rule(index=st.integers(0, 2))
    def user_disconnects(self, index: int) -> None:
        """The customer unlinks the app in Airwallex (the library is not told)."""
        self.fake.disconnect(self.account_of[self.pick(index)])

    @rule(
        index=st.integers(0, 2),
        name=st.sampled_from(
            ["connection.disconnected", "partner_connection.disconnected", "account.active"]
        ),
        age=st.sampled_from([0, 5, 10 * DAY]),
    )
    def webhook(self, index: int, name: str, age: int) -> None:
        """A signed webhook: a disconnect revokes the account's live, older connections."""
        account = self.account_of[self.pick(index)]
        # Airwallex renders created_at to the second.
        created_at = float(math.floor(self.clock.now() - age))
        self.webhook_serial += 1
        payload: dict[str, Any] = {
            "id": f"evt_{self.webhook_serial}",
            "name": name,
            "created_at": datetime.fromtimestamp(created_at, UTC).strftime(
                "%Y-%m-%dT%H:%M:%S+0000"
            ),
        }
        if name == "partner_connection.disconnected":
            payload["data"] = {"account_ids": [account]}
        else:
            payload["account_id"] = account
        body = orjson.dumps(payload)
        before = {cid: self.record(cid) for cid in self.ids}
        result = self.run(self.manager.handle_webhook(self.signed(body), body))
        self.last_webhook = body
        if result.status == 503:
            # The order was uncertain and asking the provider failed (a fault
            # queued for the token endpoint): nothing was decided.
            event("webhook answered 503")
            for cid, record in before.items():
                if record.state is not S.REVOKED:
                    assert S.REVOKED is not self.record(cid).state
            return
        assert 200 == result.status
        expected_revoked = set()
        asked: set[str] = set()  # uncertain order: the provider decided
        if name != "account.active":
            for cid, record in before.items():
                if self.account_of[cid] != account or record.state not in (
                    S.ACTIVE,
                    S.REFRESHING,
                ):
                    continue
                order = disconnect_order(created_at, record.activated_at)
                if order == "after":
                    expected_revoked.add(cid)
                elif order == "unknown":
                    asked.add(cid)
        assert expected_revoked <= set(result.revoked) <= expected_revoked | asked
        for cid, record in before.items():
            after = self.record(cid)
            if cid in result.revoked:
                assert S.REVOKED is after.state
            elif cid in asked:
                event("webhook of uncertain order: the provider kept the connection")
                assert after.state in (S.ACTIVE, S.REFRESHING, S.INVALIDATED, S.EXPIRED)
            else:
                assert record.version == after.version

    @rule()
    def webhook_redelivered(self) -> None:
        """Airwallex retries a handled delivery (signed anew): 200, duplicate, nothing changes."""
        if self.last_webhook is None:
            return
        body = self.last_webhook
        before = {cid: self.record(cid).version for cid in self.ids}
        result = self.run(self.manager.handle_webhook(self.signed(body), body))
        assert (200, True) == (result.status, result.duplicate)
        assert before == {cid: self.record(cid).version for cid in self.ids}

    @rule(index=st.integers(0, 2), secret=st.sampled_from(["whsec_wrong", None]))
    def webhook_forged(self, index: int, secret: str | None) -> None:
        """A disconnect that is unsigned or signed with another secret: 401, nothing changes."""
        account = self.account_of[self.pick(index)]
        self.webhook_serial += 1
        body = orjson.dumps(
            {
                "id": f"evt_{self.webhook_serial}",
                "name": "connection.disconnected",
                "account_id": account,
                "created_at": datetime.fromtimestamp(self.clock.now(), UTC).isoformat(),
            }
        )
        headers = self.signed(body, secret or WEBHOOK_SECRET)
        if secret is None:
            del headers["x-signature"]
        before = {cid: self.record(cid).version for cid in self.ids}
        result = self.run(self.manager.handle_webhook(headers, body))
        assert 401 == result.status
        assert before == {cid: self.record(cid).version for cid in self.ids}

    # -- starting over --------------------------------------------------------------------

    @rule(index=st.integers(0, 2), outcome=st.sampled_from(["approve", "deny", "leave"]))
    def reauthorize(self, index: int, outcome: str) -> None:
        """A finished connection starts over; a live one refuses with IllegalTransitionError."""
        connection_id = self.pick(index)
        before = self.record(connection_id)
        request, error = self.call(
            self.manager.reauthorize(connection_id), (IllegalTransitionError,)
        )
        if before.state not in REAUTHORIZABLE:
            assert error is not None
            assert before.version == self.record(connection_id).version
            return
        assert request is not None
        self.remember_authorization(connection_id, request.url)
        if outcome == "deny":
            callback = self.fake.deny(request.url)
            connection = self.run(self.manager.complete_authorization(callback))
            assert S.DENIED is connection.state
        elif outcome == "approve":
            account = self.account_of[connection_id]
            callback = self.fake.approve(request.url, account_id=account)
            connection, error = self.call(
                self.manager.complete_authorization(callback), (ProviderError,)
            )
            state = self.record(connection_id).state
            if error is None:
                assert connection is not None
                assert connection.state in (S.ACTIVE, S.FAILED)
            else:
                assert S.AUTHORIZED is state

    @rule(index=st.integers(0, 2))
    def retry_exchange(self, index: int) -> None:
        """exchange() finishes an authorized connection and refuses every other state."""
        connection_id = self.pick(index)
        before = self.record(connection_id)
        connection, error = self.call(
            self.manager.exchange(connection_id), (IllegalTransitionError, ProviderError)
        )
        if before.state is not S.AUTHORIZED:
            assert isinstance(error, IllegalTransitionError)
        elif error is None:
            assert connection is not None
            assert connection.state in (S.ACTIVE, S.FAILED)

    @rule(
        calls=st.lists(
            st.tuples(
                st.sampled_from(["access_token", "refresh", "request", "keepalive", "disconnect"]),
                st.integers(0, 2),
            ),
            min_size=2,
            max_size=6,
        )
    )
    def concurrent_callers(self, calls: list[tuple[str, int]]) -> None:
        """Callers overlap: tokens, refreshes, API calls, keep-alive and webhooks at once."""

        async def one(kind: str, connection_id: str) -> object:
            if kind == "access_token":
                return await self.manager.access_token(connection_id)
            if kind == "refresh":
                return await self.manager.refresh(connection_id)
            if kind == "keepalive":
                return await self.manager.keepalive_pass()
            if kind == "disconnect":
                self.webhook_serial += 1
                body = orjson.dumps(
                    {
                        "id": f"evt_{self.webhook_serial}",
                        "name": "connection.disconnected",
                        "account_id": self.account_of[connection_id],
                        "created_at": datetime.fromtimestamp(self.clock.now(), UTC).isoformat(),
                    }
                )
                result = await self.manager.handle_webhook(self.signed(body), body)
                assert 200 == result.status
                return result
            response = await self.manager.request(connection_id, "GET", "/api/v1/account/")
            async with response:
                assert 200 == response.status
                return await response.json()

        async def all_at_once() -> list[object]:
            jobs = [one(kind, self.pick(index)) for kind, index in calls]
            return await asyncio.gather(*jobs, return_exceptions=True)

        for outcome in self.run(all_at_once()):
            if isinstance(outcome, BaseException):
                self.shown.append(f"{outcome} {outcome!r}")
                assert isinstance(outcome, ConnectionUnusableError | ProviderError), repr(outcome)
        assert 0 == self.fake.counters.concurrent_rejections

    @rule(index=st.integers(0, 2))
    def crash_mid_rotation(self, index: int) -> None:
        """The process dies after the provider rotated and before the new tokens were stored."""
        connection_id = self.pick(index)
        held = self.fake.counters.held_responses
        self.fake.clear_faults()
        self.fake.inject(Fault(FaultKind.HOLD_AFTER_COMMIT, grant_type="refresh_token", delay=5))

        async def refresh_until_held() -> None:
            task = asyncio.ensure_future(self.manager.refresh(connection_id))
            for _ in range(2000):
                if task.done() or self.fake.counters.held_responses > held:
                    break
                await asyncio.sleep(0.001)
            if not task.done():
                event("crashed while the provider held a committed rotation")
                await self.manager.aclose()  # cancels the refresh mid-request
            with contextlib.suppress(AwxConnectionError, asyncio.CancelledError):
                await task

        self.run(refresh_until_held())
        self.fake.release_held()
        self.fake.clear_faults()
        self.run(self.manager.aclose())
        self.manager = self.open_manager()

    @rule()
    def restart(self) -> None:
        """The process restarts: a new manager on the same file resumes every journal."""
        before = {cid: self.record(cid) for cid in self.ids}
        self.run(self.manager.aclose())
        self.manager = self.open_manager()
        for cid, record in before.items():
            connection = self.run(self.manager.get(cid))
            assert (record.state, record.version) == (connection.state, connection.version)
            assert record.journal == self.record(cid).journal

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def no_stale_refresh_token_reached_the_provider(self) -> None:
        """The provider never saw a refresh token older than its grace window allows."""
        assert 0 == self.fake.counters.reuse_violations
        assert 0 == self.fake.counters.invalidations
        if self.fake.counters.grace_reissues:
            event("a lost rotation was recovered inside the grace window")

    @invariant()
    def stored_connections_are_consistent(self) -> None:
        """Gap-free history that ends in the stored state; versions never go back."""
        for connection_id in self.ids:
            record = self.record(connection_id)
            assert isinstance(record.state, ConnectionState)
            event(f"a connection was {record.state.value}")
            history = self.run(self.manager.history(connection_id))
            self.shown.extend(repr(event) for event in history)
            assert list(range(1, len(history) + 1)) == [e.sequence for e in history]
            assert record.sequence == len(history)
            assert [None] + [e.dest for e in history[:-1]] == [e.source for e in history]
            assert record.state is history[-1].dest
            assert record.version >= self.versions.get(connection_id, 0)
            self.versions[connection_id] = record.version
            self.check_against_provider(record, history)

    def check_against_provider(
        self, record: ConnectionRecord, history: list[ConnectionEvent]
    ) -> None:
        """Our state agrees with the fake provider's wherever that is decidable."""
        now = self.clock.now()
        tokens = record.tokens
        if record.state in (S.ACTIVE, S.REFRESHING):
            assert tokens is not None
            assert self.fake.grant_status(tokens.access_token.reveal()) in ("active", "revoked")
            assert self.fake.grant_status(tokens.refresh_token.reveal()) in ("active", "revoked")
        if record.state is S.REFRESHING:
            # At rest, a rotation is only left in flight when its outcome is
            # unknown: a maybe-processed attempt started the grace clock.
            assert tokens is not None
            assert record.journal is not None
            assert record.journal.unsafe_since is not None
            assert tokens.generation == record.journal.generation
        # Whenever the library would still present its refresh token, the
        # provider would accept it (no reuse can follow).
        if tokens is not None and now < tokens.refresh_expires_at:
            presentable = record.state is S.ACTIVE or (
                record.state is S.REFRESHING
                and record.journal is not None
                and record.journal.unsafe_since is not None
                and now < record.journal.unsafe_since + DEADLINE
            )
            if presentable:
                assert provider_accepts(self.fake, tokens.refresh_token.reveal(), now)
        if record.state is S.INVALIDATED:
            # The one legitimate way there: a rotation's outcome stayed
            # unknown until the grace deadline passed, and nothing was resent.
            started = [e for e in history if e.trigger is Trigger.REFRESH_STARTED]
            assert Trigger.INVALIDATE is history[-1].trigger
            assert started
            assert history[-1].at - started[-1].at >= DEADLINE
        if record.state is S.EXPIRED:
            assert tokens is not None
            assert history[-1].at >= tokens.refresh_expires_at
        if record.state is S.REVOKED and "invalid_grant" in record.reason:
            assert tokens is not None
            status = self.fake.grant_status(tokens.refresh_token.reveal())
            assert "revoked" == status
        if record.state in (S.PENDING, S.DENIED, S.FAILED):
            assert tokens is None

    @invariant()
    def nothing_secret_is_logged_or_shown(self) -> None:
        """No token, code, state, verifier, webhook secret or key in logs, events or errors."""
        lines = self.capture.lines[self.checked_lines :]
        self.checked_lines = len(self.capture.lines)
        text = "\n".join([*lines, *self.shown])
        self.shown.clear()
        secrets = self.fake.issued_secrets() | self.auth_secrets
        assert [] == [secret for secret in secrets if secret in text]


def disconnect_order(created_at: float, activated_at: float | None) -> str:
    """The library's rule: created_at is to the second, the clocks may disagree."""
    if activated_at is None:
        return "after"
    skew = TIMING.webhook_clock_skew
    if created_at + 1 + skew <= activated_at:
        return "before"
    if created_at - skew > activated_at:
        return "after"
    return "unknown"


def provider_accepts(fake: FakeAirwallex, refresh_token: str, now: float) -> bool:
    """
    Whether the fake would rotate *refresh_token* now rather than call it a
    reuse: the current token of a live grant, or the previous one inside its
    grace window. Reads the fake's internals: no public call can ask this
    without presenting the token.
    """
    issued = fake._state._refresh_tokens.get(refresh_token)
    if issued is None:
        return False
    grant = issued.grant
    if grant.status != "active":
        return True  # the provider answers invalid_grant: no reuse either
    return refresh_token == grant.current or (
        refresh_token == grant.previous and now < grant.previous_valid_until
    )


TestConnections = Connections.TestCase


# -- regressions: sequences the machine found, as plain tests ----------------------------
#
# Each was a bug in _manager.py, fixed in the commit that added these tests.


async def connect(manager: ConnectionManager, fake: FakeAirwallex) -> str:
    request = await manager.begin_authorization()
    connection = await manager.complete_authorization(fake.approve(request.url))
    return connection.id


async def test_resumed_rotation_past_refresh_expiry_expires_without_a_request(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """A lost rotation resumed after the refresh token aged out: expired, nothing sent."""
    connection_id = await connect(awx_manager, awx_fake)
    record = await awx_manager.store.get(connection_id)
    assert record is not None
    assert record.tokens is not None
    # 30 s before the refresh token ages out, every attempt loses its response.
    awx_clock.advance(record.tokens.refresh_expires_at - awx_clock.now() - 30)
    awx_fake.inject(Fault(FaultKind.DROP_AFTER_COMMIT, grant_type="refresh_token", times=4))
    with pytest.raises(NetworkError):
        await awx_manager.access_token(connection_id)
    assert S.REFRESHING is (await awx_manager.get(connection_id)).state
    # 31 s later: inside the grace deadline, but past the token's own expiry.
    awx_clock.advance(31)
    requests = awx_fake.counters.token_requests
    with pytest.raises(ConnectionUnusableError) as info:
        await awx_manager.access_token(connection_id)
    assert (S.EXPIRED, 0) == (info.value.state, awx_fake.counters.token_requests - requests)


async def test_revoked_connection_raises_revoked_not_a_cached_provider_error(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """After a failed refresh, revoking the connection makes access_token say revoked."""
    connection_id = await connect(awx_manager, awx_fake)
    awx_clock.advance(301)
    awx_fake.inject(Fault(FaultKind.SERVER_ERROR, grant_type="refresh_token", times=4))
    with pytest.raises(ProviderUnavailableError):
        await awx_manager.access_token(connection_id)
    await awx_manager.revoke(connection_id)
    with pytest.raises(ConnectionRevokedError):
        await awx_manager.access_token(connection_id)


async def test_reauthorized_connection_is_not_refused_with_the_old_grants_failure(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """A refresh right after a reauthorization rotates the new tokens."""
    connection_id = await connect(awx_manager, awx_fake)
    awx_clock.advance(301)
    awx_fake.inject(Fault(FaultKind.SERVER_ERROR, grant_type="refresh_token", times=4))
    with pytest.raises(ProviderUnavailableError):
        await awx_manager.access_token(connection_id)
    await awx_manager.revoke(connection_id)
    request = await awx_manager.reauthorize(connection_id)
    await awx_manager.complete_authorization(awx_fake.approve(request.url))
    refreshed = await awx_manager.refresh(connection_id)
    assert (S.ACTIVE, 1) == (refreshed.state, refreshed.token_generation)
