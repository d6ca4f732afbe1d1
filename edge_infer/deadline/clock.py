"""Clocks for the decision loop: the real monotonic one, and a fake one for tests.

Deadlines are absolute times on a monotonic clock in integer nanoseconds, so
they never jump with NTP or wall-clock changes and never lose precision over
weeks of uptime. Tests drive timing logic with :class:`FakeClock` instead of
sleeping and asserting on a noisy machine.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

#: ``ready(timeout_s) -> bool``: block up to ``timeout_s`` seconds for an event; True if it happened.
Ready = Callable[[float], bool]


class Clock:
    """The real clock: ``time.perf_counter_ns`` (CLOCK_MONOTONIC on Linux)."""

    #: The C function itself, not a method wrapping it: it is read several times per window.
    now_ns = staticmethod(time.perf_counter_ns)

    def sleep_until(self, deadline_ns: int) -> None:
        """Sleep until the clock reads ``deadline_ns`` (returns at once if it already does)."""
        remaining = deadline_ns - time.perf_counter_ns()
        if remaining > 0:
            time.sleep(remaining / 1e9)

    def wait(self, ready: Ready, deadline_ns: int) -> bool:
        """Block in ``ready`` until its event happens or the clock reaches ``deadline_ns``; True if it happened.

        The deadline scheduler waits for the model this way, so that tests can
        drive the same code with :class:`FakeClock`.
        """
        remaining = deadline_ns - time.perf_counter_ns()
        return ready(remaining / 1e9 if remaining > 0 else 0.0)


class FakeClock(Clock):
    """A clock that only moves when told to: sleeping advances it instantly.

    :meth:`wait` returns False only once something (a test, or a fake engine
    pretending to take some time) has moved the clock to the deadline.
    """

    #: Real seconds between checks of the fake time in :meth:`wait`.
    POLL_S = 0.001
    #: Real seconds :meth:`wait` may go without its event or its deadline before it gives up (a test bug).
    STALL_S = 60.0

    def __init__(self, start_ns: int = 0):
        self._now = start_ns
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        with self._lock:
            return self._now

    def advance(self, ns: int) -> None:
        with self._lock:
            self._now += ns

    def sleep_until(self, deadline_ns: int) -> None:
        with self._lock:
            self._now = max(self._now, deadline_ns)

    def wait(self, ready: Ready, deadline_ns: int) -> bool:
        stalled_at = time.monotonic() + self.STALL_S
        while self.now_ns() < deadline_ns:
            if ready(self.POLL_S):
                return True
            if time.monotonic() > stalled_at:
                raise RuntimeError(f"FakeClock.wait: no event and no deadline in {self.STALL_S:g} s of real "
                                   "time; a fake slow engine must advance the clock")
        return ready(0.0)
