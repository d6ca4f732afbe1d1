"""The input guard over many windows at once: the verdicts :class:`~.guard.InputGuard` gives, a chunk at a time.

``eval`` judges every window of a recorded log; asking the per-window guard
(4 microseconds a window, in Python) would cost more than the model does in
a batch. This module computes the same verdicts from whole chunks of frames:

* per frame, in one numpy pass each: timestamp steps, repeated samples,
  non-finite, out-of-range and saturated samples, samples beyond the
  saturation gate;
* per window, rolling counts of those (prefix sums of integers: exact) and
  the window sums the OOD score and the stuck test need (prefix sums of
  ``u`` and ``u**2``, laid out as :class:`~.stats.WindowStats` lays out its
  ``sums``, so the guard's own :func:`~.guard.check_matrix` rows turn them
  into the OOD features and the stuck values);
* the state the guard carries from window to window (the last timestamp
  gap, the last stuck window) as running maxima.

The rules stay where they are: which reasons exist and in which order
(:data:`~.config.WINDOW_REASONS`), the policies, the band limits
(:func:`~.guard.range_limits`), the linear maps (:func:`~.guard.check_matrix`).
As in the guard, the exact checks decide a window only when its fast gate
tripped. Prefix sums round differently from the guard's per-window product,
by about 1e-13 relative; so a window whose OOD distance, stuck value or gate
lies within 1e-7 of its threshold is recomputed with the guard's own
per-window arithmetic (:meth:`~.stats.WindowStats.update` and the same
matrix product): the verdicts are the loop's, bit for bit, not just nearly.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

from ..decide.reasons import Reason
from .config import WINDOW_REASONS, ChecksConfig
from .guard import check_matrix, range_limits, saturated, window_stats
from .stats import NO_GATE

_NEVER = -(1 << 62)
#: Relative distance to a threshold within which a window is recomputed the guard's way.
BORDERLINE = 1e-7


@dataclass
class WindowVerdicts:
    """What the guard said of each window of a chunk: the reason to fall back with (0: none), the reason to flag
    a model decision with (0: none), and the OOD score (NaN where the guard gives none)."""

    fallback: np.ndarray
    flag: np.ndarray
    ood: np.ndarray


class BatchGuard:
    """Judges the windows that end in each chunk of frames fed to :meth:`check`, in order, as the guard would."""

    def __init__(self, config: ChecksConfig):
        self.config = config
        self.window = w = config.window
        self._stats = window_stats(config)  # also the exact per-window path for borderline windows
        self._matrix, self._ood_rows = check_matrix(config, self._stats)
        self._full = not (config.ood is None and config.range_min is None and config.stuck_min_spread is None)
        self._center = self._stats.center
        gate = self._stats.gate  # per channel: half_gate**2, or NO_GATE where there is no range
        self._gate = gate
        self._gated = gate < NO_GATE
        self._limits = range_limits(config) if config.range_min is not None else None
        self._ood_limit2 = math.inf if config.ood is None else config.ood.threshold ** 2
        fresh = config.min_fresh_fraction
        self._max_repeats = w if fresh is None else w - math.ceil(fresh * w - 1e-9)
        self._max_dt = config.max_gap_s if config.max_gap_s is not None else math.inf
        self._tail = self._stats.tail
        self._fallback_order = [r for r in WINDOW_REASONS if not config.flags(r)]
        # the loop's clean-window gate value: a rounding residue above 0 sends every window to the exact checks
        self._always_exact = False
        if self._full:
            self._stats.update(np.repeat(self._center[None, :], w, axis=0).astype(np.float32))
            self._always_exact = float(np.dot(self._matrix, self._stats.sums)[self._ood_rows]) > 0.0
        # carried from chunk to chunk: the last window-1 frames' per-frame columns, and the guard's state
        self._carry: Optional[Dict[str, np.ndarray]] = None
        self._frames = 0
        self._last_t = math.nan
        self._last_row: Optional[np.ndarray] = None
        self._previous_values = np.zeros((0, config.channels), dtype=np.float32)  # the last window-1 frames
        self._gap_at = _NEVER
        self._stuck_at = _NEVER
        # the summary, as InputGuard.summary gives it
        self.windows = 0
        self.failed: Counter = Counter()
        self.ood_max = 0.0

    # --- per chunk ----------------------------------------------------------------------------------------------

    def check(self, t: np.ndarray, values: np.ndarray, ends: np.ndarray) -> WindowVerdicts:
        """Judge the windows ending at ``ends`` (indices into this chunk's frames ``t``, ``values``)."""
        first = self._frames
        cols = self._frame_columns(t, values)
        carried = 0 if self._carry is None else len(self._carry["bad"])
        if self._carry is not None:
            cols = {k: np.concatenate([self._carry[k], v]) for k, v in cols.items()}
        keep = self.window - 1
        self._carry = {k: v[max(0, len(v) - keep):].copy() for k, v in cols.items()}  # not a view: frees the chunk
        self._frames += len(t)
        n, w = len(ends), self.window
        newest = first + ends
        roll = _Rolling(ends + carried + 1, w)  # window ends in prefix-sum coordinates
        finite = roll.sum(cols["bad"]) == 0
        fails: Dict[Reason, np.ndarray] = {}
        ood = np.full(n, np.nan)
        stuck_now = np.zeros(n, dtype=bool)
        if self._full:
            tripped, ood, stuck_now = self._gates(cols, roll, finite, values, ends)
        else:
            tripped = ~finite
        # the guard's state from window to window: the newest gap frame, the newest stuck window
        gap_at = np.maximum.accumulate(np.where(cols["gap"][carried:], first + np.arange(len(t)), self._gap_at))
        if len(gap_at):
            self._gap_at = int(gap_at[-1])
        gap = newest - gap_at[ends] <= w - 2 if n else np.zeros(0, dtype=bool)
        stuck_at = np.maximum.accumulate(np.where(stuck_now, newest, self._stuck_at)) if n else newest
        if n:
            self._stuck_at = int(stuck_at[-1])
        stuck = newest - stuck_at < w
        stale = roll.sum(cols["repeated"]) > self._max_repeats
        exact = tripped | gap | stuck | stale | self._always_exact
        fails[Reason.NON_FINITE] = ~finite
        if self._limits is not None:
            fails[Reason.OUT_OF_RANGE] = roll.sum(cols["beyond"]) > 0
            fails[Reason.SATURATED] = roll.sum(cols["saturated"]) >= self.config.saturated_min_samples
        fails[Reason.GAP] = gap
        fails[Reason.STALE] = stale
        fails[Reason.STUCK] = stuck
        if self.config.ood is not None:
            fails[Reason.OUT_OF_DISTRIBUTION] = finite & (ood > self.config.ood.threshold)
        keep = w - 1
        joined = np.concatenate([self._previous_values, values])
        self._previous_values = joined[max(0, len(joined) - keep):].copy()
        return self._verdicts(fails, exact, ood, n)

    def _frame_columns(self, t: np.ndarray, values: np.ndarray) -> Dict[str, np.ndarray]:
        """Per-frame columns of one chunk: what the guard's ``on_frame`` notes, and what the window checks count."""
        m = len(t)
        cols: Dict[str, np.ndarray] = {}
        gap = np.zeros(m, dtype=bool)
        if self.config.check_time and m:
            steps = np.diff(t, prepend=self._last_t)
            gap = ~((steps > 0.0) & (steps <= self._max_dt))  # also a NaN step
            if self._frames == 0:
                gap[0] = False
            self._last_t = float(t[-1])
        cols["gap"] = gap
        rows = np.ascontiguousarray(values).view(np.uint32)  # the guard compares the samples' bytes
        repeated = np.zeros(m, dtype=np.int64)
        if self._max_repeats < self.window and m:
            repeated[1:] = (rows[1:] == rows[:-1]).all(axis=1)
            repeated[0] = self._last_row is not None and bool((rows[0] == self._last_row).all())
        if m:
            self._last_row = rows[-1].copy()
        cols["repeated"] = repeated
        finite_samples = np.isfinite(values)
        cols["bad"] = (~finite_samples.all(axis=1)).astype(np.int64)
        if self._limits is not None:
            high, low, margin = self._limits
            cols["beyond"] = (((values > high) | (values < low)) & finite_samples).any(axis=1).astype(np.int64)
            cols["saturated"] = np.count_nonzero(saturated(values, high, low, margin), axis=1).astype(np.int64)
        if self._full:
            u = values.astype(np.float64) - self._center
            square = np.square(u)
            excess = square - self._gate
            cols["over_gate"] = (excess > 0.0).any(axis=1).astype(np.int64)
            scale = self.window * float(self._gate[self._gated].sum()) if self._gated.any() else 0.0
            cols["near_gate"] = (np.abs(excess[:, self._gated]) <= BORDERLINE * scale).any(axis=1).astype(np.int64)
            clean = finite_samples.all(axis=1)
            cols["u"] = np.where(clean[:, None], u, 0.0)
            cols["u2"] = np.where(clean[:, None], square, 0.0)
        return cols

    def _gates(self, cols: Dict[str, np.ndarray], roll: "_Rolling", finite: np.ndarray, values: np.ndarray,
               ends: np.ndarray) -> "tuple[np.ndarray, np.ndarray, np.ndarray]":
        """The guard's fast path for every window: (gate tripped, OOD score, stuck now)."""
        stats, n = self._stats, len(ends)
        sums = np.zeros((n, len(stats.sums)))
        whole_u, whole_u2 = roll.sum(cols["u"]), roll.sum(cols["u2"])
        tail_roll = _Rolling(roll.at, self._tail, roll._prefixes)
        tail_u, tail_u2 = tail_roll.sum(cols["u"]), tail_roll.sum(cols["u2"])
        for block, (whole, tail) in enumerate(((whole_u, tail_u), (whole_u2, tail_u2),
                                               (np.zeros_like(whole_u), np.zeros_like(tail_u)),
                                               (whole_u ** 2, tail_u ** 2))):
            sums[:, stats.index(block)] = whole
            sums[:, stats.index(block, tail=True)] = tail
        sums[:, -1] = 1.0
        rows = self._matrix[np.arange(len(self._matrix)) != self._ood_rows]  # all but the gate row
        checks = sums @ rows.T
        part, stuck_values = checks[:, :self._ood_rows], checks[:, self._ood_rows:]
        d2 = np.einsum("ij,ij->i", part, part)
        beyond = roll.sum(cols["over_gate"]) > 0
        stuck_now = finite & (stuck_values > 0.0).any(axis=1)
        tripped = ~finite | beyond | stuck_now | ~(d2 <= self._ood_limit2)
        borderline = finite & (roll.sum(cols["near_gate"]) > 0)
        if self.config.stuck_min_spread is not None:
            k = float(self._tail)
            scale = k * tail_u2 + tail_u ** 2 + (k * self.config.stuck_min_spread) ** 2
            borderline |= finite & (np.abs(stuck_values) <= BORDERLINE * scale).any(axis=1)
        if self._ood_rows and math.isfinite(self._ood_limit2):
            borderline |= finite & (np.abs(d2 - self._ood_limit2) <= BORDERLINE * np.maximum(d2, self._ood_limit2))
        d2 = np.where(finite, d2, np.nan)
        for i in np.flatnonzero(borderline):
            tripped[i], d2[i], stuck_now[i] = self._exact(values, int(ends[i]))
        ood = np.sqrt(d2) if self._ood_rows else np.full(n, np.nan)
        ood[~np.isfinite(ood)] = np.nan
        if self._ood_rows and np.isfinite(ood).any():
            self.ood_max = max(self.ood_max, float(np.nanmax(ood)))
        return tripped, ood, stuck_now

    def _exact(self, values: np.ndarray, end: int) -> "tuple[bool, float, bool]":
        """One window the guard's own way (:meth:`InputGuard._all_checks`): gate tripped, d2, stuck now."""
        window = self._window_at(values, end)
        self._stats.update(window)
        checks = np.dot(self._matrix, self._stats.sums)
        gate_part = checks[self._ood_rows:]
        passed = max(gate_part.tolist()) <= 0.0
        part = checks[:self._ood_rows]
        d2 = float(part.dot(part))
        passed = passed and d2 <= self._ood_limit2
        return not passed, d2, bool((gate_part[1:] > 0.0).any())

    def _window_at(self, values: np.ndarray, end: int) -> np.ndarray:
        """The window ending at chunk frame ``end``, its first frames from the previous chunk if need be."""
        start = end - self.window + 1
        if start >= 0:
            return values[start:end + 1]
        return np.concatenate([self._previous_values[start:], values[:end + 1]])

    def _verdicts(self, fails: Dict[Reason, np.ndarray], exact: np.ndarray, ood: np.ndarray, n: int) -> WindowVerdicts:
        """First fallback reason, else first flag reason, in WINDOW_REASONS order, where the exact checks ran."""
        self.windows += n
        fallback = np.zeros(n, dtype=np.int8)
        flag = np.zeros(n, dtype=np.int8)
        for reason in reversed(WINDOW_REASONS):  # reversed: the first reason in the order is written last
            mask = fails.get(reason)
            if mask is None:
                continue
            mask = mask & exact
            self.failed[reason] += int(mask.sum())
            target = flag if self.config.flags(reason) else fallback
            target[mask] = int(reason)
        flag[fallback != 0] = 0
        return WindowVerdicts(fallback=fallback, flag=flag, ood=ood)

    def summary(self) -> Dict[str, Any]:
        """As :meth:`InputGuard.summary`."""
        out: Dict[str, Any] = {
            "windows": self.windows,
            "failed": {reason.code: self.failed[reason] for reason in WINDOW_REASONS if self.failed[reason]},
        }
        if self.config.ood is not None:
            out["ood"] = {"threshold": round(self.config.ood.threshold, 3), "max_score": round(self.ood_max, 3),
                          "false_alarm_rate": self.config.ood.false_alarm_rate}
        return out


class _Rolling:
    """Sums of a per-frame column over the ``length`` frames ending at each window end, from prefix sums
    (computed once per column and shared by every window length)."""

    def __init__(self, at: np.ndarray, length: int, prefixes: Optional[Dict[int, np.ndarray]] = None):
        self.at = at
        self.length = length
        self._prefixes = {} if prefixes is None else prefixes

    def sum(self, column: np.ndarray) -> np.ndarray:
        prefix = self._prefixes.get(id(column))
        if prefix is None:
            prefix = np.concatenate([np.zeros((1,) + column.shape[1:], dtype=column.dtype),
                                     np.cumsum(column, axis=0)])
            self._prefixes[id(column)] = prefix
        start = np.maximum(self.at - self.length, 0)
        return prefix[self.at] - prefix[start]
