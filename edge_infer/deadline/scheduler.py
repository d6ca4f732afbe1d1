"""The deadline scheduler: get the model's answer for a window, or a reason why not, by a deadline.

A scheduler owns the :class:`~edge_infer.model.engine.Engine` (only it may call
the interpreter) and answers :meth:`Scheduler.run` with a
:class:`ModelAnswer`: the output if it came in time, else the reason the
decision stage must fall back.

A TFLite ``invoke()`` cannot be cancelled from Python, so a deadline can
only be kept *outside* the call: :class:`InlineScheduler` (the default)
invokes on the loop's thread and has a watchdog thread decide the window at
its deadline if the invoke overruns (``invoke`` releases the GIL);
:class:`ThreadedScheduler` runs the model in one worker thread and stops
waiting at the deadline while the invoke goes on; the process mode
(:mod:`edge_infer.deadline.isolated`) does the same with a child process that can be
killed. Requests carry an id, and an answer that comes back for a window
that was already decided is dropped and counted, never acted on. The policy
for a window that arrives while the model is still busy is described in
:class:`WorkerScheduler` and docs/deadlines.md.
"""

from __future__ import annotations

import abc
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from ..decide.reasons import Reason
from ..model.engine import Engine
from .baton import Baton
from .clock import Clock
from .hygiene import Breather, Demotion
from .reserve import Reserve
from .tail_estimate import PROBE_EVERY, TailEstimate
from .watchdog import Pending, Watchdog

log = logging.getLogger(__name__)



@dataclass
class ModelAnswer:
    """What the model stage produced for one window.

    ``output`` is the dequantized output (or None): the inline scheduler lends
    the engine's own buffer, valid until its next run (no copy on the hot path),
    a worker's answer is a copy. ``reason`` is None when the answer is usable,
    ``invoke_ns`` the time inside the model (None when no invoke finished for
    this window).
    """

    __slots__ = ("output", "reason", "invoke_ns")

    output: Optional[np.ndarray]
    reason: Optional[Reason]
    invoke_ns: Optional[int]


#: What :meth:`Scheduler.run` returns when the window was already decided for the caller (by the
#: inline mode's watchdog, at its deadline): the caller must not decide it again.
ALREADY_DECIDED = ModelAnswer(None, Reason.DEADLINE, None)
#: The inline mode's answer for a window that completes while a deputy runs the loop (:mod:`.baton`): the model
#: is inside an earlier window's invoke, and the newer window falls back at once.
BUSY = ModelAnswer(None, Reason.OVERRUN, None)


class Scheduler(abc.ABC):
    """Runs windows through the model under a deadline."""

    #: The ``--mode`` name, for the summary.
    mode = ""
    #: How long before a deadline the scheduler stops waiting for the model, and the model's recent p99
    #: invoke (:mod:`.reserve`); the loop reads both to decide whether a window may still be started.
    reserve: Reserve

    @abc.abstractmethod
    def run(self, window: np.ndarray, deadline_ns: int, pending: Optional[Pending] = None) -> ModelAnswer:
        """The model's answer for ``window`` if it is ready by ``deadline_ns`` (monotonic ns).

        ``pending`` lets a scheduler that cannot wait (inline) have the window decided at its fire time
        by the watchdog; the others wait themselves and ignore it.
        """

    def poll(self, now_ns: int) -> None:
        """Housekeeping between frames (collect late answers, handle a hung model); must not block."""

    def hung(self, now_ns: int) -> bool:
        """True while an invoke has been running for longer than the hang limit."""
        return False

    def invoke_estimate_ns(self) -> Optional[int]:
        """The recent p99 invoke time (None until enough invokes were measured)."""
        return None

    def deadline_threads(self, loop_tid: int) -> List[int]:
        """Native ids of the threads that wait for deadlines (``--realtime`` gives them SCHED_FIFO)."""
        return [loop_tid]

    def set_worker_nice(self, nice: int) -> None:
        """The nice value of the thread or process that invokes the model (``--realtime``).

        Raises OSError if not permitted. Inline, the loop thread is the worker: nothing to do.
        """

    def on_fifo(self) -> None:
        """The threads of :meth:`deadline_threads` now run under SCHED_FIFO (``--realtime``)."""

    def counters(self) -> Dict[str, Any]:
        """The scheduler's part of the run summary."""
        return {"mode": self.mode}

    def close(self) -> None:
        """Stop any worker; called once when the loop ends."""


class InlineScheduler(Scheduler):
    """Invoke on the loop's thread; a watchdog thread decides the window at its deadline if the invoke overruns.

    The default mode: no hand-off to another thread or process, so it costs
    what a hand-written loop around the interpreter costs, and still hands a
    decision to the sinks by the deadline when an invoke is slow
    (:mod:`.watchdog`). The caller passes a :class:`~.watchdog.Pending` with
    each window; if the watchdog decided it, :meth:`run` returns
    :data:`ALREADY_DECIDED` and the invoke's late answer is dropped (counted
    in ``late_results``). Without a pending (warm-up), an answer after the
    deadline is discarded.

    Windows that arrive while an invoke overruns. The loop's thread is inside
    the invoke, so by itself it would decide them only when the invoke returns
    (late, if the invoke hangs). So the loop lends its :class:`~.baton.Baton`
    around the invoke (:meth:`use_baton`: a live source or a paced replay),
    and the watchdog, right after it decided the window at its fire time,
    calls a deputy thread that runs the loop until the invoke returns: the
    windows that arrived meanwhile are decided then, the later ones as they
    come, each on time and in order. While the invoke is out the model is
    busy: :meth:`run` answers a window at once with ``overrun`` (counted in
    ``busy_overruns``), never queues it behind the invoke. On time this costs
    a copy of the window, a second pending for the watchdog, a lock release
    and an acquire; no other thread wakes (docs/deadlines.md).
    """

    mode = "inline"

    def __init__(self, engine: Engine, clock: Optional[Clock] = None, reserve_ns: int = 0,
                 hang_limit_ns: int = 10**9, admission: bool = False, budget_ns: Optional[int] = None, **_: Any):
        """``reserve_ns`` is the reserve's floor; the watchdog learns the rest (at most ``budget_ns`` / 4)."""
        self.engine = engine
        self.clock = clock or Clock()
        self.reserve = Reserve(reserve_ns, None if budget_ns is None else budget_ns // 4)
        self.hang_limit_ns = hang_limit_ns
        self.admission = admission
        self.tail = TailEstimate(on_update=self.reserve.invoked)
        self.watchdog = Watchdog(self.clock, reserve=self.reserve)
        self.late_results = 0
        self.late_invoke_max_ns = 0
        self.model_errors = 0
        self.admission_rejects = 0
        self.busy_overruns = 0
        #: 0: no invoke running (read by hung() from the service hooks); else since when one is (and, with the
        #: baton lent, until its thread has it back: the model is busy for a deputy).
        self._invoke_since = 0
        #: Set under ``--realtime`` (:meth:`on_fifo`): the loop runs the model under SCHED_FIFO.
        self.breather: Optional[Breather] = None
        #: Set under ``--realtime`` when the loop runs under SCHED_FIFO: long invokes run without it.
        self.demotion: Optional[Demotion] = None
        self.baton: Optional[Baton] = None
        self._slot: Optional[np.ndarray] = None

    def use_baton(self, baton: Baton, window_shape: "tuple[int, int]") -> None:
        """Lend ``baton`` (the loop's) around each invoke of a window: a deputy runs the loop once the watchdog
        has decided the window of an invoke that still runs."""
        self.baton = baton
        self._slot = np.zeros(window_shape, dtype=np.float32)

    @property
    def busy(self) -> bool:
        """An invoke is out with the baton lent: whoever runs the loop now is a deputy."""
        return self._invoke_since != 0

    def run(self, window: np.ndarray, deadline_ns: int, pending: Optional[Pending] = None) -> ModelAnswer:
        if self._invoke_since:  # a deputy's turn: the model is inside the invoke it took over from
            self.busy_overruns += 1
            return BUSY
        clock = self.clock
        start = clock.now_ns()
        if self.admission and not self._admit(start, deadline_ns):
            self.admission_rejects += 1
            return ModelAnswer(None, Reason.DEADLINE, None)
        breather, demoted = self.breather, False
        if breather is not None:  # --realtime: leave the CPU to the kernel's work
            demoted = self._demote()
            if not demoted:  # (a demoted invoke leaves it by itself)
                start = breather.before_invoke(start)
        self._invoke_since = start  # first: a deputy must see the model busy
        takeover = None
        if pending is not None:
            if self.baton is None:
                self.watchdog.arm(pending)
            else:
                takeover = self._lend(window, pending)
                window = self._slot  # type: ignore[assignment]
        try:
            output = self.engine.infer(window)  # the engine's buffer: read before the next invoke
            reason = None
        except Exception:  # the native runtime failing is a fallback, not a crash
            if not self.model_errors:
                log.exception("the model raised; its windows fall back (model_error)")
            self.model_errors += 1
            output, reason = None, Reason.MODEL_ERROR
        finally:
            end = clock.now_ns()
            if demoted:
                self._promote()
            if takeover is not None:
                takeover.claim()  # before the window's claim: a deputy is only ever called after its fallback
                self.baton.take_back()  # type: ignore[union-attr]  (whoever runs the loop ends its turn first)
        if breather is not None:
            breather.last_end_ns = end
        self.reserve.model_free_ns = end
        self._invoke_since = 0
        invoke_ns = end - start
        self.tail.record(invoke_ns)
        if pending is not None and not self.watchdog.settle(pending):
            self.late_results += 1
            if invoke_ns > self.late_invoke_max_ns:
                self.late_invoke_max_ns = invoke_ns
            return ALREADY_DECIDED
        if reason is None and end > deadline_ns:
            self.late_results += 1
            return ModelAnswer(None, Reason.DEADLINE, invoke_ns)
        return ModelAnswer(output, reason, invoke_ns)

    def _demote(self) -> bool:
        """Run this invoke under the normal scheduler if it is a long one (:class:`.Demotion`); True if so."""
        demotion = self.demotion
        if demotion is None or not demotion.wanted(self.tail.value_ns):
            return False
        demotion.down()
        return True

    def _promote(self) -> None:
        """SCHED_FIFO back after a demoted invoke; if the kernel refuses, the loop stays as it is and no later
        invoke is demoted (one warning)."""
        demotion = self.demotion
        try:
            demotion.up()  # type: ignore[union-attr]
        except OSError as exc:
            log.warning("--realtime: the loop cannot take SCHED_FIFO back after an invoke (%s); it runs under the "
                        "normal scheduler from now on", exc.strerror or exc)
            demotion.active = False  # type: ignore[union-attr]

    def _lend(self, window: np.ndarray, pending: Pending) -> Pending:
        """Copy the window (a deputy pushes frames into the loop's window, maybe while ``infer`` still converts
        it: a thread can be preempted that long), arm the window and its takeover, and lend the baton.

        The takeover fires with the window, after it (the watchdog fires what is due in the order armed): the
        deputy starts once the window's fallback has left the sinks, so every decision it makes comes after that
        one, in the order of the windows, and the watchdog has nothing left to emit while the deputy does."""
        np.copyto(self._slot, window)  # type: ignore[arg-type]
        takeover = Pending(pending.fire_at_ns, pending.fire_at_ns, None, self._take_over)
        self.watchdog.arm(pending, takeover)
        self.baton.lend()  # type: ignore[union-attr]
        return takeover

    def _take_over(self, pending: Pending, now_ns: int) -> None:
        """The watchdog's call, on its thread, right after it decided the window: the invoke still runs."""
        self.baton.call_deputy()  # type: ignore[union-attr]

    def _admit(self, now_ns: int, deadline_ns: int) -> bool:
        estimate = self.tail.value_ns
        return estimate is None or now_ns + estimate <= deadline_ns - self.reserve.ns

    @property
    def reserve_ns(self) -> int:
        return self.reserve.ns

    def invoke_estimate_ns(self) -> Optional[int]:
        return self.tail.value_ns

    def deadline_threads(self, loop_tid: int) -> List[int]:
        return [self.watchdog.native_id, loop_tid]

    def set_worker_nice(self, nice: int) -> None:
        """Inline, the loop's thread runs the model: a long invoke runs under the normal scheduler at
        :data:`.hygiene.DEMOTED_NICE` (:meth:`on_fifo`, :class:`.Demotion`), a short one under SCHED_FIFO (a
        first version demoted every invoke, before the backstop: a loaded machine preempted the loop
        mid-window, p99 63 ms against 14 ms; docs/performance.md)."""

    def on_fifo(self) -> None:
        """The loop runs under SCHED_FIFO (called on its thread): it must leave its CPU now and then
        (:class:`.Breather`), and runs long invokes without it (:class:`.Demotion`)."""
        self.breather = Breather(self.clock)
        self.demotion = Demotion.of_this_thread()

    def hung(self, now_ns: int) -> bool:
        since = self._invoke_since
        return since != 0 and now_ns - since > self.hang_limit_ns

    def counters(self) -> Dict[str, Any]:
        estimate = self.tail.value_ns
        return {
            "mode": self.mode,
            "admission": self.admission,
            "reserve_ms": self.reserve.ns / 1e6,
            "reserve_learned_ms": round(self.reserve.learned_ns() / 1e6, 3),
            "watchdog_fallbacks": self.watchdog.fired,
            "admission_rejects": self.admission_rejects,
            "busy_overruns": self.busy_overruns,
            "late_results": self.late_results,
            "late_invoke_max_us": self.late_invoke_max_ns // 1000,
            "model_errors": self.model_errors,
            "recent_invoke_p99_us": None if estimate is None else estimate // 1000,
            "breaths": None if self.breather is None else self.breather.breaths,
            "demoted_invokes": None if self.demotion is None else self.demotion.demoted,
        }

    def close(self) -> None:
        self.watchdog.close()


class WorkerScheduler(Scheduler):
    """A model owned by a worker that takes one request at a time; the caller waits until the deadline.

    :meth:`run` sends the window to the worker (if it is free) tagged with a
    request id and waits for the answer until ``deadline - reserve`` (the
    reserve leaves time to decide and hand the decision to the sinks). If the
    answer is not there by then, the window gets ``deadline`` while the
    worker goes on; its answer, when it comes, is counted in
    ``late_results`` and dropped.

    A window that arrives while the worker is still busy with an earlier one
    is decided by the ``overload`` policy:

    * ``busy`` — fall back at once with reason ``busy`` (counted in ``busy``).
    * ``latest`` — wait for the worker and run this window as soon as the
      worker is free, but only while it can still finish by its own deadline:
      with a latency estimate (p99 of recent invokes), a window whose
      estimated finish (the earlier invoke's expected end plus one more
      invoke) is after its deadline falls back at once with ``busy``; a window
      still waiting for the worker at its deadline falls back with
      ``deadline`` and is counted in ``skipped`` (it never ran). The worker
      thus never starts a window whose decision is already out, and always
      takes the newest window next.

    With ``admission`` on, a window the free worker would start although the
    recent p99 does not fit in the time left falls back at once with
    ``deadline`` (counted in ``admission_rejects``); every
    :data:`~.tail_estimate.PROBE_EVERY`-th such window runs anyway, to re-measure.

    Subclasses are transports: :meth:`_send` hands a window to the worker,
    :meth:`_receive` waits for its next report and passes it to
    :meth:`_completed`, and the worker writes outputs into ``self._result``.
    """

    def __init__(self, clock: Optional[Clock], output_size: int, overload: str = "busy", admission: bool = False,
                 reserve_ns: int = 0, hang_limit_ns: int = 10**9, budget_ns: Optional[int] = None):
        """The reserve is fixed at ``reserve_ns`` here: only the inline mode's watchdog learns it (``budget_ns``,
        its cap, is taken so that every mode is built alike)."""
        if overload not in ("busy", "latest"):
            raise ValueError(f"overload must be 'busy' or 'latest', not {overload!r}")
        self.clock = clock or Clock()
        self.overload = overload
        self.admission = admission
        self.reserve = Reserve(reserve_ns)
        self.hang_limit_ns = hang_limit_ns
        self.tail = TailEstimate(on_update=self.reserve.invoked)
        self.busy = 0
        self.skipped = 0
        self.late_results = 0
        self.late_invoke_max_ns = 0
        self.admission_rejects = 0
        self.hangs = 0
        self.model_errors = 0
        self._result = np.zeros(output_size, dtype=np.float32)
        self._last_id = 0
        self._in_flight: Optional[int] = None
        self._in_flight_since = 0
        self._awaited: Optional[int] = None
        self._answer_reason: Optional[Reason] = None
        self._answer_invoke_ns: Optional[int] = None
        self._hang_seen: Optional[int] = None
        self._refused_in_row = 0

    # --- transport --------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def _send(self, window: np.ndarray, request_id: int) -> None:
        """Copy ``window`` where the worker reads it and tell the worker to run request ``request_id``."""

    @abc.abstractmethod
    def _receive(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the worker's next report and handle it; True if one came."""

    def _available(self) -> bool:
        """Whether the worker can take a request at all (False while an isolated model restarts)."""
        return True

    def _on_hang(self, now_ns: int) -> None:
        """The in-flight invoke passed the hang limit (called once per hung request)."""
        log.warning("the model has been running one invoke for %.0f ms (hang limit %.0f ms); a thread cannot be "
                    "stopped, so windows fall back (busy) until it returns — use --mode process to have a hung "
                    "model killed and restarted", (now_ns - self._in_flight_since) / 1e6, self.hang_limit_ns / 1e6)

    # --- reports from the worker ------------------------------------------------------------------------------

    def _completed(self, request_id: int, reason: Optional[Reason], invoke_ns: int) -> None:
        """The worker finished ``request_id``: its output (if ``reason`` is None) is in ``self._result``."""
        self._in_flight = None
        self.tail.record(invoke_ns)
        if request_id == self._awaited:
            self._answer_reason = reason
            self._answer_invoke_ns = invoke_ns
        else:
            self.late_results += 1
            if invoke_ns > self.late_invoke_max_ns:
                self.late_invoke_max_ns = invoke_ns

    def _lost(self) -> None:
        """The worker died or was killed with a request in flight: that request failed."""
        if self._in_flight is not None and self._in_flight == self._awaited:
            self._answer_reason = Reason.MODEL_ERROR
            self._answer_invoke_ns = None
        self._in_flight = None

    # --- the caller's side ------------------------------------------------------------------------------------

    def run(self, window: np.ndarray, deadline_ns: int, pending: Optional[Pending] = None) -> ModelAnswer:
        now = self.clock.now_ns()
        self.poll(now)
        if self._in_flight is not None:
            return self._overloaded(window, now, deadline_ns)
        if not self._available():
            return ModelAnswer(None, Reason.MODEL_ERROR, None)
        if self.admission and not self._admit(now, deadline_ns):
            self.admission_rejects += 1
            return ModelAnswer(None, Reason.DEADLINE, None)
        return self._dispatch(window, deadline_ns)

    def poll(self, now_ns: int) -> None:
        if self._in_flight is None:
            return
        self._receive(0.0)
        if self._in_flight is not None and now_ns - self._in_flight_since > self.hang_limit_ns:
            if self._hang_seen != self._in_flight:
                self._hang_seen = self._in_flight
                self.hangs += 1
                self._on_hang(now_ns)

    @property
    def reserve_ns(self) -> int:
        return self.reserve.ns

    def invoke_estimate_ns(self) -> Optional[int]:
        return self.tail.value_ns

    def hung(self, now_ns: int) -> bool:
        return self._in_flight is not None and now_ns - self._in_flight_since > self.hang_limit_ns

    def _dispatch(self, window: np.ndarray, deadline_ns: int) -> ModelAnswer:
        self._last_id = request = self._last_id + 1
        self._in_flight = self._awaited = request
        self._in_flight_since = self.clock.now_ns()
        self._send(window, request)
        wait_until = deadline_ns - self.reserve_ns
        clock = self.clock
        while self._in_flight == request:
            if not clock.wait(self._receive, wait_until):
                self._awaited = None
                return ModelAnswer(None, Reason.DEADLINE, None)
        self._awaited = None
        reason, invoke_ns = self._answer_reason, self._answer_invoke_ns
        if reason is not None:
            return ModelAnswer(None, reason, invoke_ns)
        if clock.now_ns() > deadline_ns:  # came in, but after the deadline: never act on it
            self.late_results += 1
            return ModelAnswer(None, Reason.DEADLINE, invoke_ns)
        return ModelAnswer(self._result.copy(), None, invoke_ns)

    def _overloaded(self, window: np.ndarray, now_ns: int, deadline_ns: int) -> ModelAnswer:
        if self.overload == "busy" or not self._can_wait(now_ns, deadline_ns):
            self.busy += 1
            return ModelAnswer(None, Reason.BUSY, None)
        wait_until = deadline_ns - self.reserve_ns
        while self._in_flight is not None:
            if not self.clock.wait(self._receive, wait_until):
                self.skipped += 1
                return ModelAnswer(None, Reason.DEADLINE, None)
        if not self._available():
            return ModelAnswer(None, Reason.MODEL_ERROR, None)
        return self._dispatch(window, deadline_ns)

    def _can_wait(self, now_ns: int, deadline_ns: int) -> bool:
        """Skip-to-latest: may this window wait for the busy worker? (Always, until there is an estimate.)"""
        estimate = self.tail.value_ns
        if estimate is None:
            return True
        free_at = max(now_ns, self._in_flight_since + estimate)
        return free_at + estimate <= deadline_ns - self.reserve_ns

    def _admit(self, now_ns: int, deadline_ns: int) -> bool:
        estimate = self.tail.value_ns
        if estimate is None or now_ns + estimate <= deadline_ns - self.reserve_ns:
            self._refused_in_row = 0
            return True
        self._refused_in_row += 1
        if self._refused_in_row >= PROBE_EVERY:
            self._refused_in_row = 0
            return True
        return False

    def counters(self) -> Dict[str, Any]:
        estimate = self.tail.value_ns
        return {
            "mode": self.mode,
            "overload": self.overload,
            "admission": self.admission,
            "reserve_ms": self.reserve_ns / 1e6,
            "busy": self.busy,
            "skipped": self.skipped,
            "admission_rejects": self.admission_rejects,
            "late_results": self.late_results,
            "late_invoke_max_us": self.late_invoke_max_ns // 1000,
            "hangs": self.hangs,
            "model_errors": self.model_errors,
            "recent_invoke_p99_us": None if estimate is None else estimate // 1000,
        }


class ThreadedScheduler(WorkerScheduler):
    """The model in one worker thread that owns the Engine; the loop thread waits with a timeout.

    The hand-off is two plain locks used as binary semaphores (``_todo``:
    a request is waiting; ``_done``: a report is waiting): the cheapest
    wake-up CPython offers, measured against Condition and Event in
    docs/performance.md. The request slot is allocated once, and the
    answer is read from the engine's own output buffer, which only the next
    request (sent after the caller copied the answer out) overwrites.
    """

    mode = "thread"

    def __init__(self, engine: Engine, clock: Optional[Clock] = None, **policy: Any):
        super().__init__(clock, engine.output_size, **policy)
        self.engine = engine
        self._slot = np.zeros((engine.window, engine.channels), dtype=np.float32)
        self._request = 0
        self._report: "tuple[int, Optional[Reason], int]" = (0, None, 0)
        self._closing = False
        self._todo = threading.Lock()
        self._todo.acquire()
        self._done = threading.Lock()
        self._done.acquire()
        self._thread = threading.Thread(target=self._work, name="edge-infer-model", daemon=True)
        self._thread.start()

    def _send(self, window: np.ndarray, request_id: int) -> None:
        np.copyto(self._slot, window)
        self._request = request_id
        self._todo.release()

    def _receive(self, timeout_s: float) -> bool:
        if not self._done.acquire(True, timeout_s):
            return False
        self._completed(*self._report)
        return True

    def _work(self) -> None:
        engine, now, slot = self.engine, self.clock.now_ns, self._slot
        while True:
            self._todo.acquire()
            if self._closing:
                return
            request = self._request
            start = now()
            try:
                # The engine's own output buffer: it is next written by the next request, which the
                # caller sends only after it copied this answer out.
                self._result = engine.infer(slot)
                reason = None
            except Exception:  # the native runtime failing is a fallback, not a crash
                if not self.model_errors:
                    log.exception("the model raised; its windows fall back (model_error)")
                self.model_errors += 1
                reason = Reason.MODEL_ERROR
            self._report = (request, reason, now() - start)
            self._done.release()

    def set_worker_nice(self, nice: int) -> None:
        os.setpriority(os.PRIO_PROCESS, self._thread.native_id, nice)  # Linux: per thread

    def close(self) -> None:
        """Ask the worker to exit after its current invoke; do not wait for a hung one."""
        if self._closing:
            return
        self._closing = True
        if self._todo.locked():  # unlocked: a request is still pending, and taking it the worker sees _closing
            self._todo.release()
        self._thread.join(timeout=1.0)
        if self._in_flight is not None:
            self._receive(0.0)  # count an answer that came in after the last window


def describe_counters(counters: Dict[str, Any]) -> str:
    """One line of the human summary: the mode and whatever the scheduler had to do."""
    parts = [f"{name.replace('_', ' ')} {counters[key]}" for key, name in (
        ("watchdog_fallbacks", "decided by the watchdog"), ("busy_overruns", "overrun while the model was busy"),
        ("busy", "busy"), ("skipped", "skipped"),
        ("admission_rejects", "admission_rejects"),
        ("late_results", "late answers dropped"), ("hangs", "hangs"), ("model_errors", "model_errors"),
        ("restarts", "restarts")) if counters.get(key)]
    if counters.get("child_exits"):
        parts.append("last exits: " + "; ".join(counters["child_exits"]))
    return f"  model in {counters.get('mode', '?')} mode" + (": " + ", ".join(parts) if parts else "")

