"""
Fuzzing every door hostile or broken input comes through (hypothesis).

Callback URLs and parameters, token-endpoint responses off a real socket,
webhook deliveries, stored rows and configuration values. Each may be
refused, but only with the library's typed error for that door, and a
refusal changes nothing.

The tests are synchronous: one module-wide environment owns an event loop,
the fake provider, a raw token server and a manager on SQLite, and runs each
example's coroutine to completion on that loop.

Budgets: the ``ci`` profile (``CI=true``) runs a fixed, derandomized budget;
``HYPOTHESIS_PROFILE=hunt`` runs 2,000 examples per property locally.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import os
import shutil
import tempfile
from collections.abc import Coroutine, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import attrs
import orjson
import pytest
import yarl
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from awx_connection import (
    AuthorizationError,
    CallbackError,
    Config,
    ConfigurationError,
    ConnectionManager,
    ConnectionRecord,
    ConnectionState,
    Endpoints,
    KeyRing,
    PendingAuthorization,
    ProviderError,
    RotationJournal,
    Secret,
    StoreError,
    TimingPolicy,
    TokenSet,
    WebhookClaim,
)
from awx_connection._authorize import Callback, check_scopes, parse_callback
from awx_connection._records import dump_record, load_record
from awx_connection._transport import Transport
from awx_connection._webhooks import sign
from awx_connection.stores import SQLiteStore
from awx_connection.stores._common import load_stored_record
from awx_connection.testing import FakeAirwallex, ManualClock

# Hypothesis profiles (ci, dev, hunt) are registered in tests/conftest.py.

S = ConnectionState
T = TypeVar("T")

REDIRECT = "http://127.0.0.1:8000/airwallex/callback"
WEBHOOK_SECRET = "whsec_fuzz_Qm4tR8"
KEYS = KeyRing.generate()
#: Stands for the pending connection's real ``state`` in generated callbacks.
REAL_STATE = "\x00real-state\x00"
#: Stands for the connection's real account id in generated webhooks.
REAL_ACCOUNT = "\x00real-account\x00"
LIMIT = 1024
#: Secrets the transport sends; a response may echo them back.
CLIENT_SECRET = "cs_fuzz_Zx81clientsecret"
SENT_REFRESH = "rt_fuzz_Pq33refreshtoken"
SENT_CODE = "ac_fuzz_Lm55authcode"
SENT_VERIFIER = "pkce_fuzz_Vv77verifier" + "v" * 30
SENT = (CLIENT_SECRET, SENT_REFRESH, SENT_CODE, SENT_VERIFIER)

# -- strategies ----------------------------------------------------------------------------

#: Any text, lone surrogates included (frameworks decode bytes with surrogateescape).
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)

_PARAM_NAMES = st.sampled_from(["state", "code", "error", "error_description"]) | st.text(
    max_size=8
)
_PARAM_VALUES = st.sampled_from([REAL_STATE, "", "abc", "access_denied", "x" * 9000]) | ANY_TEXT
_PREFIXES = st.sampled_from(
    ["", "?", "/airwallex/callback?", REDIRECT + "?", "https://[::1/cb?", "http://h/cb#frag?", "&"]
)


@st.composite
def callback_strings(draw: st.DrawFn) -> str:
    """A redirect URL or query string, well-formed or not."""
    pairs = draw(st.lists(st.tuples(_PARAM_NAMES, _PARAM_VALUES), max_size=6))
    encode = draw(st.booleans())

    def part(text: str) -> str:
        return quote(text, errors="surrogatepass") if encode else text

    query = "&".join(f"{part(k)}={part(v)}" for k, v in pairs)
    return draw(st.one_of(st.just(draw(_PREFIXES) + query), ANY_TEXT))


@st.composite
def callback_mappings(draw: st.DrawFn) -> dict[Any, Any]:
    """Query parameters as a web framework hands them over, or garbage in their place."""
    value = _PARAM_VALUES | st.lists(_PARAM_VALUES, max_size=3) | st.none() | st.integers()
    value |= st.binary(max_size=5) | st.lists(st.integers(), min_size=1, max_size=2)
    return draw(st.dictionaries(_PARAM_NAMES, value, max_size=5))


@st.composite
def plausible_callbacks(draw: st.DrawFn) -> str | dict[str, Any]:
    """A redirect close to a real one: each parameter present or not, once or twice."""
    choices = {
        "state": st.sampled_from([REAL_STATE, "forged"]) | ANY_TEXT,
        "code": st.sampled_from(["awx_ac_unknown", ""]) | ANY_TEXT,
        "error": st.sampled_from(["access_denied", ""]) | ANY_TEXT,
        "error_description": ANY_TEXT,
    }
    present = {"state": draw(st.integers(0, 9)) > 0, "error_description": draw(st.booleans())}
    outcome = draw(st.sampled_from([("code",), ("error",), ("code", "error"), ()]))
    present |= {"code": "code" in outcome, "error": "error" in outcome}
    params: dict[str, Any] = {}
    for name, values in choices.items():
        if present[name]:
            repeats = 2 if draw(st.integers(0, 9)) == 0 else 1
            params[name] = draw(st.lists(values, min_size=repeats, max_size=repeats))
    if draw(st.booleans()):
        return {k: v[0] if len(v) == 1 else v for k, v in params.items()}
    query = "&".join(
        f"{k}={quote(x, errors='surrogatepass')}" for k, v in params.items() for x in v
    )
    query = query.replace(quote(REAL_STATE), REAL_STATE)
    return draw(st.sampled_from(["", "?", REDIRECT + "?"])) + query


CALLBACKS = callback_strings() | callback_mappings() | plausible_callbacks()

# -- the environment -----------------------------------------------------------------------


@attrs.define(eq=False)
class RawTokenServer:
    """A token endpoint that answers every request with the bytes in ``reply``."""

    reply: bytes = b""
    server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.answer, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            writer.write(self.reply)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class Env:
    """One event loop with the fake provider, a raw token server and a manager on SQLite."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(tempfile.mkdtemp(prefix="awx-fuzz-"))
        self.clock = ManualClock()
        self.fake = FakeAirwallex(clock=self.clock, redirect_uris=[REDIRECT])
        self.run(self.fake.start())
        config = Config(
            client_id=self.fake.client_id,
            client_secret=self.fake.client_secret,
            redirect_uri=REDIRECT,
            endpoints=Endpoints.from_base_url(self.fake.base_url),
            timing=TimingPolicy(backoff_base=0.0002, backoff_max=0.001, resume_delay=0.001),
            default_scopes=("account_details:read",),
            webhook_secrets=(WEBHOOK_SECRET,),
        )
        store = SQLiteStore(self.tmp / "awx.db", keys=KEYS)
        self.manager = ConnectionManager(config, store=store, clock=self.clock)
        self.run(self.manager.open())
        self.account = self.fake.create_account()
        self.connection_id = self.connect()
        self.token_server = RawTokenServer()
        base = self.run(self.token_server.start())
        self.transport = Transport(
            Config(
                client_id="fuzz-client",
                client_secret=CLIENT_SECRET,
                redirect_uri=REDIRECT,
                endpoints=Endpoints.from_base_url(base),
                timing=TimingPolicy(max_response_bytes=LIMIT, request_timeout=2.0),
            )
        )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def connect(self) -> str:
        request = self.run(self.manager.begin_authorization())
        callback = self.fake.approve(request.url, account_id=self.account)
        connection = self.run(self.manager.complete_authorization(callback))
        assert S.ACTIVE is connection.state
        return connection.id

    def record(self, connection_id: str) -> ConnectionRecord:
        record = self.run(self.manager.store.get(connection_id))
        assert record is not None
        return record

    def close(self) -> None:
        try:
            self.run(self.transport.aclose())
            self.run(self.token_server.aclose())
            self.run(self.manager.aclose())
            self.run(self.fake.aclose())
            self.run(self.loop.shutdown_asyncgens())
            self.run(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    environment = Env()
    try:
        yield environment
    finally:
        environment.close()


# -- callbacks -----------------------------------------------------------------------------


@given(CALLBACKS)
def test_parse_callback_returns_a_callback_or_raises_callback_error(callback: Any) -> None:
    """Any string or mapping gives a well-formed Callback or CallbackError, nothing else."""
    try:
        parsed = parse_callback(callback)
    except CallbackError:
        return
    assert isinstance(parsed, Callback)
    assert parsed.state.reveal()
    assert (parsed.code is None) != (parsed.error is None)
    assert parsed.code is None or parsed.code.reveal()
    # What is accepted can be hashed, stored and sent as JSON.
    for value in (parsed.state, parsed.code, parsed.error, parsed.error_description):
        text = value.reveal() if isinstance(value, Secret) else value
        if text is not None:
            text.encode("utf-8")


def _with_real_state(callback: Any, state: str) -> Any:
    if isinstance(callback, str):
        return callback.replace(REAL_STATE, state)
    if isinstance(callback, Mapping):
        return {
            key: [v.replace(REAL_STATE, state) if isinstance(v, str) else v for v in value]
            if isinstance(value, list)
            else value.replace(REAL_STATE, state)
            if isinstance(value, str)
            else value
            for key, value in callback.items()
        }
    return callback


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(callback=CALLBACKS, late=st.booleans())
def test_fuzzed_callback_never_changes_a_pending_connection(
    env: Env, callback: Any, late: bool
) -> None:
    """A refused callback leaves the pending record as it was; an accepted one ends it."""
    request = env.run(env.manager.begin_authorization())
    state = parse_qs(urlsplit(request.url).query)["state"][0]
    if late:
        env.clock.advance(env.manager.config.timing.state_ttl)
    callback = _with_real_state(callback, state)
    before = env.record(request.connection_id)
    try:
        connection = env.run(env.manager.complete_authorization(callback))
    except AuthorizationError as exc:
        event(f"refused: {type(exc).__name__}")
        assert before == env.record(request.connection_id)
        return
    event(f"accepted: {connection.state.value}")
    # Only a well-formed callback carrying the real state gets here; the
    # provider never issued its code, so the exchange is rejected.
    assert state == parse_callback(callback).state.reveal()
    assert connection.state in (S.DENIED, S.FAILED)


# -- token-endpoint responses --------------------------------------------------------------


def _token_body(draw: st.DrawFn) -> bytes:
    body: dict[str, Any] = {
        "access_token": "at_fuzz_new",
        "refresh_token": "rt_fuzz_new",
        "token_type": "Bearer",
        "expires_in": 300,
        "refresh_token_expires_in": 90 * 86400,
        "scope": "account_details:read",
    }
    for key in draw(st.lists(st.sampled_from(sorted(body)), max_size=3, unique=True)):
        if draw(st.booleans()):
            del body[key]
        else:
            body[key] = draw(JSON)
    return orjson.dumps(body)


def _error_body(draw: st.DrawFn) -> bytes:
    secret = draw(st.sampled_from(SENT))
    code = draw(st.sampled_from(["invalid_grant", "invalid_client", secret, None, "x y"]))
    message = draw(st.text(max_size=30)) + draw(st.sampled_from([secret, ""]))
    message += draw(st.text(max_size=250))
    shape = draw(st.sampled_from(["airwallex", "rfc6749", "plain"]))
    if shape == "plain":
        return f"{code}: {message}".encode()
    if shape == "rfc6749":
        return orjson.dumps({"error": code, "error_description": message})
    return orjson.dumps({"code": code, "message": message})


@st.composite
def token_responses(draw: st.DrawFn) -> tuple[int, bytes]:
    """A raw HTTP response: any status, any body, a Content-Length that may lie."""
    status = draw(st.sampled_from([200, 400, 401, 429, 500, 502, 503]) | st.integers(100, 599))
    kind = draw(st.sampled_from(["token", "error", "json", "bytes", "oversized"]))
    if kind == "token":
        body = _token_body(draw)
    elif kind == "error":
        body = _error_body(draw)
    elif kind == "json":
        body = orjson.dumps(draw(JSON))
    elif kind == "bytes":
        body = draw(st.binary(max_size=64))
    else:
        body = _token_body(draw) + b" " * (LIMIT + draw(st.integers(0, 3000)))
    length = draw(st.sampled_from(["honest", "honest", "absent", "longer", "shorter"]))
    headers = [f"HTTP/1.1 {status} Fuzzed".encode(), b"Connection: close"]
    headers.append(b"Content-Type: " + draw(st.sampled_from([b"application/json", b"text/html"])))
    if length == "honest":
        headers.append(b"Content-Length: %d" % len(body))
    elif length == "longer":
        headers.append(b"Content-Length: %d" % (len(body) + 10))
    elif length == "shorter" and body:
        headers.append(b"Content-Length: %d" % (len(body) - 1))
    return status, b"\r\n".join(headers) + b"\r\n\r\n" + body


def _maybe_processed(status: int) -> bool:
    """The transport's documented table: could the provider have acted?"""
    return 200 <= status < 300 or (status >= 500 and status != 503)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(response=token_responses(), grant=st.sampled_from(["refresh", "exchange"]))
def test_token_responses_give_token_sets_or_provider_errors(
    env: Env, response: tuple[int, bytes], grant: str
) -> None:
    """Any token-endpoint answer is a TokenSet or a ProviderError that hides what we sent."""
    status, env.token_server.reply = response
    now = env.clock.now()
    if grant == "refresh":
        sent = (CLIENT_SECRET, SENT_REFRESH)
        call = env.transport.refresh(Secret(SENT_REFRESH), generation=7, now=now)
    else:
        sent = (CLIENT_SECRET, SENT_CODE, SENT_VERIFIER)
        call = env.transport.exchange_code(
            Secret(SENT_CODE), redirect_uri=REDIRECT, code_verifier=Secret(SENT_VERIFIER), now=now
        )
    try:
        tokens = env.run(call)
    except ProviderError as exc:
        event(f"raised {type(exc).__name__}")
        shown = f"{exc} {exc!r} {exc.code}"
        assert [] == [secret for secret in sent if secret in shown]
        if exc.status == status:
            assert _maybe_processed(status) == exc.maybe_processed
        return
    event("returned a TokenSet")
    assert isinstance(tokens, TokenSet)
    assert 200 <= status < 300
    assert (7 if grant == "refresh" else 0) == tokens.generation
    assert now < tokens.access_expires_at
    assert now < tokens.refresh_expires_at


# -- webhooks ------------------------------------------------------------------------------

_TIMESTAMPS = st.sampled_from(["now", "²³", "١٢٣٤٥", "+1767225600000", " 1767225600000", "-1"])
_TIMESTAMPS |= st.text(max_size=20) | st.integers(0, 10**17).map(str)
_EVENT_NAMES = st.sampled_from(
    ["connection.disconnected", "partner_connection.disconnected", "account.active"]
) | st.text(max_size=10)
_ACCOUNTS = st.sampled_from([REAL_ACCOUNT, "acct_other"]) | JSON
_CREATED = st.sampled_from(["now", "0001-01-01T00:00:00", "9999-12-31T23:59:59+14:00"]) | JSON


@st.composite
def webhook_bodies(draw: st.DrawFn) -> bytes:
    """A webhook envelope, with any field missing or wrong, or any bytes at all."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=100))
    envelope: dict[str, Any] = {
        "id": draw(st.sampled_from(["evt_fixed"]) | st.text(max_size=30) | JSON),
        "name": draw(_EVENT_NAMES),
        "account_id": draw(_ACCOUNTS),
        "data": draw(st.fixed_dictionaries({}, optional={"account_ids": st.lists(_ACCOUNTS)}))
        if draw(st.booleans())
        else draw(JSON),
        "created_at": draw(_CREATED),
    }
    for key in draw(st.lists(st.sampled_from(sorted(envelope)), max_size=2, unique=True)):
        del envelope[key]
    return orjson.dumps(envelope)


def _materialize(body: bytes, env: Env) -> bytes:
    now = datetime.fromtimestamp(env.clock.now(), UTC).isoformat().encode()
    return body.replace(b'"now"', b'"' + now + b'"').replace(
        orjson.dumps(REAL_ACCOUNT), orjson.dumps(env.account)
    )


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    body=webhook_bodies(),
    timestamp=_TIMESTAMPS,
    signature=st.sampled_from(["none", "wrong", "random"]) | st.text(max_size=70),
    extra=st.dictionaries(st.sampled_from(["X-Timestamp", "X-SIGNATURE", "other"]), ANY_TEXT),
)
def test_unsigned_or_badly_signed_webhooks_are_401_and_change_nothing(
    env: Env, body: bytes, timestamp: str, signature: str, extra: dict[str, str]
) -> None:
    """A delivery without a valid signature is answered 401 and nothing is recorded."""
    body = _materialize(body, env)
    if timestamp == "now":
        timestamp = str(int(env.clock.now() * 1000))
    headers = {**extra, "x-timestamp": timestamp}
    if signature == "wrong":
        headers["x-signature"] = sign("whsec_not_ours", timestamp, body)
    elif signature == "random":
        headers["x-signature"] = os.urandom(32).hex()
    elif signature != "none":
        headers["x-signature"] = signature
    before = env.record(env.connection_id)
    result = env.run(env.manager.handle_webhook(headers, body))
    assert 401 == result.status
    assert before == env.record(env.connection_id)
    claim = env.manager.store.claim_webhook("evt_fixed", owner="probe", now=0, until=0)
    assert WebhookClaim.CLAIMED is env.run(claim)  # never claimed by the refused delivery
    env.run(env.manager.store.release_webhook("evt_fixed", owner="probe"))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(body=webhook_bodies(), case=st.sampled_from(["x-", "X-"]))
def test_signed_webhooks_are_answered_200_or_400(env: Env, body: bytes, case: str) -> None:
    """Whatever a correctly signed body holds, the answer is 200 or 400, never an exception."""
    body = _materialize(body, env)
    timestamp = str(int(env.clock.now() * 1000))
    headers = {
        f"{case}timestamp": timestamp,
        f"{case}signature": sign(WEBHOOK_SECRET, timestamp, body),
    }
    before = env.record(env.connection_id)
    result = env.run(env.manager.handle_webhook(headers, body))
    event(f"answered {result.status}" + (" and revoked" if result.revoked else ""))
    assert result.status in (200, 400)
    after = env.record(env.connection_id)
    if result.status == 400 or result.duplicate:
        assert before == after
    if after.state is not S.ACTIVE:
        env.connection_id = env.connect()
    env.clock.advance(1)  # a later "now", so the next disconnect is not a duplicate id


# -- stored rows ---------------------------------------------------------------------------


def _sample_record() -> ConnectionRecord:
    return ConnectionRecord(
        id="conn_fuzz",
        state=S.REFRESHING,
        version=7,
        sequence=5,
        created_at=1.0,
        updated_at=2.0,
        reason="fuzz",
        scopes=("account_details:read",),
        external_id="customer-1",
        account_id="acct_1",
        authorization=PendingAuthorization(
            state_hash="ab" * 32,
            expires_at=3.0,
            redirect_uri=REDIRECT,
            code_verifier=Secret("verifier"),
        ),
        code=Secret("code"),
        tokens=TokenSet(
            access_token=Secret("at"),
            refresh_token=Secret("rt"),
            access_expires_at=4.0,
            refresh_expires_at=5.0,
            issued_at=1.0,
            generation=3,
            scope=("account_details:read",),
        ),
        journal=RotationJournal(generation=3, started_at=1.0, attempts=2, unsafe_since=1.5),
        activated_at=1.0,
    )


SAMPLE = _sample_record()


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            found += _paths(inner, (*prefix, i))
    return found


@st.composite
def garbled_rows(draw: st.DrawFn) -> Any:
    """A stored record's JSON with fields dropped, replaced, garbled or swapped."""
    if draw(st.integers(0, 5)) == 0:
        return draw(JSON)
    data = orjson.loads(orjson.dumps(dump_record(SAMPLE, KEYS)))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        key = path[-1]
        op = draw(st.sampled_from(["drop", "replace", "garble", "swap"]))
        if op == "drop" and isinstance(parent, dict):
            del parent[key]
        elif op == "garble" and isinstance(parent[key], str) and parent[key]:
            text = parent[key]
            i = draw(st.integers(0, len(text) - 1))
            parent[key] = text[:i] + draw(st.characters()) + text[i + 1 :]
        elif op == "swap":
            other = draw(st.sampled_from(paths))
            holder = data
            for step in other[:-1]:
                holder = holder[step]
            if isinstance(holder, dict | list) and other[-1] in (
                holder if isinstance(holder, dict) else range(len(holder))
            ):
                parent[key] = copy.deepcopy(holder[other[-1]])  # never a cycle
        else:
            parent[key] = draw(JSON)
    return data


def _check_loaded(record: ConnectionRecord) -> None:
    assert isinstance(record, ConnectionRecord)
    assert isinstance(record.state, ConnectionState)
    assert isinstance(record.version, int)
    assert isinstance(record.sequence, int)


@given(garbled_rows())
def test_garbled_rows_load_or_raise_store_error(data: Any) -> None:
    """load_record() turns any decoded row into a record or a StoreError (DecryptionError incl.)."""
    try:
        record = load_record(data, KEYS)
    except StoreError:
        return
    _check_loaded(record)


@given(garbled_rows().map(orjson.dumps) | st.binary(max_size=200))
def test_garbled_row_bytes_load_or_raise_store_error(raw: bytes) -> None:
    """A store's raw row bytes load as that connection's record or raise StoreError."""
    try:
        record = load_stored_record("conn_fuzz", raw, KEYS)
    except StoreError:
        return
    _check_loaded(record)
    assert "conn_fuzz" == record.id


def test_a_dumped_record_loads_back_equal() -> None:
    """The unmutated row the fuzzers start from is a valid, round-tripping record."""
    assert SAMPLE == load_record(orjson.loads(orjson.dumps(dump_record(SAMPLE, KEYS))), KEYS)


# -- configuration -------------------------------------------------------------------------

_TIMING_FIELDS = [field.name for field in attrs.fields(TimingPolicy)]
_COUNT_FIELDS = {
    "max_attempts",
    "max_response_bytes",
    "max_concurrent_refreshes",
    "api_retries",
    "keepalive_concurrency",
}
#: Fields whose None means "derive it" (resume_delay from request_timeout).
_OPTIONAL_FIELDS = {"resume_delay", "close_timeout"}
_NUMBERS = st.integers(-(10**12), 10**12) | st.floats() | st.booleans()
_CONFIG_VALUES = _NUMBERS | st.none() | st.text(max_size=5) | st.just([1])


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@given(st.dictionaries(st.sampled_from(_TIMING_FIELDS), _CONFIG_VALUES, max_size=4))
def test_timing_policy_is_valid_or_a_configuration_error(changes: dict[str, Any]) -> None:
    """Any TimingPolicy values give a consistent policy or ConfigurationError."""
    try:
        timing = TimingPolicy(**changes)
    except ConfigurationError:
        return
    for name in _TIMING_FIELDS:
        value = getattr(timing, name)
        if name in _OPTIONAL_FIELDS and value is None:
            continue
        assert _is_number(value), name
        assert value >= 0, name
        if name in _COUNT_FIELDS:
            assert isinstance(value, int), name
    assert timing.lease_ttl < timing.grace - timing.grace_margin
    assert timing.lease_ttl + timing.resume_wait < timing.grace - timing.grace_margin
    assert timing.request_timeout < timing.lease_ttl
    assert timing.grace_margin < timing.grace
    assert timing.skew_ratio < 1
    assert timing.skew(300.0) >= 0
    assert timing.backoff(timing.max_attempts) >= 0
    assert timing.resume_wait >= 0


_SCHEMES = st.sampled_from(["http", "https", "HTTP", "ftp", "javascript", ""])
_HOSTS = st.sampled_from(
    [
        "127.0.0.1",
        "localhost",
        "LocalHost",
        "[::1]",
        "127.0.0.2",
        "[::ffff:127.0.0.1]",
        "127.1",
        "2130706433",
        "0.0.0.0",
        "10.0.0.1",
        "api.airwallex.com",
        "127.0.0.1.evil.example",
        "localhost.evil.example",
        "user:pw@127.0.0.1",
        "127.0.0.1@evil.example",
        "127.0.0.1:80@evil.example",
        "evil.example#@127.0.0.1",
        "evil.example\\@127.0.0.1",
        "evil.example;@127.0.0.1",
        "[::1",
        "",
    ]
) | st.text(max_size=12)


@st.composite
def urls(draw: st.DrawFn) -> str:
    """Provider URLs, plausible or hostile, and plain noise."""
    port = draw(st.sampled_from(["", ":8080", ":0", ":x", ":99999"]))
    path = draw(st.sampled_from(["", "/", "/oauth/token", "/a?b=c", "#frag"]))
    url = f"{draw(_SCHEMES)}://{draw(_HOSTS)}{port}{path}"
    return draw(st.just(url) | ANY_TEXT)


def _yarl_host(url: str) -> str | None:
    try:
        return yarl.URL(url).host
    except ValueError:
        return None  # aiohttp cannot send anything there at all


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@given(
    authorize_url=urls(),
    token_url=urls(),
    api_base_url=urls(),
    allow_insecure=st.booleans(),
)
def test_endpoints_refuse_clear_text_except_loopback(
    authorize_url: str, token_url: str, api_base_url: str, allow_insecure: bool
) -> None:
    """Endpoints are valid or a ConfigurationError; http:// only to loopback unless allowed."""
    try:
        Endpoints(authorize_url, token_url, api_base_url, allow_insecure=allow_insecure)
    except ConfigurationError:
        return
    for url in (authorize_url, token_url, api_base_url):
        scheme = urlsplit(url).scheme
        assert scheme in ("http", "https")
        if scheme == "http" and not allow_insecure:
            # Judged by what aiohttp would actually connect to.
            host = _yarl_host(url)
            assert host is None or _is_loopback(host), url


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("http://api.airwallex.com/oauth/token", False),
        ("http://10.0.0.1/oauth/token", False),
        ("http://127.0.0.1.evil.example/oauth/token", False),
        ("http://127.0.0.1@evil.example/oauth/token", False),
        ("http://127.0.0.1:8080/oauth/token", True),
        ("http://localhost/oauth/token", True),
        ("http://[::1]:8080/oauth/token", True),
        ("https://api.airwallex.com/oauth/token", True),
    ],
)
def test_clear_text_provider_urls_only_on_loopback(url: str, accepted: bool) -> None:
    """Non-HTTPS provider URLs are refused unless on loopback; allow_insecure lifts that."""
    https = "https://api.airwallex.com"
    try:
        Endpoints(https + "/oauth/authorize", url, https)
    except ConfigurationError:
        refused = True
    else:
        refused = False
    assert accepted != refused
    assert url == Endpoints(https, url, https, allow_insecure=True).token_url


@given(
    scopes=st.lists(st.sampled_from(["account_details:read", "a b", "", " "]) | ANY_TEXT)
    | st.text(max_size=10)
    | st.none()
    | st.integers()
    | st.lists(st.integers(), min_size=1),
    redirect_uri=urls(),
)
def test_config_scopes_and_redirect_uri_are_usable_or_refused(
    scopes: Any, redirect_uri: str
) -> None:
    """A Config either refuses its scopes and redirect URI, or begin_authorization can use them."""
    try:
        config = Config(
            client_id="client",
            client_secret="secret",
            redirect_uri=redirect_uri,
            default_scopes=scopes,
        )
    except ConfigurationError:
        return
    if config.default_scopes:
        assert config.default_scopes == check_scopes(config.default_scopes)
    assert urlsplit(config.redirect_uri).scheme in ("http", "https")


# -- regressions found by the fuzzers ------------------------------------------------------


def test_callback_with_a_broken_ipv6_host_is_a_callback_error() -> None:
    """A redirect URL urlsplit cannot parse is a CallbackError, not a bare ValueError."""
    with pytest.raises(CallbackError):
        parse_callback("https://[::1/airwallex/callback?state=s&code=c")


def test_callback_value_that_is_not_valid_text_is_a_callback_error() -> None:
    """A lone surrogate (surrogateescape'd bytes) in state or code is refused up front."""
    with pytest.raises(CallbackError):
        parse_callback({"state": "s\udcff", "code": "c"})
    with pytest.raises(CallbackError):
        parse_callback({"state": "s", "code": "c\ud800"})


async def test_callback_with_undecodable_code_leaves_the_connection_pending(
    awx_manager: ConnectionManager,
) -> None:
    """With the real state, a code that cannot be sent as JSON changes nothing."""
    request = await awx_manager.begin_authorization()
    state = parse_qs(urlsplit(request.url).query)["state"][0]
    before = await awx_manager.get(request.connection_id)
    with pytest.raises(CallbackError):
        await awx_manager.complete_authorization({"state": state, "code": "c\udcff"})
    assert before == await awx_manager.get(request.connection_id)


def test_webhook_timestamp_of_non_ascii_digits_is_401(env: Env) -> None:
    """'²' passes str.isdigit() but not int(): answered 401, never a ValueError."""
    body = b'{"id": "evt_sup", "name": "account.active", "created_at": 1}'
    for timestamp in ("²", "١٢٣"):
        headers = {"x-timestamp": timestamp, "x-signature": sign(WEBHOOK_SECRET, timestamp, body)}
        assert 401 == env.run(env.manager.handle_webhook(headers, body)).status


@pytest.mark.parametrize(
    "url", ["http://[::1/oauth/token", "https://[/x", "https://a]/x"], ids=repr
)
def test_unparsable_endpoint_url_is_a_configuration_error(url: str) -> None:
    """A URL urlsplit refuses is a ConfigurationError naming the setting, not a bare ValueError."""
    with pytest.raises(ConfigurationError, match="token_url"):
        Endpoints("https://a/authorize", url, "https://a")
    with pytest.raises(ConfigurationError, match="redirect_uri"):
        Config(client_id="c", client_secret="s", redirect_uri=url)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"grace": "60"}, "grace"),
        ({"request_timeout": None}, "request_timeout"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"api_retries": 1.0}, "api_retries"),
    ],
)
def test_timing_value_of_the_wrong_type_is_a_configuration_error(
    changes: dict[str, Any], field: str
) -> None:
    """A string, None, bool or fractional count is refused with ConfigurationError."""
    with pytest.raises(ConfigurationError, match=field):
        TimingPolicy(**changes)


def test_backoff_of_a_late_attempt_is_the_maximum() -> None:
    """With thousands of attempts allowed, a late backoff is backoff_max, not an OverflowError."""
    timing = TimingPolicy(max_attempts=2000)
    assert timing.backoff_max == timing.backoff(timing.max_attempts)


@pytest.mark.parametrize("scopes", [5, [1], ["a b"], [""], ["ok", None]], ids=repr)
def test_default_scopes_are_checked_when_the_config_is_built(scopes: Any) -> None:
    """default_scopes that begin_authorization would refuse are refused by Config itself."""
    with pytest.raises(ConfigurationError, match="scope"):
        Config(client_id="c", client_secret="s", redirect_uri=REDIRECT, default_scopes=scopes)


@pytest.mark.parametrize("data", [[], "row", 1, None], ids=repr)
def test_load_record_of_a_non_object_is_a_store_error(data: Any) -> None:
    """A decoded row that is not a JSON object is a StoreError, not an AttributeError."""
    with pytest.raises(StoreError):
        load_record(data, KEYS)


def test_row_mutations_reach_nested_secrets() -> None:
    """The row garbler can reach the encrypted token fields, not only top-level ones."""
    assert ("tokens", "refresh_token") in _paths(dump_record(SAMPLE, KEYS))
