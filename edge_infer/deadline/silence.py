"""``no_data`` on schedule: a silent source is a deadline too.

A loop that only decides when a window completes says nothing while the
sensor is unplugged, and the device keeps acting on the last decision. The
:class:`SilenceTimer` says when the loop must decide without a window: once
no frame was received for ``gap_ns``, and then once every ``period_ns`` (the
hop period: as often as windows would have come) until frames come back.
If the loop itself wakes up late by several periods, it decides once and
skips the missed periods instead of emitting a burst.
"""

from __future__ import annotations

from typing import Optional


class SilenceTimer:
    """When the next ``no_data`` decision is due; all times are the loop clock's monotonic ns."""

    def __init__(self, gap_ns: int, period_ns: int, start_ns: int):
        if gap_ns <= 0 or period_ns <= 0:
            raise ValueError("the no-data gap and period must be positive")
        self.gap_ns = gap_ns
        self.period_ns = period_ns
        #: When the next no_data decision is due (the silence started at ``start_ns``: no frame yet).
        self.next_due_ns = start_ns + gap_ns

    def on_frame(self, recv_ns: int) -> None:
        """A frame came: silence, if any, is over; the next no_data is a whole gap away."""
        self.next_due_ns = recv_ns + self.gap_ns

    def take_due(self, now_ns: int) -> Optional[int]:
        """If a no_data decision is due at ``now_ns``, when it was due (and schedule the next); else None."""
        due = self.next_due_ns
        if now_ns < due:
            return None
        missed = (now_ns - due) // self.period_ns
        self.next_due_ns = due + (missed + 1) * self.period_ns
        return due + missed * self.period_ns
