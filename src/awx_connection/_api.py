"""
The API helper: a request on behalf of a connection, with its bearer token.

``ConnectionManager.request()`` is the path every API call of an
application takes, so it reads no more than it needs: a cached fresh token
is one dict lookup and one comparison away, and the URL a caller passes is
resolved once and remembered. A 401 refreshes the connection once and
retries once (the token may have been revoked under it, or rotated by
another replica); a second 401 means the grant is gone. Gateway errors and
network failures are retried for idempotent methods only, with the one
backoff of the library.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, final
from urllib.parse import urljoin, urlsplit

import aiohttp
import attrs
from multidict import CIMultiDict, CIMultiDictProxy

from ._core import Core
from ._errors import ManagerClosedError
from ._live import Flights, Live, LiveCache
from ._retry import Retries
from ._secrets import AuthHeaders, bearer_headers
from ._states import USABLE, Trigger, unusable
from ._tokens import TokenSet
from ._writer import Writer

__all__ = ["Api"]

#: Methods retried by default (RFC 9110 section 9.2.2).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: API statuses worth a retry: the gateway, not the API, failed.
_RETRY_STATUSES = frozenset({502, 503, 504})
#: URLs remembered resolved (Api.resolve).
_RESOLVED_MAX = 1024


@final
@attrs.define(eq=False)
class Api:
    """Authorized API calls for the connections of one manager."""

    core: Core
    cache: LiveCache
    flights: Flights
    writer: Writer
    #: ``access_token()`` of the manager: a valid token, refreshing if needed.
    access_token: Callable[[str], Awaitable[str]]
    #: Resolved URLs, by what the caller passed (see resolve).
    _resolved: dict[str, str] = attrs.field(factory=dict, init=False, repr=False)

    def resolve(self, url: str) -> str:
        """
        *url* made absolute on the API host, refused if it names another host.

        Remembered per *url*: ``urljoin`` costs about 6 µs, more than the
        rest of a cached-token request. An application calls a bounded set
        of paths, but ids make them unbounded, so the memory is cleared when
        it is full rather than grown.

        Raises:
            ValueError: *url* names another host than the API's.
        """
        absolute = self._resolved.get(url)
        if absolute is not None:
            return absolute
        base = self.core.config.endpoints.api_base_url
        absolute = urljoin(base + "/", url.lstrip("/")) if "://" not in url else url
        if urlsplit(absolute)[:2] != urlsplit(base)[:2]:
            msg = f"refusing to send a connection's bearer token to another host: {url!r}"
            raise ValueError(msg)
        if len(self._resolved) >= _RESOLVED_MAX:
            self._resolved.clear()
        self._resolved[url] = absolute
        return absolute

    async def request(
        self,
        connection_id: str,
        method: str,
        url: str,
        retry: bool | None,
        kwargs: dict[str, Any],
    ) -> aiohttp.ClientResponse:
        """``ConnectionManager.request()``, which documents it."""
        core = self.core
        target = self._resolved.get(url) or self.resolve(url)
        live = self.cache.holders.get(connection_id) or await self.cache.get(connection_id)
        # The token goes straight into AuthHeaders, never into a local: a
        # traceback rendered with locals would show it.
        extra = kwargs.pop("headers", None)
        if live.fresh_until > core.clock.now():
            sent = live.record  # the record whose access token is sent
            # live.token is set whenever fresh_until is finite.
            headers = bearer_headers(live.token, extra)  # type: ignore[arg-type]
        else:
            headers = bearer_headers(await self.access_token(connection_id), extra)
            sent = live.record
        if retry is None:
            retry = method in _IDEMPOTENT or method.upper() in _IDEMPOTENT
        if core.closing:
            raise ManagerClosedError
        # Per request: a session the caller passed in may have no (or a long)
        # timeout of its own. A timeout= passed to request() wins.
        kwargs.setdefault("timeout", core.transport.timeout)
        response = await self._send(method, target, headers, retry, kwargs)
        if response.status != 401:
            return response
        response.release()
        return await self._after_401(live, sent.tokens, method, target, headers, retry, kwargs)

    async def _after_401(
        self,
        live: Live,
        sent: TokenSet | None,
        method: str,
        target: str,
        headers: AuthHeaders,
        retry: bool,
        kwargs: dict[str, Any],
    ) -> aiohttp.ClientResponse:
        """
        Refresh once and retry once (*sent*: the tokens the 401 refused); a
        second 401 means the grant is gone.
        """
        generation = sent.generation if sent is not None else None
        tokens = await self.flights.fresh_tokens(live, stale_generation=generation)
        headers["Authorization"] = f"Bearer {tokens.access_token.reveal()}"
        response = await self._send(method, target, headers, retry, kwargs)
        if response.status != 401:
            return response
        response.release()
        async with live.lock:
            if live.record.state in USABLE:
                await self.writer.transition(
                    live, Trigger.REVOKE, "the API answered 401 right after a refresh"
                )
        raise unusable(live.record)

    async def _send(
        self,
        method: str,
        target: str,
        headers: AuthHeaders,
        retry: bool,
        kwargs: dict[str, Any],
    ) -> aiohttp.ClientResponse:
        """
        One API call, retried on gateway errors and network failures if *retry*.

        The first try runs before any retry machinery: it is the hot path.
        aiohttp's frames below ``session.request()`` (and those of the errors
        it chains) hold the request headers, bearer token included; a
        traceback rendered with locals would show them. So an error that
        ends the call is raised from here without them: the same error,
        type, message and attributes.
        """
        timing = self.core.config.timing
        attempts = 1 + (timing.api_retries if retry else 0)
        session = self.core.transport.session
        try:
            response = await session.request(method, target, headers=headers, **kwargs)
        except (aiohttp.ClientError, TimeoutError) as exc:
            if attempts == 1:
                raise exc.with_traceback(None) from None
        else:
            if response.status not in _RETRY_STATUSES or attempts == 1:
                return _redacted(response)
            response.release()
        async for attempt in Retries(timing.retry_backoff, limit=attempts, first=2):
            try:
                response = await session.request(method, target, headers=headers, **kwargs)
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempt.last:
                    raise exc.with_traceback(None) from None
            else:
                if response.status not in _RETRY_STATUSES or attempt.last:
                    return _redacted(response)
                response.release()
        raise AssertionError("unreachable")  # pragma: no cover - the last attempt returns


def _redacted(response: aiohttp.ClientResponse) -> aiohttp.ClientResponse:
    """
    *response*, its ``request_info`` without the bearer token.

    ``raise_for_status()``, ``json()`` on a wrong content type and the rest
    of aiohttp's errors carry the response's ``request_info``, whose repr
    shows every request header: a logged ``ClientResponseError`` would print
    the access token. The caller's response keeps everything else.
    """
    # aiohttp has no public setter (request_info is a cached property over
    # _request_info); tests/integration/test_lifecycle.py guards this
    # against a release that renames them.
    info = response._request_info
    if "Authorization" not in info.headers:
        return response
    headers = CIMultiDict(info.headers)
    headers["Authorization"] = "Bearer ********"
    response._request_info = aiohttp.RequestInfo(
        info.url, info.method, CIMultiDictProxy(headers), info.real_url
    )
    response._cache.pop("request_info", None)
    return response
