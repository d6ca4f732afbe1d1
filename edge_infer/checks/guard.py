"""The input guard: what the decision loop asks before, and tells after, the model sees a window.

Three calls, each one line in ``runtime.py``:

* :meth:`InputGuard.on_frame` for every frame (before the window push): timestamp
  steps (repeated, backwards, or longer than ``max_gap_s``) and repeated samples;
* :meth:`InputGuard.check_window` when a window is due, before the scheduler:
  returns a ready-made fallback answer if a check whose policy is "fallback"
  failed (the model is not invoked), else None;
* :meth:`InputGuard.review` on the decision: puts the OOD score in the record
  and, if only "flag" checks failed, their reason on the model's decision.

For a recorded log, :meth:`InputGuard.read_ahead` (once) lets ``check_window``
clear windows from verdicts computed for a block of windows at once
(:mod:`.ahead`); a window not cleared there is judged as below.

Frame-level faults are kept as the index of the last faulty frame, so a
window knows in O(1) whether it contains one, and a window after the fault
has left it is judged on its own: recovery needs no reset. The common case,
a clean window, costs one :class:`~.stats.WindowStats` update and one
matrix-vector product that yields the OOD features, the range gate and the
stuck test at once (:func:`check_matrix`), about 4 microseconds (docs/robustness.md);
only a window that trips a gate or holds a faulty frame gets the exact
checks, which find every reason that applies (all are counted in the
summary; the decision carries the first, in the order of
:data:`~.config.WINDOW_REASONS`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..deadline.scheduler import ModelAnswer
from ..decide.decision import Decision, DecisionRule
from ..decide.reasons import Reason
from ..frame import Frame
from ..model.spec import ModelSpec
from .ahead import BlockChecks
from .config import WINDOW_REASONS, ChecksConfig, parse_checks
from .stats import WindowStats

_NEVER = -(1 << 62)  # "no faulty frame yet": older than any window
# NaN and Inf are what the checks look for: numpy's "invalid value" warnings on them are not news. A filter
# costs nothing per window; np.errstate around each window would cost about as much as a check.
warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"edge_infer\.checks\.(guard|stats|ahead)$")
#: Frames of a log for whose windows the fast path is computed at once (:meth:`InputGuard.read_ahead`): the
#: block's cost, about 130 microseconds (0.25 per window at hop 1; a quarter more at 256, and larger blocks fall
#: out of the CPU's caches), falls on one window in this many at hop 1, in ``READ_AHEAD / hop`` at a larger hop
#: (the block computes a value for every frame position; only every hop-th is a window).
READ_AHEAD = 512
#: ``rows(start, stop)``: frames ``start`` to ``stop - 1`` of a log as ``(n, channels)`` (fewer at its end).
Rows = Callable[[int, int], np.ndarray]


class InputGuard:
    """Checks frames and windows against a :class:`~.config.ChecksConfig`; counts what it found."""

    def __init__(self, config: ChecksConfig, rule: Optional[DecisionRule] = None):
        self.config = config
        window = config.window
        self.window = window
        self._answers = {reason: ModelAnswer(output=None, reason=reason, invoke_ns=None) for reason in Reason}
        if config.range_min is not None:
            self._high, self._low, self._margin = range_limits(config)
        self._stats = window_stats(config)
        self._matrix, self._ood_rows = check_matrix(config, self._stats)
        self._ood = config.ood
        self._ood_limit2 = math.inf if config.ood is None else config.ood.threshold ** 2
        self._window_check = self._all_checks
        if config.ood is None and config.range_min is None and config.stuck_min_spread is None:
            self._window_check = self._finite_only  # nothing to compute but "is every sample finite?"
        self._checks = np.empty(len(self._matrix))
        self._ood_part = self._checks[:self._ood_rows]
        self._gate_part = self._checks[self._ood_rows:]
        # per-frame state
        self._count = 0                 # frames seen
        self._check_time = config.check_time
        self._last_t = math.nan
        self._max_dt = config.max_gap_s if config.max_gap_s is not None else math.inf
        self._gap_at = _NEVER           # index of the last frame that came after a bad timestamp step
        self._stuck_at = _NEVER         # index of the newest frame of the last stuck stretch found
        self._previous: bytes = b""
        self._repeated = bytearray(window)  # per frame slot: 1 if it repeated the frame before
        self._repeats = 0
        fresh = config.min_fresh_fraction
        self._max_repeats = window if fresh is None else window - math.ceil(fresh * window - 1e-9)
        self._track_repeats = self._max_repeats < window
        # per-window state, read by review()
        self._distance: Optional[float] = None
        self._flag: Optional[Reason] = None
        # low confidence flagged instead of falling back: the guard takes the check over from the rule
        self._min_confidence = 0.0
        self._rule = rule
        self._flags_low_confidence = rule is not None and config.flags(Reason.LOW_CONFIDENCE)
        if self._flags_low_confidence and rule.min_confidence > 0.0:  # type: ignore[union-attr]
            self._min_confidence, rule.min_confidence = rule.min_confidence, 0.0  # type: ignore[union-attr]
        # counters for the summary
        self.windows = 0
        self.failed: Counter = Counter()
        self._ood_max = 0.0
        # fast-path verdicts read ahead from a log (read_ahead): windows ending at frames _ahead_first...
        self._rows: Optional[Rows] = None
        self._block: Optional[BlockChecks] = None
        self._ahead_first = 0
        self._ahead_ok: List[bool] = []
        self._ahead_distance: Optional[List[float]] = None

    @property
    def flag_min_confidence(self) -> float:
        """The minimum confidence the guard checks itself (low confidence flagged, not a fallback), or 0."""
        return self._min_confidence

    # --- per frame ------------------------------------------------------------------------------

    def on_frame(self, frame: Frame) -> None:
        """Note the frame's timestamp step and whether it repeats the frame before."""
        n = self._count
        self._count = n + 1
        if self._check_time:
            t = frame.t
            if not 0.0 < t - self._last_t <= self._max_dt and n:  # also catches a NaN step
                self._gap_at = n
            self._last_t = t
        if self._track_repeats:
            sample = frame.values.tobytes()
            repeated = sample == self._previous
            self._previous = sample
            slot = n % self.window
            self._repeats += repeated - self._repeated[slot]
            self._repeated[slot] = repeated

    # --- per window -----------------------------------------------------------------------------

    def check_window(self, view: np.ndarray) -> Optional[ModelAnswer]:
        """Judge the window that ends with the last frame given to :meth:`on_frame`.

        Returns the answer to fall back with (the model must not run) or None
        (the model decides; :meth:`review` adds any flag).
        """
        self.windows += 1
        self._flag = None
        newest = self._count - 1
        frames_pass = (newest - self._gap_at > self.window - 2 and newest - self._stuck_at >= self.window
                       and self._repeats <= self._max_repeats)
        if frames_pass and self._rows is not None:  # a log: its values' verdict may be read ahead
            i = newest - self._ahead_first
            if not 0 <= i < len(self._ahead_ok):
                self._read_block(newest)
                i = 0
            if self._ahead_ok[i]:  # cleared: its OOD distance, as _all_checks sets it
                distances = self._ahead_distance
                distance = self._distance = None if distances is None else distances[i]
                if distance is not None and distance > self._ood_max:
                    self._ood_max = distance
                return None
        if self._window_check(view) and frames_pass:
            return None
        return self._judge(self._failing(view, newest))

    def read_ahead(self, rows: Optional[Rows]) -> None:
        """Take the fast path's values from ``rows`` (the frames of a log, by the index :meth:`on_frame` counts),
        a block of windows at once (:mod:`.ahead`); None: window by window (the frames are not all there yet,
        or the stream restarted and the window no longer holds the log's rows)."""
        self._rows = rows
        self._ahead_ok = []
        if rows is not None and self._block is None:
            self._block = BlockChecks(self._stats, np.delete(self._matrix, self._ood_rows, axis=0), self._ood_rows,
                                      self._ood_limit2)

    def _read_block(self, newest: int) -> None:
        """The verdicts of the windows ending at frames ``newest`` to ``newest + READ_AHEAD - 1``."""
        self._ahead_first, start = newest, newest - self.window + 1
        if start < 0:  # fewer frames than a window: nothing to read ahead (the per-window path judges it)
            self._ahead_ok, self._ahead_distance = [False], None
            return
        ok, distance = self._block.verdicts(self._rows(start, newest + READ_AHEAD))  # type: ignore[union-attr,misc]
        self._ahead_ok = ok.tolist()
        self._ahead_distance = None if distance is None else distance.tolist()

    def _all_checks(self, view: np.ndarray) -> bool:
        """The fast path over the window's values: True if they pass every gate (else the exact checks
        run). Sets the window's OOD distance for :meth:`review`."""
        self._stats.update(view)
        np.dot(self._matrix, self._stats.sums, out=self._checks)
        gate = max(self._gate_part.tolist())  # the beyond-gate row comes first: NaN there stays the result
        passed = gate <= 0.0
        distance = None
        if self._ood_rows:
            part = self._ood_part
            d2 = float(part.dot(part))
            if d2 <= self._ood_limit2:
                distance = math.sqrt(d2)
            else:
                passed = False
                distance = math.sqrt(d2) if d2 < math.inf else None  # NaN and Inf: no score
            if distance is not None and distance > self._ood_max:
                self._ood_max = distance
        self._distance = distance
        return passed

    def _finite_only(self, view: np.ndarray) -> bool:
        """The fast path without range, stuck or OOD checks: a sum is finite unless a sample is not
        (or the float32 sum overflows, which the exact check then clears)."""
        return math.isfinite(np.add.reduce(view, axis=None))

    def _failing(self, view: np.ndarray, newest: int) -> List[Reason]:
        """Every reason that applies to the current window (the slow path: exact checks)."""
        config, distance = self.config, self._distance
        failing = []
        finite_samples = np.isfinite(view)
        finite = bool(finite_samples.all())
        if not finite:
            failing.append(Reason.NON_FINITE)
        if config.range_min is not None:  # +-Inf is non-finite only, not also out of range
            if bool((((view > self._high) | (view < self._low)) & finite_samples).any()):
                failing.append(Reason.OUT_OF_RANGE)
            if self._saturated_samples(view) >= config.saturated_min_samples:
                failing.append(Reason.SATURATED)
        if newest - self._gap_at <= self.window - 2:
            failing.append(Reason.GAP)
        if self._repeats > self._max_repeats:
            failing.append(Reason.STALE)
        if config.stuck_min_spread is not None and finite and bool((self._gate_part[1:] > 0.0).any()):
            self._stuck_at = newest
        if newest - self._stuck_at < self.window:
            failing.append(Reason.STUCK)
        if finite and distance is not None and distance > self._ood.threshold:  # type: ignore[union-attr]
            failing.append(Reason.OUT_OF_DISTRIBUTION)
        return failing

    def _saturated_samples(self, view: np.ndarray) -> int:
        """Samples within the saturation tolerance of a range limit, but not beyond it."""
        return int(np.count_nonzero(saturated(view, self._high, self._low, self._margin)))

    def _judge(self, failing: List[Reason]) -> Optional[ModelAnswer]:
        """Count the failures; the first "fallback" reason ends the window, else the first "flag" one marks it."""
        self.failed.update(failing)
        for reason in failing:
            if not self.config.flags(reason):
                return self._answers[reason]
        if failing:
            self._flag = failing[0]
        return None

    # --- after the decision ---------------------------------------------------------------------

    def verdict(self) -> "Tuple[Optional[float], Optional[Reason]]":
        """The last checked window's OOD score and flag: kept with a window the model answers after later
        windows of the stream were checked (several streams on one model, docs/streams.md)."""
        return self._distance, self._flag

    def review(self, decision: Decision, verdict: "Optional[Tuple[Optional[float], Optional[Reason]]]" = None) -> Decision:
        """Add the window's OOD score and a flagged reason (if the model decided) to ``decision``.

        ``verdict`` (from :meth:`verdict`) is for a window checked before the last one; by default the last one.
        """
        distance, flag = (self._distance, self._flag) if verdict is None else verdict
        decision.ood_score = distance
        if decision.reason is None and decision.source == "model":
            if flag is not None:
                decision.reason = flag
            elif self._min_confidence and decision.output and max(decision.output) < self._min_confidence:
                decision.reason = Reason.LOW_CONFIDENCE
        return decision

    # --- thresholds changed at run time (the fleet's control topic) --------------------------------

    def thresholds(self) -> Dict[str, Optional[float]]:
        """The thresholds in force: ``min_confidence`` (None without a decision rule) and ``ood_threshold``
        (None without an OOD check)."""
        if self._flags_low_confidence:
            confidence: Optional[float] = self._min_confidence
        else:
            confidence = None if self._rule is None else self._rule.min_confidence
        return {"min_confidence": confidence, "ood_threshold": None if self._ood is None else self._ood.threshold}

    def set_thresholds(self, min_confidence: Optional[float] = None, ood_threshold: Optional[float] = None) -> None:
        """Change thresholds between windows (call from the decision loop's thread); ValueError if the model
        has no such check. The policy (fallback or flag) stays the spec's."""
        if ood_threshold is not None and self._ood is None:
            raise ValueError("this model has no OOD check ([ood] in its spec) whose threshold could be set")
        if min_confidence is not None and self._rule is None:
            raise ValueError("this guard has no decision rule whose min_confidence could be set")
        if min_confidence is not None:
            if self._flags_low_confidence:
                self._min_confidence = min_confidence
            else:
                self._rule.min_confidence = min_confidence  # type: ignore[union-attr]
        if ood_threshold is not None:
            self._ood = dataclasses.replace(self._ood, threshold=ood_threshold)
            self._ood_limit2 = ood_threshold ** 2
            self._ahead_ok = []  # verdicts read ahead were against the old threshold
            if self._block is not None:
                self._block.ood_limit2 = self._ood_limit2

    def summary(self) -> Dict[str, Any]:
        """The bad-input part of the run summary: windows checked, failures per reason, the OOD score."""
        out: Dict[str, Any] = {
            "windows": self.windows,
            "failed": {reason.code: self.failed[reason] for reason in WINDOW_REASONS if self.failed[reason]},
        }
        if self._ood is not None:
            out["ood"] = {"threshold": round(self._ood.threshold, 3), "max_score": round(self._ood_max, 3),
                          "false_alarm_rate": self._ood.false_alarm_rate}
        return out


def range_limits(config: ChecksConfig) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(high, low, margin)`` per channel in float32, as the samples are: a sample written as the limit's
    decimal is at it, not beyond; ``margin`` is the saturation band's width."""
    high = config.range_max.astype(np.float32)  # type: ignore[union-attr]
    low = config.range_min.astype(np.float32)  # type: ignore[union-attr]
    return high, low, (config.saturation_tolerance * (high - low)).astype(np.float32)


def saturated(values: np.ndarray, high: np.ndarray, low: np.ndarray, margin: np.ndarray) -> np.ndarray:
    """Where samples lie within the saturation band of a range limit, but not beyond it (any shape, channels last)."""
    return ((values >= high - margin) & (values <= high)) | ((values <= low + margin) & (values >= low))


def window_stats(config: ChecksConfig) -> WindowStats:
    """The window sums the checks need: centred on the middle of the range, gated at the saturation band."""
    center = half_gate = None
    if config.range_min is not None:
        span = config.range_max - config.range_min  # type: ignore[operator]
        center = (config.range_max + config.range_min) / 2.0  # type: ignore[operator]
        half_gate = span / 2.0 - config.saturation_tolerance * span
    return WindowStats(config.window, config.channels, config.stuck_frames or config.window, center, half_gate)


def check_matrix(config: ChecksConfig, stats: WindowStats) -> Tuple[np.ndarray, int]:
    """The rows that turn a window's sums into every value the fast path needs, and how many are OOD rows.

    In order: the whitened OOD features (their squared norm is the squared distance), the beyond-gate
    value (positive if a sample lies beyond the saturation gate, NaN if one is not finite), then one
    value per channel that is positive where the channel is stuck.
    """
    rows = []
    if config.ood is not None:
        w, w0 = config.ood.whitening()
        ood_rows = w @ stats.mean_and_variance()
        ood_rows[:, -1] -= w0
        rows.append(ood_rows)
    rows.append(stats.beyond_gate()[None, :])
    if config.stuck_min_spread is not None:
        rows.append(stats.stuck(config.stuck_min_spread))
    return np.ascontiguousarray(np.concatenate(rows)), len(rows[0]) if config.ood is not None else 0


def build_guard(spec: "ModelSpec", rule: Optional[DecisionRule] = None) -> InputGuard:
    """The guard the spec's ``[checks]``/``[ood]`` tables describe (non-finite values only without them)."""
    return InputGuard(parse_checks(spec), rule)


def format_input_checks(part: Dict[str, Any]) -> str:
    """The bad-input line of the human summary, from :meth:`InputGuard.summary`."""
    failed = ", ".join(f"{code} {count}" for code, count in part["failed"].items()) or "none"
    line = f"  input checks: {part['windows']} windows, failed: {failed}"
    ood = part.get("ood")
    if ood:
        line += f"; ood score max {ood['max_score']:g} (threshold {ood['threshold']:g})"
    return line
