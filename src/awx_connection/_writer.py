"""
The write spine: the only way a connection's record changes.

Every change goes the same four steps, in this order, and only through
here:

1. **fire**: the machine fires the row (``_machine.fire``): the next record
   and its event, nothing written;
2. **compare-and-swap**: the store writes record and event together, only
   if the stored version is still the one this process read; a lost
   acknowledgement is told apart from a lost race by re-reading (the
   record's ``write_id`` says whether the stored one is ours);
3. **adopt**: the holder takes the written record;
4. **publish**: the event goes to subscribers, only now that it is stored.

If the write fails, nothing in memory changed and nobody heard of it.
Network I/O never happens in here: the caller does it before (the code
exchange, a refresh) or after (the row's action).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, final

import attrs

from ._core import Core
from ._errors import StoreError, StoreUnavailableError, VersionConflictError
from ._events import ConnectionEvent
from ._live import Live
from ._machine import fire
from ._records import ConnectionRecord
from ._states import Trigger

__all__ = ["Writer"]

_log = logging.getLogger("awx_connection")


@final
@attrs.define(eq=False)
class Writer:
    """Fires rows, writes them by compare-and-swap, adopts and publishes (see the module)."""

    core: Core

    def fire(
        self, live: Live, trigger: Trigger, reason: str, **changes: Any
    ) -> tuple[ConnectionRecord, ConnectionEvent]:
        """The record and event *trigger* makes of ``live.record`` now; nothing is written."""
        return fire(
            live.record,
            trigger,
            reason,
            changes,
            now=self.core.clock.now(),
            write_id=secrets.token_hex(8),
        )

    async def transition(
        self,
        live: Live,
        trigger: Trigger,
        reason: str,
        *,
        release_lease: bool = False,
        **changes: Any,
    ) -> ConnectionEvent:
        """
        Fire *trigger* and commit it. The caller holds ``live.lock``. With
        *release_lease*, the write also ends this process's refresh lease.

        Raises:
            IllegalTransitionError: The record's state or the row's guard refuses it.
            VersionConflictError: Another writer stored a newer version first
                (the holder has it now).
            StoreError: The store failed; nothing changed.
        """
        new, event = self.fire(live, trigger, reason, **changes)
        await self.commit(live, new, event, release_lease=release_lease)
        return event

    async def commit(
        self,
        live: Live,
        new: ConnectionRecord,
        event: ConnectionEvent,
        *,
        release_lease: bool = False,
    ) -> None:
        """Write what :meth:`fire` made, then adopt it and publish its event."""
        await self._write(live, new, event, release_lease=release_lease)
        # A cached refresh failure belongs to the state it happened in.
        live.succeeded()
        self.publish(event)

    async def begin(self, record: ConnectionRecord, event: ConnectionEvent) -> None:
        """Store a connection ``begin`` created, then publish its first event."""
        await self.core.store.insert(record, event)
        self.publish(event)

    async def amend(self, live: Live, **changes: Any) -> None:
        """
        Persist a change that is no transition (a rotation's journal, written
        again for one more attempt): a new version, no event.
        """
        record = live.record
        new = attrs.evolve(
            record,
            version=record.version + 1,
            updated_at=self.core.clock.now(),
            write_id=secrets.token_hex(8),
            **changes,
        )
        await self._write(live, new, None)

    async def _write(
        self,
        live: Live,
        new: ConnectionRecord,
        event: ConnectionEvent | None,
        *,
        release_lease: bool = False,
    ) -> None:
        """Compare-and-swap *new* over ``live.record``; on a conflict, adopt the stored, raise."""
        store = self.core.store
        release = self.core.owner if release_lease and live.leased else None
        try:
            await store.update(
                new, expected_version=live.record.version, event=event, release_lease=release
            )
        except (VersionConflictError, StoreUnavailableError):
            # A lost acknowledgement can hide a committed write: if the store
            # now holds exactly our record, the write happened.
            try:
                stored = await store.get(new.id)
            except StoreError:
                stored = None
            if stored == new:
                live.written(new, released=release is not None)
                return
            if stored is not None and stored.version > live.record.version:
                live.record = stored
            raise
        live.written(new, released=release is not None)

    def publish(self, event: ConnectionEvent) -> None:
        """Count, log and hand *event* to the subscribers (it is stored already)."""
        self.core.counts[f"transition:{event.trigger.value}"] += 1
        if _log.isEnabledFor(logging.INFO):  # the extra dict alone costs a microsecond
            _log.info(
                "connection %s: %s -> %s (%s)",
                event.connection_id,
                event.source.value if event.source else "-",
                event.dest.value,
                event.reason,
                extra={
                    "connection_id": event.connection_id,
                    "trigger": event.trigger.value,
                    "state": event.dest.value,
                    "sequence": event.sequence,
                },
            )
        self.core.bus.publish(event)
