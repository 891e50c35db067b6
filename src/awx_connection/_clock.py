"""
Time, injected.

Every deadline in the library (access-token expiry, the refresh skew, the
rotation grace window, ``state`` expiry) is computed from a :class:`Clock`.
Production code uses :class:`SystemClock`; tests and the fake provider share a
:class:`ManualClock`, so a test can jump five minutes ahead without waiting.

Backoff *sleeps* are not part of the clock on purpose: they pace network
retries in real time, and tests make them tiny through the timing policy.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path
from typing import Protocol, final

import attrs

__all__ = ["Clock", "FileClock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """
    **Protocol:** where the library reads the current time.

    ``now()`` returns seconds since the Unix epoch as a float, like
    :func:`time.time`. It must be cheap: the hot path calls it once per
    ``access_token()``.
    """

    def now(self) -> float:
        """Return the current time in seconds since the epoch."""
        ...


@final
@attrs.define(eq=False)
class SystemClock:
    """The wall clock (:func:`time.time`)."""

    def now(self) -> float:
        """Return :func:`time.time`."""
        return time.time()


@final
@attrs.define(eq=False)
class ManualClock:
    """
    A clock that only moves when told to.

    Share one instance between the library under test and
    :class:`awx_connection.testing.FakeAirwallex`, then call :meth:`advance`
    to make tokens expire.
    """

    current: float = attrs.field(default=1_767_225_600.0)  # 2026-01-01T00:00:00Z

    def now(self) -> float:
        """Return the current simulated time."""
        return self.current

    def advance(self, seconds: float) -> float:
        """
        Move the clock forward and return the new time.

        Raises:
            ValueError: *seconds* is negative; simulated time never goes back.
        """
        if seconds < 0:
            msg = f"a clock cannot go back in time (asked to advance {seconds} s)"
            raise ValueError(msg)
        self.current += seconds
        return self.current


_FORMAT = struct.Struct("<d")


@final
@attrs.define(eq=False)
class FileClock:
    """
    A manual clock shared by several processes through a small file.

    Multi-process tests give every worker process a ``FileClock`` on the same
    path; the test (or the fake provider) moves time with :meth:`advance`
    and every process sees it at once. ``now()`` is one ``pread`` of 8
    bytes. Only one process should write.
    """

    path: Path = attrs.field(converter=Path)
    _fd: int = attrs.field(init=False, default=-1)

    @classmethod
    def create(cls, path: str | os.PathLike[str], start: float = 1_767_225_600.0) -> FileClock:
        """Create (or overwrite) the clock file at *path*, set to *start*."""
        Path(path).write_bytes(_FORMAT.pack(start))
        return cls(path)

    def _descriptor(self) -> int:
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDWR)
        return self._fd

    def now(self) -> float:
        """Return the simulated time stored in the file."""
        value: float = _FORMAT.unpack(os.pread(self._descriptor(), _FORMAT.size, 0))[0]
        return value

    def advance(self, seconds: float) -> float:
        """
        Move the shared clock forward and return the new time.

        Raises:
            ValueError: *seconds* is negative.
        """
        if seconds < 0:
            msg = f"a clock cannot go back in time (asked to advance {seconds} s)"
            raise ValueError(msg)
        current = self.now() + seconds
        os.pwrite(self._descriptor(), _FORMAT.pack(current), 0)
        return current

    def close(self) -> None:
        """Close the file descriptor (the file stays). Idempotent."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()
