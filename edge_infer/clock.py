"""Clocks for the decision loop: the real monotonic one, and a fake one for tests.

Deadlines are absolute times on a monotonic clock in integer nanoseconds, so
they never jump with NTP or wall-clock changes and never lose precision over
weeks of uptime. Tests drive timing logic with :class:`FakeClock` instead of
sleeping and asserting on a noisy machine.
"""

from __future__ import annotations

import threading
import time


class Clock:
    """The real clock: ``time.perf_counter_ns`` (CLOCK_MONOTONIC on Linux)."""

    def now_ns(self) -> int:
        return time.perf_counter_ns()

    def sleep_until(self, deadline_ns: int) -> None:
        """Sleep until the clock reads ``deadline_ns`` (returns at once if it already does)."""
        remaining = deadline_ns - time.perf_counter_ns()
        if remaining > 0:
            time.sleep(remaining / 1e9)


class FakeClock(Clock):
    """A clock that only moves when told to: sleeping advances it instantly."""

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
