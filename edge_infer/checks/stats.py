"""The sums over one window that every input check and the OOD score share.

A window is small (tens of frames, a few channels): what a check costs is
numpy's per-call overhead (a quarter of a microsecond for an element-wise
operation, over one for a reduction along an axis), not arithmetic. So the
window is turned into a handful of per-channel *sums* with four element-wise
operations and one matrix product, and every check is then a linear
function of those sums (plus the squares of two of them), evaluated by the
guard as one more matrix product:

* ``u = x - center`` per channel (``center``: the middle of the range, or 0), then ``u**2``;
* ``r = max(u**2 - half_gate**2, 0)``: zero unless a sample lies beyond the
  saturation gate (the range limits less the saturation tolerance);
* their sums over the whole window and over its last ``tail`` frames, and
  the squares of the two sums of ``u``.

The mean and variance of each channel, the variance over the last ``tail``
frames (a stuck channel) and "some sample beyond the gate" are all linear in
that vector. NaN and Inf propagate into the sums, so a non-finite sample
shows without a separate pass. The buffer ends with a constant 1, so affine
maps need no separate addition.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

#: Gate for a channel without a range: large enough for any float32 square, so ``r`` stays 0 unless NaN/Inf.
NO_GATE = 1e300


class WindowStats:
    """Fills :attr:`sums` from a ``(window, channels)`` view on :meth:`update`; all arrays are allocated once.

    Layout of ``sums`` (``channels`` entries per block): window sums of u, u**2, r;
    tail sums of u, u**2, r; (window sum of u)**2; (tail sum of u)**2; 1.
    """

    def __init__(self, window: int, channels: int, tail: int, center: Optional[np.ndarray] = None,
                 half_gate: Optional[np.ndarray] = None):
        if not 1 <= tail <= window:
            raise ValueError(f"tail must be between 1 and the window ({window}), not {tail}")
        c = channels
        self.window, self.channels, self.tail = window, channels, tail
        self.center = np.zeros(c) if center is None else np.asarray(center, dtype=np.float64)
        gate = np.full(c, NO_GATE) if half_gate is None else np.asarray(half_gate, dtype=np.float64) ** 2
        self._center_col = self.center[:, None].copy()
        self._gate_col = gate[:, None].copy()
        rows = np.empty((3 * c, window))     # u, u**2, r: one row per channel, time along the row
        self.centered = rows[0:c]
        self._square = rows[c:2 * c]
        self._beyond = rows[2 * c:3 * c]
        self._rows_t = rows.T                # the product reads it transposed (no copy)
        self._weights = np.zeros((2, window))
        self._weights[0, :] = 1.0                  # row 0: the whole window
        self._weights[1, window - tail:] = 1.0     # row 1: the last `tail` frames
        self.sums = np.empty(8 * c + 1)
        self._products = self.sums[0:6 * c].reshape(2, 3 * c)
        self._u_sums = self._products[:, 0:c]       # window and tail sums of u (strided view)
        self._u_squares = self.sums[6 * c:8 * c].reshape(2, c)
        self.sums[8 * c] = 1.0

    def update(self, view: np.ndarray) -> None:
        """Compute :attr:`sums` for ``view`` (``(window, channels)``, any float dtype)."""
        np.subtract(view.T, self._center_col, out=self.centered)
        np.square(self.centered, out=self._square)
        np.subtract(self._square, self._gate_col, out=self._beyond)
        np.maximum(self._beyond, 0.0, out=self._beyond)
        np.dot(self._weights, self._rows_t, out=self._products)
        np.square(self._u_sums, out=self._u_squares)

    # --- linear maps over `sums` (rows of the guard's matrix) ---------------------------------------

    def _index(self, block: int, row: int = 0) -> np.ndarray:
        """Positions in ``sums`` of one block (0: u, 1: u**2, 2: r) of the window (row 0) or tail (row 1) sums."""
        start = row * 3 * self.channels + block * self.channels
        return np.arange(start, start + self.channels)

    def mean_and_variance(self) -> np.ndarray:
        """``(2 * channels, len(sums))``: per channel the window's mean, then its (population) variance."""
        c, n = self.channels, float(self.window)
        out = np.zeros((2 * c, len(self.sums)))
        rows = np.arange(c)
        out[rows, self._index(0)] = 1.0 / n                       # mean = center + sum(u) / n
        out[rows, -1] = self.center
        out[c + rows, self._index(1)] = 1.0 / n                   # var = sum(u**2) / n - (sum(u) / n)**2
        out[c + rows, 6 * c + rows] = -1.0 / (n * n)
        return out

    def beyond_gate(self) -> np.ndarray:
        """``(len(sums),)``: positive iff a sample lies beyond the gate (NaN if any is not finite)."""
        out = np.zeros(len(self.sums))
        out[self._index(2)] = 1.0
        return out

    def stuck(self, min_spread: np.ndarray) -> np.ndarray:
        """``(channels, len(sums))``: positive where the tail's standard deviation is below ``min_spread``.

        ``k * sum(u**2) - sum(u)**2 = k**2 * variance`` over the ``k`` tail frames.
        """
        c, k = self.channels, float(self.tail)
        out = np.zeros((c, len(self.sums)))
        rows = np.arange(c)
        out[rows, self._index(1, row=1)] = -k
        out[rows, 7 * c + rows] = 1.0
        out[rows, -1] = (k * np.asarray(min_spread, dtype=np.float64)) ** 2
        return out
