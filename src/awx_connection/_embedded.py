"""
Embedded components: the one-time code Airwallex.js starts with.

Airwallex's embedded components (KYC, KYB, RFI, payouts...) run in the
customer's browser and start with ``init({authCode, clientId, codeVerifier,
env, enabledElements})``. The code comes from ``POST
/api/v1/authentication/authorize`` (API reference "Embedded Components",
Beta), called server-side with the connection's bearer token and a PKCE
``code_challenge``; the browser later proves it holds the matching verifier.
So this module makes a fresh S256 pair for every call, sends the challenge
through :class:`~awx_connection._api.Api` (the same single-flight token and
one-refresh-on-401 handling as ``ConnectionManager.request()``), and hands
back both halves as :class:`~awx_connection.Secret` in one frozen value.

What the public docs confirm, and what this module assumes:

* confirmed (API reference): the path; a bearer token; a JSON body with
  ``code_challenge`` (required, S256 per RFC 7636 section 4), ``scope``
  (required, a list; ``onboarding:write`` is documented) and ``identity``
  (optional, for embedded SCA); ``x-on-behalf-of`` for a platform acting
  for a connected account;
* confirmed (Airwallex.js error codes, ``AUTH_TIMEOUT``): a code is valid
  for 30 seconds (:data:`CODE_LIFETIME`), and the browser's token exchange
  fails once it has expired;
* assumed: the response names the code ``authorization_code`` (seen in
  third-party integrations, not in the part of the reference that could be
  read) and carries no expiry of its own; if it does (``expires_in`` in
  seconds, or ``expires_at``), that wins, else the code is reported valid
  for :data:`CODE_LIFETIME` from when the request was *sent*, which errs
  early (``expiry_assumed`` says which); ``clientId`` for ``init()`` is the
  OAuth client id; ``env`` is ``"prod"`` for ``api.airwallex.com`` and
  ``"demo"`` for any other API host.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, final
from urllib.parse import urlsplit

import attrs
import orjson

from ._api import Api
from ._authorize import new_pkce_pair
from ._core import Core
from ._errors import EmbeddedAuthorizationError, InvalidArgumentError
from ._secrets import Secret

__all__ = ["AUTHORIZE_PATH", "CODE_LIFETIME", "Embedded", "EmbeddedAuthorization"]

#: The endpoint (API reference "Embedded Components").
AUTHORIZE_PATH: Final = "/api/v1/authentication/authorize"
#: Seconds a code lives (Airwallex.js error ``AUTH_TIMEOUT``: "valid for 30 seconds").
CODE_LIFETIME: Final = 30.0
#: Largest response body read; a real one is a few hundred bytes.
_MAX_BODY: Final = 64 * 1024
#: Longest provider message quoted in an error.
_MAX_MESSAGE: Final = 200
_PRODUCTION_API_HOST: Final = "api.airwallex.com"


@final
@attrs.frozen
class EmbeddedAuthorization:
    """
    What a browser needs to start Airwallex.js embedded components for one
    connection: pass `init_options` to ``init()``.

    The code is single-use and lives 30 seconds: ask for a new one each
    time a page starts the components, right before ``init()``; never cache
    or store it. ``auth_code`` and
    ``code_verifier`` are `Secret`, masked in every
    repr, log line and error.
    """

    connection_id: str
    auth_code: Secret
    code_verifier: Secret
    #: The ``clientId`` for ``init()``: the OAuth client's id.
    client_id: str
    #: The ``env`` for ``init()``: ``"prod"`` or ``"demo"``.
    env: str
    scopes: tuple[str, ...]
    #: When the code stops working (the library's clock).
    expires_at: float
    #: ``True`` when the response gave no expiry and `CODE_LIFETIME` was used.
    expiry_assumed: bool

    def init_options(
        self, *, enabled_elements: Sequence[str], locale: str | None = None
    ) -> dict[str, Any]:
        """
        The argument of Airwallex.js ``init()``, with the code and verifier
        revealed: send it to the customer's browser only, in a response
        that is not cached (``Cache-Control: no-store``), and never log it.
        """
        options: dict[str, Any] = {
            "authCode": self.auth_code.reveal(),
            "clientId": self.client_id,
            "codeVerifier": self.code_verifier.reveal(),
            "env": self.env,
            "enabledElements": list(enabled_elements),
        }
        if locale is not None:
            options["locale"] = locale
        return options


def components_env(api_base_url: str) -> str:
    """Airwallex.js's ``env`` for an API host: ``"prod"`` for production, else ``"demo"``."""
    return "prod" if urlsplit(api_base_url).hostname == _PRODUCTION_API_HOST else "demo"


def _check_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    # A str is a Sequence too: "onboarding:write" would become 16 scopes.
    if isinstance(scopes, str) or not isinstance(scopes, Sequence):
        msg = f"scopes must be a list of strings, not {type(scopes).__name__}"
        raise InvalidArgumentError(msg)
    chosen = tuple(scopes)
    if not chosen:
        msg = "scopes must name at least one scope, e.g. ['onboarding:write']"
        raise InvalidArgumentError(msg)
    for scope in chosen:
        if not isinstance(scope, str) or not scope or scope != scope.strip() or " " in scope:
            msg = f"each scope must be a non-empty string without spaces, got {scope!r}"
            raise InvalidArgumentError(msg)
    return chosen


def _check_text(name: str, value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.strip() or "\r" in value or "\n" in value:
        msg = f"{name} must be None or a non-empty one-line string, got {value!r}"
        raise InvalidArgumentError(msg)


def _refused(status: int | None, body: object, what: str) -> EmbeddedAuthorizationError:
    """The typed error for a refusal: Airwallex's ``{code, source, message}`` when present."""
    fields = body if isinstance(body, dict) else {}
    code, source, message = (fields.get(k) for k in ("code", "source", "message"))
    code = code if isinstance(code, str) else None
    source = source if isinstance(source, str) and source else None
    text = message[:_MAX_MESSAGE] if isinstance(message, str) else what
    where = f" ({source})" if source else ""
    msg = f"embedded components authorization refused: HTTP {status} {code or ''}{where}: {text}"
    return EmbeddedAuthorizationError(msg, status=status, code=code, source=source)


def _expiry(body: dict[str, Any], sent_at: float) -> tuple[float, bool]:
    """When the code expires, and whether that was assumed (see the module docstring)."""
    expires_in = body.get("expires_in")
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        return sent_at + float(expires_in), False
    expires_at = body.get("expires_at")
    if isinstance(expires_at, str):
        try:
            # Airwallex writes "2026-05-12T00:00:00+0000"; Python 3.11 reads it.
            return datetime.fromisoformat(expires_at).timestamp(), False
        except ValueError:
            pass
    return sent_at + CODE_LIFETIME, True


def _code(body: dict[str, Any]) -> Secret:
    """The code, straight into a Secret; raises if absent (the caller adds the status)."""
    value = body.pop("authorization_code", None)
    if not isinstance(value, str) or not value:
        msg = "the response has no authorization_code"
        raise ValueError(msg)
    return Secret(value)


@final
@attrs.define(eq=False)
class Embedded:
    """Embedded-components codes for the connections of one manager."""

    core: Core
    api: Api

    async def authorize(
        self,
        connection_id: str,
        scopes: Sequence[str],
        identity: str | None,
        on_behalf_of: str | None,
    ) -> EmbeddedAuthorization:
        """``ConnectionManager.embedded_authorization()``, which documents it."""
        chosen = _check_scopes(scopes)
        _check_text("identity", identity)
        _check_text("on_behalf_of", on_behalf_of)
        verifier, challenge = new_pkce_pair()
        body: dict[str, Any] = {"code_challenge": challenge, "scope": list(chosen)}
        if identity is not None:
            body["identity"] = identity
        headers = {} if on_behalf_of is None else {"x-on-behalf-of": on_behalf_of}
        sent_at = self.core.clock.now()
        # retry=True although it is a POST: a lost response costs one unused
        # code, which dies on its own; a retried body (json=) is replayable.
        response = await self.api.request(
            connection_id, "POST", AUTHORIZE_PATH, True, {"json": body, "headers": headers}
        )
        async with response:
            status = response.status
            raw = await response.content.read(_MAX_BODY + 1)
        try:
            parsed = orjson.loads(raw) if len(raw) <= _MAX_BODY else None
        except orjson.JSONDecodeError:
            parsed = None
        if status not in (200, 201):
            raise _refused(status, parsed, "no error body")
        if not isinstance(parsed, dict):
            raise _refused(status, None, "the response is not a JSON object")
        try:
            code = _code(parsed)
        except ValueError as exc:
            raise _refused(status, None, str(exc)) from None
        del raw  # the code was in it; tracebacks rendered with locals show locals
        expires_at, assumed = _expiry(parsed, sent_at)
        return EmbeddedAuthorization(
            connection_id=connection_id,
            auth_code=code,
            code_verifier=verifier,
            client_id=self.core.config.client_id,
            env=components_env(self.core.config.endpoints.api_base_url),
            scopes=chosen,
            expires_at=expires_at,
            expiry_assumed=assumed,
        )
