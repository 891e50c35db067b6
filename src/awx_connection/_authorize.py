"""
The authorize step: ``state``, PKCE, the authorize URL, callback parsing,
and the flows built on them (:class:`Authorizer`).

``state`` is 32 random bytes from :mod:`secrets`. Only its SHA-256 is
stored, so the store can look a callback up by hash; the comparison of the
hashes is constant-time. PKCE uses S256 (RFC 7636) with an 86-character
verifier.

:func:`parse_callback` treats the redirect as hostile input: bounded size,
each parameter at most once, exactly one of ``code`` and ``error``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import final
from urllib.parse import parse_qs, urlencode, urlsplit

import attrs

from ._core import Core
from ._errors import (
    CallbackError,
    ConfigurationError,
    IllegalTransitionError,
    InvalidClientError,
    ProviderError,
    StateExpiredError,
    UnknownStateError,
    VersionConflictError,
)
from ._live import Live, LiveCache
from ._machine import ROWS, allows, fire
from ._records import PendingAuthorization
from ._retry import Retries
from ._secrets import Secret
from ._states import Action, Trigger
from ._text import check_text, is_text
from ._writer import Writer

__all__ = [
    "AuthorizationRequest",
    "Authorizer",
    "Callback",
    "authorize_url",
    "new_pkce_pair",
    "new_state",
    "parse_callback",
    "state_hash",
]

_log = logging.getLogger("awx_connection")

#: Longest callback URL or query we parse; real ones are a few hundred bytes.
MAX_CALLBACK_CHARS = 8 * 1024
#: Longest provider error text we keep in a reason.
_MAX_ERROR_CHARS = 200


@final
@attrs.frozen
class AuthorizationRequest:
    """
    What :meth:`~awx_connection.ConnectionManager.begin_authorization` returns.

    Send the customer's browser to ``url``. ``state`` is in the URL and
    nowhere else; the library keeps only its hash.
    """

    connection_id: str
    url: str = attrs.field(repr=False)  # carries state and the PKCE challenge
    expires_at: float


@final
@attrs.frozen
class Callback:
    """A parsed redirect: ``state`` plus either a ``code`` or an ``error``."""

    state: Secret
    code: Secret | None
    error: str | None
    error_description: str | None


def new_state() -> Secret:
    """A fresh, unguessable ``state`` value."""
    return Secret(secrets.token_urlsafe(32))


def state_hash(state: Secret) -> str:
    """The hex SHA-256 of *state*, the form in which it is stored."""
    return hashlib.sha256(state.reveal().encode()).hexdigest()


def new_pkce_pair() -> tuple[Secret, str]:
    """A PKCE ``(code_verifier, code_challenge)`` pair, method S256."""
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return Secret(verifier), challenge


def check_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    """
    Validate scope names.

    Raises:
        ConfigurationError: No scopes, or a scope is empty, has whitespace or
            is not valid text (a lone surrogate cannot go into the URL).
    """
    if isinstance(scopes, str):
        msg = "scopes must be a sequence of scope names, not one string"
        raise ConfigurationError(msg)
    if not scopes:
        msg = "no scopes: pass scopes= or set Config.default_scopes"
        raise ConfigurationError(msg)
    for scope in scopes:
        if (
            not isinstance(scope, str)
            or not scope
            or any(c.isspace() for c in scope)
            or not is_text(scope)
        ):
            msg = f"invalid scope {scope!r}"
            raise ConfigurationError(msg)
    return tuple(scopes)


def authorize_url(
    base: str,
    *,
    client_id: str,
    redirect_uri: str,
    scopes: Sequence[str],
    state: Secret,
    sign_up: bool,
    code_challenge: str | None,
) -> str:
    """Build the authorize URL; scopes are space-joined (``+`` once encoded)."""
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(scopes),
        "state": state.reveal(),
    }
    if sign_up:
        params["sign_up"] = "true"
    if code_challenge is not None:
        params["code_challenge"] = code_challenge
        params["code_challenge_method"] = "S256"
    # A base ending in a bare '?' (empty query) must not become '...??'.
    separator = "&" if urlsplit(base).query else "" if base.endswith("?") else "?"
    return f"{base}{separator}{urlencode(params)}"


def _clean(text: str) -> str:
    printable = "".join(c if c.isprintable() else " " for c in text)
    return printable[:_MAX_ERROR_CHARS]


def parse_callback(callback: str | Mapping[str, str | Sequence[str]]) -> Callback:
    """
    Parse the redirect back from Airwallex.

    Args:
        callback: The full redirect URL, its query string, or the already
            parsed query parameters (as a web framework gives them).

    Raises:
        CallbackError: The input is oversized or not a parsable URL, repeats
            a parameter, has a name or value that is not a string (or a
            value that is not valid text), lacks ``state``, or has both or
            neither of ``code`` and ``error``.
    """
    if isinstance(callback, str):
        if len(callback) > MAX_CALLBACK_CHARS:
            msg = f"callback is longer than {MAX_CALLBACK_CHARS} characters"
            raise CallbackError(msg)
        # A URL or a path carries its query after '?'; a bare query string
        # may itself contain a literal '?' inside a value.
        is_url = "://" in callback or callback.startswith(("/", "?"))
        try:
            query = urlsplit(callback).query if is_url else callback
        except ValueError:  # e.g. "https://[::1/cb?...": an unclosed IPv6 host
            msg = "callback is not a parsable URL"
            raise CallbackError(msg) from None
        raw: Mapping[str, Sequence[str]] = parse_qs(query, keep_blank_values=True)
    else:
        merged: dict[str, list[str]] = {}
        # A multidict (aiohttp's request.query) yields a repeated key once per
        # value: merge them, so the repetition check below sees every value.
        for key, value in callback.items():
            if not isinstance(key, str):
                # Checked here, not left to len() or the lookups below: a
                # parameter name that is not a string is a malformed callback.
                msg = "callback parameter names must be strings"
                raise CallbackError(msg)
            given = [value] if isinstance(value, str) else value
            if not isinstance(given, Sequence) or not all(isinstance(x, str) for x in given):
                msg = "callback parameter values must be strings or lists of strings"
                raise CallbackError(msg)
            merged.setdefault(key, []).extend(given)
        raw = merged
        if sum(len(k) + sum(len(x) for x in v) for k, v in raw.items()) > MAX_CALLBACK_CHARS:
            msg = f"callback is longer than {MAX_CALLBACK_CHARS} characters"
            raise CallbackError(msg)
    params: dict[str, str] = {}
    for name in ("state", "code", "error", "error_description"):
        values = raw.get(name, [])
        if len(values) > 1:
            msg = f"callback parameter {name!r} appears {len(values)} times"
            raise CallbackError(msg)
        if values:
            params[name] = values[0]
            if not is_text(values[0]):
                # A lone surrogate (bytes a framework decoded with
                # surrogateescape) cannot be hashed, stored or sent as JSON.
                msg = f"callback parameter {name!r} is not valid text"
                raise CallbackError(msg)
    state = params.get("state", "")
    if not state:
        msg = "callback has no 'state' parameter"
        raise CallbackError(msg)
    code = params.get("code")
    error = params.get("error")
    if (code is None) == (error is None):
        msg = "callback must carry exactly one of 'code' and 'error'"
        raise CallbackError(msg)
    if code is not None and not code:
        msg = "callback has an empty 'code'"
        raise CallbackError(msg)
    return Callback(
        state=Secret(state),
        code=None if code is None else Secret(code),
        error=None if error is None else (_clean(error) or "unknown_error"),
        error_description=None
        if params.get("error_description") is None
        else _clean(params["error_description"]),
    )


# --- the flows: begin, complete (and its action, the exchange), reauthorize -----------


def _new_connection_id() -> str:
    return "conn_" + secrets.token_hex(12)


#: What an unknown, replayed or already used ``state`` is told (nothing more: it may be forged).
_UNKNOWN_STATE = "no pending authorization has this state (unknown, replayed or already used)"


@final
@attrs.define(eq=False)
class Authorizer:
    """
    The authorization flows of one manager: begin (a ``pending`` connection
    and its URL), complete (the redirect back: ``denied``, or a code and
    its exchange, the action of ``authorized``), reauthorize (back to
    ``pending``, same id and history).
    """

    core: Core
    cache: LiveCache
    writer: Writer

    async def begin(
        self,
        *,
        scopes: Sequence[str] | None,
        sign_up: bool,
        pkce: bool | None,
        external_id: str | None,
    ) -> AuthorizationRequest:
        """A new ``pending`` connection and the URL to send the customer to."""
        core = self.core
        core.check_open()
        check_text("external_id", external_id, optional=True)
        chosen = check_scopes(core.config.default_scopes if scopes is None else scopes)
        now = core.clock.now()
        connection_id = _new_connection_id()
        auth, url = self._new_authorization(chosen, sign_up=sign_up, pkce=pkce, now=now)
        reason = "authorization started" + (" with sign-up" if sign_up else "")
        record, event = fire(
            None,
            Trigger.BEGIN,
            reason,
            {
                "id": connection_id,
                "scopes": chosen,
                "external_id": external_id,
                "authorization": auth,
            },
            now=now,
            write_id=secrets.token_hex(8),
        )
        await self.writer.begin(record, event)
        self.cache.adopt(record)
        return AuthorizationRequest(connection_id, url, auth.expires_at)

    async def reauthorize(
        self, live: Live, *, scopes: Sequence[str] | None, sign_up: bool, pkce: bool | None
    ) -> AuthorizationRequest:
        """Back to ``pending`` with a new authorize URL; the old tokens go."""
        async with live.lock:
            record = live.record
            chosen = check_scopes(record.scopes if scopes is None else scopes)
            auth, url = self._new_authorization(
                chosen, sign_up=sign_up, pkce=pkce, now=self.core.clock.now()
            )
            await self.writer.transition(
                live,
                Trigger.REAUTHORIZE,
                f"reauthorization started (was {record.state.value})",
                authorization=auth,
                scopes=chosen,
            )
        return AuthorizationRequest(record.id, url, auth.expires_at)

    def _new_authorization(
        self, scopes: tuple[str, ...], *, sign_up: bool, pkce: bool | None, now: float
    ) -> tuple[PendingAuthorization, str]:
        config = self.core.config
        state = new_state()
        use_pkce = config.pkce if pkce is None else pkce
        verifier, challenge = new_pkce_pair() if use_pkce else (None, None)
        auth = PendingAuthorization(
            state_hash=state_hash(state),
            expires_at=now + config.timing.state_ttl,
            redirect_uri=config.redirect_uri,
            sign_up=sign_up,
            code_verifier=verifier,
        )
        url = authorize_url(
            config.endpoints.authorize_url,
            client_id=config.client_id,
            redirect_uri=config.redirect_uri,
            scopes=scopes,
            state=state,
            sign_up=sign_up,
            code_challenge=challenge,
        )
        return auth, url

    async def complete(self, parsed: Callback) -> Live:
        """The redirect back: ``denied``, or ``authorized`` and then its exchange."""
        self.core.check_open()
        digest = state_hash(parsed.state)
        record = await self.core.store.find_by_state_hash(digest)
        if record is None:
            raise UnknownStateError(_UNKNOWN_STATE)
        live = self.cache.adopt(record)
        async with live.lock:
            current = live.record
            auth = current.authorization
            # The row's guard, read twice: whatever the time, is the state
            # still unused (else unknown); and is it still in time.
            unused = allows(current, Trigger.CODE_RECEIVED, float("-inf"))
            if not unused or auth is None or auth.state_hash is None:
                raise UnknownStateError(_UNKNOWN_STATE)
            if not secrets.compare_digest(auth.state_hash, digest):
                raise UnknownStateError(_UNKNOWN_STATE)
            if not allows(current, Trigger.CODE_RECEIVED, self.core.clock.now()):
                raise StateExpiredError(current.id)
            if parsed.error is not None:
                detail = f": {parsed.error_description}" if parsed.error_description else ""
                await self.writer.transition(live, Trigger.DENIED, f"{parsed.error}{detail}")
                return live
            try:
                await self.writer.transition(
                    live,
                    Trigger.CODE_RECEIVED,
                    "authorization code received",
                    authorization=attrs.evolve(auth, state_hash=None),
                    code=parsed.code,
                )
            except VersionConflictError:
                # Another process accepted the same callback first.
                msg = "this state was used by a concurrent callback"
                raise UnknownStateError(msg) from None
            if ROWS[Trigger.CODE_RECEIVED].action is Action.EXCHANGE:
                await self._exchange(live)
            return live

    async def exchange(self, live: Live) -> None:
        """Retry the code exchange of an ``authorized`` connection."""
        async with live.lock:
            record = live.record
            if not allows(record, Trigger.EXCHANGED, self.core.clock.now()):
                raise IllegalTransitionError(record.id, Trigger.EXCHANGED, record.state)
            await self._exchange(live)

    async def _exchange(self, live: Live) -> None:
        """The action of ``authorized``: exchange the code, then fetch the account."""
        core = self.core
        record = live.record
        auth = record.authorization
        assert record.code is not None
        assert auth is not None
        timing = core.config.timing
        async for attempt in Retries(timing.retry_backoff, limit=timing.max_attempts):
            try:
                tokens = await core.transport.exchange_code(
                    record.code,
                    redirect_uri=auth.redirect_uri,
                    code_verifier=auth.code_verifier,
                    now=core.clock.now(),
                )
            except ProviderError as exc:
                if exc.retryable and not attempt.last:
                    continue
                if isinstance(exc, InvalidClientError):
                    _log.error(
                        "connection %s: the provider rejected our client credentials; "
                        "check client_id and client_secret",
                        record.id,
                        extra={"connection_id": record.id},
                    )
                if exc.retryable:
                    _log.warning(
                        "connection %s: code exchange failed after %d attempts: %s",
                        record.id,
                        attempt.number,
                        exc,
                        extra={"connection_id": record.id, "state": record.state.value},
                    )
                    raise
                await self.writer.transition(
                    live,
                    Trigger.EXCHANGE_REJECTED,
                    f"code exchange rejected ({exc.code or exc.status})",
                )
                return
            break
        account_id = await core.transport.account_id(record.id, tokens.access_token)
        await self.writer.transition(
            live,
            Trigger.EXCHANGED,
            "tokens received",
            tokens=tokens,
            account_id=account_id or record.account_id,
            activated_at=core.clock.now(),
        )
