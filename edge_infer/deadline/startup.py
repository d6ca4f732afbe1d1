"""The start-up check: warm the model up on this device and compare its tail latency with the budget.

The first invokes of a TFLite model are slow (allocation, kernel
preparation, cold caches), and a budget copied from a faster machine is a
promise the device cannot keep. Before the first frame, the loop runs
``warmup`` windows through the scheduler it will use (so the measurement
includes the hand-off to the worker or the child process), and if the p99
does not fit in the time the scheduler waits for the model (budget minus
reserve) it says so, naming both numbers. It also compares the p99 with the
window period (hop / sample rate): a model slower than the windows come can
meet every budget and still not keep up — it then decides only some windows
and the others fall back ``overrun``, which the operator should hear about
before the first frame. The run goes on and falls back — that is what the
guarantee is for — unless ``--strict-budget`` asked to refuse to start instead.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

from ..errors import EdgeInferError
from .clock import Clock
from .scheduler import Scheduler

log = logging.getLogger(__name__)

#: Stop warming up after this long, once a few windows were measured (a very slow model must not delay start).
MAX_WARMUP_S = 2.0
MIN_MEASURED = 3


class BudgetError(EdgeInferError):
    """The model's measured tail latency does not fit the budget, and ``--strict-budget`` was given."""


@dataclass
class StartupReport:
    """What the warm-up measured: the scheduler round trip per window, in microseconds."""

    windows: int
    measured: int
    p50_us: int
    p99_us: int
    max_us: int
    failed: int
    budget_ms: float
    wait_ms: float
    #: hop / sample rate, when the sample rate is known (set by :func:`check_budget`).
    window_period_ms: Optional[float] = None

    @property
    def within_budget(self) -> bool:
        return self.failed == 0 and self.p99_us <= self.wait_ms * 1000.0

    @property
    def keeps_up(self) -> Optional[bool]:
        """Whether the p99 fits in a window period (None when the period is unknown)."""
        if self.window_period_ms is None:
            return None
        return self.p99_us <= self.window_period_ms * 1000.0

    def to_dict(self) -> Dict[str, Any]:
        return {"warmup_windows": self.windows, "p50_us": self.p50_us, "p99_us": self.p99_us,
                "max_us": self.max_us, "failed": self.failed, "within_budget": self.within_budget,
                "window_period_ms": self.window_period_ms, "keeps_up": self.keeps_up}


def warm_up(scheduler: Scheduler, shape: "tuple[int, int]", windows: int, budget_ms: float, reserve_ms: float,
            give_up_ns: int, clock: Clock) -> StartupReport:
    """Run ``windows`` zero windows through ``scheduler``; measure all but the coldest tenth."""
    window = np.zeros(shape, dtype=np.float32)
    skip = windows // 10
    samples = []
    failed = 0
    stop_at = clock.now_ns() + int(MAX_WARMUP_S * 1e9)
    done = 0
    for i in range(windows):
        done += 1
        start = clock.now_ns()
        answer = scheduler.run(window, start + give_up_ns)
        end = clock.now_ns()
        if answer.reason is not None:
            failed += 1
        if i >= skip:
            samples.append(end - start)
        if end > stop_at and len(samples) >= MIN_MEASURED:
            break
    us = np.array(samples or [0], dtype=np.int64) // 1000
    return StartupReport(windows=done, measured=len(samples),
                         p50_us=int(np.percentile(us, 50)), p99_us=_p99(us), max_us=int(us.max()),
                         failed=failed, budget_ms=budget_ms, wait_ms=budget_ms - reserve_ms)


def check_budget(report: StartupReport, mode: str, strict: bool, window_period_ms: Optional[float] = None) -> None:
    """Say plainly if the warm-up p99 does not fit the budget or the window period; with ``strict``, refuse."""
    report.window_period_ms = window_period_ms
    if report.measured == 0:
        return
    problems = []
    p99 = (f"the model's p99 latency on this device is {report.p99_us / 1000:.2f} ms ({report.measured} warm-up "
           f"windows, {mode} mode)")
    if not report.within_budget:
        problem = f"over its {report.wait_ms:.2f} ms share of the {report.budget_ms:g} ms budget"
        if report.failed:
            problem += f"; {report.failed} warm-up windows failed"
        problems.append((problem, "raise --budget-ms or use a faster model", "deadline"))
    if report.keeps_up is False:
        problems.append((f"longer than the {window_period_ms:.2f} ms between windows (hop / sample rate): it cannot "
                         "keep up and decides only the newest window when it is free",
                         "raise the hop or use a faster model", "overrun"))
    if not problems:
        return
    text = f"{p99}, " + "; and ".join(problem for problem, _, _ in problems)
    if strict:
        raise BudgetError(f"start-up check: {text}; refusing to start (--strict-budget): "
                          + " / ".join(fix for _, fix, _ in problems))
    log.warning("start-up check: %s: expect windows to fall back (%s)", text,
                "/".join(reason for _, _, reason in problems))


def _p99(values: np.ndarray) -> int:
    ordered = np.sort(values)
    return int(ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)])
