"""
The runtime state machine: :data:`~awx_connection._states.TRANSITIONS` on
top of ``transitions``' :class:`AsyncMachine`.

We follow the pattern of research/transitions.md section 4, because the stock
library has sharp edges that matter here:

* **One machine for all connections, no** ``add_model``. Registering a model
  is O(n) (a list scan), so 100k connections would take minutes and leak
  without ``remove_model``. Instead we fire ``MACHINE.events[name].trigger``
  on a tiny scratch object holding only the current state.
* **No cancelling of concurrent triggers, no swallowed cancellation.** Stock
  ``process_context`` cancels other tasks triggering the same model and turns
  an outside ``CancelledError`` into ``False`` (pytransitions #704). Our
  override just runs the trigger. Per-connection serialization is ours: the
  manager holds one ``asyncio.Lock`` per connection around every transition.
* **Callbacks in order, in the caller's task.** Stock ``await_all`` gathers
  callbacks concurrently in new Tasks (losing order and contextvars).

The machine is used as a validated transition function: it decides the
destination; the manager then writes the new record and its event by
compare-and-swap and only afterwards publishes. If the write fails, nothing
in memory changed. Network I/O (exchange, refresh) is the action the manager
runs inside ``authorized`` and ``refreshing``, under the same lock.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, final

import attrs
from transitions.extensions.asyncio import AsyncEventData, AsyncMachine

from ._errors import IllegalTransitionError
from ._states import TRANSITIONS, ConnectionState, Trigger

if TYPE_CHECKING:
    from transitions.core import Callback

__all__ = ["MACHINE", "advance", "allowed_triggers"]


class _Machine(AsyncMachine):
    """AsyncMachine without cross-task cancellation and with sequential callbacks."""

    async def process_context(self, func: Callable[[], Awaitable[None]], model: object) -> bool:
        # Stock: registers the task and cancels other triggers of the model,
        # and swallows CancelledError. We serialize ourselves, so just run it.
        result: bool = await self._process_async(func, model)
        return result

    async def callbacks(  # type: ignore[override]  # as in AsyncMachine's own stub
        self, funcs: Iterable[Callback], event_data: AsyncEventData
    ) -> None:
        # Stock: wraps every list, even an empty one, in partials for
        # await_all. Same semantics, in order, without the detour; most
        # lists in our table are empty, so this halves the cost of a trigger.
        for func in funcs:
            await self.callback(func, event_data)  # type: ignore[arg-type]  # stub too narrow

    def __getattr__(self, name: str) -> Any:
        # Every transition asks hasattr(machine, "model_graphs") (set only by
        # the diagrams extension); the stock __getattr__ first tries to parse
        # the name as a dynamic callback (on_enter_<state>...) before
        # failing, about a microsecond per transition. Fail at once instead.
        if name == "model_graphs":
            raise AttributeError(name)
        return super().__getattr__(name)

    @staticmethod
    async def await_all(
        callables: list[Callable[..., Coroutine[Any, Any, bool | None]]],
    ) -> list[bool | None]:
        # Stock: asyncio.gather, one Task per callback, no ordering.
        return [await func() for func in callables]


@final
@attrs.define(eq=False)
class _Step:
    """The scratch model a trigger moves: only the ``state`` attribute (a state's name)."""

    state: str


# transitions logs an INFO line for every callback stage of every trigger;
# through this machine that is our internal bookkeeping, not news for the
# application's logs. Quiet it unless the application set a level itself.
for _name in ("transitions.core", "transitions.extensions.asyncio"):
    _logger = logging.getLogger(_name)
    if _logger.level == logging.NOTSET:
        _logger.setLevel(logging.WARNING)

# States by name, not as the Enum: transitions resolves an Enum state's name
# through the enum's descriptors about twenty times per trigger, a few
# percent of a transition; its behaviour is the same either way.
MACHINE = _Machine(
    model=None,
    states=[state.name for state in ConnectionState],
    transitions=[
        {
            "trigger": row.trigger.value,
            "source": [source.name for source in row.sources],
            "dest": row.dest.name,
        }
        for row in TRANSITIONS
    ],
    initial=ConnectionState.PENDING.name,
    auto_transitions=False,
    send_event=True,
)

_ALLOWED: dict[tuple[ConnectionState, Trigger], ConnectionState] = {
    (source, row.trigger): row.dest for row in TRANSITIONS for source in row.sources
}


def allowed_triggers(state: ConnectionState) -> frozenset[Trigger]:
    """The triggers *state* accepts."""
    return frozenset(trigger for (source, trigger) in _ALLOWED if source is state)


async def advance(connection_id: str, state: ConnectionState, trigger: Trigger) -> ConnectionState:
    """
    Run *trigger* from *state* through the machine and return the new state.

    Raises:
        IllegalTransitionError: *state* does not accept *trigger*; the error
            names the connection, the trigger and the state.
    """
    if (state, trigger) not in _ALLOWED:
        raise IllegalTransitionError(connection_id, trigger, state)
    step = _Step(state.name)
    moved = await MACHINE.events[trigger.value].trigger(step)
    if not moved:  # pragma: no cover - no conditions in the table today
        raise IllegalTransitionError(connection_id, trigger, state)
    return ConnectionState[step.state]
