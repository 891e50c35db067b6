"""
An event loop on a thread of its own, and calls into it from any other thread.

The one job here is the threading: start a thread that runs an event loop
around an async resource (an async context manager: its ``__aenter__`` at
start, its ``__aexit__`` at stop), hand coroutines to that loop from other
threads and wait for their results, and stop it all cleanly. It knows
nothing of connections; `_blocking` builds the
synchronous façade on it.

The shape is that of anyio's blocking portal (``anyio.from_thread``), kept
to what the façade needs and to plain asyncio:

* A call from another thread runs as a task on the loop
  (``asyncio.run_coroutine_threadsafe``) and its caller waits on a
  ``concurrent.futures.Future``: the result, or the very exception the task
  raised, same type and object, re-raised in the caller's thread.
* A call that outlives its timeout raises `CallTimeoutError` and
  cancels its task on the loop (work it had joined, such as a refresh
  flight shared with other callers, is shielded by the manager and goes on).
* A call from the loop's own thread would wait for itself forever; so would
  a call in a child process forked after start (the thread did not survive
  the fork). Both raise `BlockingCallError` at once.
* Calls that are still running when the portal stops are cancelled by the
  loop's shutdown; their callers get `ManagerClosedError`, never a
  bare ``CancelledError`` from another thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from enum import Enum
from typing import Any, Generic, TypeVar, final

from ._errors import BlockingCallError, CallTimeoutError, ManagerClosedError

__all__ = ["LoopThread", "BlockingState"]

T = TypeVar("T")
R = TypeVar("R")

_log = logging.getLogger("awx_connection.blocking")


class BlockingState(Enum):
    """Where a `LoopThread` is in its one life (it cannot be restarted)."""

    #: Made, no thread yet.
    NEW = "new"
    #: ``start()`` is entering the resource.
    STARTING = "starting"
    #: The resource is entered; calls are served.
    RUNNING = "running"
    #: ``stop()`` began, or start failed; no new call is accepted.
    CLOSING = "closing"
    #: The thread has ended.
    CLOSED = "closed"


@final
class LoopThread(Generic[T]):
    """
    One event-loop thread serving one async resource.

    Thread-safe: any number of threads may call `call()` at once; start
    and stop are serialised by a lock, and both are idempotent.
    """

    def __init__(self, lifespan: Callable[[], AbstractAsyncContextManager[T]], name: str) -> None:
        #: Makes the resource, on the loop thread (objects with loop-bound
        #: parts must be built on the loop that uses them).
        self._lifespan = lifespan
        self._name = name
        #: Serialises start() and stop().
        self._lock = threading.Lock()
        self.state = BlockingState.NEW
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resource: T | None = None
        #: Set by the loop thread once the resource is entered (or failed to be).
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        #: Set when start() gave up waiting: the thread must end, not serve.
        self._abandoned = False
        #: Set on the loop (from any thread, through call_soon_threadsafe) to stop.
        self._stop: asyncio.Event | None = None
        #: The process the thread was started in: a fork leaves it behind.
        self._pid = os.getpid()
        #: Calls handed to the loop and not answered yet, so that none is
        #: left waiting forever when the loop ends under it.
        self._calls: set[concurrent.futures.Future[Any]] = set()
        self._calls_lock = threading.Lock()
        self._ended = False

    def __repr__(self) -> str:
        return f"<LoopThread {self._name!r} {self.state.value}>"

    # -- lifecycle ----------------------------------------------------------

    def start(self, timeout: float | None) -> T:
        """
        Start the thread and enter the resource; return it. Idempotent: a
        second call returns the same resource.

        Raises:
            ManagerClosedError: The portal was stopped (or its start failed);
                make a new one.
            CallTimeoutError: Entering took longer than *timeout*; the
                thread was stopped.
            BaseException: Whatever entering the resource raised, same type.
        """
        self._check_thread()
        with self._lock:
            if self.state is BlockingState.RUNNING:
                assert self._resource is not None
                return self._resource
            if self.state is not BlockingState.NEW:
                msg = "the blocking manager was closed; make a new one"
                raise ManagerClosedError(msg)
            self.state = BlockingState.STARTING
            self._pid = os.getpid()
            # The loop is made here, not on the thread, so that stop() and a
            # start that times out always have it. A loop factory: Runner
            # without one would make it the *calling* thread's current loop.
            runner = asyncio.Runner(loop_factory=asyncio.new_event_loop)
            self._loop = runner.get_loop()
            thread = threading.Thread(target=self._run, args=(runner,), name=self._name)
            # A daemon: an application that never calls close() must still
            # exit (a rotation cut short is resumed from its journal).
            thread.daemon = True
            self._thread = thread
            thread.start()
            if not self._ready.wait(timeout):
                self.state = BlockingState.CLOSING
                self._abandon()
                thread.join()
                self.state = BlockingState.CLOSED
                msg = f"the manager did not open within {timeout} s; it was closed"
                raise CallTimeoutError(msg)
            if self._start_error is not None:
                self.state = BlockingState.CLOSING
                thread.join()
                self.state = BlockingState.CLOSED
                error, self._start_error = self._start_error, None
                raise error
            self.state = BlockingState.RUNNING
            assert self._resource is not None
            return self._resource

    def stop(self, timeout: float | None = None) -> None:
        """
        Exit the resource on the loop, end the loop and join the thread.
        Idempotent; a call from the loop's own thread is refused (it would
        join itself). In a process forked after start it only marks this
        copy closed: the thread, and what it holds, are the parent's.

        Raises:
            BlockingCallError: Called from the loop thread.
            CallTimeoutError: The thread did not end within *timeout*; a
                later call joins it again.
        """
        if self._thread is not None and self._pid != os.getpid():
            # A child forked after start: the thread is the parent's, and
            # nothing of it exists here to close (the parent closes it).
            self.state = BlockingState.CLOSED
            return
        self._check_thread()
        with self._lock:
            if self.state is BlockingState.NEW:
                self.state = BlockingState.CLOSED
                return
            if self.state is BlockingState.CLOSED:
                return
            self.state = BlockingState.CLOSING
            loop, stop, thread = self._loop, self._stop, self._thread
            if loop is not None and stop is not None:
                with contextlib.suppress(RuntimeError):  # the loop already ended
                    loop.call_soon_threadsafe(stop.set)
            if thread is not None:
                thread.join(timeout)
                if thread.is_alive():
                    msg = f"the manager's loop thread did not end within {timeout} s"
                    raise CallTimeoutError(msg)
            self.state = BlockingState.CLOSED

    @property
    def thread(self) -> threading.Thread | None:
        """The loop thread, once started (for tests and diagnostics)."""
        return self._thread

    def on_loop_thread(self) -> bool:
        """Whether the caller runs on this portal's loop thread."""
        thread = self._thread
        return thread is not None and threading.current_thread() is thread

    # -- calls --------------------------------------------------------------

    def call(self, function: Callable[[T], Coroutine[Any, Any, R]], timeout: float | None) -> R:
        """
        Run the coroutine ``function(resource)`` on the loop and wait for its result.

        Raises:
            ManagerClosedError: Not started, closing or closed (also for a
                call the shutdown cancelled).
            BlockingCallError: Called from the loop thread, or in a process
                forked after start.
            CallTimeoutError: No result within *timeout* seconds; the call
                was cancelled on the loop.
            BaseException: Whatever *function* raised, same type and object.
        """
        loop, resource = self._serving()
        # The coroutine is made here and run there: making it runs none of it.
        coroutine = function(resource)
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        except RuntimeError:  # the loop closed between the check and now
            coroutine.close()
            raise ManagerClosedError from None
        return self._wait(future, timeout)

    def call_soon(self, function: Callable[[T], R], timeout: float | None) -> R:
        """Run the plain ``function(resource)`` on the loop thread; as `call()`."""
        loop, resource = self._serving()
        future: concurrent.futures.Future[R] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(function(resource))
            except BaseException as exc:
                future.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:
            raise ManagerClosedError from None
        return self._wait(future, timeout)

    def resource(self) -> T:
        """
        The resource, for a read that needs no hop to the loop; raises as
        `call()` does when the portal is not serving.
        """
        return self._serving()[1]

    def _serving(self) -> tuple[asyncio.AbstractEventLoop, T]:
        self._check_thread()
        # Read without the lock: start() and stop() hold it for long, and a
        # call racing with stop() is answered by the loop's shutdown anyway.
        state, loop, resource = self.state, self._loop, self._resource
        if state is BlockingState.RUNNING and loop is not None and resource is not None:
            return loop, resource
        if state in (BlockingState.NEW, BlockingState.STARTING):
            msg = "the blocking manager is not started: call start() or use it in a with block"
            raise ManagerClosedError(msg)
        raise ManagerClosedError

    def _check_thread(self) -> None:
        # Only a started portal belongs to a process: one made and never
        # started before a fork is started in the child (a post_fork hook).
        if self._thread is not None and self._pid != os.getpid():
            msg = (
                f"this blocking manager was started in process {self._pid}, before a fork; "
                "its loop thread does not exist here: start one in each worker process"
            )
            raise BlockingCallError(msg)
        if self.on_loop_thread():
            msg = (
                "a blocking call from the manager's own event-loop thread (a subscriber "
                "callback?) would wait for itself: hand the work to another thread"
            )
            raise BlockingCallError(msg)

    def _wait(self, future: concurrent.futures.Future[R], timeout: float | None) -> R:
        with self._calls_lock:
            ended = self._ended
            if not ended:
                self._calls.add(future)
        if ended:  # the loop ended after the check: nobody will answer
            future.cancel()
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            msg = f"the call did not finish within {timeout} s; it was cancelled"
            raise CallTimeoutError(msg) from None
        except concurrent.futures.CancelledError:
            # Cancelled by the loop's shutdown (close() raced with the call).
            raise ManagerClosedError from None
        except BaseException:
            # KeyboardInterrupt in the waiting thread, say: the work must not
            # go on for nobody.
            future.cancel()
            raise
        finally:
            with self._calls_lock:
                self._calls.discard(future)

    # -- the loop thread ------------------------------------------------------

    def _run(self, runner: asyncio.Runner) -> None:
        try:
            with runner:
                runner.run(self._main())
        except BaseException as exc:  # entering failed, or the start gave up
            if not self._ready.is_set():
                self._start_error = exc
            elif not isinstance(exc, asyncio.CancelledError):  # exiting failed
                _log.exception("%s: closing failed", self._name)
        finally:
            # Runner.close() cancelled the calls still running; one handed
            # over after that would wait forever without this.
            with self._calls_lock:
                self._ended = True
                pending = list(self._calls)
            for future in pending:
                future.cancel()
            self._ready.set()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with self._lifespan() as resource:
            if self._abandoned:
                return
            self._resource = resource
            self._ready.set()
            await self._stop.wait()

    def _abandon(self) -> None:
        """Make a start that timed out end: cancel the entering, or leave at once after it."""
        self._abandoned = True
        loop = self._loop
        if loop is None:
            return

        def cancel_all() -> None:
            for task in asyncio.all_tasks():
                task.cancel()

        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(cancel_all)
