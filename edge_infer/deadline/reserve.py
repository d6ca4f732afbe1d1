"""The reserve: how long before a window's deadline the loop or the watchdog must act, learned on this machine.

A window's fallback is handed to the sinks by whoever acts at ``deadline −
reserve``. A fixed reserve is a guess about this machine: on a quiet one
with ``--realtime`` the watchdog acts within a tenth of a millisecond of its
timer, but with a busy Python thread in the process it must first take the
GIL back (a switch interval and a hand-off, measured: 0.6 ms p50, 1.1 ms p99)
and the device write then waits for the GIL again (up to several ms): a
1 ms reserve then hands decisions to the device after their deadline
(docs/performance.md, 5.2d).

So the reserve is measured where it is spent. The watchdog wakes about once
per budget whether or not it has anything to decide, and each wake-up says
how late its timer and the GIL let it run; each fallback it hands out says
how long the sinks took. The reserve is the recent p99 of the first plus the
recent p99 of the second, never less than the configured floor
(``[deadline].reserve_ms``, default 1 ms) and never more than a quarter of
the budget.

The same object carries the model's recent p99 invoke (``invoke_ns``), so
that the loop can tell, with one comparison per window, whether an invoke
started now would end before the watchdog acts (:meth:`Reserve.refuse`).
"""

from __future__ import annotations

from typing import Optional

from .tail_estimate import PROBE_EVERY, TailEstimate

#: Wake-ups and emissions remembered for the p99 (about 5 s of wake-ups at a 50 ms budget).
WAKE_SAMPLES = 100
#: Fallbacks the watchdog handed out, remembered for the p99 of the sinks' time (rare: only overruns).
EMIT_SAMPLES = 20
#: ``model_free_ns`` of a model whose invokes the reserve does not see end (later than any arrival).
NEVER = 2**63 - 1


class Reserve:
    """The reserve in force (``ns``), learned from the watchdog's lateness; and the model's recent p99 invoke.

    ``ns`` and ``invoke_ns`` are plain attributes, read by the loop once per window and written by the
    watchdog thread (``ns``) and the scheduler (``invoke_ns``, every tenth invoke): a store of an int is
    atomic, and a reader that sees the previous value for one window is harmless.
    """

    def __init__(self, floor_ns: int, cap_ns: Optional[int] = None):
        self.floor_ns = floor_ns
        self.cap_ns = cap_ns
        #: The reserve in force.
        self.ns = self._clamp(floor_ns)
        #: The model's recent p99 invoke (0 until known).
        self.invoke_ns = 0
        #: When the model last returned from an invoke (set by the inline scheduler; NEVER for the thread and
        #: process modes, which keep the refusal's bet).
        self.model_free_ns = NEVER
        self._refused = 0
        self._wake = TailEstimate(size=WAKE_SAMPLES, every=10, min_samples=10)
        self._emit = TailEstimate(size=EMIT_SAMPLES, every=1, min_samples=1)

    def _clamp(self, value: int) -> int:
        value = max(self.floor_ns, value)
        return value if self.cap_ns is None else min(value, self.cap_ns)

    # --- what the watchdog measured (its own thread) -----------------------------------------------------------

    def woke(self, late_ns: int) -> None:
        """The watchdog's timer fired: it runs ``late_ns`` after it meant to (timer, CPU and GIL)."""
        self._wake.record(max(0, late_ns))
        self._update()

    def emitted(self, took_ns: int) -> None:
        """The watchdog handed a fallback to the sinks in ``took_ns``."""
        self._emit.record(max(0, took_ns))
        self._update()

    def _update(self) -> None:
        self.ns = self._clamp((self._wake.value_ns or 0) + (self._emit.value_ns or 0))

    def learned_ns(self) -> int:
        """What was measured, before the floor and the cap (for the summary)."""
        return (self._wake.value_ns or 0) + (self._emit.value_ns or 0)

    # --- what the scheduler measured ---------------------------------------------------------------------------

    def invoked(self, p99_ns: int) -> None:
        """The model's recent p99 invoke changed (``TailEstimate``'s ``on_update``)."""
        self.invoke_ns = p99_ns
        self._refused = 0

    # --- the rule the loop applies --------------------------------------------------------------------------

    def refuse(self, now_ns: int, fire_at_ns: int, arrival_ns: int, period_ns: Optional[int], budget_ns: int) -> bool:
        """Whether the model must not start, now, the window that arrived at ``arrival_ns``: it would not be
        done by ``fire_at_ns`` (its deadline − reserve). Called only when ``now + invoke_ns`` is past
        ``fire_at_ns`` (the loop's one comparison per window).

        * Past the fire time: never started (the watchdog would decide it before the model began).
        * The recent p99 invoke does not fit before the fire time: refused, and decided ``overrun`` at
          once, when the next window (``arrival_ns`` + the window period) will have arrived before this
          invoke would end and would itself fit if started fresh (p99 + reserve within the budget): the
          model then takes that one instead of being cut by the watchdog on this one, and the windows
          behind it do not wait for an invoke that was going to be wasted.
        * Otherwise (no newer window comes in time, the period is unknown, or the model cannot fit even a
          fresh window) the model runs it: it may still make it, and the watchdog keeps the deadline.
        * So also when the window arrived after the model's last invoke had ended (``model_free_ns``): the
          loop was free, so it sees the window late for a reason outside it (the reader got the frame late: a
          busy Python thread held the GIL), the next window will be as late, and refusing this one would only
          refuse that one too (a busy thread: 136 model decisions in 969 windows; docs/performance.md 5.7b).
        * Every :data:`~.tail_estimate.PROBE_EVERY`-th window refused since the estimate was last refreshed runs anyway.
        """
        if now_ns >= fire_at_ns:
            return True
        if arrival_ns >= self.model_free_ns:
            return False
        invoke_ns = self.invoke_ns
        if not (period_ns is not None and arrival_ns + period_ns < now_ns + invoke_ns
                and invoke_ns + self.ns < budget_ns):
            return False
        self._refused += 1
        if self._refused >= PROBE_EVERY:
            self._refused = 0
            return False
        return True
