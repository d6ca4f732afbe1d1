"""Streams that share a model: their windows earliest-deadline-first, batched when that is faster and in time.

One board, eight sensor boards, one model: each stream's window has its own
deadline (its last frame's arrival plus that stream's budget). A
:class:`SharedModel` holds the windows the model has not started yet, at
most one per stream (a newer window of the same stream makes the older one
fall back ``overrun``: the model always takes the newest), and each time the
model is free it starts the windows whose deadlines come first:

* a window that could no longer finish by its deadline even alone (its
  deadline minus the reserve is less than one invoke away) is never
  started: it falls back ``deadline`` at once (counted in ``skipped``);
* the earliest-deadline windows are batched into one invoke when the
  measured cost of that batch size is below the cost of running them one
  by one *and* the batch ends before the earliest of their deadlines (so
  before every one of them); otherwise the earliest window runs alone.

The batch costs are measured at start on the real, resized interpreters
(:class:`~edge_infer.model.batch.BatchEngine`, the median of a few invokes per
size) and follow the recent p99 of each size while running
(:class:`~.tail_estimate.TailEstimate`).

``inline`` (the default) runs the batch on the loop's thread, the cheapest,
with the loop's :class:`~.baton.Baton` lent: should the invoke still run at
the model's *takeover time* (half the shortest window period after it
started, when the model is normally slower than that; else half the
shortest budget; never later than its windows' deadlines less the reserve),
the watchdog calls a deputy thread that runs the loop meanwhile, so other
streams go on and this batch's windows fall back ``deadline`` on time
(:meth:`SharedModel.poll`); the late answer is dropped. ``thread`` runs the
model in a worker thread per shared model, so the loop thread is never
inside an invoke. Either way a slow or hung model only ever holds up the
streams that use it, while streams on another model go on.
docs/streams.md has the measurements behind the default.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ..decide.reasons import Reason
from ..frame import Frame
from ..histogram import Histogram
from ..model.batch import BatchEngine
from .baton import Baton
from .clock import Clock
from .scheduler import ModelAnswer, Scheduler
from .tail_estimate import PROBE_EVERY, TailEstimate
from .watchdog import Pending, Watchdog

log = logging.getLogger(__name__)

#: Invokes per batch size measured at start (the first tenth is discarded as cold).
COST_SAMPLES = 30

#: ``answer(pending, answer)``: the loop decides a stream's window with the model's answer or a reason.
Answer = Callable[["Waiting", ModelAnswer], None]


class Waiting:
    """A window waiting for (or in) the model: which stream, the frame it ends at, its deadline, its copy,
    and the input guard's verdict on it (the loop's, carried back with the answer)."""

    __slots__ = ("stream", "frame", "deadline_ns", "values", "verdict", "decided")

    def __init__(self, stream: int, frame: Frame, deadline_ns: int, values: np.ndarray, verdict: Any = None):
        self.stream = stream
        self.frame = frame
        self.deadline_ns = deadline_ns
        self.values = values
        self.verdict = verdict
        self.decided = False  #: in flight, but its deadline came first: it fell back, its answer is dropped


class BatchCosts:
    """What one invoke of each batch size costs (ns, recent p99), measured at start and followed while running."""

    def __init__(self, measured: Dict[int, int]):
        self.sizes = tuple(sorted(measured))
        self._start = dict(measured)
        self._tails = {size: TailEstimate() for size in self.sizes}

    def record(self, size: int, invoke_ns: int) -> None:
        self._tails[size].record(invoke_ns)

    def cost_ns(self, size: int) -> int:
        value = self._tails[size].value_ns
        return self._start[size] if value is None else value

    def to_dict(self) -> Dict[str, int]:
        return {str(size): self.cost_ns(size) // 1000 for size in self.sizes}


def measure_costs(batch: BatchEngine, clock: Clock, samples: int = COST_SAMPLES) -> Dict[int, int]:
    """The median invoke time of each batch size, on zero windows (the model's cost does not depend on the data).

    The median, not a high percentile: on a loaded machine one preemption in these few samples would make a
    batch size look a thousand times dearer than it is, and a size the planner never picks is never measured
    again. Once a size runs, its estimate is the recent p99 of its real invokes (:class:`BatchCosts`).
    """
    batch.staging()[:] = 0.0
    costs = {}
    for size in batch.sizes:
        times = []
        for i in range(samples):
            start = clock.now_ns()
            batch.infer_batch(size)
            if i >= samples // 10:
                times.append(clock.now_ns() - start)
        times.sort()
        costs[size] = times[len(times) // 2]
    return costs


def plan_batch(ordered: Sequence[Waiting], now_ns: int, reserve_ns: int, costs: BatchCosts,
               size_for: Callable[[int], int]) -> int:
    """How many of the earliest-deadline windows ``ordered`` (sorted by deadline) to run in one invoke.

    The largest ``k`` whose batch ends before the earliest deadline (minus the reserve) and costs less than
    ``k`` single invokes; 1 if no batch does (then the earliest window runs alone).
    """
    single = costs.cost_ns(1)
    latest_end = ordered[0].deadline_ns - reserve_ns
    for k in range(min(len(ordered), costs.sizes[-1]), 1, -1):
        cost = costs.cost_ns(size_for(k))
        if cost < k * single and now_ns + cost <= latest_end:
            return k
    return 1


class SharedModel(Scheduler):
    """One model shared by several streams: pending windows, EDF batches, one worker (or inline)."""

    def __init__(self, batch: BatchEngine, streams: int, answer: Answer, clock: Optional[Clock] = None,
                 reserve_ns: int = 0, hang_limit_ns: int = 10**9, threaded: bool = True,
                 wake: Optional[Callable[[], None]] = None, costs: Optional[Dict[int, int]] = None,
                 watchdog: Optional[Watchdog] = None, users: Optional[int] = None, baton: Optional[Baton] = None,
                 takeover_ns: int = 10**9):
        """``answer`` hears every window's outcome, on whichever thread runs the loop (inline, a deputy's while
        an invoke overran: :mod:`.baton`). ``wake`` is called when the worker finished a batch (the
        loop's ``Wake.notify``). ``costs`` skips the start-up measurement (tests). Streams are numbered
        ``0..streams-1`` across the runtime; ``users`` of them use this model (default: all). Inline, the
        ``watchdog`` and ``baton`` are the runtime's: the baton is lent for each invoke, and a deputy runs the loop
        when one still runs ``takeover_ns`` after it started (:mod:`.baton`); without them (tests on a fake
        clock) the invoke just runs."""
        self.batch = batch
        self.users = streams if users is None else users
        self.clock = clock or Clock()
        self.mode = "thread" if threaded else "inline"
        self.reserve_ns = reserve_ns
        self.hang_limit_ns = hang_limit_ns
        self._answer = answer
        self._slots = np.zeros((streams, *batch.window_shape), dtype=np.float32)
        self._pending: Dict[int, Waiting] = {}
        self._held = [0] * streams  # per stream: its windows queued or in flight and not yet decided
        self._in_flight: List[Waiting] = []
        self._estimate_skips = 0  # windows in a row the cost estimate alone kept from the free model (_expire)
        self._started_ns = 0
        self._size = 0
        self.costs = BatchCosts(costs if costs is not None else measure_costs(batch, self.clock))
        self.batch_sizes = Histogram()
        self.windows = 0
        self.overruns = 0
        self.skipped = 0
        self.late_results = 0
        self.hangs = 0
        self.model_errors = 0
        self._hang_seen = -1
        self._batches = 0
        self._report: "tuple[Optional[np.ndarray], Optional[Reason], int]" = (None, None, 0)
        self._wake = wake
        if (watchdog is None) != (baton is None):
            raise ValueError("an inline shared model takes both the runtime's watchdog and its baton, or neither")
        self.watchdog = None if threaded else watchdog
        self.baton = None if threaded else baton
        self.takeover_ns = takeover_ns
        self._worker: Optional[threading.Thread] = None
        self._closing = False
        if threaded:
            self._todo = threading.Lock()
            self._todo.acquire()
            self._done = threading.Lock()
            self._done.acquire()
            self._worker = threading.Thread(target=self._work, name="edge-infer-shared-model", daemon=True)
            self._worker.start()

    # --- the loop's side ----------------------------------------------------------------------------------------

    def supersede(self, stream: int) -> None:
        """A newer window of ``stream`` is due: its older one, if still waiting, falls back ``overrun`` now."""
        older = self._pending.pop(stream, None)
        if older is not None:
            self.overruns += 1
            self._decided(older, ModelAnswer(None, Reason.OVERRUN, None))

    def add(self, stream: int, frame: Frame, window: np.ndarray, deadline_ns: int, verdict: Any = None) -> None:
        """A window of ``stream`` passed its input checks: copy it and queue it (after :meth:`supersede`)."""
        values = self._slots[stream]
        np.copyto(values, window)
        self._pending[stream] = Waiting(stream, frame, deadline_ns, values, verdict)
        self._held[stream] += 1

    def holds(self, stream: int) -> bool:
        """Whether a window of ``stream`` is queued or in flight, undecided (an unpaced replay waits for it)."""
        return self._held[stream] > 0

    def _decided(self, pending: Waiting, answer: ModelAnswer) -> None:
        self._held[pending.stream] -= 1
        self._answer(pending, answer)

    def reported(self) -> bool:
        """Whether the worker has finished a batch the loop has not collected (the loop must not sleep)."""
        return bool(self._in_flight) and self._worker is not None and not self._done.locked()

    def owes(self) -> bool:
        """Whether some window still waits for its decision (queued, or in flight and not yet fallen back)."""
        return bool(self._pending) or any(not w.decided for w in self._in_flight)

    def next_due_ns(self) -> Optional[int]:
        """When the loop must look at this model next without being woken: an in-flight or queued deadline."""
        due = [p.deadline_ns - self.reserve_ns for p in self._in_flight if not p.decided]
        single = self.costs.cost_ns(1)
        due.extend(p.deadline_ns - self.reserve_ns - single for p in self._pending.values())
        return min(due) if due else None

    def dispatch(self, now_ns: int) -> None:
        """Collect a finished batch, keep in-flight deadlines, drop windows too late to start, start the next batch."""
        self.poll(now_ns)
        while self._pending:
            fresh = self._expire(now_ns)
            if not fresh or self._in_flight:  # a busy (or hung) model: the waiting windows still expire on time
                return
            k = plan_batch(fresh, now_ns, self.reserve_ns, self.costs, self.batch.size_for)
            self._start(fresh[:k])
            if self._worker is not None:
                return
            now_ns = self.clock.now_ns()
            self._finish(now_ns)  # inline: the batch already ran

    def _expire(self, now_ns: int) -> List[Waiting]:
        """Fall back ``deadline`` for every waiting window that could not finish in time even if started now
        (the model never starts such a window); the others, earliest deadline first.

        "Could not finish" is judged by the cost estimate, which only real invokes refresh: should a stall make
        it exceed the budget, a free model would never be tried again. So after
        :data:`~.tail_estimate.PROBE_EVERY` windows in a row kept from a free model by the estimate alone,
        the next one is tried anyway (at worst it falls back ``deadline`` on time, like any overrun)."""
        ordered = sorted(self._pending.values(), key=_by_deadline)
        cost = self.costs.cost_ns(1)
        if not self._in_flight and self._estimate_skips >= PROBE_EVERY:
            cost = 0  # probe: only a deadline already (nearly) passed keeps this window from the model
        latest_start = now_ns + cost + self.reserve_ns
        fresh = [p for p in ordered if p.deadline_ns > latest_start]  # at its last chance a busy model cannot take it
        for late in ordered[:len(ordered) - len(fresh)]:
            del self._pending[late.stream]
            self.skipped += 1
            if not self._in_flight and late.deadline_ns > now_ns + self.reserve_ns:
                self._estimate_skips += 1  # kept from a free model by the estimate alone
            self._decided(late, ModelAnswer(None, Reason.DEADLINE, None))
        return fresh

    def poll(self, now_ns: int) -> None:
        """Take the worker's report if it came; fall back for in-flight windows whose deadline passed."""
        if self._in_flight and self._worker is not None and self._done.acquire(False):
            self._finish(self.clock.now_ns())
        if not self._in_flight:
            return
        for pending in self._in_flight:
            if not pending.decided and now_ns >= pending.deadline_ns - self.reserve_ns:
                pending.decided = True
                self._decided(pending, ModelAnswer(None, Reason.DEADLINE, None))
        if now_ns - self._started_ns > self.hang_limit_ns and self._hang_seen != self._batches:
            self._hang_seen = self._batches
            self.hangs += 1
            log.warning("the shared model has been running one batch for %.0f ms (hang limit %.0f ms); its streams "
                        "fall back until it returns, streams on other models go on",
                        (now_ns - self._started_ns) / 1e6, self.hang_limit_ns / 1e6)

    def hung(self, now_ns: int) -> bool:
        return bool(self._in_flight) and now_ns - self._started_ns > self.hang_limit_ns

    def _start(self, chosen: List[Waiting]) -> None:
        staging = self.batch.staging()
        for row, pending in enumerate(chosen):
            del self._pending[pending.stream]
            staging[row] = pending.values
        self._in_flight = chosen
        self._estimate_skips = 0
        self._size = len(chosen)
        self._batches += 1
        self._started_ns = self.clock.now_ns()
        if self._worker is not None:
            self._todo.release()
            return
        if self.baton is None:  # on a fake clock (tests): nothing else runs meanwhile
            self._report = self._invoke(self._size)
        else:
            self._invoke_lent(chosen)

    def _invoke_lent(self, chosen: List[Waiting]) -> None:
        """Inline: invoke with the loop's baton lent. Should the invoke still run at the takeover time (or the
        earliest deadline of its windows, less the reserve), the watchdog calls a deputy that runs the loop
        meanwhile (deadline/baton.py): other streams go on, and this batch's windows fall back at their deadlines
        (:meth:`poll`, on the deputy's turn). On time, nothing wakes: the watchdog sleeps past it."""
        fire_at = min(self._started_ns + self.takeover_ns, min(w.deadline_ns for w in chosen) - self.reserve_ns)
        takeover = Pending(fire_at, fire_at, None, self._take_over)
        self.watchdog.arm_for(self, takeover)  # type: ignore[union-attr]
        self.baton.lend()  # type: ignore[union-attr]
        try:
            report = self._invoke(self._size)
        finally:
            takeover.claim()  # before the baton: back in time, no deputy is called any more
            self.baton.take_back()  # type: ignore[union-attr]  (RunOver if the run ended meanwhile)
        self._report = report

    def _take_over(self, pending: Pending, now_ns: int) -> None:
        """The watchdog's call, on its thread: the invoke is still running at its takeover time."""
        self.baton.call_deputy()  # type: ignore[union-attr]

    def _invoke(self, k: int) -> "tuple[Optional[np.ndarray], Optional[Reason], int]":
        start = self.clock.now_ns()
        try:
            outputs: Optional[np.ndarray] = self.batch.infer_batch(k)
            reason = None
        except Exception:  # the native runtime failing is a fallback, not a crash
            if not self.model_errors:
                log.exception("the shared model raised; its windows fall back (model_error)")
            self.model_errors += 1
            outputs, reason = None, Reason.MODEL_ERROR
        return outputs, reason, self.clock.now_ns() - start

    def _finish(self, now_ns: int) -> None:
        """The batch came back: decide every window of it that a deadline has not decided already."""
        outputs, reason, invoke_ns = self._report
        chosen, self._in_flight = self._in_flight, []
        self.costs.record(self.batch.size_for(len(chosen)), invoke_ns)
        self.batch_sizes.record(len(chosen))
        self.windows += len(chosen)
        for row, pending in enumerate(chosen):
            if pending.decided:
                self.late_results += 1  # already fallen back at its deadline
                continue
            if reason is not None or outputs is None:
                answer = ModelAnswer(None, reason or Reason.MODEL_ERROR, invoke_ns)
            elif now_ns > pending.deadline_ns:  # came back, but after the deadline: never act on it
                self.late_results += 1
                answer = ModelAnswer(None, Reason.DEADLINE, invoke_ns)
            else:
                answer = ModelAnswer(outputs[row].copy(), None, invoke_ns)
            self._decided(pending, answer)

    def _work(self) -> None:
        while True:
            self._todo.acquire()
            if self._closing:
                return
            self._report = self._invoke(self._size)
            self._done.release()
            if self._wake is not None:
                self._wake()

    # --- Scheduler: one window at a time (the start-up check) -----------------------------------------------------

    def run(self, window: np.ndarray, deadline_ns: int, pending: Optional[Pending] = None) -> ModelAnswer:
        """One window on the caller's thread (warm-up only: the loop uses :meth:`add` and :meth:`dispatch`)."""
        self.batch.staging()[0] = window
        outputs, reason, invoke_ns = self._invoke(1)
        if reason is not None or outputs is None:
            return ModelAnswer(None, reason or Reason.MODEL_ERROR, invoke_ns)
        late = self.clock.now_ns() > deadline_ns
        return ModelAnswer(None if late else outputs[0].copy(), Reason.DEADLINE if late else None, invoke_ns)

    def invoke_estimate_ns(self) -> Optional[int]:
        return self.costs.cost_ns(1)

    def deadline_threads(self, loop_tid: int) -> List[int]:
        return [loop_tid] if self.watchdog is None else [self.watchdog.native_id, loop_tid]

    def set_worker_nice(self, nice: int) -> None:
        if self._worker is not None:
            os.setpriority(os.PRIO_PROCESS, self._worker.native_id, nice)

    def counters(self) -> Dict[str, Any]:
        sizes = self.batch_sizes
        return {
            "mode": self.mode,
            "shared_by": self.users,
            "batch_sizes": list(self.batch.sizes),
            "batch_cost_us": self.costs.to_dict(),
            "batches": sizes.total,
            "mean_batch": round(self.windows / sizes.total, 2) if sizes.total else None,
            "largest_batch": sizes.max,
            "overrun": self.overruns,
            "skipped": self.skipped,
            "late_results": self.late_results,
            "hangs": self.hangs,
            "model_errors": self.model_errors,
        }

    def close(self) -> None:
        """Stop the worker after its current batch; do not wait for a hung one. Safe to call twice."""
        if self._closing or self._worker is None:
            self._closing = True
            return
        self._closing = True
        if self._todo.locked():  # unlocked: a batch is handed over and not yet taken; taking it, the worker sees _closing
            self._todo.release()
        self._worker.join(timeout=1.0)


def describe_shared(counters: Dict[str, Any]) -> str:
    """One line of the human summary per shared model: how it batched, and what it could not take."""
    events = ", ".join(f"{key.replace('_', ' ')} {counters[key]}" for key in
                       ("overrun", "skipped", "late_results", "hangs", "model_errors") if counters.get(key))
    return (f"  shared model in {counters['mode']} mode for {counters['shared_by']} streams: {counters['batches']} "
            f"invokes, mean batch {counters['mean_batch']}, largest {counters['largest_batch']}"
            + (f"; {events}" if events else ""))


def _by_deadline(pending: Waiting) -> int:
    return pending.deadline_ns
