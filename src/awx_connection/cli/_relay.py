"""
``awx-connection events relay`` and ``events dead-letters list|replay``.

``relay`` runs a :class:`~awx_connection.relay.Relay` as a process until
SIGINT or SIGTERM: the batch in flight is cancelled (nothing of it was
committed, so the next holder sends it again), what was delivered before
it is committed, the leases are given back (another relay takes over at
once rather than after the lease term), and the exit code is 0. Start as
many as you like on one store with the same ``--name``: they share the
outbox's partitions. A SIGKILL loses nothing either; the partitions come
back after ``--lease-term``.

The sink is chosen by the ``--to`` URL: ``nats://`` (or ``tls://``) for
JetStream, ``http://``/``https://`` for signed webhooks, whose ``whsec_``
secret is read from ``AWX_RELAY_WEBHOOK_SECRET`` (never from the command
line, which other users of the machine can read).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import urllib.parse
from collections.abc import AsyncIterator

from .._delivery import EventSink
from .._errors import ConfigurationError
from .._retry import Backoff
from .._secrets import Secret
from .._store import Store
from ..relay import NatsSink, Relay, WebhookSink, replay
from ._exits import EXIT_FAILED, EXIT_OK
from ._output import emit, emit_json, event_json
from ._signals import race, stop_on_signals
from ._stores import store_from

__all__ = ["dead_letters_list", "dead_letters_replay", "relay", "sink_from"]


@contextlib.asynccontextmanager
async def opened_store(args: argparse.Namespace) -> AsyncIterator[Store]:
    """
    The store of ``--store``, opened without needing ``AWX_ENCRYPTION_KEYS``:
    a relay reads events and writes positions, leases and dead letters,
    none of which holds a secret, so a relay box needs no key.
    """
    store, _ = store_from(args, touches_secrets=False)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


#: Where the webhook sink's signing secret comes from.
SECRET_VARIABLE = "AWX_RELAY_WEBHOOK_SECRET"


def sink_from(args: argparse.Namespace) -> EventSink:
    """The sink of ``--to``, configured from the other options."""
    url: str = args.to
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme in {"nats", "tls"}:
        return NatsSink(
            url,
            stream=args.stream,
            subject_prefix=args.subject_prefix,
            create_stream=not args.no_create_stream,
        )
    if scheme in {"http", "https"}:
        secret = os.environ.get(SECRET_VARIABLE)
        if not secret:
            msg = f"a webhook relay signs with a whsec_ secret: set {SECRET_VARIABLE}"
            raise ConfigurationError(msg)
        return WebhookSink(
            url,
            Secret(secret),
            attempts=args.attempts,
            backoff=Backoff(args.retry_base, args.retry_cap),
            timeout=args.timeout,
        )
    msg = f"--to must be nats://HOST:PORT or http(s)://..., got a {scheme or 'bare'!r} URL"
    raise ConfigurationError(msg)


async def relay(args: argparse.Namespace) -> int:
    """``events relay``: deliver the outbox to ``--to`` until stopped."""
    sink = sink_from(args)
    async with opened_store(args) as store:
        relay = Relay(
            store,
            sink,
            name=args.name,
            batch=args.batch,
            lease_term=args.lease_term,
            poll_interval=args.poll_interval,
        )
        if args.owner:
            relay.owner = args.owner
        with stop_on_signals() as stop:
            async with relay:
                _say(args, "started", relay)
                await race(stop, relay.run())
        _say(args, "stopped", relay)
    return EXIT_OK


def _say(args: argparse.Namespace, what: str, relay: Relay) -> None:
    stats = relay.statistics
    if args.json:
        emit_json(
            {
                "relay": relay.name,
                "status": what,
                "owner": relay.owner,
                "sink": relay.sink.name,
                "delivered": stats.delivered,
                "dead_lettered": stats.dead_lettered,
            }
        )
    else:
        emit(
            f"relay {relay.name} {what} (owner {relay.owner}, to {relay.sink.name}): "
            f"{stats.delivered} delivered, {stats.dead_lettered} dead-lettered"
        )


async def dead_letters_list(args: argparse.Namespace) -> int:
    """``events dead-letters list``: what relay ``--name`` gave up on, by position."""
    async with opened_store(args) as store:
        after = 0
        while True:
            letters = await store.dead_letters(args.name, after=after, limit=500)
            if not letters:
                return EXIT_OK
            for letter in letters:
                if args.json:
                    emit_json(
                        {
                            "relay": letter.relay,
                            "position": letter.position,
                            "attempts": letter.attempts,
                            "error": letter.error,
                            "at": letter.at,
                            "event": event_json(letter.event),
                        }
                    )
                else:
                    event = letter.event
                    emit(
                        f"{letter.position}  {event.connection_id}  #{event.sequence:<3} "
                        f"{event.trigger.value}  attempts={letter.attempts}  {letter.error}"
                    )
            after = letters[-1].position


async def dead_letters_replay(args: argparse.Namespace) -> int:
    """``events dead-letters replay``: send them to ``--to`` again; exit 1 if some stay dead."""
    sink = sink_from(args)
    async with opened_store(args) as store:
        await sink.open()
        try:
            replayed, still_dead = await replay(
                store, sink, relay=args.name, positions=args.positions or None
            )
        finally:
            await sink.aclose()
    if args.json:
        emit_json({"replayed": replayed, "still_dead": still_dead})
    else:
        emit(f"replayed {replayed}, still dead {still_dead}")
    return EXIT_OK if still_dead == 0 else EXIT_FAILED
