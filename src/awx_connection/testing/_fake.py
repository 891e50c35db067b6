"""
:class:`FakeAirwallex`: a local Airwallex OAuth provider on a real socket.

The fake is three layers, one module each:

* ``_fake_types``: the values tests hand in or read out (:class:`Fault`,
  :class:`FaultKind`, :class:`FakeCounters`, :class:`FakeProviderError`);
* ``_fake_state``: the provider's memory and rules, synchronous and I/O-free;
* ``_fake_app``: the aiohttp handlers that put those rules on HTTP;
* ``_fake_embedded`` and ``_fake_embedded_app``: embedded components (the
  code endpoint, a stand-in Airwallex.js, a KYC form that ends in
  ``account.active``), rules and HTTP.

This module is the public face: configuration, the server's lifecycle, and
the "user" actions (consent, refusal, disconnect) that a test performs
without a browser. It serves over a real TCP socket rather than a mocked
session on purpose: the library's transport, timeouts, connection pool and
dropped-connection handling are all part of what the tests must exercise.
"""

from __future__ import annotations

import asyncio
import secrets
import warnings
from typing import TYPE_CHECKING, Any, Self, final

from aiohttp import web

from .._clock import SystemClock
from ._fake_app import build_app
from ._fake_embedded import DEFAULT_SCOPES, EmbeddedRules
from ._fake_embedded_app import SDK_PATH
from ._fake_state import AUTHORIZE_PATH, FakeState
from ._fake_webhooks import WebhookSender

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType

    from .._clock import Clock
    from ._fake_types import FakeCounters, Fault

__all__ = ["FakeAirwallex"]

#: How long aclose() lets in-flight requests (say, a long DELAY) finish.
_SHUTDOWN_TIMEOUT = 0.5


@final
class FakeAirwallex:
    """
    A fake Airwallex OAuth provider: authorize, token endpoint, API, admin.

    It enforces Airwallex's documented token rules exactly: access tokens live
    ``access_token_ttl``; every refresh rotates the refresh token; the
    previous refresh token keeps working for ``grace`` seconds (and only
    re-issues, never extends that window); any older token invalidates the
    whole connection; two overlapping refreshes of one token get 429. All
    time is read from *clock*, so share a
    :class:`~awx_connection.testing.ManualClock` with the library under test
    and ``advance()`` it instead of sleeping.

    Embedded components: ``POST /api/v1/authentication/authorize`` takes a
    live bearer token and a JSON body (``code_challenge`` S256, ``scope`` a
    list, optional ``identity``; ``x-on-behalf-of`` must name the token's own
    account) and answers ``201 {"authorization_code": ...}``: a code bound to
    that challenge and connection, single-use, living ``embedded_code_ttl``
    seconds of the clock. Bad input gets Airwallex's ``{code, source,
    message, details}`` (400 ``invalid_argument``, 403 ``forbidden``), a
    dead token 401. `sdk_url` serves a stand-in Airwallex.js whose
    ``init()`` redeems the code with its verifier from the browser and
    whose KYC form's submit sends ``account.active``. Confirmed by
    Airwallex's docs: the path, the body, the error shape, the 30-second
    code; assumed: the response's other fields (none), the error codes,
    the browser side (see ``_fake_embedded``'s docstring).

    Use it as an async context manager::

        async with FakeAirwallex(clock=ManualClock()) as fake:
            redirect = fake.approve(authorize_url)
            ...

    Args:
        clock: Where time comes from (default: the system clock).
        client_id: The one registered client.
        client_secret: Its secret; by default a fresh random one.
        redirect_uris: The whitelisted redirect URIs (exact match).
        access_token_ttl: Seconds an access token lives.
        refresh_token_ttl: Seconds a refresh token lives from its issuance.
        grace: Seconds the previous refresh token stays usable.
        code_ttl: Seconds an authorization code can be exchanged.
        send_expires_in: ``False`` omits ``expires_in`` and
            ``refresh_token_expires_in`` from token responses, to test the
            library's fallbacks.
        embedded_code_ttl: Seconds an embedded-components code can be
            redeemed (Airwallex.js documents 30).
        embedded_scopes: Scopes ``POST /api/v1/authentication/authorize``
            accepts (the documented ``onboarding:write`` by default); any
            other is refused with 400, ``source: scope``.
        host: Interface to listen on.
        port: Port to listen on; 0 picks a free one.
    """

    __slots__ = ("_embedded", "_host", "_port", "_runner", "_state", "_webhooks")

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        client_id: str = "fake-client-id",
        client_secret: str | None = None,
        redirect_uris: Iterable[str] = ("http://127.0.0.1/callback",),
        access_token_ttl: float = 300.0,
        refresh_token_ttl: float = 90 * 86400.0,
        grace: float = 60.0,
        code_ttl: float = 600.0,
        send_expires_in: bool = True,
        embedded_code_ttl: float = 30.0,
        embedded_scopes: Iterable[str] = DEFAULT_SCOPES,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        for name, value in (
            ("access_token_ttl", access_token_ttl),
            ("refresh_token_ttl", refresh_token_ttl),
            ("code_ttl", code_ttl),
            ("embedded_code_ttl", embedded_code_ttl),
        ):
            if not value > 0:
                msg = f"{name} must be positive, got {value!r}"
                raise ValueError(msg)
        if not grace >= 0:
            msg = f"grace must not be negative, got {grace!r}"
            raise ValueError(msg)
        self._state = FakeState(
            clock=SystemClock() if clock is None else clock,
            client_id=client_id,
            client_secret=(
                "fake_cs_" + secrets.token_urlsafe(24) if client_secret is None else client_secret
            ),
            redirect_uris=set(),
            access_token_ttl=access_token_ttl,
            refresh_token_ttl=refresh_token_ttl,
            grace=grace,
            code_ttl=code_ttl,
            send_expires_in=send_expires_in,
        )
        for uri in redirect_uris:
            self._state.register_redirect_uri(uri)
        self._embedded = EmbeddedRules(
            self._state, code_ttl=embedded_code_ttl, scopes=frozenset(embedded_scopes)
        )
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._webhooks: WebhookSender | None = None

    def __repr__(self) -> str:
        # Never the client secret: reprs end up in logs and test reports.
        where = self.base_url if self._runner is not None else "not started"
        return f"<FakeAirwallex client_id={self.client_id!r} {where}>"

    def __del__(self) -> None:
        if getattr(self, "_runner", None) is not None:
            warnings.warn(
                f"{self!r} was never closed; use 'async with' or await aclose()",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )

    # -- configuration (read-only after construction) ----------------------------

    @property
    def client_id(self) -> str:
        """The registered client's id."""
        return self._state.client_id

    @property
    def client_secret(self) -> str:
        """The registered client's secret."""
        return self._state.client_secret

    @property
    def clock(self) -> Clock:
        """The clock every deadline is read from."""
        return self._state.clock

    @property
    def grace(self) -> float:
        """Seconds the previous refresh token stays usable after a rotation."""
        return self._state.grace

    @property
    def access_token_ttl(self) -> float:
        """Seconds an access token lives."""
        return self._state.access_token_ttl

    @property
    def refresh_token_ttl(self) -> float:
        """Seconds a refresh token lives from its issuance."""
        return self._state.refresh_token_ttl

    @property
    def counters(self) -> FakeCounters:
        """What the fake has seen and done; live, updated in place."""
        return self._state.counters

    # -- lifecycle -------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """
        Return an aiohttp application serving this fake's state.

        :meth:`start` serves one of these; call it yourself to mount the fake
        in your own server or ``aiohttp.test_utils.TestServer``. Every app made
        shares the same accounts, tokens, faults and counters.
        """
        return build_app(self._state, self._embedded)

    async def start(self) -> None:
        """
        Listen on ``host:port``.

        Raises:
            RuntimeError: the fake is already running.
        """
        if self._runner is not None:
            msg = f"{self!r} is already started"
            raise RuntimeError(msg)
        runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def aclose(self) -> None:
        """
        Stop listening and close every connection; safe to call twice.
        """
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def base_url(self) -> str:
        """
        ``http://host:port`` of the running server; use as every host of the library's config.

        Raises:
            RuntimeError: the fake is not started.
        """
        if self._runner is None or not self._runner.addresses:
            msg = "FakeAirwallex is not started; use 'async with' or await start()"
            raise RuntimeError(msg)
        port = self._runner.addresses[0][1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{port}"

    @property
    def authorize_url(self) -> str:
        """The authorize endpoint (what the user's browser is sent to)."""
        return self.base_url + AUTHORIZE_PATH

    @property
    def token_url(self) -> str:
        """The token endpoint."""
        return self.base_url + "/oauth/token"

    @property
    def sdk_url(self) -> str:
        """
        The stand-in for Airwallex.js embedded components (load it with a
        ``<script>`` tag where ``https://static.airwallex.com/components/sdk/v1/index.js``
        would go): ``window.AirwallexComponentsSDK.init()`` redeems the code
        with this fake, ``createElement("kyc")`` renders a small KYC form.
        """
        return self.base_url + SDK_PATH

    # -- setup -----------------------------------------------------------------------

    def register_redirect_uri(self, uri: str) -> None:
        """
        Whitelist one more redirect URI (compared exactly, as Airwallex does).

        Raises:
            ValueError: *uri* is not an absolute http(s) URL or has a fragment.
        """
        self._state.register_redirect_uri(uri)

    def create_account(
        self, account_id: str | None = None, *, business_name: str = "Fake Pty Ltd"
    ) -> str:
        """
        Create an Airwallex account a user can connect, and return its id.

        Raises:
            ValueError: *account_id* already exists.
        """
        return self._state.create_account(account_id, business_name)

    def inject(self, fault: Fault) -> None:
        """
        Queue *fault* (FIFO) for the next matching token requests.
        """
        self._state.inject(fault)

    def release_held(self) -> None:
        """
        Let every response held by ``HOLD_AFTER_COMMIT`` go (as a dropped connection).
        """
        self._state.hold_gate.set()
        self._state.hold_gate = asyncio.Event()

    def clear_faults(self) -> None:
        """
        Drop every queued fault, applied or not.
        """
        self._state.clear_faults()

    # -- the user ----------------------------------------------------------------------

    def approve(self, authorize_url: str, *, account_id: str | None = None) -> str:
        """
        Simulate the user consenting, without a browser; return the redirect URL.

        The URL's query is validated exactly as ``GET /oauth/authorize``
        validates it; then a single-use code is issued and the redirect back
        (``redirect_uri?code=...&state=...``) is returned for the test to feed
        to the library's callback handling.

        Args:
            authorize_url: The URL the library built.
            account_id: Which account the user connects. ``None`` means a
                new account when the URL says ``sign_up=true``, else one
                default account (created on first use), so repeated approvals
                reconnect the same customer.

        Raises:
            FakeProviderError: The URL is invalid, or *account_id* is unknown.
        """
        request = self._state.parse_authorize_url(authorize_url)
        return self._state.approve(request, account_id)

    def deny(
        self,
        authorize_url: str,
        *,
        error: str = "access_denied",
        description: str = "The user denied the request",
    ) -> str:
        """
        Simulate the user refusing; return the redirect carrying ``error``.

        Raises:
            FakeProviderError: The URL is invalid (no redirect would happen).
        """
        request = self._state.parse_authorize_url(authorize_url)
        return self._state.deny(request, error, description)

    def disconnect(self, account_id: str) -> int:
        """
        Simulate the user unlinking the app in the Airwallex web app.

        Every grant of the account is revoked: its refresh tokens get
        ``invalid_grant`` and its access tokens 401, at once. Codes not yet
        exchanged die too.

        Returns:
            How many active grants were revoked.

        Raises:
            FakeProviderError: *account_id* is unknown.
        """
        return self._state.disconnect(account_id)

    # -- webhooks ----------------------------------------------------------------------

    def set_webhook(self, url: str, secret: str, *, partner_events: bool = False) -> None:
        """
        Send signed webhooks to *url*: ``connection.disconnected`` when a
        user disconnects or a reuse invalidates a connection (or
        ``partner_connection.disconnected`` with ``account_ids`` when
        *partner_events*), and whatever :meth:`send_webhook` is asked.
        Non-200 answers are retried with backoff, keeping the event id.
        """
        sender = WebhookSender(self._state.clock, url, secret, partner_events=partner_events)
        self._webhooks = sender
        self._state.on_connection_lost = sender.connection_lost
        self._state.on_account_event = sender.account_event

    def send_webhook(
        self,
        name: str,
        account_id: str | None,
        data: dict[str, Any] | None = None,
        *,
        created_at: float | None = None,
    ) -> dict[str, Any]:
        """
        Post an event such as ``account.action_required`` now; returns its
        envelope (with its ``id``). *created_at* backdates it.

        Raises:
            RuntimeError: :meth:`set_webhook` was not called.
        """
        sender = self._sender()
        payload = sender.event(name, account_id, data, created_at=created_at)
        sender.post(payload)
        return payload

    def resend_webhook(self, payload: dict[str, Any]) -> None:
        """Deliver an already sent envelope again (as Airwallex's retries do)."""
        self._sender().post(dict(payload))

    @property
    def webhooks(self) -> WebhookSender:
        """The webhook sender (its ``sent`` and ``answers`` are for assertions)."""
        return self._sender()

    async def flush_webhooks(self) -> None:
        """Wait until every webhook delivery started so far has finished."""
        if self._webhooks is not None:
            await self._webhooks.flush()

    def _sender(self) -> WebhookSender:
        if self._webhooks is None:
            msg = "call set_webhook(url, secret) first"
            raise RuntimeError(msg)
        return self._webhooks

    # -- embedded components -----------------------------------------------------------

    def onboarded(self) -> dict[str, dict[str, str]]:
        """
        The accounts whose KYC form was submitted, with the fields sent (a copy).

        Submitting marks the account onboarded and sends ``account.active``
        (to the `set_webhook()` endpoint, if any) the first time.
        """
        return {account: dict(fields) for account, fields in self._embedded.onboarded.items()}

    # -- assertions --------------------------------------------------------------------

    def issued_secrets(self) -> frozenset[str]:
        """
        Every code, access token and refresh token ever issued, plus the client secret.

        Tests grep logs, reprs and exceptions for these: none may appear.
        """
        return self._state.issued_secrets()

    def grant_status(self, refresh_or_access_token: str) -> str:
        """
        Return ``"active"``, ``"revoked"``, ``"invalidated"`` or ``"unknown"``.

        This is the status of the connection the token belongs to, not of the
        token itself: a rotated-away refresh token of a live connection is
        still ``"active"``.
        """
        return self._state.grant_status(refresh_or_access_token)
