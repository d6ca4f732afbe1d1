"""Meeting each window's deadline: the scheduler and its modes, the start-up check, silence, OS hygiene.

* :mod:`.scheduler` -- the model's answer for a window by its deadline, or a reason (inline, worker thread)
* :mod:`.watchdog` -- the inline mode's second thread: the fallback at the deadline when an invoke overruns
* :mod:`.isolated` -- the same with the model in a child process that is killed and restarted
* :mod:`.options` -- the ``[deadline]`` spec keys and their command-line overrides
* :mod:`.startup` -- warm-up and the budget check
* :mod:`.tail_estimate` -- the model's recent p99, for admission control
* :mod:`.reserve` -- how long before a deadline to act (learned inline), and when a window may still start
* :mod:`.silence` -- ``no_data`` on schedule
* :mod:`.hygiene` -- garbage collector pacing, CPU affinity, SCHED_FIFO, the realtime loop's breathing
* :mod:`.clock` -- the monotonic clock, and a fake one for tests
"""

from __future__ import annotations

from typing import Any, Optional

from ..model.engine import Engine
from .clock import Clock
from .scheduler import InlineScheduler, Scheduler, ThreadedScheduler


def build_scheduler(mode: str, engine: Engine, clock: Optional[Clock] = None, **policy: Any) -> Scheduler:
    """The scheduler for ``--mode``: ``inline``, ``thread`` or ``process`` (policy: see WorkerScheduler)."""
    if mode == "inline":
        return InlineScheduler(engine, clock, **policy)
    if mode == "thread":
        return ThreadedScheduler(engine, clock, **policy)
    if mode == "process":
        from .isolated import ProcessScheduler  # multiprocessing is only imported when asked for

        return ProcessScheduler(engine, clock, **policy)
    raise ValueError(f"unknown scheduler mode {mode!r}")
