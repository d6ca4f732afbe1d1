"""The input checks' fast path for many windows of a recorded log at once.

A log's frames are all there before the loop reads them, so the values the
guard's fast path needs (:mod:`.stats`: the sums of each window, the OOD
features, the stuck test) can be computed for a block of windows with a
few numpy calls instead of a few per window: numpy's per-call overhead,
not arithmetic, is what a window costs (docs/performance.md).

What a block yields is a verdict per window that never differs from the
per-window fast path (:meth:`~.guard.InputGuard.check_window` still runs the
exact path for every window not cleared here):

* "no sample beyond the saturation gate, none non-finite" is decided per
  frame, by the very comparison the per-window sums stand for, and counted
  per window in integers (exact);
* the stuck values and the squared OOD distance come from differences of
  running sums over the block instead of the per-window product, so they
  carry another rounding error; a window is cleared only if its values
  pass with a margin of four times a bound on the difference between the
  two, taken for the whole block at once (``n * eps * sum(|terms|)`` for a
  sum of n terms, running sums counted from the block's start, carried
  through the check matrix). A window near a threshold, or a block with a
  huge or non-finite sample (which spoils the running sums), takes the
  per-window path; so does a block whose OOD scores could be further than
  :data:`SCORE_REACH` from the per-window ones.

The OOD score of a cleared window is this block's: it can differ from the
per-window product's in its last bits (at most :data:`SCORE_REACH`; the
recorded score is rounded to three decimals).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .stats import WindowStats

_EPS = float(np.finfo(np.float64).eps)
#: How much larger than the bound on their difference a margin to a threshold must be.
SAFETY = 4.0
#: A block whose OOD scores could be further than this from the per-window ones (in the score's units) is
#: judged window by window: a huge sample in it spoils the running sums (clean blocks: about 1e-8, as bound;
#: 1e-13 as measured), and a recorded score must not move.
SCORE_REACH = 1e-6


class BlockChecks:
    """Fast-path verdicts for the windows of consecutive frames (``stats`` and the guard's check rows).

    Every array is laid out channel by frame, so that each operation runs along contiguous memory: across
    a few columns numpy costs ten times more per element.
    """

    def __init__(self, stats: WindowStats, rows: np.ndarray, ood_rows: int, ood_limit2: float):
        """``rows``: the guard's check matrix without its beyond-gate row (OOD rows first, then stuck rows)."""
        self.stats = stats
        self.ood_rows = ood_rows
        self.ood_limit2 = ood_limit2
        # the rows' columns in the order verdicts() lays the sums out: u and u**2 over the whole window, the
        # same over its tail, (sum of u)**2 over each, then the constant (only the beyond-gate row, left out
        # here, reads the capped sums)
        order = [stats.index(0), stats.index(1), stats.index(0, True), stats.index(1, True), stats.index(3),
                 stats.index(3, True), np.array([len(stats.sums) - 1])]
        self._rows = np.ascontiguousarray(rows[:, np.concatenate(order)])
        self._abs_rows = np.abs(self._rows)
        self._center = stats.center[:, None]
        self._gate = stats.gate[:, None]

    def verdicts(self, frames: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """For every window of ``frames`` (``(n, channels)``, n >= window; window ``j`` ends at frame
        ``j + window - 1``): whether the fast path passes for certain, and the OOD distance (None without OOD)."""
        stats = self.stats
        w, k, c, n = stats.window, stats.tail, stats.channels, len(frames)
        m = n - w + 1  # windows
        terms = np.empty((2 * c, n))  # per channel and frame: u, then u**2
        u, square = terms[:c], terms[c:]
        np.subtract(frames.T, self._center, out=u)  # as the per-window path widens and centres each sample
        np.multiply(u, u, out=square)
        clean = self._clean(square, w, m)
        if not len(self._rows):
            return clean, None
        running = np.zeros((2 * c, n + 1))
        np.cumsum(terms, axis=1, out=running[:, 1:])
        sums = np.empty((6 * c + 1, m))
        np.subtract(running[:, w:], running[:, :m], out=sums[:2 * c])  # over each whole window
        np.subtract(running[:, w:], running[:, w - k:w - k + m], out=sums[2 * c:4 * c])  # over its tail
        np.multiply(sums[0:c], sums[0:c], out=sums[4 * c:5 * c])
        np.multiply(sums[2 * c:3 * c], sums[2 * c:3 * c], out=sums[5 * c:6 * c])
        sums[6 * c] = 1.0
        values = self._rows @ sums  # (rows, windows)
        bound = self._bound(np.abs(u).sum(axis=1), running[c:, -1], n)
        ood = self.ood_rows
        ok = clean & (values[ood:] <= -bound[ood:, None]).all(axis=0)
        if not ood:
            return ok, None
        features, margin = values[:ood], bound[:ood]
        d2 = (features * features).sum(axis=0)
        distance = np.sqrt(d2)
        reach = float(np.sqrt(margin @ margin))  # sum(margin * |feature|) <= reach * distance
        if not reach <= SCORE_REACH:
            return np.zeros(m, dtype=bool), None
        ok &= d2 + SAFETY * (2.0 * reach * distance + reach * reach + 2.0 * ood * _EPS * d2) <= self.ood_limit2
        return ok, distance

    def _clean(self, square: np.ndarray, w: int, m: int) -> np.ndarray:
        """Per window: no sample beyond the gate, none non-finite (exact: compared per sample, counted in integers)."""
        inside = square <= self._gate
        if inside.all():
            return np.ones(m, dtype=bool)
        bad = np.cumsum(~inside.all(axis=0))
        return bad[w - 1:] - np.concatenate(([0], bad[:-w])) == 0

    def _bound(self, u_total: np.ndarray, square_total: np.ndarray, n: int) -> np.ndarray:
        """Per check row, a margin (SAFETY times a bound) on how far its value for any window of the block can
        be from the per-window product's, from the block's sums of |u| and of u**2 per channel (which bound
        every window's sums too)."""
        # two running sums of at most n terms and their difference, and the per-window product's own w terms
        gamma = (2.0 * n + self.stats.window + 1.0) * _EPS
        u_error, square_error = gamma * u_total, gamma * square_total
        square_of_u_error = (2.0 * u_total + u_error) * u_error + 2.0 * _EPS * u_total * u_total
        error = np.concatenate([u_error, square_error, u_error, square_error, square_of_u_error, square_of_u_error,
                                [0.0]])
        largest = np.concatenate([u_total, square_total, u_total, square_total, u_total * u_total,
                                  u_total * u_total, [1.0]])
        rounding = 2.0 * len(error) * _EPS * (self._abs_rows @ largest)  # both products' own rounding
        return SAFETY * (self._abs_rows @ error + rounding)
