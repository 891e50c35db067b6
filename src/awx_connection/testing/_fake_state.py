"""
The fake provider's memory and rules, without any I/O.

Everything Airwallex decides (its documented token rules) is decided here, in plain
synchronous methods: which authorize URLs are acceptable, which codes and
refresh tokens are still good, when a rotation is a legitimate retry inside
the grace window and when it is reuse that invalidates the connection. The
HTTP layer (``_fake_app``) only parses requests and serializes the
:class:`TokenReply` values these methods return.

Keeping the rules synchronous is what makes the fake safe under concurrency
in one event loop: no ``await`` ever falls between a check and the write that
depends on it. The one piece of state that spans an ``await`` (a refresh that
is still in flight, maybe sleeping in a ``DELAY`` fault) is tracked
explicitly with :meth:`FakeState.begin_refresh` / :meth:`FakeState.end_refresh`.

Every deadline is read from the injected clock, never from :func:`time.time`,
so a test moves the fake and the library under test with one ``advance()``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import re
import secrets
import urllib.parse
from typing import TYPE_CHECKING, Final, Literal, final

import attrs

from ._fake_types import FakeCounters, FakeProviderError, Fault

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .._clock import Clock

__all__ = ["AUTHORIZE_PATH", "FakeState", "Grant", "TokenReply", "check_verifier", "error_body"]

#: Where the authorize endpoint lives, on every host.
AUTHORIZE_PATH: Final = "/oauth/authorize"

GrantStatus = Literal["active", "revoked", "invalidated"]

#: RFC 7636: an S256 challenge is 32 bytes base64url-encoded without padding.
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
#: RFC 7636 section 4.1: 43 to 128 unreserved characters.
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")


def error_body(code: str, text: str) -> dict[str, object]:
    """
    Build an Airwallex-style error body: the code, and the code again in front of the text.
    """
    return {"code": code, "message": f"{code}: {text}"}


def _seconds(value: float) -> int | float:
    # Whole seconds go out as JSON integers, like Airwallex's; a fractional
    # TTL (tests) stays fractional instead of rounding down to a useless 0.
    return int(value) if float(value).is_integer() else value


def _new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


@final
@attrs.frozen
class TokenReply:
    """
    What the token endpoint decided: an HTTP status and a JSON body.
    """

    status: int
    body: dict[str, object]


@final
@attrs.frozen
class AuthorizeRequest:
    """
    A validated ``GET /oauth/authorize`` query.
    """

    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    state: str | None
    sign_up: bool
    code_challenge: str | None


@final
@attrs.frozen
class _Account:
    account_id: str
    business_name: str


@final
@attrs.define(eq=False)
class _Code:
    request: AuthorizeRequest
    account_id: str
    expires_at: float
    # "used" once presented (even unsuccessfully); "revoked" by a disconnect.
    status: Literal["issued", "used", "revoked"] = "issued"


@final
@attrs.define(eq=False)
class Grant:
    """
    One connection: an account's consent to this client, and its token chain.
    """

    account_id: str
    client_id: str
    scopes: tuple[str, ...]
    status: GrantStatus = "active"
    current: str | None = None
    previous: str | None = None
    previous_valid_until: float = 0.0
    older: set[str] = attrs.Factory(set)


@final
@attrs.frozen
class _Issued:
    """
    An access or refresh token: whose it is and when it dies on its own.
    """

    grant: Grant
    expires_at: float


@final
@attrs.define(eq=False)
class _QueuedFault:
    fault: Fault
    remaining: int


@final
@attrs.define(eq=False)
class FakeState:
    """
    The provider's bookkeeping: accounts, codes, grants, tokens and faults.
    """

    clock: Clock
    client_id: str
    client_secret: str
    redirect_uris: set[str]
    access_token_ttl: float
    refresh_token_ttl: float
    grace: float
    code_ttl: float
    send_expires_in: bool
    counters: FakeCounters = attrs.Factory(FakeCounters)
    _accounts: dict[str, _Account] = attrs.field(init=False, factory=dict)
    _default_account: str | None = attrs.field(init=False, default=None)
    _codes: dict[str, _Code] = attrs.field(init=False, factory=dict)
    _grants: list[Grant] = attrs.field(init=False, factory=list)
    _refresh_tokens: dict[str, _Issued] = attrs.field(init=False, factory=dict)
    _access_tokens: dict[str, _Issued] = attrs.field(init=False, factory=dict)
    _issued: set[str] = attrs.field(init=False, factory=set)
    _faults: collections.deque[_QueuedFault] = attrs.field(init=False, factory=collections.deque)
    _refreshing: set[str] = attrs.field(init=False, factory=set)
    #: Called with ``(account_id, reason)`` whenever a connection dies on the
    #: provider's side (user disconnect, reuse invalidation); the webhook
    #: sender hangs off it.
    on_connection_lost: Callable[[str, str], None] | None = attrs.field(init=False, default=None)
    #: Called with ``(name, account_id, data)`` for an account event the
    #: provider announces (``account.active`` once KYC is done).
    on_account_event: Callable[[str, str, dict[str, object]], None] | None = attrs.field(
        init=False, default=None
    )
    #: Opened by ``release_held()``; held responses wait on it.
    hold_gate: asyncio.Event = attrs.field(init=False, factory=asyncio.Event)

    # -- setup ---------------------------------------------------------------

    def register_redirect_uri(self, uri: str) -> None:
        """
        Whitelist *uri*, as a partner manager would; reject what OAuth forbids.
        """
        parts = urllib.parse.urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            msg = f"redirect URI must be an absolute http(s) URL, got {uri!r}"
            raise ValueError(msg)
        if parts.fragment or uri.endswith("#"):
            msg = f"redirect URI must not have a fragment (RFC 6749 3.1.2), got {uri!r}"
            raise ValueError(msg)
        self.redirect_uris.add(uri)

    def create_account(self, account_id: str | None, business_name: str) -> str:
        """
        Create an Airwallex account that a user can later connect.
        """
        if account_id is None:
            account_id = "acct_" + secrets.token_urlsafe(12)
        if not account_id:
            msg = "an account id must not be empty"
            raise ValueError(msg)
        if account_id in self._accounts:
            msg = f"account {account_id!r} already exists"
            raise ValueError(msg)
        self._accounts[account_id] = _Account(account_id, business_name)
        return account_id

    def inject(self, fault: Fault) -> None:
        """
        Queue *fault* behind any others.
        """
        if not isinstance(fault, Fault):
            msg = f"expected a Fault, got {fault!r}"
            raise TypeError(msg)
        self._faults.append(_QueuedFault(fault, fault.times))

    def clear_faults(self) -> None:
        """
        Forget every queued fault.
        """
        self._faults.clear()

    # -- the authorize step ----------------------------------------------------

    def parse_authorize_url(self, url: str) -> AuthorizeRequest:
        """
        Validate a whole authorize URL (what ``approve()``/``deny()`` get).
        """
        parts = urllib.parse.urlsplit(url)
        if parts.path != AUTHORIZE_PATH:
            msg = f"the authorize URL's path must be {AUTHORIZE_PATH!r}, got {parts.path!r}"
            raise FakeProviderError(msg)
        return self.parse_authorize_query(parts.query)

    def parse_authorize_query(self, query: str) -> AuthorizeRequest:
        """
        Validate an authorize query string exactly as ``GET /oauth/authorize`` does.

        Raises:
            FakeProviderError: naming the offending parameter.
        """
        params: dict[str, str] = {}
        for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
            if name in params:
                msg = f"parameter {name!r} is repeated"
                raise FakeProviderError(msg)
            params[name] = value

        response_type = params.get("response_type")
        if response_type != "code":
            msg = f"response_type must be 'code', got {response_type!r}"
            raise FakeProviderError(msg)
        client_id = params.get("client_id")
        if client_id != self.client_id:
            msg = f"client_id {client_id!r} is not a registered client"
            raise FakeProviderError(msg)
        redirect_uri = params.get("redirect_uri")
        if redirect_uri is None or redirect_uri not in self.redirect_uris:
            msg = f"redirect_uri {redirect_uri!r} is not registered for this client"
            raise FakeProviderError(msg)
        scopes = tuple(params.get("scope", "").split())
        if not scopes:
            msg = "scope is missing or empty"
            raise FakeProviderError(msg)
        sign_up = params.get("sign_up", "false")
        if sign_up not in ("true", "false"):
            msg = f"sign_up must be 'true' or 'false', got {sign_up!r}"
            raise FakeProviderError(msg)

        challenge = params.get("code_challenge")
        method = params.get("code_challenge_method")
        if challenge is None and method is not None:
            msg = "code_challenge_method was sent without code_challenge"
            raise FakeProviderError(msg)
        if challenge is not None:
            if method != "S256":
                msg = f"code_challenge_method must be 'S256', got {method!r}"
                raise FakeProviderError(msg)
            if not _CHALLENGE.fullmatch(challenge):
                msg = "code_challenge must be 43 base64url characters without padding"
                raise FakeProviderError(msg)

        return AuthorizeRequest(
            client_id=client_id,
            redirect_uri=redirect_uri,
            scopes=scopes,
            state=params.get("state"),
            sign_up=sign_up == "true",
            code_challenge=challenge,
        )

    def approve(self, request: AuthorizeRequest, account_id: str | None) -> str:
        """
        Record the user's consent: issue a single-use code, return the redirect.
        """
        if account_id is None:
            account_id = self._consenting_account(sign_up=request.sign_up)
        elif account_id not in self._accounts:
            msg = f"unknown account {account_id!r}; create it with create_account() first"
            raise FakeProviderError(msg)
        code = _new_secret("awx_ac_")
        self._codes[code] = _Code(request, account_id, self.clock.now() + self.code_ttl)
        self._issued.add(code)
        return _redirect(request.redirect_uri, {"code": code}, request.state)

    def deny(self, request: AuthorizeRequest, error: str, description: str) -> str:
        """
        Record the user's refusal: return the error redirect.
        """
        params = {"error": error, "error_description": description}
        return _redirect(request.redirect_uri, params, request.state)

    def _consenting_account(self, *, sign_up: bool) -> str:
        # sign_up=true is a brand-new customer; anything else is "the" user,
        # who keeps coming back with the same account.
        if sign_up:
            return self.create_account(None, "Fake Pty Ltd")
        if self._default_account is None:
            self._default_account = self.create_account(None, "Fake Pty Ltd")
        return self._default_account

    def account_label(self, request: AuthorizeRequest) -> str:
        """
        Describe, for the consent page, which account would be connected.
        """
        if request.sign_up:
            return "a new Airwallex account (sign-up)"
        if self._default_account is None:
            return "your Airwallex account"
        return self._accounts[self._default_account].business_name

    # -- the token endpoint ----------------------------------------------------

    def authenticate_client(self, body: Mapping[str, object]) -> TokenReply | None:
        """
        Check the client credentials in a token request; ``None`` means they are good.
        """
        client_id = body.get("client_id")
        client_secret = body.get("client_secret")
        if (
            isinstance(client_id, str)
            and isinstance(client_secret, str)
            and hmac.compare_digest(client_id.encode(), self.client_id.encode())
            and hmac.compare_digest(client_secret.encode(), self.client_secret.encode())
        ):
            return None
        self.counters.invalid_client_responses += 1
        return TokenReply(401, error_body("invalid_client", "client authentication failed"))

    def take_fault(self, grant_type: str) -> Fault | None:
        """
        Consume one application of the first queued fault matching *grant_type*.
        """
        for queued in self._faults:
            if queued.fault.grant_type in (None, grant_type):
                queued.remaining -= 1
                if queued.remaining == 0:
                    self._faults.remove(queued)
                self.counters.faults_applied += 1
                return queued.fault
        return None

    def begin_refresh(self, refresh_token: str) -> bool:
        """
        Mark *refresh_token* as being refreshed; ``False`` if it already is.

        Airwallex answers a second, overlapping refresh of the same token with
        429. The caller must pair a ``True`` with :meth:`end_refresh` in a
        ``finally``.
        """
        if refresh_token in self._refreshing:
            self.counters.concurrent_rejections += 1
            return False
        self._refreshing.add(refresh_token)
        return True

    def end_refresh(self, refresh_token: str) -> None:
        """
        The refresh of *refresh_token* has produced its response.
        """
        self._refreshing.discard(refresh_token)

    def exchange_code(self, body: Mapping[str, object]) -> TokenReply:
        """
        ``grant_type=authorization_code``: turn a code into a new connection.
        """
        code = body.get("code")
        if not isinstance(code, str) or not code:
            return _invalid_request("code is missing")
        record = self._codes.get(code)
        if record is None:
            return self._invalid_grant("unknown authorization code")
        if record.status == "used":
            return self._invalid_grant("authorization code already used")
        if record.status == "revoked":
            return self._invalid_grant("authorization code revoked")
        # Single use from here on, whether or not the exchange succeeds:
        # a code that leaked together with a wrong verifier must not get a
        # second try.
        record.status = "used"
        now = self.clock.now()
        request = record.request
        if now >= record.expires_at:
            return self._invalid_grant("authorization code expired")
        if body.get("client_id") != request.client_id:
            return self._invalid_grant("authorization code was issued to another client")
        if body.get("redirect_uri") != request.redirect_uri:
            return self._invalid_grant("redirect_uri does not match the authorization request")
        failure = check_verifier(request.code_challenge, body.get("code_verifier"))
        if failure is not None:
            return self._invalid_grant(failure)

        grant = Grant(record.account_id, request.client_id, request.scopes)
        self._grants.append(grant)
        self.counters.exchanges += 1
        return self._issue_tokens(grant, now)

    def refresh(self, body: Mapping[str, object]) -> TokenReply:
        """
        ``grant_type=refresh_token``: rotate, re-issue inside the grace window, or punish reuse.
        """
        token = body.get("refresh_token")
        if not isinstance(token, str) or not token:
            return _invalid_request("refresh_token is missing")
        issued = self._refresh_tokens.get(token)
        if issued is None:
            return self._invalid_grant("invalid or expired refresh token")
        grant = issued.grant
        if grant.status == "revoked":
            return self._invalid_grant("the connection was revoked by the user")
        if grant.status == "invalidated":
            return self._invalid_grant("the connection was invalidated")
        now = self.clock.now()

        if token == grant.current:
            if now >= issued.expires_at:
                return self._invalid_grant("refresh token expired")
            if grant.previous is not None:
                grant.older.add(grant.previous)
            grant.previous = token
            grant.previous_valid_until = now + self.grace
            self.counters.refreshes += 1
            return self._issue_tokens(grant, now)

        if token == grant.previous and now < grant.previous_valid_until:
            if now >= issued.expires_at:
                return self._invalid_grant("refresh token expired")
            # The client lost the response that carried `current`: give it a
            # fresh pair. `previous` keeps its ORIGINAL deadline, so retries
            # cannot stretch the window forever.
            if grant.current is not None:
                grant.older.add(grant.current)
            self.counters.refreshes += 1
            self.counters.grace_reissues += 1
            return self._issue_tokens(grant, now)

        # A token older than the grace window allows: Airwallex reads this as
        # a leak and kills the whole connection.
        self.counters.reuse_violations += 1
        grant.status = "invalidated"
        self.counters.invalidations += 1
        if self.on_connection_lost is not None:
            self.on_connection_lost(grant.account_id, "token_reuse")
        return self._invalid_grant("refresh token reuse detected; connection invalidated")

    def _issue_tokens(self, grant: Grant, now: float) -> TokenReply:
        access_token = _new_secret("awx_at_")
        refresh_token = _new_secret("awx_rt_")
        self._access_tokens[access_token] = _Issued(grant, now + self.access_token_ttl)
        self._refresh_tokens[refresh_token] = _Issued(grant, now + self.refresh_token_ttl)
        self._issued.update((access_token, refresh_token))
        grant.current = refresh_token
        body: dict[str, object] = {
            "access_token": access_token,
            "refresh_token": refresh_token,
            "token_type": "Bearer",
        }
        if self.send_expires_in:
            body["expires_in"] = _seconds(self.access_token_ttl)
            body["refresh_token_expires_in"] = _seconds(self.refresh_token_ttl)
        body["scope"] = " ".join(grant.scopes)
        return TokenReply(200, body)

    def _invalid_grant(self, reason: str) -> TokenReply:
        self.counters.invalid_grant_responses += 1
        return TokenReply(400, error_body("invalid_grant", reason))

    # -- the resource server ---------------------------------------------------

    def bearer_grant(self, authorization: str | None) -> Grant | None:
        """
        The live grant an ``Authorization: Bearer`` header speaks for, or
        ``None`` (unknown, expired, or its connection revoked or invalidated).
        Counts the call in ``api_calls`` (and ``api_unauthorized``).
        """
        self.counters.api_calls += 1
        scheme, _, token = (authorization or "").partition(" ")
        issued = self._access_tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if (
            issued is None
            or self.clock.now() >= issued.expires_at
            or issued.grant.status != "active"
        ):
            self.counters.api_unauthorized += 1
            return None
        return issued.grant

    def authorize_api_call(self, authorization: str | None) -> tuple[str, str] | None:
        """
        Check an ``Authorization`` header; return ``(account_id, business_name)`` or ``None``.
        """
        grant = self.bearer_grant(authorization)
        if grant is None:
            return None
        account = self._accounts[grant.account_id]
        return account.account_id, account.business_name

    def business_name(self, account_id: str) -> str:
        """The business name of *account_id* (which must exist)."""
        return self._accounts[account_id].business_name

    def remember_issued(self, secret: str) -> None:
        """Add *secret* to what :meth:`issued_secrets` reports (for leak checks)."""
        self._issued.add(secret)

    # -- the user, and introspection -------------------------------------------

    def disconnect(self, account_id: str) -> int:
        """
        Revoke every active grant (and every unused code) of *account_id*.
        """
        if account_id not in self._accounts:
            msg = f"unknown account {account_id!r}"
            raise FakeProviderError(msg)
        self.counters.disconnects += 1
        for code in self._codes.values():
            if code.account_id == account_id and code.status == "issued":
                code.status = "revoked"
        revoked = 0
        for grant in self._grants:
            if grant.account_id == account_id and grant.status == "active":
                grant.status = "revoked"
                revoked += 1
        if revoked and self.on_connection_lost is not None:
            self.on_connection_lost(account_id, "user_initiated")
        return revoked

    def issued_secrets(self) -> frozenset[str]:
        """
        Every code and token ever issued, plus the client secret.
        """
        return frozenset(self._issued | {self.client_secret})

    def grant_status(self, token: str) -> str:
        """
        The status of the grant that *token* (access or refresh) belongs to.
        """
        issued = self._refresh_tokens.get(token) or self._access_tokens.get(token)
        return "unknown" if issued is None else issued.grant.status


def _invalid_request(reason: str) -> TokenReply:
    return TokenReply(400, error_body("invalid_request", reason))


def check_verifier(challenge: str | None, verifier: object) -> str | None:
    """
    Return why the PKCE proof fails, or ``None`` when it holds.
    """
    if challenge is None:
        if verifier is None:
            return None
        # Sending a verifier nobody asked for means the client's authorize
        # URL dropped its challenge: a bug worth failing loudly in tests.
        return "code_verifier sent, but the authorization request had no code_challenge"
    if not isinstance(verifier, str) or not verifier:
        return "code_verifier is required for this authorization code"
    if not _VERIFIER.fullmatch(verifier):
        return "code_verifier must be 43-128 unreserved characters (RFC 7636)"
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    if not hmac.compare_digest(expected, challenge):
        return "code_verifier does not match the code_challenge"
    return None


def _redirect(redirect_uri: str, params: dict[str, str], state: str | None) -> str:
    """
    Append *params* (and ``state`` when the client sent one) to the redirect URI.
    """
    pairs = list(params.items())
    if state is not None:
        pairs.append(("state", state))
    query = urllib.parse.urlencode(pairs)
    parts = urllib.parse.urlsplit(redirect_uri)
    merged = f"{parts.query}&{query}" if parts.query else query
    return urllib.parse.urlunsplit(parts._replace(query=merged))
