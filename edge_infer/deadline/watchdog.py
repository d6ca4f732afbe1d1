"""The watchdog: a decision at the deadline when an inline invoke overruns, at no cost when it does not.

The inline mode invokes the model on the loop's own thread (no hand-off to a
worker, the cheapest per window), so the loop's thread cannot decide anything
while an invoke runs. The watchdog is the other thread that can: before each
invoke the loop *arms* a :class:`Pending` (one attribute store, no lock, no
event), and after the invoke it *claims* it. If the invoke is still running
when the pending window's fire time (deadline − reserve) comes, the watchdog
claims it first and hands the fallback to the sinks itself; the invoke's
late answer is then dropped. ``invoke()`` releases the GIL, so the watchdog
runs while the model computes.

Exactly one thread decides each window, without a lock on the hot path:

* A claim is ``list.pop()`` on a one-element list: one C call, atomic under
  the GIL (and under the list's own lock in free-threaded builds). Whoever
  pops the element decides; the other gets ``IndexError``.
* The sinks are never called by both threads at once. The watchdog claims
  and emits while holding :attr:`Watchdog.emit_lock`; the loop takes that
  lock only when its own claim failed, to wait until the watchdog's
  emission is finished. When the model is on time, nobody takes it.

The reserve. Every time its timer wakes it, the watchdog tells its
:class:`~.reserve.Reserve` how late it runs against the time it meant to
(the OS timer, a CPU, the GIL), and after each fallback how long the sinks
took: the reserve it fires by is learned on this machine (:mod:`.reserve`).

Wake-ups. The watchdog sleeps until the earliest fire time of what is
armed. A stream's deadlines only grow (arrival + a fixed budget), so a window
armed while the watchdog sleeps for an earlier one never needs to wake it:
the watchdog sees the new one when it wakes, about once per budget while
windows keep coming. Only arming something that fires *before* what the
watchdog sleeps for (it is idle, or several streams with different budgets
share it) releases its wake lock. Several owners (shared models) can have
something armed at once: the watchdog fires each at its own time.

Takeovers. A loop that lends its baton around the invoke (:mod:`.baton`)
also arms a :class:`Pending` at its takeover time, whose "decision" is to
call a deputy that runs the loop meanwhile. A single-stream loop arms it
after its window's, at the same fire time (:meth:`Watchdog.arm`): the
watchdog decides the window, then calls the deputy, which decides the
windows that arrived meanwhile and those that come until the invoke returns
(in order, after that window; the watchdog has nothing more to emit then).
Shared models (several streams, :mod:`.edf`) arm only the takeover, one per
model, at half a window period (:meth:`Watchdog.arm_for`): a deputy decides
their windows too.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, Callable, Dict, Optional, Tuple

from .clock import Clock
from .reserve import Reserve

log = logging.getLogger(__name__)

_NEVER = math.inf


class Pending:
    """One window the model is working on: when the watchdog must decide it, and who does.

    ``decide(pending, now_ns)`` is the owner's fallback emission; the watchdog
    calls it (holding ``emit_lock``) only if it won the claim. ``frame`` and
    ``deadline_ns`` are for the owner to build that decision; ``stream`` lets
    one watchdog serve several streams. A takeover (:mod:`.baton`) has no
    ``frame``: it decides no window, so it is neither counted in
    :attr:`Watchdog.fired` nor timed for the reserve.
    """

    __slots__ = ("fire_at_ns", "deadline_ns", "frame", "decide", "stream", "_token")

    def __init__(self, fire_at_ns: int, deadline_ns: int, frame: Any,
                 decide: Callable[["Pending", int], None], stream: Any = None):
        self.fire_at_ns = fire_at_ns
        self.deadline_ns = deadline_ns
        self.frame = frame
        self.decide = decide
        self.stream = stream
        self._token = [True]

    def claim(self) -> bool:
        """Take the right to decide this window; True for exactly one caller, ever."""
        try:
            self._token.pop()
            return True
        except IndexError:
            return False

    @property
    def open(self) -> bool:
        """Nobody has claimed it yet."""
        return bool(self._token)


class Watchdog:
    """One thread that decides armed windows the loop has not claimed by their fire time (module docstring)."""

    def __init__(self, clock: Optional[Clock] = None, name: str = "edge-infer-watchdog",
                 reserve: Optional[Reserve] = None):
        """``reserve``: told how late each wake-up ran and how long each fallback took (None: not measured)."""
        self.clock = clock or Clock()
        self.reserve = reserve
        #: Held by the watchdog while it claims and emits; the loop takes it only after a failed claim.
        self.emit_lock = threading.Lock()
        #: Windows the watchdog decided (the invoke overran them).
        self.fired = 0
        self._armed: Tuple[Pending, ...] = ()
        self._by_owner: Dict[Any, Pending] = {}
        self._sleeping_until: float = _NEVER
        self._closing = False
        self._wake = threading.Lock()
        self._wake.acquire()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # --- the loop's side (hot path: stores and one comparison) -------------------------------------------

    def arm(self, *pendings: Pending) -> None:
        """Watch ``pendings`` (and stop watching whatever was armed before: the loop has claimed it): one window,
        or a window and then its takeover, which fires at the same time (:mod:`.baton`). The first fires first;
        what is due together is decided in this order."""
        self._armed = pendings
        if pendings[0].fire_at_ns < self._sleeping_until:
            self._kick()

    def arm_for(self, owner: Any, pending: Pending) -> None:
        """Watch ``pending`` for ``owner`` (a shared model's invoke), in place of what that owner armed before.

        Each owner keeps its own: while one model's invoke overruns, a deputy invoking another model
        (:mod:`.baton`) must not unwatch the first one's.
        """
        self._by_owner[owner] = pending
        self._armed = tuple(p for p in self._by_owner.values() if p.open)
        if pending.fire_at_ns < self._sleeping_until:
            self._kick()

    def settle(self, pending: Pending) -> bool:
        """After the invoke: True if the caller decides ``pending``; False if the watchdog did (and is done)."""
        if pending.claim():
            return True
        with self.emit_lock:  # the watchdog holds it until its decision has left every sink
            return False

    # --- the watchdog thread --------------------------------------------------------------------------------

    def _kick(self) -> None:
        if self._wake.locked():
            try:
                self._wake.release()
            except RuntimeError:  # another thread kicked it at the same moment
                pass

    def _run(self) -> None:
        now_ns, reserve = self.clock.now_ns, self.reserve
        while not self._closing:
            self._sleeping_until = _NEVER  # publish first, then look: an arm in between kicks us
            armed = self._armed
            fire_at = min((p.fire_at_ns for p in armed if p.open), default=None)
            if fire_at is None:
                self._wake.acquire()  # idle until something is armed
                continue
            self._sleeping_until = fire_at
            if self._armed is not armed:
                continue
            wait_ns = fire_at - now_ns()
            if wait_ns > 0:
                if not self._wake.acquire(True, wait_ns / 1e9) and reserve is not None:  # the fire time came
                    reserve.woke(now_ns() - fire_at)
                continue
            self._fire(armed, now_ns())

    def _fire(self, armed: Tuple[Pending, ...], now: int) -> None:
        reserve, clock = self.reserve, self.clock
        with self.emit_lock:
            for pending in armed:
                if pending.fire_at_ns <= now and pending.claim():
                    start = clock.now_ns()
                    try:
                        pending.decide(pending, now)
                    except Exception:  # the watchdog must outlive a broken sink
                        log.exception("error while deciding an overrun window by fallback")
                    if pending.frame is None:  # a takeover: no window decided, nothing handed to the sinks
                        continue
                    self.fired += 1
                    if reserve is not None:
                        reserve.emitted(clock.now_ns() - start)

    @property
    def native_id(self) -> int:
        """The watchdog thread's id for the OS (``--realtime`` makes it SCHED_FIFO)."""
        return self._thread.native_id  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the thread (it finishes an emission in progress first)."""
        self._closing = True
        self._kick()
        self._thread.join(timeout=1.0)
