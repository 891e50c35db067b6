"""
No secret leaks: a whole lifecycle with faults, with every log record (DEBUG,
the root logger and aiohttp's and transitions' own), every event, every
raised error, the reprs of the public objects and the CLI's JSON listing
searched for every secret that took part.

The secrets: every code and token the fake issued and its client secret, a
wrong client secret, each authorization's ``state``, PKCE verifier and
challenge, the webhook secret, and the encryption key.

Every error a caller receives is also rendered with the locals of each of
its frames, and of the errors it chains, as an error tracker would show it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import attrs
import orjson
import pytest
from aiohttp import web

from awx_connection import (
    Config,
    ConnectionManager,
    ConnectionRevokedError,
    ConnectionState,
    Endpoints,
    InvalidClientError,
    InvalidGrantError,
    KeyRing,
    MalformedResponseError,
    ProviderError,
    ProviderUnavailableError,
    Secret,
    TimingPolicy,
)
from awx_connection._transport import Transport
from awx_connection._webhooks import sign
from awx_connection.cli import main as cli_main
from awx_connection.stores import SQLiteStore
from awx_connection.testing import FakeAirwallex, Fault, FaultKind, ManualClock

S = ConnectionState
REDIRECT = "http://127.0.0.1:8000/airwallex/callback"
WEBHOOK_SECRET = "whsec_noleak_Hq83Jd02Lx"
WRONG_CLIENT_SECRET = "cs_wrong_Tn47Wq19Zp"
KEY_MATERIAL = KeyRing.new_key()
KEYS = KeyRing.parse(f"k1:{KEY_MATERIAL}")
_RAW_KEY = base64.urlsafe_b64decode(KEY_MATERIAL + "=" * (-len(KEY_MATERIAL) % 4))
#: The key in every spelling a careless log line could use.
KEY_SPELLINGS = (KEY_MATERIAL, _RAW_KEY.hex(), base64.b64encode(_RAW_KEY).decode())
DAY = 86400.0


class Capture(logging.Handler):
    """Every record reaching the root, ``aiohttp`` or ``transitions`` logger, once."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.records: list[logging.LogRecord] = []
        self.seen: set[int] = set()

    def emit(self, record: logging.LogRecord) -> None:
        # A record reaching two of our loggers is kept once; keeping it alive
        # in `records` keeps its id unique.
        if id(record) not in self.seen:
            self.seen.add(id(record))
            self.records.append(record)

    @property
    def text(self) -> str:
        standard = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}
        lines = []
        for record in self.records:
            extras = {k: v for k, v in vars(record).items() if k not in standard}
            lines.append(f"{self.format(record)} {extras!r} {record.args!r}")
        return "\n".join(lines)


@pytest.fixture
def captured() -> Iterator[Capture]:
    capture = Capture()
    loggers = [logging.getLogger(), logging.getLogger("aiohttp"), logging.getLogger("transitions")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(capture)
        logger.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(capture)
            logger.setLevel(level)


@pytest.fixture
def config(awx_fake: FakeAirwallex) -> Config:
    return Config(
        client_id=awx_fake.client_id,
        client_secret=awx_fake.client_secret,
        redirect_uri=REDIRECT,
        endpoints=Endpoints.from_base_url(awx_fake.base_url),
        timing=TimingPolicy(backoff_base=0.0005, backoff_max=0.002, resume_delay=0.002),
        default_scopes=("account_details:read",),
        webhook_secrets=(WEBHOOK_SECRET,),
    )


@attrs.define
class Witness:
    """What the test saw besides the logs, and the secrets of each authorization."""

    shown: list[str] = attrs.Factory(list)
    secrets: set[str] = attrs.Factory(set)

    async def raises(self, error: type[BaseException], call: Awaitable[object]) -> None:
        with pytest.raises(error) as info:
            await call
        self.shown.append(f"{info.value} {info.value!r} {info.value.args!r}")
        self.shown.append(with_locals(info.value))

    async def authorize(
        self,
        manager: ConnectionManager,
        fake: FakeAirwallex,
        connection_id: str | None = None,
        *,
        exchange_fails: bool = False,
    ) -> str:
        """
        Begin (or reauthorize), note state, challenge and verifier, consent,
        complete; with *exchange_fails*, the first exchange fails (503s) and
        ``exchange()`` retries it.
        """
        if connection_id is None:
            request = await manager.begin_authorization()
        else:
            request = await manager.reauthorize(connection_id)
        query = parse_qs(urlsplit(request.url).query)
        self.secrets.update((query["state"][0], query["code_challenge"][0]))
        record = await manager.store.get(request.connection_id)
        assert record is not None
        assert record.authorization is not None
        assert record.authorization.code_verifier is not None
        self.secrets.add(record.authorization.code_verifier.reveal())
        self.shown.append(repr(request))
        callback = fake.approve(request.url)
        if exchange_fails:
            attempts = manager.config.timing.max_attempts
            fake.inject(
                Fault(FaultKind.SERVER_ERROR, grant_type="authorization_code", times=attempts)
            )
            await self.raises(ProviderUnavailableError, manager.complete_authorization(callback))
            connection = await manager.exchange(request.connection_id)
        else:
            connection = await manager.complete_authorization(callback)
        self.shown.append(repr(connection))
        return connection.id


def with_locals(error: BaseException) -> str:
    """
    *error* and its whole chain rendered with every frame's locals, as an
    error tracker or ``logging`` with ``capture_locals`` would show them.
    The first frame, :meth:`Witness.raises` (where it was caught), is ours.
    """
    assert error.__traceback__ is not None
    rendered = traceback.TracebackException(
        type(error), error, error.__traceback__.tb_next, capture_locals=True
    )
    return "".join(rendered.format())


@attrs.define
class Broken:
    """A real API host that drops every connection, or holds every request unanswered."""

    hang: bool
    release: asyncio.Event = attrs.Factory(asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
        if self.hang:
            await self.release.wait()
        writer.close()


async def api_errors(
    config: Config, path: Path, clock: ManualClock, witness: Witness, id_: str
) -> None:
    """request() failing in aiohttp: the server disconnects (after retries), a timeout."""
    for broken, error in [
        (Broken(hang=False), aiohttp.ServerDisconnectedError),
        (Broken(hang=True), TimeoutError),
    ]:
        server = await asyncio.start_server(broken.serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        endpoints = attrs.evolve(config.endpoints, api_base_url=f"http://127.0.0.1:{port}")
        timing = attrs.evolve(config.timing, request_timeout=0.05)
        broken_config = attrs.evolve(config, endpoints=endpoints, timing=timing)
        try:
            async with ConnectionManager(
                broken_config, store=SQLiteStore(path, keys=KEYS), clock=clock
            ) as awx:
                await witness.raises(error, awx.request(id_, "GET", "/api/v1/account/"))
        finally:
            broken.release.set()
            server.close()
            await server.wait_closed()


def webhook(name: str, account_id: str, now: float, secret: str) -> tuple[dict[str, str], bytes]:
    body = orjson.dumps(
        {
            "id": f"evt_{name}_{now}",
            "name": name,
            "account_id": account_id,
            "created_at": datetime.fromtimestamp(now, UTC).isoformat(),
        }
    )
    timestamp = str(int(now * 1000))
    return {"x-timestamp": timestamp, "x-signature": sign(secret, timestamp, body)}, body


async def test_no_secret_in_logs_events_errors_reprs_or_cli(
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    config: Config,
    captured: Capture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Through every fault and path of a lifecycle, no secret is logged, shown or printed."""
    fake, clock, saw = awx_fake, awx_clock, Witness()
    path = tmp_path / "awx.db"
    async with ConnectionManager(config, store=SQLiteStore(path, keys=KEYS), clock=clock) as awx:
        awx.subscribe(lambda event: saw.shown.append(repr(event)))
        awx.subscribe_webhooks(lambda event: saw.shown.append(repr(event)))
        first = await saw.authorize(awx, fake)  # exchange
        account = (await awx.get(first)).account_id
        assert account is not None

        clock.advance(301)  # refresh on expiry
        await awx.access_token(first)
        fake.inject(Fault(FaultKind.DROP_AFTER_COMMIT, grant_type="refresh_token"))
        clock.advance(301)  # a lost response, recovered inside the grace window
        await awx.access_token(first)
        fake.inject(Fault(FaultKind.SERVER_ERROR, grant_type="refresh_token", times=2))
        clock.advance(301)  # 503s, retried
        await awx.access_token(first)
        fake.inject(Fault(FaultKind.RATE_LIMIT, grant_type="refresh_token"))
        await awx.refresh(first)  # a 429, retried
        fake.inject(Fault(FaultKind.MALFORMED_AFTER_COMMIT, grant_type="refresh_token"))
        await awx.refresh(first)  # a malformed 200, recovered inside the grace window
        fake.inject(Fault(FaultKind.SERVER_ERROR, grant_type="refresh_token", times=4))
        await saw.raises(ProviderUnavailableError, awx.refresh(first))  # retries run out
        clock.advance(config.timing.failure_cooldown + 1)

        wrong = attrs.evolve(config, client_secret=WRONG_CLIENT_SECRET)
        async with ConnectionManager(
            wrong, store=SQLiteStore(path, keys=KEYS), clock=clock
        ) as impostor:
            await saw.raises(InvalidClientError, impostor.refresh(first))
            rejected = await saw.authorize(impostor, fake)  # exchange answered invalid_client
            assert S.FAILED is (await impostor.get(rejected)).state
            saw.shown.append(repr(impostor.config))

        headers, body = webhook("connection.disconnected", account, clock.now(), "whsec_forged")
        assert 401 == (await awx.handle_webhook(headers, body)).status
        headers, body = webhook("account.active", account, clock.now(), WEBHOOK_SECRET)
        saw.shown.append(repr(await awx.handle_webhook(headers, body)))

        second = await saw.authorize(awx, fake)
        clock.advance(50 * DAY)  # the refresh tokens are due for keep-alive
        report = await awx.keepalive_pass()
        assert (2, 2) == (report.checked, report.rotated)
        saw.shown.append(repr(report))

        fake.disconnect(account)  # noticed through a 401, then invalid_grant
        await saw.raises(ConnectionRevokedError, awx.request(first, "GET", "/api/v1/account/"))
        await saw.raises(ConnectionRevokedError, awx.request(second, "GET", "/api/v1/account/"))
        await saw.raises(ConnectionRevokedError, awx.access_token(second))
        await saw.authorize(awx, fake, first, exchange_fails=True)  # reauthorize
        assert S.ACTIVE is (await awx.get(first)).state
        await api_errors(config, path, clock, saw, first)

        for connection_id in (first, second, rejected):
            saw.shown.extend(repr(event) for event in await awx.history(connection_id))
            saw.shown.append(repr(await awx.get(connection_id)))
        saw.shown.extend([repr(config), repr(KEYS), repr(fake), repr(awx.store), repr(awx)])

    counters = fake.counters
    assert counters.dropped_responses >= 1
    assert counters.grace_reissues >= 2
    assert counters.invalid_client_responses >= 2
    assert counters.api_unauthorized >= 1
    assert counters.faults_applied >= 9
    assert 0 == counters.reuse_violations

    monkeypatch.setenv("AWX_ENCRYPTION_KEYS", f"k1:{KEY_MATERIAL}")
    code = await asyncio.to_thread(
        cli_main, ["connections", "list", "--json", "--store", f"sqlite:///{path}"]
    )
    printed = capsys.readouterr()
    assert 0 == code
    assert 3 == len(printed.out.splitlines())
    saw.shown.extend([printed.out, printed.err])

    secrets = (
        fake.issued_secrets() | saw.secrets | {WEBHOOK_SECRET, WRONG_CLIENT_SECRET, *KEY_SPELLINGS}
    )
    assert len(saw.secrets) == 3 * 4  # state, challenge, verifier of four authorizations
    text = "\n".join([captured.text, *saw.shown])
    assert "token endpoint answered 503" in text  # the capture did see the faults
    assert [] == sorted(secret for secret in secrets if secret in text)


async def test_manager_repr_shows_no_access_token(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex
) -> None:
    """repr(manager) of a manager caching a fresh access token does not show it."""
    request = await awx_manager.begin_authorization()
    connection = await awx_manager.complete_authorization(awx_fake.approve(request.url))
    await awx_manager.access_token(connection.id)
    shown = repr(awx_manager)
    assert [] == sorted(secret for secret in awx_fake.issued_secrets() if secret in shown)


@pytest.fixture
async def token_endpoint() -> AsyncIterator[tuple[str, list[web.StreamResponse]]]:
    """A real token endpoint answering what the test queues, echoing what it was sent."""
    answers: list[web.StreamResponse] = []

    async def token(request: web.Request) -> web.StreamResponse:
        answer = answers.pop(0)
        if not isinstance(answer, web.Response):  # a chunked body: no Content-Length
            await answer.prepare(request)
            await answer.write(orjson.dumps(TOKENS | {"pad": "x" * 4096}))
            await answer.write_eof()
            return answer
        if answer.status != 200:
            sent = " ".join(str(v) for v in (await request.json()).values())
            answer.body = orjson.dumps({"error": "invalid_grant", "error_description": sent})
        return answer

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", answers
    await runner.cleanup()


TOKENS = {"access_token": "at_new_Jx81PqLm", "refresh_token": "rt_new_Vb92NcZd"}
SENT = {"client_secret": "cs_Kq73HvRe", "refresh_token": "rt_old_Zt45MwQa", "code": "code_Yp66LsXe"}


async def test_token_endpoint_errors_hold_no_secret_in_any_frame(
    token_endpoint: tuple[str, list[web.StreamResponse]],
) -> None:
    """
    The errors of answers that hold new tokens (a bad field, too long a
    body) or echo what was sent, rendered with every frame's locals, show
    neither, nor the client secret, refresh token, code or verifier sent.
    """
    base, answers = token_endpoint
    config = Config(
        client_id="client_1",
        client_secret=SENT["client_secret"],
        redirect_uri=REDIRECT,
        endpoints=Endpoints.from_base_url(base),
        timing=TimingPolicy(max_response_bytes=1024),
    )
    saw = Witness()
    transport = Transport(config)
    try:

        async def refresh() -> object:
            return await transport.refresh(Secret(SENT["refresh_token"]), generation=1, now=0.0)

        answers.append(web.json_response(TOKENS | {"expires_in": -1}))
        await saw.raises(MalformedResponseError, refresh())
        answers.append(web.StreamResponse())
        await saw.raises(MalformedResponseError, refresh())
        answers.append(web.Response(status=400, content_type="application/json"))
        await saw.raises(InvalidGrantError, refresh())
        answers.append(web.Response(status=503, content_type="application/json"))
        await saw.raises(ProviderUnavailableError, refresh())
        answers.append(web.Response(status=400, content_type="application/json"))
        exchange = transport.exchange_code(
            Secret(SENT["code"]), redirect_uri=REDIRECT, code_verifier=Secret("v_Rr12"), now=0.0
        )
        await saw.raises(ProviderError, exchange)
    finally:
        await transport.aclose()

    text = "\n".join(saw.shown)
    assert "MalformedResponseError: token response: 'expires_in'" in text
    assert [] == [s for s in [*TOKENS.values(), *SENT.values(), "v_Rr12"] if s in text]
