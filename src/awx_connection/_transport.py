"""
The aiohttp transport: code exchange, refresh, and the account call.

Each method makes exactly one HTTP request and turns every outcome into a
value or a typed error (:mod:`awx_connection._errors`); retries and state
belong to the manager. The classification that matters most is
``maybe_processed``: could the provider have acted on the request? A refresh
that may have been processed may have rotated the token, so its retry must
stay inside the grace window.

=====================================  ===============================  ===============
outcome                                error                            maybe_processed
=====================================  ===============================  ===============
200 with a valid token body            (a :class:`TokenSet`)            n/a
200 with a bad body, or too large      MalformedResponseError           yes
error status with a too large body     MalformedResponseError           as its status
400 ``invalid_grant``                  InvalidGrantError                no
401 / ``invalid_client``               InvalidClientError               no
429                                    RateLimitedError                 no
503                                    ProviderUnavailableError         no
500, 502, 504 and other 5xx            ProviderUnavailableError         yes
connection refused / DNS failure       NetworkError                     no
timeout, disconnect, broken payload    NetworkError                     yes
=====================================  ===============================  ===============

Error messages carry status and provider code, and the provider's message
with every secret we sent scrubbed out. No frame of an error we raise holds a
revealed secret in a local (a traceback rendered with locals shows them):
request bodies are built by :func:`_form`, response bodies are held in a
:class:`_Body`, and aiohttp's own errors become errors raised ``from None``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, final

import aiohttp
import attrs
import orjson

from ._config import Config
from ._errors import (
    InvalidClientError,
    InvalidGrantError,
    MalformedResponseError,
    NetworkError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
)
from ._secrets import Secret, bearer_headers
from ._tokens import TokenSet, parse_token_response

__all__ = ["Transport"]

_log = logging.getLogger("awx_connection.transport")

_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
_MAX_MESSAGE_CHARS = 200
_CHUNK_BYTES = 16 * 1024


def _scrub(text: str, secrets: Iterable[Secret]) -> str:
    # Longest first: a secret that contains a shorter one must not be
    # half-replaced and leave its remainder in the text.
    for raw in sorted((s.reveal() for s in secrets), key=len, reverse=True):
        if raw:
            text = text.replace(raw, "********")
    text = "".join(c if c.isprintable() else " " for c in text)
    return text[:_MAX_MESSAGE_CHARS]


def _code_prefix(message: str) -> str | None:
    """The ``invalid_grant`` of ``"invalid_grant: OAuth 2.0 Parameter: ..."``."""
    head, sep, _ = message.partition(":")
    return head.strip() if sep and head.strip().isidentifier() else None


@final
class _Body:
    """
    A response body as it is read, masked in ``repr``.

    A token response holds new tokens, and an error body may echo what we
    sent; held here rather than as plain bytes in a local, neither shows in
    a traceback rendered with locals.
    """

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = bytearray()

    def __repr__(self) -> str:
        return f"<response body, {len(self.data)} bytes>"

    async def read_from(self, stream: aiohttp.StreamReader) -> bool:
        """Append the next chunk of *stream*; false at its end."""
        chunk = await stream.read(_CHUNK_BYTES)
        self.data += chunk
        return bool(chunk)


def _form(fields: dict[str, str | Secret]) -> bytes:
    """The JSON token-request body, revealing the secrets among *fields* only here."""
    return orjson.dumps({k: v.reveal() if isinstance(v, Secret) else v for k, v in fields.items()})


def _error_fields(body: bytes | bytearray) -> tuple[str | None, str]:
    """
    Pull ``(code, message)`` out of an RFC 6749 or an Airwallex error body,
    or out of a plain-text ``"code: message"`` body (the shape is undocumented).
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        code = _code_prefix(text)
        return (code, text) if code else (None, "")
    if not isinstance(data, dict):
        return None, ""
    code = data.get("error") or data.get("code")
    message = data.get("error_description") or data.get("message") or ""
    if not isinstance(message, str):
        message = ""
    if not isinstance(code, str) or not code:
        code = _code_prefix(message)
    return code, message


def _describe_error(body: _Body, sent: list[Secret]) -> tuple[str | None, str, bool]:
    """
    ``(code, message, concurrent)`` of an error answer, code and message
    scrubbed of *sent*: the unscrubbed text never becomes a local of the
    frame that raises.
    """
    code, message = _error_fields(body.data)
    # The code is provider text too: a "<token>: ..." message would make
    # the token itself the code.
    return (
        _scrub(code, sent) if code else None,
        _scrub(message, sent),
        "concurrent" in message.lower(),
    )


def _maybe_processed(status: int) -> bool:
    """Whether a request answered with *status* may have been acted on (the table above)."""
    return 200 <= status < 300 or (status >= 500 and status != 503)


@final
@attrs.define(eq=False)
class Transport:
    """
    One aiohttp session talking to the Airwallex token endpoint and API.

    Pass your own :class:`aiohttp.ClientSession` to share a connection pool;
    otherwise the transport creates one and closes it in :meth:`aclose`.
    """

    config: Config
    _session: aiohttp.ClientSession | None = attrs.field(default=None, alias="session")
    _owns_session: bool = attrs.field(default=False, init=False)
    _timeout: aiohttp.ClientTimeout | None = attrs.field(default=None, init=False)

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session, created on first use."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timing.request_timeout),
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
            )
            self._owns_session = True
        return self._session

    @property
    def timeout(self) -> aiohttp.ClientTimeout:
        """
        The per-request timeout: the session's, its total capped at ``request_timeout``.

        Passed on every request rather than trusted to the session: a
        session the caller passed in has its own timeout (aiohttp's default
        is 5 minutes), and the lease and resume deadlines assume every POST
        ends within ``request_timeout``. The session's other limits (say, a
        short ``sock_connect``) are kept.
        """
        timeout = self._timeout
        if timeout is None:
            timeout = self.session.timeout
            limit = self.config.timing.request_timeout
            if timeout.total is None or timeout.total > limit:
                timeout = attrs.evolve(timeout, total=limit)
            self._timeout = timeout
        return timeout

    async def aclose(self) -> None:
        """Close the session if the transport created it. Idempotent."""
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None
        self._owns_session = False
        self._timeout = None

    async def exchange_code(
        self,
        code: Secret,
        *,
        redirect_uri: str,
        code_verifier: Secret | None,
        now: float,
    ) -> TokenSet:
        """Exchange an authorization code for generation-0 tokens."""
        fields: dict[str, str | Secret] = {
            "grant_type": "authorization_code",
            "client_id": self.config.client_id,
            "client_secret": self.config.client_secret,
            "code": code,
            "redirect_uri": redirect_uri,
        }
        if code_verifier is not None:
            fields["code_verifier"] = code_verifier
        return await self._post_token(fields, now=now, generation=0)

    async def refresh(self, refresh_token: Secret, *, generation: int, now: float) -> TokenSet:
        """Rotate *refresh_token*; the new pair gets *generation*."""
        fields: dict[str, str | Secret] = {
            "grant_type": "refresh_token",
            "client_id": self.config.client_id,
            "client_secret": self.config.client_secret,
            "refresh_token": refresh_token,
        }
        return await self._post_token(fields, now=now, generation=generation)

    async def fetch_account(self, access_token: Secret) -> dict[str, Any]:
        """
        ``GET /api/v1/account/`` for the connected account.

        Raises:
            ProviderError: Any answer but a 200 with a JSON object that has a
                string ``id``.
        """
        url = f"{self.config.endpoints.api_base_url}/api/v1/account/"
        headers = bearer_headers(access_token.reveal(), {"Accept": "application/json"})
        try:
            async with self.session.get(url, headers=headers, timeout=self.timeout) as response:
                body = await self._read_bounded(response)
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            msg = f"account request failed: {type(exc).__name__}"
            raise NetworkError(msg, maybe_processed=True) from None
        if status != 200:
            code, _ = _error_fields(body.data)
            code = _scrub(code, [access_token]) if code else None
            msg = f"account request answered {status} ({code or 'no code'})"
            raise ProviderError(msg, status=status, code=code)
        try:
            data = orjson.loads(body.data)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            msg = "account response is not an object with a string 'id'"
            raise MalformedResponseError(msg, status=status)
        return data

    async def account_id(self, connection_id: str, access_token: Secret) -> str | None:
        """
        The connected account's id (:meth:`fetch_account`), best effort: a
        failure is logged and answered ``None``. Used after an exchange or a
        rotation, where the account is useful to know but no reason to fail.
        """
        try:
            account = await self.fetch_account(access_token)
        except ProviderError as exc:
            _log.warning(
                "connection %s: could not fetch the account (%s); will retry after a refresh",
                connection_id,
                exc,
                extra={"connection_id": connection_id},
            )
            return None
        account_id: str = account["id"]
        return account_id

    async def _read_bounded(self, response: aiohttp.ClientResponse) -> _Body:
        limit = self.config.timing.max_response_bytes
        body = _Body()
        too_large = (response.content_length or 0) > limit
        while not too_large and await body.read_from(response.content):
            too_large = len(body.data) > limit
        if too_large:
            msg = f"response body is larger than {limit} bytes"
            raise MalformedResponseError(
                msg, status=response.status, maybe_processed=_maybe_processed(response.status)
            )
        return body

    async def _post_token(
        self, fields: dict[str, str | Secret], *, now: float, generation: int
    ) -> TokenSet:
        url = self.config.endpoints.token_url
        grant = fields["grant_type"]
        try:
            async with self.session.post(
                url, data=_form(fields), headers=_JSON_HEADERS, timeout=self.timeout
            ) as response:
                status = response.status
                body = await self._read_bounded(response)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # Never reached the server: the token is certainly untouched.
            msg = f"token endpoint unreachable ({type(exc).__name__})"
            raise NetworkError(msg, maybe_processed=False) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            msg = f"token request lost: {type(exc).__name__}; the provider may have processed it"
            raise NetworkError(msg, maybe_processed=True) from None
        _log.debug("token endpoint answered %s to %s", status, grant)
        if 200 <= status < 300:
            return self._token_set(body, status, now=now, generation=generation)
        sent = [value for value in fields.values() if isinstance(value, Secret)]
        code, text, concurrent = _describe_error(body, sent)
        detail = f"token endpoint answered {status} ({code or 'no code'})" + (
            f": {text}" if text else ""
        )
        if status == 429:
            raise RateLimitedError(detail, status=status, code=code, concurrent=concurrent)
        if status >= 500:
            raise ProviderUnavailableError(
                detail, status=status, code=code, maybe_processed=status != 503
            )
        if code == "invalid_grant":
            raise InvalidGrantError(detail, status=status, code=code)
        if code == "invalid_client" or status == 401:
            raise InvalidClientError(detail, status=status, code=code)
        raise ProviderError(detail, status=status, code=code)

    def _token_set(self, body: _Body, status: int, *, now: float, generation: int) -> TokenSet:
        try:
            return parse_token_response(
                orjson.loads(body.data), now=now, timing=self.config.timing, generation=generation
            )
        except orjson.JSONDecodeError:
            msg = f"token endpoint answered {status} with a body that is not JSON"
            raise MalformedResponseError(msg, status=status, maybe_processed=True) from None
        except MalformedResponseError as exc:
            # The frames of parse_token_response hold the decoded response,
            # new tokens included, and a traceback rendered with locals would
            # show them. The message names the field at fault: the same error
            # is raised from here, without those frames.
            raise exc.with_traceback(None) from None
