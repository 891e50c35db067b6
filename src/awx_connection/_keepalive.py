"""
Keep-alive and settling: the work no caller asks for.

Two background jobs, both a scan of the store's summaries (nothing
decrypted) that refreshes what is due, a few at a time, coordinated across
replicas by the refresh lease:

* **keep-alive** rotates an idle connection's refresh token before it ages
  out (below), soon after the manager opens and then every interval;
* **settling** resumes rotations left unfinished (``refreshing``) by any
  process, crashed, shut down or cut off from the store, at open and every
  few seconds, while the grace window still lets their token be presented
  again.

When an idle connection's refresh token must be rotated:

A connection nobody uses never refreshes on its own, and its refresh token
ages out after 60-90 days (``refresh_token_expires_in``). Refreshing every
five minutes "to be safe" would cost 288 rotations a day per connection and
multiply the chances of a burnt token. Instead a pass rotates a connection
once less than ``keepalive_remaining`` of its refresh token's lifetime is
left, minus a per-connection jitter (stable: a hash of the id), so a fleet
authorized on the same day does not rotate in the same minute. A 90-day
token is thus rotated about every 40-45 days: a handful of rotations per
lifetime.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar, final

import attrs

from ._config import TimingPolicy
from ._core import Core
from ._errors import AwxConnectionError, ConnectionExpiredError, ManagerClosedError
from ._live import Flights, LiveCache
from ._paging import each_page
from ._records import ConnectionSummary
from ._states import ROTATING, USABLE, ConnectionState

__all__ = ["KeepaliveReport", "Sweeps", "background", "due_at"]

_R = TypeVar("_R")

_log = logging.getLogger("awx_connection")

#: Summaries a pass reads at a time.
PAGE = 1000


def _jitter(connection_id: str) -> float:
    """A stable number in [0, 1) for *connection_id*."""
    digest = hashlib.blake2b(connection_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def due_at(summary: ConnectionSummary, timing: TimingPolicy) -> float | None:
    """When keep-alive should rotate the connection's refresh token, if it has one."""
    expires_at, issued_at = summary.refresh_expires_at, summary.issued_at
    if expires_at is None or issued_at is None:
        return None
    lifetime = expires_at - issued_at
    slack = lifetime * (timing.keepalive_remaining + timing.keepalive_jitter * _jitter(summary.id))
    return expires_at - slack


@final
@attrs.frozen
class KeepaliveReport:
    """What one keep-alive pass did."""

    #: Active connections looked at.
    checked: int
    #: Refresh tokens rotated (by this process or, meanwhile, another one).
    rotated: int
    #: Connections whose refresh token had run out: moved to ``expired``.
    expired: int
    #: Rotations that failed (logged; retried on the next pass).
    failed: int


@final
@attrs.define(eq=False)
class Sweeps:
    """Keep-alive passes and settling scans of one manager, and their loops."""

    core: Core
    cache: LiveCache
    flights: Flights

    async def keepalive_pass(self) -> KeepaliveReport:
        """Rotate what is due, expire what aged out, resume what was left unfinished."""
        self.core.check_open()
        timing = self.core.config.timing
        now = self.core.clock.now()

        def due(summary: ConnectionSummary) -> bool:
            # A connection left refreshing (its process died, or its attempts
            # ran out on lost responses) is due at once: resuming its journal
            # now, inside the grace window, beats waiting for the next use.
            if summary.state in ROTATING:
                return True
            when = due_at(summary, timing)
            return when is not None and now >= when

        return await self._rotate_each(USABLE, due, "keep-alive")

    async def settle_unfinished(self) -> KeepaliveReport:
        """Resume every rotation left unfinished in the store, by any process."""
        self.core.check_open()
        return await self._rotate_each(ROTATING, lambda _: True, "settling")

    async def _rotate_each(
        self,
        states: frozenset[ConnectionState],
        due: Callable[[ConnectionSummary], bool],
        what: str,
    ) -> KeepaliveReport:
        """Refresh every stored connection of *states* that is *due*, a few at a time."""
        timing = self.core.config.timing
        # Summaries a page at a time, keeping only what is due: a pass over
        # 100,000 idle connections decrypts nothing and holds one page.
        checked = 0
        picked: list[ConnectionSummary] = []

        def pick(page: list[ConnectionSummary]) -> None:
            nonlocal checked
            checked += len(page)
            picked.extend(s for s in page if due(s))

        await each_page(self.core.store.list_summaries, states, PAGE, pick)
        gate = asyncio.Semaphore(timing.keepalive_concurrency)
        counts = {"rotated": 0, "expired": 0, "failed": 0}

        async def rotate(summary: ConnectionSummary) -> None:
            stale = None if summary.state in ROTATING else summary.generation
            async with gate:
                try:
                    # The one full read (and decryption) of a due connection;
                    # a held copy older than the summary is read again.
                    live = await self.cache.get(summary.id)
                    if live.record.version < summary.version:
                        await self.cache.reload(live)
                    await self.flights.fresh_tokens(live, stale_generation=stale)
                    counts["rotated"] += 1
                except ConnectionExpiredError:
                    counts["expired"] += 1
                except AwxConnectionError as exc:
                    counts["failed"] += 1
                    _log.warning(
                        "connection %s: %s rotation failed: %s",
                        summary.id,
                        what,
                        exc,
                        extra={"connection_id": summary.id},
                    )

        await asyncio.gather(*(rotate(s) for s in picked))
        return KeepaliveReport(checked=checked, **counts)

    async def keepalive_loop(self) -> None:
        """Keep-alive passes for ever: soon after open, then every interval."""
        timing = self.core.config.timing
        # Soon after open, jittered so that replicas started together spread
        # out: a service restarted more often than keepalive_interval would
        # otherwise never run a pass at all.
        delay = timing.keepalive_first_delay * random.uniform(0.5, 1.5)  # jitter, not crypto
        while True:
            await asyncio.sleep(delay)
            delay = timing.keepalive_interval
            report = await background("keep-alive pass", self.keepalive_pass)
            if report is not None:
                _log.info(
                    "keep-alive: %d checked, %d rotated, %d expired, %d failed",
                    report.checked,
                    report.rotated,
                    report.expired,
                    report.failed,
                )

    async def settle_loop(self) -> None:
        """Settling scans for ever: at once, then every ``settle_interval``."""
        interval = self.core.config.timing.settle_interval
        while True:
            report = await background("settling scan", self.settle_unfinished)
            if report is not None and report.checked:
                _log.info(
                    "settling: %d unfinished, %d settled, %d expired, %d failed",
                    report.checked,
                    report.rotated,
                    report.expired,
                    report.failed,
                )
            await asyncio.sleep(interval)


async def background(what: str, run: Callable[[], Awaitable[_R]]) -> _R | None:
    """One run of a background loop's work; a failure is logged, never ends the loop."""
    try:
        return await run()
    except ManagerClosedError:
        raise asyncio.CancelledError from None
    except AwxConnectionError as exc:
        _log.warning("%s failed: %s", what, exc)
    except Exception:
        # Anything else (a custom store's bug, say) must not end the loop
        # silently: no rotation would ever run again.
        _log.exception("%s crashed; the next one runs as scheduled", what)
    return None
