"""
The fake's embedded components: codes, the browser's exchange, a KYC form.

Three steps, as Airwallex runs them, each decided here without I/O:

1. ``POST /api/v1/authentication/authorize`` (:meth:`EmbeddedRules.issue`):
   the partner's server, with a connection's live bearer token, sends a
   PKCE S256 ``code_challenge`` and a ``scope`` list and gets a single-use
   ``authorization_code``, bound to that challenge and to that connection
   (grant), living ``code_ttl`` seconds of the shared clock;
2. the browser's token exchange (:meth:`EmbeddedRules.redeem`): the
   stand-in Airwallex.js posts ``authCode``, ``codeVerifier`` and
   ``clientId``; the code is spent whatever the outcome, the verifier must
   hash to the challenge, and the connection must still be live; it gets a
   component session;
3. the KYC form's submit (:meth:`EmbeddedRules.submit_kyc`): with a session
   holding ``onboarding:write``, the account is marked onboarded and the
   provider announces ``account.active`` (whose ``data`` is the account, as
   Airwallex's payload examples say).

What is confirmed and what is assumed (see also ``awx_connection._embedded``):

* confirmed: the endpoint, bearer auth, the body (``code_challenge`` S256
  required, ``scope`` a required list, ``onboarding:write`` a supported
  scope, ``identity`` optional), ``x-on-behalf-of``; Airwallex's error
  body ``{code, source, message, details}``; 401 for a bad token; a code
  lives 30 seconds (Airwallex.js ``AUTH_TIMEOUT``); ``account.active``
  carries the account as ``data``;
* assumed: the response is ``201 {"authorization_code": ...}`` and nothing
  else; the error codes (``invalid_argument`` with ``source`` for a bad
  body, 403 ``forbidden`` for an ``x-on-behalf-of`` that is not the token's
  own account); the set of scopes accepted beyond ``onboarding:write``
  (``scopes=`` widens it); everything about the browser's exchange, which
  is Airwallex.js's private business: its path, fields and the
  ``UNAUTHORIZED``/``AUTH_TIMEOUT`` codes, borrowed from Airwallex.js's
  documented errors.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Final, Literal, final

import attrs

from ._fake_state import TokenReply, check_verifier

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._fake_state import FakeState, Grant

__all__ = ["DEFAULT_SCOPES", "EmbeddedRules", "api_error"]

#: Scopes the fake issues codes for unless told otherwise (the documented one).
DEFAULT_SCOPES: Final = frozenset({"onboarding:write"})
#: Seconds a component session lasts after the browser's exchange (assumed).
_SESSION_TTL: Final = 900.0
#: Longest field value the KYC form accepts.
_MAX_FIELD: Final = 200


def api_error(status: int, code: str, source: str, message: str) -> TokenReply:
    """An Airwallex API error: ``{code, source, message, details}``."""
    return TokenReply(status, {"code": code, "source": source, "message": message, "details": {}})


def _browser_error(status: int, code: str, message: str) -> TokenReply:
    return TokenReply(status, {"code": code, "message": message})


@final
@attrs.define(eq=False)
class _Code:
    grant: Grant
    challenge: str
    scopes: tuple[str, ...]
    expires_at: float
    status: Literal["issued", "used"] = "issued"


@final
@attrs.define(eq=False)
class _Session:
    grant: Grant
    scopes: tuple[str, ...]
    expires_at: float


@final
@attrs.define(eq=False)
class EmbeddedRules:
    """The embedded-components half of the provider's memory and rules."""

    state: FakeState
    code_ttl: float = 30.0
    scopes: frozenset[str] = DEFAULT_SCOPES
    #: KYC submissions by account id (the form's fields), for assertions.
    onboarded: dict[str, dict[str, str]] = attrs.Factory(dict)
    _codes: dict[str, _Code] = attrs.field(init=False, factory=dict)
    _sessions: dict[str, _Session] = attrs.field(init=False, factory=dict)

    def issue(
        self, grant: Grant, on_behalf_of: str | None, body: Mapping[str, object]
    ) -> TokenReply:
        """``POST /api/v1/authentication/authorize`` for a caller whose bearer is *grant*'s."""
        if on_behalf_of is not None and on_behalf_of != grant.account_id:
            text = "this token cannot act on behalf of that account"
            return api_error(403, "forbidden", "x-on-behalf-of", text)
        challenge = body.get("code_challenge")
        if challenge is None:
            return api_error(400, "invalid_argument", "code_challenge", "must be provided")
        if not isinstance(challenge, str) or not _is_s256_challenge(challenge):
            text = "must be an S256 challenge: 43 base64url characters without padding"
            return api_error(400, "invalid_argument", "code_challenge", text)
        scope = body.get("scope")
        if scope is None:
            return api_error(400, "invalid_argument", "scope", "must be provided")
        if not isinstance(scope, list) or not scope:
            return api_error(400, "invalid_argument", "scope", "must be a non-empty list")
        for item in scope:
            if not isinstance(item, str) or item not in self.scopes:
                text = f"{item!r} is not a supported scope; supported: {sorted(self.scopes)}"
                return api_error(400, "invalid_argument", "scope", text)
        identity = body.get("identity")
        if identity is not None and (not isinstance(identity, str) or not identity):
            return api_error(400, "invalid_argument", "identity", "must be a non-empty string")
        code = "awx_ec_" + secrets.token_urlsafe(32)
        now = self.state.clock.now()
        self._codes[code] = _Code(grant, challenge, tuple(scope), now + self.code_ttl)
        self.state.remember_issued(code)
        self.state.counters.embedded_codes_issued += 1
        return TokenReply(201, {"authorization_code": code})

    def redeem(self, body: Mapping[str, object]) -> TokenReply:
        """The browser's exchange: a code and its verifier for a component session."""
        reply = self._redeem(body)
        if reply.status == 200:
            self.state.counters.embedded_codes_redeemed += 1
        else:
            self.state.counters.embedded_codes_refused += 1
        return reply

    def _redeem(self, body: Mapping[str, object]) -> TokenReply:
        if body.get("clientId") != self.state.client_id:
            return _browser_error(401, "UNAUTHORIZED", "clientId is not the registered client")
        auth_code = body.get("authCode")
        record = self._codes.get(auth_code) if isinstance(auth_code, str) else None
        if record is None:
            return _browser_error(401, "UNAUTHORIZED", "Token exchange failed: unknown authCode")
        if record.status == "used":
            return _browser_error(401, "UNAUTHORIZED", "Token exchange failed: authCode was used")
        # Spent from here on, whatever follows: a code that leaked with a
        # wrong verifier must not get a second try.
        record.status = "used"
        now = self.state.clock.now()
        if now >= record.expires_at:
            text = "Authentication failed because the authCode has expired"
            return _browser_error(401, "AUTH_TIMEOUT", text)
        failure = check_verifier(record.challenge, body.get("codeVerifier"))
        if failure is not None:
            return _browser_error(401, "UNAUTHORIZED", f"Token exchange failed: {failure}")
        if record.grant.status != "active":
            text = f"Token exchange failed: the connection was {record.grant.status}"
            return _browser_error(401, "UNAUTHORIZED", text)
        session = "awx_cs_" + secrets.token_urlsafe(32)
        self._sessions[session] = _Session(record.grant, record.scopes, now + _SESSION_TTL)
        self.state.remember_issued(session)
        account_id = record.grant.account_id
        return TokenReply(
            200,
            {
                "session": session,
                "account_id": account_id,
                "business_name": self.state.business_name(account_id),
                "scopes": list(record.scopes),
                "onboarded": account_id in self.onboarded,
            },
        )

    def submit_kyc(self, body: Mapping[str, object]) -> TokenReply:
        """The KYC form's submit: mark the account onboarded, announce ``account.active``."""
        token = body.get("session")
        session = self._sessions.get(token) if isinstance(token, str) else None
        now = self.state.clock.now()
        if session is None or now >= session.expires_at or session.grant.status != "active":
            return _browser_error(401, "UNAUTHORIZED", "the component session is not valid")
        if "onboarding:write" not in session.scopes:
            return _browser_error(403, "FORBIDDEN", "this session cannot submit onboarding")
        fields: dict[str, str] = {}
        for name in ("legal_name", "country_code"):
            value = body.get(name)
            if not isinstance(value, str) or not value.strip() or len(value) > _MAX_FIELD:
                return _browser_error(400, "VALIDATION_ERROR", f"{name} is required")
            fields[name] = value.strip()
        account_id = session.grant.account_id
        first = account_id not in self.onboarded
        self.onboarded[account_id] = fields
        if first and self.state.on_account_event is not None:
            self.state.on_account_event("account.active", account_id, self.account_body(account_id))
        return TokenReply(200, {"account_id": account_id, "status": "ACTIVE"})

    def account_body(self, account_id: str) -> dict[str, object]:
        """The account as ``GET /api/v1/account`` shows it (the ``data`` of ``account.*``)."""
        name = self.state.business_name(account_id)
        return {
            "id": account_id,
            "nickname": name,
            "status": "ACTIVE",
            "account_details": {"business_details": {"business_name": name}},
        }


def _is_s256_challenge(value: str) -> bool:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return len(value) == 43 and all(c in alphabet for c in value)
