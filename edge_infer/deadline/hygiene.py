"""Tail-latency hygiene for the decision loop: garbage collector, CPU affinity, SCHED_FIFO.

Each of these is measured in ``scripts/bench_loop.py`` (docs/performance.md)
rather than assumed to help:

* :class:`GcPacer` — CPython's cyclic garbage collector runs whenever enough
  objects were allocated, in the middle of whatever the loop is doing. After
  warm-up, everything alive (modules, the model, buffers) is moved out of its
  reach with ``gc.freeze()``, automatic collection is switched off, and the
  loop collects in its slack time — right after a decision was handed to
  the sinks, when the next deadline is a hop away — by the same thresholds
  the collector would have used. Libraries may switch automatic collection
  back on, so that is re-checked each time.
* :class:`SwitchInterval` — how long another Python thread may hold the GIL
  before it must hand it over. A thread that wakes at its deadline (the loop,
  the watchdog, the source's reader) needs the GIL before it can act; with
  CPython's default 5 ms, one busy Python thread in the process (a metrics
  scrape, a user's callback) makes decisions up to 5 ms late. The loop sets
  it to ``switch_interval_ms`` while it runs.
* :class:`LoopPriority` — opt-in CPU affinity, and SCHED_FIFO for the
  loop thread (and a raised nice priority for the model's worker), so that
  the loop wakes up at its deadline on a loaded machine.
* :class:`Breather` — a SCHED_FIFO loop that goes from invoke to invoke
  sleeps for a moment now and then, so that the kernel's own work on its
  CPU (the tty layer's) is not held up behind the model.
* :class:`Demotion` — a long invoke runs under the normal scheduler, for the
  same reason and for the kernel's real-time budget: the watchdog and the
  backstop keep the deadline while it runs.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from typing import Any, Callable, List, Optional, Sequence

from .clock import Clock

log = logging.getLogger(__name__)

#: Nice value of the model's worker thread or child process under ``--realtime``.
WORKER_NICE = -10
#: Nice value of the inline loop's thread during a demoted invoke (:class:`Demotion`; :data:`WORKER_NICE` where
#: only that is permitted). The lowest: at -10 the model decided fewer windows in 14 of 20 loaded runs side by
#: side (a scraper of the metrics endpoint: 331 model decisions a run against 396 at -20), while the kernel's
#: deferred work, which the demotion is for, still preempts it (pty delivery p99 at most 0.77 ms at -10, 0.68 ms
#: at -20 but for one run at 1.8 ms; docs/performance.md 5.7b).
DEMOTED_NICE = -20
#: SCHED_FIFO, and a process forked from such a thread starts under the normal scheduler (a helper process,
#: say the metrics server, scraped hard, must not inherit the loop's real-time priority and starve it).
FIFO_POLICY = getattr(os, "SCHED_FIFO", 1) | getattr(os, "SCHED_RESET_ON_FORK", 0)


class GcPacer:
    """Automatic garbage collection off in the hot path; :meth:`slack` collects between windows."""

    def __init__(self) -> None:
        self.active = False
        self.collections = 0
        self._was_enabled = gc.isenabled()
        self._thresholds = gc.get_threshold()

    def start(self) -> None:
        """Collect once, freeze the survivors (start-up objects are never scanned again), stop automatic GC."""
        self._was_enabled = gc.isenabled()
        self._thresholds = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.disable()
        self.active = True

    def slack(self) -> None:
        """Between windows: run the collection the collector would have run by now, if any."""
        count0, count1, count2 = gc.get_count()
        threshold0, threshold1, threshold2 = self._thresholds
        if count0 < threshold0 or threshold0 == 0:
            return
        if gc.isenabled():  # a library switched it back on
            gc.disable()
        generation = 0 if count1 < threshold1 else (1 if count2 < threshold2 else 2)
        gc.collect(generation)
        self.collections += 1

    def stop(self) -> None:
        """Back to the interpreter's normal collection (the loop ended)."""
        if not self.active:
            return
        self.active = False
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()


class SwitchInterval:
    """``sys.setswitchinterval`` for the run, restored after it (it is a process-wide setting)."""

    def __init__(self) -> None:
        self._old: Optional[float] = None

    def apply(self, seconds: float) -> None:
        if self._old is None:
            self._old = sys.getswitchinterval()
        sys.setswitchinterval(seconds)

    def restore(self) -> None:
        if self._old is not None:
            sys.setswitchinterval(self._old)
            self._old = None


class Breather:
    """Under ``--realtime``, the loop leaves its CPU for :data:`BREATHE_S` once it has computed for
    :data:`BUSY_NS` without a pause.

    Why: a SCHED_FIFO thread keeps its CPU until it blocks, and work the kernel queued on that CPU at normal
    priority waits until then. The tty layer hands every received buffer to a kworker (``flush_to_ldisc``;
    on a pty, each write in either direction), and the scheduler tends to queue it on the CPU of the thread
    that woke it — the loop, after writing an ACTION. A model slower than the windows come keeps the loop
    computing from one invoke to the next, so that kworker waited for the whole next invoke: measured with
    a pty device and a 27 ms model, ACTIONs the runtime wrote on time reached the device 20–40 ms later (the
    runtime counted 4 late decisions, the device 35). A sleep of 0.1 ms before each such invoke lets the
    queued work run: the same delivery p99 went from 6.8 ms to 0.3 ms (docs/performance.md, 5.2d). A loop
    that waits for frames between invokes (a model faster than the windows) never pays it.
    """

    __slots__ = ("clock", "last_end_ns", "busy_since_ns", "breaths")

    def __init__(self, clock: Clock):
        self.clock = clock
        #: When the last invoke ended (set by the scheduler).
        self.last_end_ns = 0
        self.busy_since_ns = 0
        self.breaths = 0

    def before_invoke(self, now_ns: int) -> int:
        """Called before each invoke; returns the time the invoke starts (later, if the loop slept)."""
        if now_ns - self.last_end_ns > PAUSE_NS:  # the loop paused since the last invoke: the CPU was free
            self.busy_since_ns = now_ns
            return now_ns
        if now_ns - self.busy_since_ns < BUSY_NS:
            return now_ns
        self.breaths += 1
        time.sleep(BREATHE_S)
        self.busy_since_ns = now = self.clock.now_ns()
        return now


class Demotion:
    """Under ``--realtime``, a long invoke runs under the normal scheduler (nice :data:`DEMOTED_NICE`); the loop
    takes its SCHED_FIFO back as the invoke returns.

    Why: the deadline no longer depends on the loop thread once an invoke has started: the watchdog and the
    native backstop (SCHED_FIFO, above the loop) decide the window if the invoke overruns. What a SCHED_FIFO
    invoke does cost is everything else on its CPU. The kernel's deferred work waits behind it whole: the tty
    layer's delivery of a pty write (the backstop's fallback, written on time, reached the device 10-30 ms
    late: docs/performance.md 5.7) and, on a board, of the UART's received bytes; and a model slower than the
    windows come, computing from one invoke to the next, uses up the kernel's real-time budget (95 % of each
    second), after which every SCHED_FIFO thread on that CPU stops, the backstop included (measured: fallbacks
    up to 33 ms late with the runtime on one CPU). Only invokes of at least :data:`DEMOTE_INVOKE_NS` (the recent
    p99) are demoted: two system calls are nothing to them, and a shorter one delays nobody for long.
    """

    __slots__ = ("_set", "_fifo", "_fifo_param", "_normal_param", "_thread", "demoted", "active")

    def __init__(self, set_scheduler: Callable[[int, int, Any], None], fifo: "tuple[int, int]",
                 thread_id: Optional[int] = None):
        self._set = set_scheduler
        self._fifo, self._fifo_param = fifo[0], os.sched_param(fifo[1])
        self._normal_param = os.sched_param(0)
        #: The loop's thread, the one whose scheduling this moves (``sched_setscheduler(0)`` is the caller's):
        #: a caller on another thread (``Runtime.on_frame`` called directly) is left as it is.
        self._thread = threading.get_native_id() if thread_id is None else thread_id
        #: Invokes run under the normal scheduler so far.
        self.demoted = 0
        #: False once the kernel refused SCHED_FIFO back: no invoke is demoted any more.
        self.active = True

    @classmethod
    def of_this_thread(cls) -> Optional["Demotion"]:
        """For the calling thread (the loop) if it runs under SCHED_FIFO, with the nice it gets while demoted
        (None if it does not: nothing to demote)."""
        policy = os.sched_getscheduler(0)
        if policy & ~getattr(os, "SCHED_RESET_ON_FORK", 0) != getattr(os, "SCHED_FIFO", 1):
            return None
        for nice in (DEMOTED_NICE, WORKER_NICE):  # the lowest that RLIMIT_NICE (or CAP_SYS_NICE) allows
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)  # LoopPriority restores it
                break
            except OSError as exc:
                refused = exc
        else:
            log.warning("--realtime: a long invoke runs at the normal scheduler without nice %d (%s)", DEMOTED_NICE,
                        refused.strerror or refused)
        return cls(os.sched_setscheduler, (policy, os.sched_getparam(0).sched_priority))

    def wanted(self, invoke_estimate_ns: Optional[int]) -> bool:
        return (invoke_estimate_ns is not None and invoke_estimate_ns >= DEMOTE_INVOKE_NS and self.active
                and threading.get_native_id() == self._thread)

    def down(self) -> None:
        self._set(0, os.SCHED_OTHER | getattr(os, "SCHED_RESET_ON_FORK", 0), self._normal_param)
        self.demoted += 1

    def up(self) -> None:
        self._set(0, self._fifo, self._fifo_param)


#: An invoke whose recent p99 is at least this long runs under the normal scheduler (:class:`Demotion`).
DEMOTE_INVOKE_NS = 1_000_000
#: A loop that computed this long without a pause sleeps :data:`BREATHE_S` before its next invoke.
BUSY_NS = 5_000_000
#: Longer than this between one invoke's end and the next one's start counts as a pause (the loop slept).
PAUSE_NS = 1_000_000
BREATHE_S = 0.0001


def _thread_ids() -> List[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [threading.get_native_id()]


class LoopPriority:
    """Opt-in CPU affinity and SCHED_FIFO for the loop and the model's worker, undone by :meth:`restore`.

    The threads that wait for a deadline get SCHED_FIFO: they sleep nearly all the time and must win
    a CPU the moment their timer fires, even on a loaded machine. In the thread and process modes that
    is the loop; inline, the watchdog and the loop, which also runs the model (a long invoke runs under
    the normal scheduler: :class:`Demotion`); the source's reader thread, which stamps arrivals, gets SCHED_FIFO too
    (:meth:`add_waiter`). Threads other than the loop get one priority more than the loop: SCHED_FIFO
    threads of equal priority never preempt each other, and the watchdog must preempt a loop that is
    computing the model. The model's worker
    (thread or child process) stays under the normal scheduler with nice :data:`WORKER_NICE`: it wins
    most of the CPU against ordinary processes, but a model that is busy all the time (slower than
    the windows come) does not use up the real-time budget — once it is spent, the kernel throttles
    every SCHED_FIFO thread on the CPU for the rest of the second, the loop included (measured: a
    decision 9 ms late with a SCHED_FIFO worker). Failures (no permission, no such CPU) are one
    warning line each; the run goes on. A process forked from these threads starts under the normal
    scheduler (:data:`FIFO_POLICY`).
    """

    def __init__(self) -> None:
        self._old_affinity: Optional[set] = None
        self._old_policies: List["tuple[int, int, int]"] = []  # (thread id, policy, priority)
        self._old_nice: Optional["tuple[int, int]"] = None  # (loop thread id, nice)
        self._fifo_priority: Optional[int] = None

    def apply(self, cpus: Optional[Sequence[int]], fifo_priority: Optional[int], *schedulers: Any) -> None:
        """One call for every model's scheduler: a runtime with several models has a worker per model, and
        each must get the same pinning and nice (not just the first model's)."""
        if cpus:
            try:
                self._old_affinity = os.sched_getaffinity(0)
                self._set_affinity(cpus)
                for scheduler in schedulers:
                    pin_child = getattr(scheduler, "set_child_affinity", None)
                    if pin_child is not None:
                        pin_child(cpus)
            except (OSError, ValueError) as exc:
                log.warning("--cpu-affinity: cannot pin to CPUs %s (%s); running unpinned",
                            ",".join(map(str, cpus)), getattr(exc, "strerror", None) or exc)
                self.restore()
        if fifo_priority:
            loop = threading.get_native_id()
            self._fifo_priority = fifo_priority
            try:
                self._old_nice = (loop, os.getpriority(os.PRIO_PROCESS, loop))
                waiters = [tid for scheduler in schedulers for tid in scheduler.deadline_threads(loop)]
                for tid in dict.fromkeys(waiters):  # schedulers that share the watchdog name it once
                    self._make_fifo(tid, fifo_priority + (tid != loop))
                for scheduler in schedulers:
                    scheduler.set_worker_nice(WORKER_NICE)
                    scheduler.on_fifo()
            except (OSError, AttributeError) as exc:
                self._fifo_priority = None
                log.warning("--realtime: SCHED_FIFO is not permitted here (%s); running with the normal scheduler"
                            " — give the service CAP_SYS_NICE or LimitRTPRIO, or use systemd's "
                            "CPUSchedulingPolicy=fifo", getattr(exc, "strerror", None) or exc)

    def add_waiter(self, tid: int) -> None:
        """SCHED_FIFO for a thread started after :meth:`apply` that waits for time (the source's reader)."""
        self._add_thread(tid, above_loop=True)

    def add_loop_thread(self, tid: int) -> None:
        """SCHED_FIFO at the loop's own priority for a thread that takes over the loop (a deputy: baton.py)."""
        self._add_thread(tid, above_loop=False)

    def _add_thread(self, tid: int, above_loop: bool) -> None:
        if self._fifo_priority:
            try:
                self._make_fifo(tid, self._fifo_priority + above_loop)
            except OSError as exc:
                log.warning("--realtime: cannot give thread %d SCHED_FIFO (%s)", tid, exc.strerror or exc)

    def _make_fifo(self, tid: int, priority: int) -> None:
        old = (tid, os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority)
        os.sched_setscheduler(tid, FIFO_POLICY, os.sched_param(priority))
        self._old_policies.append(old)

    def restore(self) -> None:
        """Back to the scheduling the process had before :meth:`apply` (best effort)."""
        self._fifo_priority = None
        while self._old_policies:
            tid, policy, priority = self._old_policies.pop()
            try:
                os.sched_setscheduler(tid, policy, os.sched_param(priority))
            except OSError:  # also a thread that has ended
                pass
        if self._old_nice is not None:
            (tid, nice), self._old_nice = self._old_nice, None
            try:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            except OSError:
                pass
        if self._old_affinity is not None:
            cpus, self._old_affinity = self._old_affinity, None
            try:
                self._set_affinity(cpus)
            except OSError:
                pass

    @staticmethod
    def _set_affinity(cpus: Any) -> None:
        for tid in _thread_ids():
            try:
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:  # a thread that just ended
                pass
