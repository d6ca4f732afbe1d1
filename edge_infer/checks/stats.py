"""The sums over one window that every input check and the OOD score share.

A window is small (tens of frames, a few channels): what a check costs is
numpy's per-call overhead (a quarter of a microsecond for an element-wise
operation, over one for a reduction along an axis), not arithmetic. So the
window is turned into a handful of per-channel *sums* with four element-wise
operations and one matrix product, and every check is then a linear
function of those sums (plus the squares of two of them), evaluated by the
guard as one more matrix product:

* ``u = x - center`` per channel (``center``: the middle of the range, or 0), then ``u**2``;
* ``max(u**2, half_gate**2)``, whose sum exceeds its value for an in-range
  window (computed once, by the same product) only if a sample lies beyond
  the saturation gate (the range limits less the saturation tolerance);
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

    ``sums`` holds, per block and channel, the pair (whole window, last ``tail``
    frames): the sums of u, u**2 and r (``6 * channels`` values), then the
    squares of the sums of u (``2 * channels``), then 1.
    """

    def __init__(self, window: int, channels: int, tail: int, center: Optional[np.ndarray] = None,
                 half_gate: Optional[np.ndarray] = None):
        if not 1 <= tail <= window:
            raise ValueError(f"tail must be between 1 and the window ({window}), not {tail}")
        c = channels
        self.window, self.channels, self.tail = window, channels, tail
        self.center = np.zeros(c) if center is None else np.asarray(center, dtype=np.float64)
        gate = np.full(c, NO_GATE) if half_gate is None else np.asarray(half_gate, dtype=np.float64) ** 2
        # same-shape operands: broadcasting a column costs more than the operation itself
        self._center = np.repeat(self.center[:, None], window, axis=1)
        self._gate = np.repeat(gate[:, None], window, axis=1)
        # u, u**2, max(u**2, gate**2): one row per channel. Zeros, not np.empty: the gate sums below run the product
        # before any window is seen, and uninitialised rows could hold Inf (numpy warned "invalid value")
        self._rows = np.zeros((3 * c, window))
        self.centered = self._rows[0:c]
        self._square = self._rows[c:2 * c]
        self._capped = self._rows[2 * c:3 * c]
        self._weights = np.zeros((window, 2))
        self._weights[:, 0] = 1.0                  # column 0: the whole window
        self._weights[window - tail:, 1] = 1.0     # column 1: the last `tail` frames
        self.sums = np.zeros(8 * c + 1)
        self._products = self.sums[0:6 * c].reshape(3 * c, 2)
        self._u_sums = self._products[0:c]
        self._u_squares = self.sums[6 * c:8 * c].reshape(c, 2)
        self.sums[8 * c] = 1.0
        # what the capped sums are when no sample passes the gate, computed by the very same product
        self._capped[:] = self._gate
        self._products[:] = np.dot(self._rows, self._weights)
        self._gate_sums = self._products[2 * c:3 * c].copy()

    def update(self, view: np.ndarray) -> None:
        """Compute :attr:`sums` for ``view`` (``(window, channels)``, any float dtype)."""
        centered = self.centered
        np.subtract(view.T, self._center, out=centered)  # float32 samples widen exactly, as a copy would
        np.square(centered, out=self._square)
        np.maximum(self._square, self._gate, out=self._capped)
        np.dot(self._rows, self._weights, out=self._products)
        np.square(self._u_sums, out=self._u_squares)

    # --- linear maps over `sums` (rows of the guard's matrix) ---------------------------------------

    @property
    def gate(self) -> np.ndarray:
        """Per channel, the value ``u**2`` is capped at: the squared half gate, or NO_GATE without a range."""
        return self._gate[:, 0]

    def index(self, block: int, tail: bool = False) -> np.ndarray:
        """Positions in ``sums`` of one block (0: u, 1: u**2, 2: capped, 3: squared sum of u), per channel
        (over the whole window, or over its last ``tail`` frames)."""
        return (block * self.channels + np.arange(self.channels)) * 2 + int(tail)

    def mean_and_variance(self) -> np.ndarray:
        """``(2 * channels, len(sums))``: per channel the window's mean, then its (population) variance."""
        c, n = self.channels, float(self.window)
        out = np.zeros((2 * c, len(self.sums)))
        rows = np.arange(c)
        out[rows, self.index(0)] = 1.0 / n                       # mean = center + sum(u) / n
        out[rows, -1] = self.center
        out[c + rows, self.index(1)] = 1.0 / n                   # var = sum(u**2) / n - (sum(u) / n)**2
        out[c + rows, self.index(3)] = -1.0 / (n * n)
        return out

    def beyond_gate(self) -> np.ndarray:
        """``(len(sums),)``: positive iff a sample lies beyond the gate (NaN if any is not finite)."""
        out = np.zeros(len(self.sums))
        out[self.index(2)] = 1.0
        out[-1] = -float(self._gate_sums[:, 0].sum())
        return out

    def stuck(self, min_spread: np.ndarray) -> np.ndarray:
        """``(channels, len(sums))``: positive where the tail's standard deviation is below ``min_spread``.

        ``k * sum(u**2) - sum(u)**2 = k**2 * variance`` over the ``k`` tail frames.
        """
        c, k = self.channels, float(self.tail)
        out = np.zeros((c, len(self.sums)))
        rows = np.arange(c)
        out[rows, self.index(1, tail=True)] = -k
        out[rows, self.index(3, tail=True)] = 1.0
        out[rows, -1] = (k * np.asarray(min_spread, dtype=np.float64)) ** 2
        return out
