"""
The rotation protocol's decisions, one table each: record, journal, lease,
clocks and last outcome in, the next step out. No socket, no store, no
event loop: these are the rules ``_rotator`` performs.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from awx_connection import (
    ConnectionRecord,
    ConnectionState,
    InvalidClientError,
    InvalidGrantError,
    MalformedResponseError,
    NetworkError,
    ProviderUnavailableError,
    RateLimitedError,
    RotationJournal,
    Secret,
    TimingPolicy,
    TokenSet,
)
from awx_connection import _rotation as r

S = ConnectionState
NOW = 10_000.0
TIMING = TimingPolicy()  # grace 60, margin 15, lease 20, request timeout 10, resume 12
DEADLINE = TIMING.grace - TIMING.grace_margin  # 45 s after the token was first sent
INF = float("inf")


def tokens(generation: int = 0, **changes: Any) -> TokenSet:
    fields: dict[str, Any] = {
        "access_token": Secret(f"a{generation}"),
        "refresh_token": Secret(f"r{generation}"),
        "access_expires_at": NOW + 300,
        "refresh_expires_at": NOW + 86400,
        "issued_at": NOW,
        "generation": generation,
    }
    fields.update(changes)
    return TokenSet(**fields)


def journal(unsafe_since: float | None = NOW, attempts: int = 1, **changes: Any) -> RotationJournal:
    return RotationJournal(0, changes.pop("started_at", NOW), attempts, unsafe_since)


def record(state: ConnectionState = S.ACTIVE, **changes: Any) -> ConnectionRecord:
    fields: dict[str, Any] = {
        "id": "c1",
        "state": state,
        "version": 5,
        "sequence": 5,
        "created_at": 0.0,
        "updated_at": 0.0,
        "reason": "",
        "tokens": tokens(),
        "journal": journal() if state is S.REFRESHING else None,
    }
    fields.update(changes)
    return ConnectionRecord(**fields)


# --- needs_refresh -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "rec", "stale", "now", "needed"),
    [
        ("fresh tokens", record(), None, NOW, False),
        ("no tokens", record(S.PENDING, tokens=None), None, NOW, True),
        ("a rotation is journaled", record(S.REFRESHING), None, NOW, True),
        ("the generation a 401 refused", record(), 0, NOW, True),
        ("an older generation refused", record(tokens=tokens(3)), 2, NOW, False),
        ("inside the skew (60 s)", record(), None, NOW + 240, True),
        ("just before the skew", record(), None, NOW + 239, False),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_needs_refresh(
    case: str, rec: ConnectionRecord, stale: int | None, now: float, needed: bool
) -> None:
    assert needed is r.needs_refresh(rec, stale, now, TIMING)


# --- before_lease ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "rec", "reloaded", "step"),
    [
        ("fresh: adopt", record(), False, r.Adopt(tokens())),
        ("revoked, our copy may be old: reload", record(S.REVOKED), False, r.Reload()),
        ("revoked as stored: unusable", record(S.REVOKED), True, r.Unusable(record(S.REVOKED))),
        ("pending: reload first", record(S.PENDING, tokens=None), False, r.Reload()),
        ("due: take the lease", record(tokens=tokens(access_expires_at=NOW)), False, r.Lease()),
        ("left refreshing: take the lease", record(S.REFRESHING), True, r.Lease()),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_before_lease(case: str, rec: ConnectionRecord, reloaded: bool, step: object) -> None:
    assert step == r.before_lease(rec, None, NOW, TIMING, reloaded=reloaded)


# --- the lease ---------------------------------------------------------------------------


def test_a_lease_is_surely_ours_for_half_its_spare_term() -> None:
    """ttl 20 s, request timeout 10 s: a POST sent within 5 s is over 5 s before it lapses."""
    assert NOW + 5 == r.lease_sure_until(NOW, TIMING)


@pytest.mark.parametrize(
    ("leased", "sure_until", "now", "renew"),
    [
        (False, INF, NOW, True),  # not ours
        (True, NOW + 5, NOW, False),  # young: nothing to check
        (True, NOW + 5, NOW + 5, True),  # no longer surely ours
    ],
)
def test_lease_needs_renewal(leased: bool, sure_until: float, now: float, renew: bool) -> None:
    assert renew is r.lease_needs_renewal(leased, sure_until, now)


# --- quiet_for ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "rec", "seen_at", "monotonic", "now", "wait"),
    [
        ("serving: nothing to wait for", record(), 0.0, 0.0, NOW, 0.0),
        (
            "every attempt certainly failed",
            record(S.REFRESHING, journal=journal(None)),
            0,
            0,
            NOW,
            0,
        ),
        ("our own journal", record(S.REFRESHING), -INF, 0.0, NOW, 0.0),
        ("another's, just seen", record(S.REFRESHING), 100.0, 100.0, NOW + 21, 12.0),
        ("another's, seen 5 s ago", record(S.REFRESHING), 100.0, 105.0, NOW + 26, 7.0),
        ("another's, stood still long enough", record(S.REFRESHING), 100.0, 112.0, NOW, 0.0),
        (
            "past the deadline, its writer may still succeed",
            record(S.REFRESHING),
            0,
            0,
            NOW + 50,
            12,
        ),
        ("past grace: its writer is surely done", record(S.REFRESHING), 0.0, 0.0, NOW + 60, 0.0),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_quiet_for(
    case: str, rec: ConnectionRecord, seen_at: float, monotonic: float, now: float, wait: float
) -> None:
    assert wait == pytest.approx(r.quiet_for(rec, seen_at, monotonic, now, TIMING))


def test_a_long_request_timeout_keeps_the_writer_waited_for_past_grace() -> None:
    """request_timeout 19 s, margin 15 s: the writer's request may end 64 s after, so wait."""
    timing = TimingPolicy(request_timeout=19, lease_ttl=20, resume_delay=1, grace=60)
    rec = record(S.REFRESHING)
    assert 0 < r.quiet_for(rec, 0.0, 0.0, NOW + 61, timing)
    assert 0 == r.quiet_for(rec, 0.0, 0.0, NOW + 64, timing)


# --- journal_step ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "rec", "now", "step"),
    [
        (
            "serving: start the rotation, unsafe from now",
            record(),
            NOW + 1,
            r.Start(RotationJournal(0, NOW + 1, 1, NOW + 1)),
        ),
        (
            "serving, aged out: expire",
            record(tokens=tokens(refresh_expires_at=NOW)),
            NOW,
            r.Expire(),
        ),
        (
            "rotating, aged out meanwhile: expire",
            record(S.REFRESHING, tokens=tokens(refresh_expires_at=NOW)),
            NOW,
            r.Expire(),
        ),
        (
            "rotating, inside the deadline: one more attempt, same unsafe_since",
            record(S.REFRESHING),
            NOW + DEADLINE - 1,
            r.Resume(RotationJournal(0, NOW, 2, NOW)),
        ),
        (
            "rotating, every attempt certainly failed: unsafe from now",
            record(S.REFRESHING, journal=journal(None)),
            NOW + 100,
            r.Resume(RotationJournal(0, NOW, 2, NOW + 100)),
        ),
        (
            "rotating, past the deadline: invalidate",
            record(S.REFRESHING),
            NOW + DEADLINE,
            r.Invalidate(),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_journal_step(case: str, rec: ConnectionRecord, now: float, step: object) -> None:
    assert step == r.journal_step(rec, now, TIMING)


def test_a_rewritten_journal_is_the_same_attempt_again() -> None:
    written = RotationJournal(0, NOW, 3, NOW)
    assert RotationJournal(0, NOW, 2, None) == r.rewritten(written, first_unsafe=True)
    assert RotationJournal(0, NOW, 2, NOW) == r.rewritten(written, first_unsafe=False)
    rec = record(S.REFRESHING)
    base = r.rewritten(written, first_unsafe=False)
    assert r.Resume(written) == r.journal_step(rec, NOW + 1, TIMING, base)


def test_the_store_deadline_counts_from_the_first_unsafe_send() -> None:
    assert NOW + DEADLINE == r.store_deadline(journal(NOW), TIMING)
    assert NOW - 7 + DEADLINE == r.store_deadline(journal(None, started_at=NOW - 7), TIMING)


# --- after_attempt -----------------------------------------------------------------------

SENT_FIRST = r.Sent(tokens(), journal(NOW), first_unsafe=True)
SENT_AGAIN = r.Sent(tokens(), journal(NOW - 10, attempts=2), first_unsafe=False)
NOT_SENT = NetworkError("refused", maybe_processed=False)
LOST = NetworkError("lost", maybe_processed=True)
OVERLAP = RateLimitedError("429", code="too_many_requests", concurrent=True)


@pytest.mark.parametrize(
    ("case", "sent", "last", "step"),
    [
        (
            "a pair: store it until the deadline",
            attrs.evolve(SENT_FIRST, new_tokens=tokens(1)),
            False,
            r.Store(tokens(1), NOW + DEADLINE),
        ),
        (
            "invalid_grant: check the store first",
            attrs.evolve(SENT_FIRST, error=InvalidGrantError("no", code="invalid_grant")),
            False,
            r.CheckGrant(),
        ),
        ("lost: retry, still unsafe", attrs.evolve(SENT_FIRST, error=LOST), False, r.Retry()),
        (
            "certainly not sent, first unsafe: undo and retry",
            attrs.evolve(SENT_FIRST, error=NOT_SENT),
            False,
            r.Retry(journal(None)),
        ),
        (
            "certainly not sent, unsafe before: keep and retry",
            attrs.evolve(SENT_AGAIN, error=OVERLAP),
            False,
            r.Retry(),
        ),
        (
            "last, never sent: abort",
            attrs.evolve(SENT_FIRST, error=NOT_SENT),
            True,
            r.Abort(NOT_SENT),
        ),
        (
            "last, maybe sent: give up, keep the journal",
            attrs.evolve(SENT_FIRST, error=LOST),
            True,
            r.GiveUp(LOST),
        ),
        (
            "last, this one not sent but an earlier one maybe: give up",
            attrs.evolve(SENT_AGAIN, error=OVERLAP),
            True,
            r.GiveUp(OVERLAP),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_after_attempt(case: str, sent: r.Sent, last: bool, step: object) -> None:
    assert step == r.after_attempt(sent, last=last, timing=TIMING)


def test_a_refusal_is_not_retried_even_with_attempts_left() -> None:
    """invalid_client is not retryable: it ends the rotation at once."""
    refused = InvalidClientError("no", status=401, code="invalid_client")
    step = r.after_attempt(attrs.evolve(SENT_FIRST, error=refused), last=False, timing=TIMING)
    assert r.Abort(refused) == step


def test_a_5xx_after_the_provider_may_have_rotated_is_kept_unsafe() -> None:
    for error in (
        ProviderUnavailableError("500", status=500, maybe_processed=True),
        MalformedResponseError("html", status=200, maybe_processed=True),
    ):
        assert r.GiveUp(error) == r.after_attempt(
            attrs.evolve(SENT_FIRST, error=error), last=True, timing=TIMING
        )


# --- after_invalid_grant, adopted_meanwhile ----------------------------------------------


@pytest.mark.parametrize(
    ("case", "stored", "step"),
    [
        ("another process rotated: adopt", record(tokens=tokens(1)), r.Adopt(tokens(1))),
        ("nothing newer: revoke", record(), r.Revoke()),
        ("gone from the store: revoke", None, r.Revoke()),
        ("newer but still rotating: revoke", record(S.REFRESHING, tokens=tokens(1)), r.Revoke()),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_after_invalid_grant(case: str, stored: ConnectionRecord | None, step: object) -> None:
    assert step == r.after_invalid_grant(stored, tokens(0))


@pytest.mark.parametrize(
    ("rec", "adopted"),
    [
        (record(tokens=tokens(1)), tokens(1)),
        (record(), None),
        (record(S.REFRESHING, tokens=tokens(1)), None),
    ],
)
def test_adopted_meanwhile(rec: ConnectionRecord, adopted: TokenSet | None) -> None:
    assert adopted == r.adopted_meanwhile(rec, tokens(0))
