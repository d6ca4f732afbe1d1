"""The input guard: what the decision loop asks before, and tells after, the model sees a window.

Three calls, each one line in ``runtime.py``:

* :meth:`InputGuard.on_frame` for every frame (before the window push): timestamp
  steps (repeated, backwards, or longer than ``max_gap_s``) and repeated samples;
* :meth:`InputGuard.check_window` when a window is due, before the scheduler:
  returns a ready-made fallback answer if a check whose policy is "fallback"
  failed (the model is not invoked), else None;
* :meth:`InputGuard.review` on the decision: puts the OOD score in the record
  and, if only "flag" checks failed, their reason on the model's decision.

Frame-level faults are kept as the index of the last faulty frame, so a
window knows in O(1) whether it contains one, and a window after the fault
has left it is judged on its own: recovery needs no reset. The common case,
a clean window, costs one :class:`~.stats.WindowStats` update, a few
operations on channel-sized vectors and one matrix-vector product (the OOD
distance); only a window that trips the cheap gates gets the exact checks,
which find every reason that applies (all are counted in the summary; the
decision carries the first, in the order of :data:`~.config.WINDOW_REASONS`).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import numpy as np

from ..decision import Decision, DecisionRule
from ..frame import Frame
from ..reasons import Reason
from ..scheduler import ModelAnswer
from .config import WINDOW_REASONS, ChecksConfig, parse_checks
from .stats import WindowStats

if TYPE_CHECKING:
    from ..spec import ModelSpec

_NEVER = -(1 << 62)  # "no faulty frame yet": older than any window


class InputGuard:
    """Checks frames and windows against a :class:`~.config.ChecksConfig`; counts what it found."""

    def __init__(self, config: ChecksConfig, rule: Optional[DecisionRule] = None):
        self.config = config
        window, channels = config.window, config.channels
        self.window = window
        self._stats = WindowStats(window, channels, config.stuck_frames or window)
        self._answers = {reason: ModelAnswer(output=None, reason=reason, invoke_ns=None) for reason in Reason}
        self._scratch = np.empty(2 * channels)
        self._range_gate = np.full(2 * channels, math.inf)  # max and -min above these: look closer
        if config.range_min is not None:
            span = config.range_max - config.range_min
            margin = config.saturation_tolerance * span
            self._limits = np.concatenate([config.range_max, -config.range_min])
            self._range_gate = self._limits - np.concatenate([margin, margin])
        self._stuck_limit: Optional[np.ndarray] = None
        if config.stuck_min_spread is not None:  # k * sum(x^2) - sum(x)^2 = k^2 * variance
            k = self._stats.tail
            self._stuck_limit = (k * config.stuck_min_spread) ** 2
            self._stuck_var = np.empty(channels)
            self._stuck_square = np.empty(channels)
        self._ood = config.ood
        if config.ood is not None:
            self._ood_a, self._ood_b = config.ood.raw_projection(window)
            self._ood_y = np.empty(len(self._ood_b))
            self._ood_limit2 = config.ood.threshold ** 2
        # per-frame state
        self._count = 0                 # frames seen
        self._last_t = math.nan
        self._max_dt = config.max_gap_s if config.max_gap_s is not None else math.inf
        self._gap_at = _NEVER           # index of the last frame that came after a bad timestamp step
        self._stuck_at = _NEVER         # index of the newest frame of the last stuck stretch found
        self._previous: bytes = b""
        self._repeated = bytearray(window)  # per frame slot: 1 if it repeated the frame before
        self._repeats = 0
        fresh = config.min_fresh_fraction
        self._max_repeats = window if fresh is None else window - math.ceil(fresh * window - 1e-9)
        # per-window state, read by review()
        self._distance: Optional[float] = None
        self._flag: Optional[Reason] = None
        # low confidence flagged instead of falling back: the guard takes the check over from the rule
        self._min_confidence = 0.0
        if rule is not None and config.flags(Reason.LOW_CONFIDENCE) and rule.min_confidence > 0.0:
            self._min_confidence, rule.min_confidence = rule.min_confidence, 0.0
        # counters for the summary
        self.windows = 0
        self.failed: Counter = Counter()
        self._ood_max = 0.0

    # --- per frame ------------------------------------------------------------------------------

    def on_frame(self, frame: Frame) -> None:
        """Note the frame's timestamp step and whether it repeats the frame before."""
        n = self._count
        self._count = n + 1
        if self.config.check_time:
            step = frame.t - self._last_t
            self._last_t = frame.t
            if not 0.0 < step <= self._max_dt and n > 0:  # also catches a NaN step
                self._gap_at = n
        if self._max_repeats < self.window:
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
        stats = self._stats
        stats.update(view)
        newest = self._count - 1
        suspect = False
        scratch = self._scratch
        np.subtract(stats.extremes, self._range_gate, out=scratch)
        gate = float(scratch.max())
        if not gate <= 0.0:  # near a range limit, beyond it, or NaN/Inf somewhere
            suspect = True
        if self._stuck_limit is not None and self._stuck_found():
            self._stuck_at = newest
        if newest - self._stuck_at < self.window or newest - self._gap_at <= self.window - 2 \
                or self._repeats > self._max_repeats:
            suspect = True
        distance = None
        if self._ood is not None:
            y = self._ood_y
            np.dot(self._ood_a, stats.raw, out=y)
            y -= self._ood_b
            d2 = float(y.dot(y))
            if not d2 <= self._ood_limit2:
                suspect = True
            distance = math.sqrt(d2) if d2 < math.inf else None  # NaN and Inf: no score
            if distance is not None and distance > self._ood_max:
                self._ood_max = distance
        self._distance = distance
        self._flag = None
        if not suspect:
            return None
        return self._judge(self._failing(newest, distance))

    def _stuck_found(self) -> bool:
        """True if some channel's spread over the last ``stuck_frames`` frames is below its minimum."""
        k, sums, var, square = self._stats.tail, self._stats.tail_sums, self._stuck_var, self._stuck_square
        c = self.config.channels
        np.multiply(sums[:c], k, out=var)
        np.multiply(sums[c:], sums[c:], out=square)
        var -= square
        return bool((var < self._stuck_limit).any())

    def _failing(self, newest: int, distance: Optional[float]) -> List[Reason]:
        """Every reason that applies to the current window (the slow path: exact checks)."""
        config, stats = self.config, self._stats
        failing = []
        extremes = stats.extremes
        finite = bool(np.isfinite(extremes).all())
        if not finite:
            failing.append(Reason.NON_FINITE)
        if config.range_min is not None:
            if bool((extremes > self._limits).any()):
                failing.append(Reason.OUT_OF_RANGE)
            if self._saturated_samples() >= config.saturated_min_samples:
                failing.append(Reason.SATURATED)
        if newest - self._gap_at <= self.window - 2:
            failing.append(Reason.GAP)
        if self._repeats > self._max_repeats:
            failing.append(Reason.STALE)
        if newest - self._stuck_at < self.window:
            failing.append(Reason.STUCK)
        if finite and distance is not None and distance > self._ood.threshold:  # type: ignore[union-attr]
            failing.append(Reason.OUT_OF_DISTRIBUTION)
        return failing

    def _saturated_samples(self) -> int:
        """Samples within the saturation tolerance of a range limit, but not beyond it."""
        config, values = self.config, self._stats.values
        high, low = config.range_max[:, None], config.range_min[:, None]  # type: ignore[index]
        margin = config.saturation_tolerance * (high - low)
        at_high = (values >= high - margin) & (values <= high)
        at_low = (values <= low + margin) & (values >= low)
        return int(np.count_nonzero(at_high | at_low))

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

    def review(self, decision: Decision) -> Decision:
        """Add the window's OOD score and a flagged reason (if the model decided) to ``decision``."""
        decision.ood_score = self._distance
        if decision.reason is None and decision.source == "model":
            if self._flag is not None:
                decision.reason = self._flag
            elif self._min_confidence and decision.output and max(decision.output) < self._min_confidence:
                decision.reason = Reason.LOW_CONFIDENCE
        return decision

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


def build_guard(spec: "ModelSpec", rule: Optional[DecisionRule] = None) -> InputGuard:
    """The guard the spec's ``[checks]``/``[ood]`` tables describe (non-finite values only without them)."""
    return InputGuard(parse_checks(spec), rule)
