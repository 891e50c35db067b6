"""
No secret leaks: a whole lifecycle with faults, with every log record (DEBUG,
the root logger and aiohttp's and transitions' own), every event, every
raised error, the reprs of the public objects and the CLI's JSON listing
searched for every secret that took part.

The secrets: every code and token the fake issued and its client secret, a
wrong client secret, each authorization's ``state``, PKCE verifier and
challenge, the webhook secret, and the encryption key.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import attrs
import orjson
import pytest

from awx_connection import (
    AwxConnectionError,
    Config,
    ConnectionManager,
    ConnectionRevokedError,
    ConnectionState,
    Endpoints,
    InvalidClientError,
    KeyRing,
    ProviderUnavailableError,
    TimingPolicy,
)
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

    async def raises(self, error: type[AwxConnectionError], call: Awaitable[object]) -> None:
        with pytest.raises(error) as info:
            await call
        self.shown.append(f"{info.value} {info.value!r} {info.value.args!r}")

    async def authorize(
        self, manager: ConnectionManager, fake: FakeAirwallex, connection_id: str | None = None
    ) -> str:
        """Begin (or reauthorize), note state, challenge and verifier, consent, complete."""
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
        connection = await manager.complete_authorization(fake.approve(request.url))
        self.shown.append(repr(connection))
        return connection.id


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
        await saw.authorize(awx, fake, first)  # reauthorize
        assert S.ACTIVE is (await awx.get(first)).state

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
