"""
What is stored about a connection, and its JSON form.

:class:`ConnectionRecord` is an immutable snapshot. Every change produces a
new record with ``version + 1``, written by compare-and-swap, so a writer
holding an old snapshot can never overwrite a newer one.

:func:`dump_record` / :func:`load_record` convert to and from plain JSON
types for the stores. Loading is strict: a row that does not decode raises
:class:`~awx_connection.StoreError` naming the connection, never a bare
``KeyError`` and never a silent reset.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, final

import attrs

from ._crypto import KeyRing
from ._errors import DecryptionError, StoreError
from ._events import ConnectionEvent
from ._secrets import Secret
from ._states import ConnectionState, Trigger
from ._tokens import TokenSet

__all__ = [
    "ConnectionRecord",
    "ConnectionSummary",
    "PendingAuthorization",
    "RotationJournal",
    "dump_event",
    "dump_record",
    "load_event",
    "load_record",
    "load_summary",
]


@final
@attrs.frozen
class PendingAuthorization:
    """
    An authorize URL handed out and not yet answered.

    Only the SHA-256 of ``state`` is kept: the raw value exists in the URL and
    nowhere else, so a leaked row cannot be used to forge a callback.
    """

    #: ``None`` once the callback arrived: a ``state`` works once.
    state_hash: str | None
    expires_at: float
    redirect_uri: str
    sign_up: bool = False
    code_verifier: Secret | None = None


@final
@attrs.frozen
class RotationJournal:
    """
    A refresh that was started and whose outcome is not yet stored.

    It is written *before* each POST, so a crash at any point leaves it
    behind for the next process to resume.

    ``unsafe_since`` is when the refresh token of ``generation`` was first
    sent in an attempt whose outcome is unknown (in flight, lost response,
    timeout, 5xx other than 503, unreadable 200). From then on the provider
    may have rotated, so the token is only safe to present until
    ``unsafe_since + grace - margin``. ``None`` means every attempt so far
    certainly did not reach the provider (connection refused, 503, 429), so no
    deadline applies and a provider outage cannot burn the connection.
    """

    generation: int
    started_at: float
    attempts: int = 0
    unsafe_since: float | None = None


@final
@attrs.frozen
class ConnectionRecord:
    """An immutable snapshot of one connection, as stored."""

    id: str
    state: ConnectionState
    version: int
    #: The sequence number of the connection's latest event.
    sequence: int
    created_at: float
    updated_at: float
    reason: str
    scopes: tuple[str, ...] = ()
    external_id: str | None = None
    account_id: str | None = None
    authorization: PendingAuthorization | None = None
    #: The authorization code, held only while ``authorized``.
    code: Secret | None = None
    tokens: TokenSet | None = None
    journal: RotationJournal | None = None
    #: When the current authorization became active (the code exchange).
    #: A disconnect webhook created before it belongs to an earlier
    #: authorization and must not revoke this one (webhooks are unordered).
    activated_at: float | None = None
    #: A random id of the write that produced this version. Two replicas can
    #: compute byte-identical records (same clock reading, same input); this
    #: tells "my write landed, only the acknowledgement was lost" apart from
    #: "someone else wrote the same thing".
    write_id: str = ""


@final
@attrs.frozen
class ConnectionSummary:
    """
    What a keep-alive pass needs of a stored connection, and nothing secret.

    Stores read it without decrypting (:meth:`~awx_connection.Store.list_summaries`):
    a pass over 100,000 idle connections then opens no envelope, where
    full records cost two AES-GCM decryptions and two base64 decodes each.
    """

    id: str
    state: ConnectionState
    version: int
    created_at: float
    #: The generation, issue time and refresh expiry of the stored tokens;
    #: ``None`` without tokens.
    generation: int | None = None
    issued_at: float | None = None
    refresh_expires_at: float | None = None

    @classmethod
    def of(cls, record: ConnectionRecord) -> ConnectionSummary:
        """The summary of a record at hand (the in-memory store, tests)."""
        tokens = record.tokens
        if tokens is None:
            return cls(record.id, record.state, record.version, record.created_at)
        return cls(
            record.id,
            record.state,
            record.version,
            record.created_at,
            tokens.generation,
            tokens.issued_at,
            tokens.refresh_expires_at,
        )


def _sealer(record_id: str, keys: KeyRing | None) -> Callable[[Secret | None, str], str | None]:
    def seal(value: Secret | None, field: str) -> str | None:
        if value is None:
            return None
        if keys is None:
            return value.reveal()
        return keys.encrypt(value.reveal(), connection_id=record_id, field=field)

    return seal


def dump_record(record: ConnectionRecord, keys: KeyRing | None = None) -> dict[str, Any]:
    """
    The record as JSON-ready data.

    With *keys*, every secret is an AES-256-GCM envelope bound to the
    connection id and the field name; without, secrets are plain (the
    in-memory store, which never leaves the process).
    """
    _secret = _sealer(record.id, keys)
    auth = record.authorization
    tokens = record.tokens
    journal = record.journal
    return {
        "id": record.id,
        "state": record.state.value,
        "version": record.version,
        "sequence": record.sequence,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "reason": record.reason,
        "scopes": list(record.scopes),
        "external_id": record.external_id,
        "account_id": record.account_id,
        "authorization": None
        if auth is None
        else {
            "state_hash": auth.state_hash,
            "expires_at": auth.expires_at,
            "redirect_uri": auth.redirect_uri,
            "sign_up": auth.sign_up,
            "code_verifier": _secret(auth.code_verifier, "code_verifier"),
        },
        "code": _secret(record.code, "code"),
        "tokens": None
        if tokens is None
        else {
            "access_token": _secret(tokens.access_token, "access_token"),
            "refresh_token": _secret(tokens.refresh_token, "refresh_token"),
            "access_expires_at": tokens.access_expires_at,
            "refresh_expires_at": tokens.refresh_expires_at,
            "issued_at": tokens.issued_at,
            "generation": tokens.generation,
            "scope": list(tokens.scope),
        },
        "activated_at": record.activated_at,
        "write_id": record.write_id,
        "journal": None
        if journal is None
        else {
            "generation": journal.generation,
            "started_at": journal.started_at,
            "attempts": journal.attempts,
            "unsafe_since": journal.unsafe_since,
        },
    }


def _opener(
    record_id: str, keys: KeyRing | None, *, accept_plaintext: bool
) -> Callable[[object, str], Secret | None]:
    def open_(value: object, field: str) -> Secret | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise TypeError("secret is not a string")
        if keys is None:
            # No keys: the in-memory store, or a durable store opened with
            # allow_plaintext=True. An envelope cannot be opened here.
            if KeyRing.is_envelope(value):
                raise DecryptionError(record_id, f"{field}: encrypted, but no keys configured")
            return Secret(value)
        if not KeyRing.is_envelope(value):
            if accept_plaintext:  # rotate_keys(seal_plaintext=True), about to seal it
                return Secret(value)
            # With keys every secret was written sealed: plaintext in its
            # place is tampering (a token swapped in by someone who can
            # write the database) until an operator says otherwise.
            raise DecryptionError(
                record_id,
                f"{field}: plaintext, not an encrypted envelope: tampered with, or written "
                "without keys ('awx-connection keys seal' seals such rows)",
            )
        return Secret(keys.decrypt(value, connection_id=record_id, field=field))

    return open_


#: Scope tuples loaded so far, each kept once: every connection with the
#: same scopes then shares one tuple and its strings instead of holding two
#: copies of its own (``scopes`` and ``tokens.scope``; about 250 B a
#: connection). Bounded, so odd data cannot grow it without end: past the
#: bound a new combination is simply not shared.
_SHARED_SCOPES: dict[tuple[str, ...], tuple[str, ...]] = {}
_SHARED_SCOPES_MAX = 1024


def _scopes(value: Any) -> tuple[str, ...]:
    scopes = tuple(value)
    shared = _SHARED_SCOPES.get(scopes)
    if shared is not None:
        return shared
    if len(_SHARED_SCOPES) < _SHARED_SCOPES_MAX:
        _SHARED_SCOPES[scopes] = scopes
    return scopes


#: ``ConnectionState(value)`` without the enum's ``__call__`` (0.4 µs a record);
#: a value not in it still goes through ``ConnectionState`` for its error.
_STATES: dict[object, ConnectionState] = {state.value: state for state in ConnectionState}


def _required(value: Secret | None) -> Secret:
    if value is None:
        raise TypeError("token is missing")
    return value


def load_record(
    data: dict[str, Any], keys: KeyRing | None = None, *, accept_plaintext: bool = False
) -> ConnectionRecord:
    """
    Rebuild a record from :func:`dump_record` output, decrypting with *keys*.

    With *keys*, every secret must be an envelope: a plaintext one raises
    :class:`DecryptionError`, as tampering, unless *accept_plaintext* (only
    for ``rotate_keys(seal_plaintext=True)``, which seals it at once).
    Without *keys*, secrets are plaintext and an envelope raises.

    Raises:
        DecryptionError: A secret did not decrypt (wrong key, tampering), or
            is plaintext although *keys* are given.
        StoreError: The data does not describe a valid record.
    """
    if not isinstance(data, dict):
        msg = f"stored record is corrupt (a JSON {type(data).__name__}, not an object)"
        raise StoreError(msg)
    connection_id = str(data.get("id", "?"))
    _opt_secret = _opener(connection_id, keys, accept_plaintext=accept_plaintext)
    try:
        auth = data["authorization"]
        tokens = data["tokens"]
        journal = data["journal"]
        return ConnectionRecord(
            id=data["id"],
            state=_STATES.get(data["state"]) or ConnectionState(data["state"]),
            version=int(data["version"]),
            sequence=int(data["sequence"]),
            created_at=float(data["created_at"]),
            updated_at=float(data["updated_at"]),
            # Interned: most connections repeat a handful of reasons
            # ("tokens received", "rotated to generation 3").
            reason=sys.intern(str(data["reason"])),
            scopes=_scopes(data["scopes"]),
            external_id=data["external_id"],
            account_id=data["account_id"],
            authorization=None
            if auth is None
            else PendingAuthorization(
                state_hash=auth["state_hash"],
                expires_at=float(auth["expires_at"]),
                redirect_uri=auth["redirect_uri"],
                sign_up=bool(auth["sign_up"]),
                code_verifier=_opt_secret(auth["code_verifier"], "code_verifier"),
            ),
            code=_opt_secret(data["code"], "code"),
            tokens=None
            if tokens is None
            else TokenSet(
                access_token=_required(_opt_secret(tokens["access_token"], "access_token")),
                refresh_token=_required(_opt_secret(tokens["refresh_token"], "refresh_token")),
                access_expires_at=float(tokens["access_expires_at"]),
                refresh_expires_at=float(tokens["refresh_expires_at"]),
                issued_at=float(tokens["issued_at"]),
                generation=int(tokens["generation"]),
                scope=_scopes(tokens["scope"]),
            ),
            journal=None
            if journal is None
            else RotationJournal(
                generation=int(journal["generation"]),
                started_at=float(journal["started_at"]),
                attempts=int(journal["attempts"]),
                unsafe_since=None
                if journal["unsafe_since"] is None
                else float(journal["unsafe_since"]),
            ),
            activated_at=None if data.get("activated_at") is None else float(data["activated_at"]),
            write_id=str(data.get("write_id", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        msg = f"connection {connection_id!r}: stored record is corrupt ({type(exc).__name__})"
        raise StoreError(msg) from None


def load_summary(data: dict[str, Any]) -> ConnectionSummary:
    """
    The :class:`ConnectionSummary` of :func:`dump_record` output, decrypting nothing.

    Raises:
        StoreError: The data does not describe a valid record.
    """
    if not isinstance(data, dict):
        msg = f"stored record is corrupt (a JSON {type(data).__name__}, not an object)"
        raise StoreError(msg)
    connection_id = str(data.get("id", "?"))
    try:
        tokens = data["tokens"]
        return ConnectionSummary(
            id=str(data["id"]),
            state=_STATES.get(data["state"]) or ConnectionState(data["state"]),
            version=int(data["version"]),
            created_at=float(data["created_at"]),
            generation=None if tokens is None else int(tokens["generation"]),
            issued_at=None if tokens is None else float(tokens["issued_at"]),
            refresh_expires_at=None if tokens is None else float(tokens["refresh_expires_at"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        msg = f"connection {connection_id!r}: stored record is corrupt ({type(exc).__name__})"
        raise StoreError(msg) from None


def dump_event(event: ConnectionEvent) -> dict[str, Any]:
    """The event as JSON-ready data."""
    return {
        "connection_id": event.connection_id,
        "sequence": event.sequence,
        "trigger": event.trigger.value,
        "source": None if event.source is None else event.source.value,
        "dest": event.dest.value,
        "reason": event.reason,
        "at": event.at,
        "account_id": event.account_id,
        "external_id": event.external_id,
    }


def load_event(data: dict[str, Any]) -> ConnectionEvent:
    """
    Rebuild an event from :func:`dump_event` output.

    Raises:
        StoreError: The data does not describe a valid event.
    """
    try:
        source = data["source"]
        return ConnectionEvent(
            connection_id=data["connection_id"],
            sequence=int(data["sequence"]),
            trigger=Trigger(data["trigger"]),
            source=None if source is None else ConnectionState(source),
            dest=ConnectionState(data["dest"]),
            reason=str(data["reason"]),
            at=float(data["at"]),
            account_id=data["account_id"],
            external_id=data["external_id"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        msg = f"stored event is corrupt ({type(exc).__name__})"
        raise StoreError(msg) from None
