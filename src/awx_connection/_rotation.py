"""
The rotation protocol, without I/O: given what is known, what to do next.

Airwallex rotates the refresh token on every refresh, keeps the previous one
usable for a grace window (60 s), and invalidates the whole connection when
an older one is presented. Getting that right across coroutines, processes,
lost answers, store outages and crashes is a handful of decisions: whether a
rotation is needed at all, whether another process's unfinished one must be
waited for, whether the old token may still be presented, what a failed
attempt means for it, whether a pair the provider issued can still be
stored. Each is a pure function here, of the record and its journal, the
lease, the injected clock's *now* (and the monotonic clock, for waits that
must hold whatever the replicas' clocks say) and the last outcome; each
returns a small value naming the next step, which the driver
(:mod:`awx_connection._rotator`) performs: read, write, wait, send.

That is the shape of h11, or of httpx's ``Auth.auth_flow``: the protocol can
be read top to bottom without following a single await, and every decision
is tested on its own, from a table, with no socket and no store
(tests/unit/test_rotation.py).
"""

from __future__ import annotations

from typing import final

import attrs

from ._config import TimingPolicy
from ._errors import InvalidGrantError, ProviderError
from ._records import ConnectionRecord, RotationJournal
from ._states import ROTATING, SERVING, USABLE
from ._tokens import TokenSet

__all__ = [
    "Abort",
    "Adopt",
    "CheckGrant",
    "Expire",
    "GiveUp",
    "Invalidate",
    "Lease",
    "Reload",
    "Resume",
    "Retry",
    "Revoke",
    "Sent",
    "Start",
    "Store",
    "Unusable",
    "adopted_meanwhile",
    "after_attempt",
    "after_invalid_grant",
    "before_lease",
    "journal_step",
    "lease_needs_renewal",
    "lease_sure_until",
    "needs_refresh",
    "quiet_for",
    "rewritten",
    "store_deadline",
]


# --- the steps ---------------------------------------------------------------------------


@final
@attrs.frozen
class Adopt:
    """The tokens at hand will do (another flight, or another process, rotated)."""

    tokens: TokenSet


@final
@attrs.frozen
class Unusable:
    """The connection has no usable tokens: raise its state's error."""

    record: ConnectionRecord


@final
@attrs.frozen
class Reload:
    """Our copy says unusable; it may be old (reauthorized elsewhere): read the store once."""


@final
@attrs.frozen
class Lease:
    """A rotation is needed: take the lease (or wait for the process that holds it)."""


@final
@attrs.frozen
class Expire:
    """The refresh token aged out: presenting it could only earn an ``invalid_grant``."""


@final
@attrs.frozen
class Invalidate:
    """
    The token may have reached the provider and its grace window has
    closed: presenting it again could burn the connection. Stop.
    """


@final
@attrs.frozen
class Start:
    """Write the journal (``refresh_started``), then present the token."""

    journal: RotationJournal


@final
@attrs.frozen
class Resume:
    """Write the journal again (one more attempt of the same token), then present it."""

    journal: RotationJournal


@final
@attrs.frozen
class Store:
    """The provider issued a pair: store it, writing again until *deadline* (injected clock)."""

    tokens: TokenSet
    deadline: float


@final
@attrs.frozen
class CheckGrant:
    """``invalid_grant``: re-read the store before believing it (someone may have rotated)."""


@final
@attrs.frozen
class Retry:
    """
    Try again after a backoff, with the same token; write *journal* first
    when the failed attempt certainly did not reach the provider and was
    the one that made the token unsafe (undoing that).
    """

    journal: RotationJournal | None = None


@final
@attrs.frozen
class Abort:
    """Attempts ran out, and the token certainly never reached the provider: ``refresh_aborted``."""

    error: ProviderError


@final
@attrs.frozen
class GiveUp:
    """
    Attempts ran out with the token maybe sent: keep the journal (settling
    resumes it inside the grace window) and raise *error*.
    """

    error: ProviderError


@final
@attrs.frozen
class Revoke:
    """The provider refused the token and nobody rotated it: the grant is gone."""


@final
@attrs.frozen
class Sent:
    """What one attempt presented, and what came back."""

    #: The tokens whose refresh token was presented.
    presented: TokenSet
    #: The journal as stored before the request.
    journal: RotationJournal
    #: True when this attempt first made the presented token unsafe.
    first_unsafe: bool
    new_tokens: TokenSet | None = None
    error: ProviderError | None = None


# --- before a rotation: is one needed, and by whom ------------------------------------


def needs_refresh(
    record: ConnectionRecord, stale_generation: int | None, now: float, timing: TimingPolicy
) -> bool:
    """
    Whether *record*'s tokens will not do: none, a rotation journaled, of
    *stale_generation* or older (a 401 proved them dead), or inside the
    refresh skew of their expiry.
    """
    tokens = record.tokens
    if record.state not in SERVING or tokens is None:
        return True
    if stale_generation is not None and tokens.generation <= stale_generation:
        return True
    return now >= tokens.access_expires_at - timing.skew(tokens.access_lifetime)


def before_lease(
    record: ConnectionRecord,
    stale_generation: int | None,
    now: float,
    timing: TimingPolicy,
    *,
    reloaded: bool,
) -> Adopt | Unusable | Reload | Lease:
    """
    A flight's first decision, on the record this process holds (after the
    lease is granted, on the record that came with it: another process may
    have rotated since ours was cached, and presenting our older refresh
    token would be a reuse). *reloaded*: this record was just read from the
    store because the held one said unusable.
    """
    if not needs_refresh(record, stale_generation, now, timing):
        assert record.tokens is not None
        return Adopt(record.tokens)
    if record.state not in USABLE or record.tokens is None:
        return Unusable(record) if reloaded else Reload()
    return Lease()


def lease_sure_until(now: float, timing: TimingPolicy) -> float:
    """
    Until when a lease taken or renewed at *now* needs no renewal before a
    POST: one sent before then is over (answered or timed out) with half of
    the lease's spare term still ahead (ttl 20 s, request timeout 10 s:
    5 s). ``TimingPolicy`` keeps the request timeout below the lease.
    """
    return now + (timing.lease_ttl - timing.request_timeout) / 2


def lease_needs_renewal(leased: bool, sure_until: float, now: float) -> bool:
    """
    Whether, right before a POST, the lease must be renewed (and the record
    read with it compared): it is not ours, or no longer surely ours (a slow
    retry, a paused process: it may have been taken, used and released by
    another process meanwhile).
    """
    return not leased or now >= sure_until


def quiet_for(
    record: ConnectionRecord,
    journal_seen_at: float,
    monotonic_now: float,
    now: float,
    timing: TimingPolicy,
) -> float:
    """
    Real seconds to wait before resuming another process's unfinished
    rotation (0: go), so that presenting the same token cannot overlap with
    that process's own request.

    The lease expired by the injected clock, which replicas may read
    differently (skew); the other process's request may still be on its
    way. Its requests end within ``resume_wait`` of its journal's commit,
    real time, so once the journal has stood still that long (by this
    process's monotonic clock) it is over. No wait for a journal this
    process wrote (*journal_seen_at* is minus infinity), nor for one whose
    attempts all certainly failed (a request in flight always has an
    unsafe journal behind it), nor once this process's clock says the
    writer's requests must be over whatever: it sent only before
    ``unsafe_since + grace - grace_margin`` by its clock, each request
    ending within ``request_timeout``, and the margin covers the skew.
    Waiting then could not change the answer (``invalidated``).
    """
    journal = record.journal
    if record.state not in ROTATING or journal is None or journal.unsafe_since is None:
        return 0.0
    over = journal.unsafe_since + max(
        timing.grace, timing.grace - timing.grace_margin + timing.request_timeout
    )
    if now >= over:
        return 0.0
    return max(0.0, journal_seen_at + timing.resume_wait - monotonic_now)


# --- the journal: may the token be presented (again)? ----------------------------------


def journal_step(
    record: ConnectionRecord,
    now: float,
    timing: TimingPolicy,
    base: RotationJournal | None = None,
) -> Expire | Invalidate | Start | Resume:
    """
    What to write before presenting the refresh token, so that a crash
    mid-request leaves a deadline behind for whoever resumes; or that the
    rotation must end instead, because sending could only do harm.

    *base* replaces the stored journal when an attempt writes its own again
    (see :func:`rewritten`).
    """
    tokens = record.tokens
    assert tokens is not None
    if now >= tokens.refresh_expires_at:
        return Expire()
    if record.state in SERVING:
        return Start(RotationJournal(tokens.generation, now, attempts=1, unsafe_since=now))
    journal = base or record.journal or RotationJournal(tokens.generation, now)
    unsafe_since = journal.unsafe_since
    if unsafe_since is not None and now >= unsafe_since + timing.grace - timing.grace_margin:
        return Invalidate()
    return Resume(
        attrs.evolve(
            journal,
            attempts=journal.attempts + 1,
            unsafe_since=now if unsafe_since is None else unsafe_since,
        )
    )


def rewritten(journal: RotationJournal, *, first_unsafe: bool) -> RotationJournal:
    """
    The base for writing an attempt's journal again, when the store took
    longer to confirm it than a watcher may wait (``resume_wait -
    request_timeout``): the same attempt, nothing sent meanwhile.
    """
    return attrs.evolve(
        journal,
        attempts=journal.attempts - 1,
        unsafe_since=None if first_unsafe else journal.unsafe_since,
    )


# --- what an answer or a failure means --------------------------------------------------


def store_deadline(journal: RotationJournal, timing: TimingPolicy) -> float:
    """Until when a pair the provider issued is worth writing: past it, a resumer gives up."""
    since = journal.unsafe_since if journal.unsafe_since is not None else journal.started_at
    return since + timing.grace - timing.grace_margin


def after_attempt(
    sent: Sent, *, last: bool, timing: TimingPolicy
) -> Store | CheckGrant | Retry | Abort | GiveUp:
    """
    What one attempt's outcome means. A pair: store it. ``invalid_grant``:
    check before believing it. A failure that certainly did not reach the
    provider, from the attempt that made the token unsafe: undo that (no
    deadline applies to a token never sent, so an outage cannot burn the
    connection). Retryable and attempts left: again. Otherwise give up,
    telling apart a token that certainly never left (``refresh_aborted``)
    from one that may have (kept for settling).
    """
    error = sent.error
    if error is None:
        assert sent.new_tokens is not None
        return Store(sent.new_tokens, store_deadline(sent.journal, timing))
    if isinstance(error, InvalidGrantError):
        return CheckGrant()
    journal = sent.journal
    undone = None
    if not error.maybe_processed and sent.first_unsafe:
        undone = journal = attrs.evolve(journal, unsafe_since=None)
    if error.retryable and not last:
        return Retry(undone)
    if journal.unsafe_since is None:
        return Abort(error)
    return GiveUp(error)


def after_invalid_grant(stored: ConnectionRecord | None, presented: TokenSet) -> Adopt | Revoke:
    """
    After ``invalid_grant``, on the record read back: another process
    rotated meanwhile (newer tokens, serving): adopt them; otherwise the
    provider has revoked the grant.
    """
    if (
        stored is not None
        and stored.state in SERVING
        and stored.tokens is not None
        and stored.tokens.generation > presented.generation
    ):
        return Adopt(stored.tokens)
    return Revoke()


def adopted_meanwhile(record: ConnectionRecord, presented: TokenSet) -> TokenSet | None:
    """
    Before another attempt, on a fresh read: tokens newer than the ones
    presented, stored by someone else (a 429 "concurrent refresh" meant
    another process held this token), or ``None``.
    """
    tokens = record.tokens
    if record.state in SERVING and tokens is not None and tokens.generation > presented.generation:
        return tokens
    return None
