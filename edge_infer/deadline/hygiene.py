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
* :class:`LoopPriority` — opt-in CPU affinity, and SCHED_FIFO for the
  loop thread (and a raised nice priority for the model's worker), so that
  the loop wakes up at its deadline on a loaded machine.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from typing import Any, List, Optional, Sequence

log = logging.getLogger(__name__)

#: Nice value of the model's worker thread or child process under ``--realtime``.
WORKER_NICE = -10


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


def _thread_ids() -> List[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [threading.get_native_id()]


class LoopPriority:
    """Opt-in CPU affinity and SCHED_FIFO for the loop and the model's worker, undone by :meth:`restore`.

    The calling thread — the decision loop — gets SCHED_FIFO: it sleeps nearly all the time and must
    win a CPU the moment its deadline timer fires, even on a loaded machine. The model's worker
    (thread or child process) stays under the normal scheduler with nice :data:`WORKER_NICE`: it wins
    most of the CPU against ordinary processes, but a model that is busy all the time (slower than
    the windows come) does not use up the real-time budget — once it is spent, the kernel throttles
    every SCHED_FIFO thread on the CPU for the rest of the second, the loop included (measured: a
    decision 9 ms late with a SCHED_FIFO worker). Failures (no permission, no such CPU) are one
    warning line each; the run goes on. Restoring matters beyond tidiness: a process forked from a
    SCHED_FIFO thread inherits the policy.
    """

    def __init__(self) -> None:
        self._old_affinity: Optional[set] = None
        self._old_policy: Optional["tuple[int, int, int]"] = None  # (thread id, policy, priority)

    def apply(self, cpus: Optional[Sequence[int]], fifo_priority: Optional[int], scheduler: Any) -> None:
        if cpus:
            try:
                self._old_affinity = os.sched_getaffinity(0)
                self._set_affinity(cpus)
                pin_child = getattr(scheduler, "set_child_affinity", None)
                if pin_child is not None:
                    pin_child(cpus)
            except (OSError, ValueError) as exc:
                log.warning("--cpu-affinity: cannot pin to CPUs %s (%s); running unpinned",
                            ",".join(map(str, cpus)), getattr(exc, "strerror", None) or exc)
                self.restore()
        if fifo_priority:
            tid = threading.get_native_id()
            try:
                old = (tid, os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority)
                os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(fifo_priority))
                self._old_policy = old
                scheduler.set_worker_nice(WORKER_NICE)
            except (OSError, AttributeError) as exc:
                log.warning("--realtime: SCHED_FIFO is not permitted here (%s); running with the normal scheduler"
                            " — give the service CAP_SYS_NICE or LimitRTPRIO, or use systemd's "
                            "CPUSchedulingPolicy=fifo", getattr(exc, "strerror", None) or exc)

    def restore(self) -> None:
        """Back to the scheduling the process had before :meth:`apply` (best effort)."""
        if self._old_policy is not None:
            tid, policy, priority = self._old_policy
            self._old_policy = None
            try:
                os.sched_setscheduler(tid, policy, os.sched_param(priority))
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
