"""The reductions over one window that every input check and the OOD score share.

A window is small (tens of frames, a few channels), so what a check costs is
numpy's per-call overhead, not arithmetic. :class:`WindowStats` therefore
gets everything from one copy, two element-wise operations, one matrix
product and one reduction, into buffers allocated once:

* per channel over the whole window: sum, sum of squares, maximum and
  negated minimum (``raw``, the OOD features' input and the range checks');
* per channel over the last ``tail`` frames: sum and sum of squares
  (``tail_sums``, the stuck check's spread).

The copy is transposed (channels x time, float64), so both the product and
the reduction run along contiguous rows, and non-finite values propagate
into the sums, where the guard sees them without a separate pass.
"""

from __future__ import annotations

import numpy as np


class WindowStats:
    """Fills its buffers from a ``(window, channels)`` view on :meth:`update`; the arrays are reused."""

    def __init__(self, window: int, channels: int, tail: int):
        if not 1 <= tail <= window:
            raise ValueError(f"tail must be between 1 and the window ({window}), not {tail}")
        c = channels
        self.window, self.channels, self.tail = window, channels, tail
        rows = np.empty((3 * c, window))    # x**2, x, -x: one row per channel, time along the row
        self.square = rows[0:c]
        self.values = rows[c:2 * c]          # the window, transposed, as float64
        self._negated = rows[2 * c:3 * c]
        self._summed = rows[0:2 * c]         # x**2 and x: summed by the product
        self._extremes_in = rows[c:3 * c]    # x and -x: their row maxima are max and -min
        self._weights = np.zeros((2, window))
        self._weights[0, window - tail:] = 1.0   # row 0: the last `tail` frames
        self._weights[1, :] = 1.0                # row 1: the whole window
        buffer = np.empty(6 * c)
        self._sums = buffer[0:4 * c].reshape(2, 2 * c)
        #: last ``tail`` frames: sum of squares per channel, then sum per channel
        self.tail_sums = buffer[0:2 * c]
        #: whole window: sum of squares, sum, maximum, negated minimum (per channel each)
        self.raw = buffer[2 * c:6 * c]
        #: whole window: maximum, then negated minimum, per channel
        self.extremes = buffer[4 * c:6 * c]

    def update(self, view: np.ndarray) -> None:
        """Compute the sums and extremes of ``view`` (``(window, channels)``, any float dtype)."""
        values = self.values
        np.copyto(values, view.T)
        np.square(values, out=self.square)
        np.negative(values, out=self._negated)
        np.dot(self._weights, self._summed.T, out=self._sums)
        np.maximum.reduce(self._extremes_in, axis=1, out=self.extremes)
