"""An online estimate of the model's tail latency, for admission control.

A budget is a promise about the tail, so the question "can this invoke still
finish by its deadline?" is answered with the p99 of *recent* invokes, not
the mean and not the whole run's history: the estimate follows the machine
when another process starts hogging the CPU, and recovers when it stops.
"""

from __future__ import annotations

import math
from typing import Callable, Optional


#: Only invokes refresh the estimate: whatever refuses windows on it (admission, the start rule, a shared model's
#: expiry) lets every this-many-th refused window run anyway, so an estimate a stall once inflated cannot keep
#: the model from every later window.
PROBE_EVERY = 10


class TailEstimate:
    """The ``percentile`` of the last ``size`` durations, refreshed every ``every`` records.

    ``value_ns`` is None until ``min_samples`` durations were recorded.
    Recording is a list store; the percentile (a sort of ``size`` numbers)
    is computed only every ``every`` records; ``on_update`` (if given) hears each new value, so that a
    reader that needs it on every window can keep a plain attribute instead of asking.
    """

    def __init__(self, size: int = 100, every: int = 10, percentile: float = 99.0, min_samples: int = 10,
                 on_update: Optional[Callable[[int], None]] = None):
        self._ring = [0] * size  # a list: a store is cheaper than into a numpy array, and sorted() is fast at 100
        self._size = size
        self._count = 0
        self._every = every
        self._min_samples = min_samples
        self._rank = percentile / 100.0
        self.value_ns: Optional[int] = None
        self._on_update = on_update

    def record(self, duration_ns: int) -> None:
        count = self._count
        self._ring[count % self._size] = duration_ns
        self._count = count = count + 1
        if count >= self._min_samples and (count % self._every == 0 or count == self._min_samples):
            samples = sorted(self._ring[:count] if count < self._size else self._ring)
            self.value_ns = value = samples[max(0, math.ceil(self._rank * len(samples)) - 1)]
            if self._on_update is not None:
                self._on_update(value)
