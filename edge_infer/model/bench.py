"""Measure a model's invoke latency on this device and recommend a budget.

The budget is a promise about the tail, not the mean: the recommendation is
the p99.9 of the measured invoke time with head-room (x1.5), plus the time the
scheduler keeps back to hand over a fallback (its reserve, 1 ms by default),
rounded up to a tenth of a millisecond.
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, Optional

import numpy as np

from ..deadline.options import DEFAULT_RESERVE_MS
from ..histogram import Histogram
from .engine import Engine

HEADROOM_FACTOR = 1.5


def recommended_budget_ms(p999_us: float) -> float:
    return math.ceil((p999_us * HEADROOM_FACTOR / 1000.0 + DEFAULT_RESERVE_MS) * 10) / 10


def bench_invoke(engine: Engine, runs: int = 2000, warmup: int = 50, seed: int = 0,
                 window: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """Warm up, then time ``runs`` set_input+invoke+output calls on one window (random if not given)."""
    if window is None:
        window = np.random.default_rng(seed).standard_normal((engine.window, engine.channels)).astype(np.float32)
    for _ in range(warmup):
        engine.infer(window)
    hist = Histogram()
    clock = time.perf_counter_ns
    samples = np.empty(runs, dtype=np.int64)
    for i in range(runs):
        start = clock()
        engine.infer(window)
        samples[i] = clock() - start
    hist.record_all(samples / 1000.0)
    stats = hist.summary((50, 99, 99.9))
    return {
        "model": str(engine.path),
        "backend": engine.backend.name,
        "backend_version": engine.backend_version,
        "runs": runs,
        "warmup": warmup,
        "invoke_us": stats,
        "mean_us": round(float(samples.mean()) / 1000.0, 2),
        "recommended_budget_ms": recommended_budget_ms(stats["p99.9"]),
    }
