"""
The rotation driver: performs what :mod:`awx_connection._rotation` decides.

One flight rotates one connection for this process. Under the connection's
lock it takes the cross-process lease (or waits for the process that holds
it), then makes attempts: each writes the journal before it presents the
refresh token, so a crash mid-request leaves a deadline behind for whoever
resumes; presents it; and stores what came back. Every *decision* on the way
is a pure function of the protocol module; this module only reads, writes,
waits and sends, so what it does can be followed step by step beside the
decision it performs.

A rotation costs three store calls when nothing goes wrong: the lease (which
reads the record in the same step), the journal, and the new tokens (which
also end the lease).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import final

import attrs

from . import _rotation as rotation
from ._core import Core
from ._errors import (
    InvalidClientError,
    ProviderError,
    RefreshTimeoutError,
    StoreError,
    StoreUnavailableError,
    VersionConflictError,
)
from ._gate import RefreshGate
from ._live import Live, LiveCache
from ._records import RotationJournal
from ._retry import Attempt, Retries
from ._states import USABLE, Trigger, unusable
from ._tokens import TokenSet
from ._writer import Writer

__all__ = ["Rotator"]

_log = logging.getLogger("awx_connection")
_T = Trigger

#: Times an attempt writes its journal before giving up on a slow store.
_JOURNAL_WRITES = 3
#: Conflicts (another writer, a lost lease) a flight looks again after.
_CONFLICTS = 3


class _LeaseLost(Exception):
    """Internal: the refresh lease is another process's now (never escapes a flight)."""


@final
@attrs.define(eq=False)
class Rotator:
    """Rotates one connection's tokens per flight (see the module docstring)."""

    core: Core
    cache: LiveCache
    writer: Writer
    gate: RefreshGate

    async def flight(self, live: Live, stale_generation: int | None) -> TokenSet:
        """The body of a refresh flight: the tokens, once this or another process rotated."""
        core = self.core
        timing = core.config.timing
        async with live.lock:
            loop = asyncio.get_running_loop()
            give_up_at = loop.time() + timing.lease_wait
            conflicts = 0
            reloaded = False
            while True:
                record = live.record
                step = rotation.before_lease(
                    record, stale_generation, core.clock.now(), timing, reloaded=reloaded
                )
                if isinstance(step, rotation.Adopt):
                    return step.tokens
                if isinstance(step, rotation.Unusable):
                    raise unusable(step.record)
                if isinstance(step, rotation.Reload):
                    await self.cache.reload(live)
                    reloaded = live.record is record  # unchanged: it really is unusable
                    continue
                reloaded = False
                if await self._take_lease(live):
                    try:
                        step = rotation.before_lease(
                            live.record, stale_generation, core.clock.now(), timing, reloaded=True
                        )
                        if isinstance(step, rotation.Adopt):
                            return step.tokens
                        if isinstance(step, rotation.Unusable):
                            raise unusable(step.record)
                        return await self._rotate(live)
                    except VersionConflictError:
                        # Another writer changed the connection under us (a
                        # webhook revoked it, a paused holder woke up). Our
                        # journal, if any, is in the store: look again.
                        conflicts += 1
                        if conflicts > _CONFLICTS:
                            raise
                        continue
                    except _LeaseLost:
                        # Our lease lapsed while we queued for a token-endpoint
                        # slot, and another process holds it now: wait for it
                        # below, like any process that finds the lease taken,
                        # for a full lease_wait from now.
                        conflicts += 1
                        if conflicts > _CONFLICTS:
                            raise RefreshTimeoutError(record.id) from None
                        give_up_at = loop.time() + timing.lease_wait
                    finally:
                        await self._release_lease(live)
                # Someone else rotates: wait for their write, then look again.
                remaining = give_up_at - loop.time()
                if remaining <= 0:
                    raise RefreshTimeoutError(record.id)
                newer = await core.store.wait_for_update(
                    record.id, after_version=live.record.version, timeout=min(remaining, 1.0)
                )
                if newer is not None:
                    live.record = newer

    async def _rotate(self, live: Live) -> TokenSet:
        """
        The action of ``refreshing``: present the refresh token until the
        provider answers, the grace window closes, or attempts run out.

        From the moment an attempt may write its journal until what came of
        it is stored, the flight is *sending* (``Core.sending``): a
        closing manager lets it finish. Between attempts (backoff) it is
        not, and a closing manager stops it there.
        """
        core = self.core
        timing = core.config.timing
        task = asyncio.current_task()
        assert task is not None
        sending = core.sending
        presented: TokenSet | None = None
        async for attempt in Retries(timing.retry_backoff, limit=timing.max_attempts):
            core.check_open()
            if presented is not None:
                await self.cache.reload(live)
                adopted = rotation.adopted_meanwhile(live.record, presented)
                if adopted is not None:
                    return adopted
            # Everything an attempt decides from the clock and the lease is
            # decided after a slot is free: a refresh queued behind an
            # outage's backlog may wait longer than its lease. A token that
            # may already have reached the provider has a deadline, so its
            # retry goes first.
            await self._until_quiet(live)
            journal = live.record.journal
            urgent = journal is not None and journal.unsafe_since is not None
            try:
                async with self.gate.slot(urgent=urgent):
                    core.check_open()
                    sending.add(task)
                    sent = await self._attempt(live)
                tokens = await self._settle_attempt(live, sent, attempt)
                if tokens is not None:
                    return tokens
            finally:
                sending.discard(task)
            presented = sent.presented
        raise AssertionError("unreachable")  # pragma: no cover - the last attempt raises

    async def _settle_attempt(
        self, live: Live, sent: rotation.Sent, attempt: Attempt
    ) -> TokenSet | None:
        """Perform what the attempt's outcome means: tokens, ``None`` to retry, or raise."""
        core = self.core
        step = rotation.after_attempt(sent, last=attempt.last, timing=core.config.timing)
        if isinstance(step, rotation.Store):
            return await self._store(live, sent, step)
        error = sent.error
        assert error is not None
        core.counts[f"refresh_failure:{type(error).__name__}"] += 1
        if isinstance(step, rotation.CheckGrant):
            return await self._check_grant(live, sent.presented)
        retrying = isinstance(step, rotation.Retry)
        connection_id = live.record.id
        # A rejected client is our configuration, not the customer's: every
        # connection is affected, so it is an error.
        _log.log(
            logging.ERROR if isinstance(error, InvalidClientError) else logging.WARNING,
            "connection %s: refresh attempt %d failed: %s%s",
            connection_id,
            attempt.number,
            error,
            "; retrying" if retrying else "",
            extra={"connection_id": connection_id, "state": live.record.state.value},
        )
        if isinstance(step, rotation.Retry):
            if step.journal is not None:
                # This attempt alone made the token unsafe, and it certainly
                # did not reach the provider: undo that.
                await self.writer.amend(live, journal=step.journal)
            return None
        if isinstance(step, rotation.Abort):
            reason = error.code or error.status or "network"
            await self.writer.transition(
                live, _T.REFRESH_ABORTED, f"refresh failed, tokens unchanged ({reason})"
            )
        raise error

    async def _store(self, live: Live, sent: rotation.Sent, step: rotation.Store) -> TokenSet:
        """
        Store the pair the provider just issued, writing it again (with
        backoff) while the store fails, until it is stored or *step*'s
        deadline passes.

        The pair is the most valuable thing the process holds: the provider
        has retired the presented token, and only the pair or a resume
        inside the grace window keeps the connection. The same record is
        written every time (same ``write_id``), so a write that committed
        with its acknowledgement lost is recognised as ours. The version
        compare-and-swap is the fence: a process that resumes the journal
        meanwhile writes it again before presenting the old token, so once
        it may have sent, this write can only lose, and the pair is
        discarded rather than stored over its work.
        """
        core = self.core
        new_tokens = step.tokens
        connection_id = live.record.id
        account_id = live.record.account_id
        if account_id is None:
            account_id = await core.transport.account_id(connection_id, new_tokens.access_token)
        new, event = self.writer.fire(
            live,
            _T.REFRESHED,
            f"rotated to generation {new_tokens.generation}",
            tokens=new_tokens,
            account_id=account_id,
        )
        version = live.record.version
        backoff = core.config.timing.retry_backoff
        async for attempt in Retries(backoff, deadline=step.deadline, clock=core.clock):
            try:
                if live.record.version != version:
                    # A failed write's re-read found another writer's record.
                    raise VersionConflictError(connection_id, version, live.record.version)
                await self.writer.commit(live, new, event, release_lease=True)
            except VersionConflictError:
                # The provider rotated for us, but the connection moved in the
                # store meanwhile (a webhook revoked it, another process
                # resumed the journal). Our pair is thrown away; if another
                # replica presented the same token, the provider kept only
                # the later of the two pairs. Rare by design, so loud.
                core.counts["rotations_discarded"] += 1
                _log.warning(
                    "connection %s: the provider rotated generation %d, but the "
                    "connection changed in the store meanwhile; discarding the new "
                    "tokens and re-reading",
                    connection_id,
                    sent.presented.generation,
                    extra={"connection_id": connection_id},
                )
                raise
            except StoreError as exc:
                if attempt.last:
                    core.counts["rotations_discarded"] += 1
                    _log.error(
                        "connection %s: the provider rotated generation %d, but the store "
                        "failed %d times until the grace window closed (%s); discarding "
                        "the new tokens",
                        connection_id,
                        sent.presented.generation,
                        attempt.number,
                        exc,
                        extra={"connection_id": connection_id},
                    )
                    raise
                _log.warning(
                    "connection %s: could not store the rotated tokens (%s); writing them again",
                    connection_id,
                    exc,
                    extra={"connection_id": connection_id},
                )
            else:
                return new_tokens
        raise AssertionError("unreachable")  # pragma: no cover - the last attempt raises

    async def _check_grant(self, live: Live, presented: TokenSet) -> TokenSet:
        """Re-read the store before believing ``invalid_grant``: adopt, or revoke."""
        stored = await self.core.store.get(live.record.id)
        step = rotation.after_invalid_grant(stored, presented)
        if isinstance(step, rotation.Adopt):
            assert stored is not None
            _log.info(
                "connection %s: another writer rotated first; adopting its tokens",
                stored.id,
                extra={"connection_id": stored.id},
            )
            live.record = stored
            return step.tokens
        await self.writer.transition(
            live, _T.REVOKE, "the provider rejected the refresh token (invalid_grant)"
        )
        raise unusable(live.record)

    async def _until_quiet(self, live: Live) -> None:
        """
        Before resuming another process's unfinished rotation: wait while
        :func:`~awx_connection._rotation.quiet_for` says so.

        Raises:
            VersionConflictError: The other process finished meanwhile; the
                caller re-reads.
        """
        core = self.core
        timing = core.config.timing
        record = live.record
        while True:
            remaining = rotation.quiet_for(
                record, live.journal_seen_at, time.monotonic(), core.clock.now(), timing
            )
            if remaining <= 0:
                return
            newer = await core.store.wait_for_update(
                record.id, after_version=record.version, timeout=remaining
            )
            if newer is not None:
                live.record = newer
                raise VersionConflictError(record.id, record.version, newer.version)

    async def _attempt(self, live: Live) -> rotation.Sent:
        """
        One refresh attempt, holding a token-endpoint slot: journal it, check
        the grace deadline and the lease, present the refresh token.

        The journal must be committed, and the lease confirmed, promptly: a
        replica that saw the journal commit resumes it ``resume_wait`` later
        at the earliest, and this request must be over by then. A store that
        took longer than ``resume_wait - request_timeout`` to answer gets
        the journal written again, which restarts every watcher's count.

        Provider errors are returned, not raised, so the caller handles them
        (and backs off) after giving the slot back.
        """
        core = self.core
        timing = core.config.timing
        # Before writing anything: while this process queued for the slot,
        # its lease may have lapsed and another replica taken it.
        await self._still_ours(live)
        before = live.record
        if before.tokens is None or before.state not in USABLE:
            # A retry re-read a connection revoked meanwhile.
            raise unusable(before)
        first_unsafe = before.journal is None or before.journal.unsafe_since is None
        # How late the request may start after the journal's commit. Not
        # positive when resume_delay was shrunk below request_timeout (in
        # tests): that gives the guarantee up, so there is nothing to keep.
        slack = timing.resume_wait - timing.request_timeout
        base: RotationJournal | None = None
        for writes in range(1, _JOURNAL_WRITES + 1):
            written_at = time.monotonic()
            tokens, journal, now = await self._journal(live, base)
            await self._still_ours(live)  # free while the lease is young, as it is now
            slow = time.monotonic() - written_at
            if slack <= 0 or slow <= slack:
                break
            connection_id = live.record.id
            if writes == _JOURNAL_WRITES:
                _log.warning(
                    "connection %s: the refresh journal took %.1f s to write and confirm, "
                    "%d times; not sending",
                    connection_id,
                    slow,
                    writes,
                    extra={"connection_id": connection_id},
                )
                if first_unsafe:
                    # Nothing was sent: say so, or a resumer would count a
                    # grace deadline for a token that never left.
                    await self.writer.transition(
                        live, _T.REFRESH_ABORTED, "the store answered too slowly"
                    )
                msg = "the store answers too slowly to start a refresh safely"
                raise StoreUnavailableError(msg)
            _log.warning(
                "connection %s: the refresh journal took %.1f s to write and confirm; "
                "writing it again before sending",
                connection_id,
                slow,
                extra={"connection_id": connection_id},
            )
            base = rotation.rewritten(journal, first_unsafe=first_unsafe)
        core.counts["refresh_requests"] += 1
        try:
            new_tokens = await core.transport.refresh(
                tokens.refresh_token, generation=tokens.generation + 1, now=now
            )
        except ProviderError as exc:
            return rotation.Sent(tokens, journal, first_unsafe, error=exc)
        return rotation.Sent(tokens, journal, first_unsafe, new_tokens=new_tokens)

    async def _journal(
        self, live: Live, base: RotationJournal | None
    ) -> tuple[TokenSet, RotationJournal, float]:
        """
        Perform :func:`~awx_connection._rotation.journal_step`: write the
        journal (or end the rotation); the tokens to present, the journal as
        stored, and the injected clock's reading it was written at.
        """
        writer = self.writer
        record = live.record
        tokens = record.tokens
        assert tokens is not None
        now = self.core.clock.now()
        step = rotation.journal_step(record, now, self.core.config.timing, base)
        if isinstance(step, rotation.Expire):
            await writer.transition(live, _T.EXPIRE, "the refresh token aged out")
            raise unusable(live.record)
        if isinstance(step, rotation.Invalidate):
            await writer.transition(
                live,
                _T.INVALIDATE,
                "the rotation went unanswered past the grace window; "
                "the old refresh token was not presented again",
            )
            raise unusable(live.record)
        if isinstance(step, rotation.Start):
            await writer.transition(
                live,
                _T.REFRESH_STARTED,
                f"rotating refresh token generation {tokens.generation}",
                journal=step.journal,
            )
        else:
            await writer.amend(live, journal=step.journal)
        return tokens, step.journal, now

    async def _still_ours(self, live: Live) -> None:
        """
        Right before a refresh POST: make sure the lease is still ours and
        nobody wrote the connection meanwhile
        (:func:`~awx_connection._rotation.lease_needs_renewal`). A renewal
        alone proves nothing (the lease may have been taken, used and
        released by another process meanwhile); the record read with it
        does: if the version moved, another process rotated or resumed our
        journal, and sending our token again would be a reuse.

        Raises:
            _LeaseLost: Someone else holds the lease now; the caller waits.
            VersionConflictError: The connection changed; the caller re-reads.
        """
        if not rotation.lease_needs_renewal(
            live.leased, live.lease_sure_until, self.core.clock.now()
        ):
            return
        expected = live.record.version
        if not await self._take_lease(live, adopt=False):
            raise _LeaseLost(live.record.id)
        if live.record.version != expected:
            raise VersionConflictError(live.record.id, expected, live.record.version)

    async def _take_lease(self, live: Live, *, adopt: bool = True) -> bool:
        """
        Take or renew this process's refresh lease on the connection.

        The store answers with its record: a newer one replaces ours (with
        *adopt*, else only when it differs, which the caller then reports).
        """
        core = self.core
        timing = core.config.timing
        now = core.clock.now()
        stored = await core.store.acquire_lease(
            live.record.id, core.owner, until=now + timing.lease_ttl, now=now
        )
        if stored is None:
            live.lost_lease()
            return False
        live.holds_lease(rotation.lease_sure_until(now, timing))
        if stored.version > live.record.version or (
            not adopt and stored.version != live.record.version
        ):
            live.record = stored
        return True

    async def _release_lease(self, live: Live) -> None:
        if not live.leased:
            return  # the rotation's last write ended it
        live.lost_lease()
        try:
            await self.core.store.release_lease(live.record.id, self.core.owner)
        except StoreError as exc:
            # Harmless: the lease expires by itself.
            _log.warning(
                "connection %s: could not release the refresh lease: %s",
                live.record.id,
                exc,
                extra={"connection_id": live.record.id},
            )
