"""The spec's ``[checks]``, ``[checks.policy]`` and ``[ood]`` tables, validated (README: "Input checks").

``model/spec.py`` hands tables it does not know to their owners through
``ModelSpec.extra``; :func:`parse_checks` is called at spec load so that a
wrong key fails at start, naming the key, and again when the runtime builds
its :class:`~edge_infer.checks.guard.InputGuard` (with the final hop).

Without a ``[checks]`` table only the non-finite check runs (a NaN reaching
the quantizer is never meaningful); a ``[checks]`` table, even an empty one,
turns on the timestamp checks with their defaults, and each other check
runs when its keys are given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Protocol, Sequence

import numpy as np

from ..decide.reasons import Reason
from ..errors import SpecError
from ..settings import values
from .ood import FEATURES, OodModel


class SpecTables(Protocol):
    """What the checks need of a model spec (:class:`~edge_infer.model.spec.ModelSpec` has it all).

    A protocol rather than the class itself: the spec module calls :func:`parse_checks` at load, so this
    module must not import it back.
    """

    extra: Dict[str, Any]
    window: int
    channels: Sequence[str]
    sample_rate_hz: Optional[float]
    spec_path: Optional[Path]
    model_path: Path

POLICIES = ("fallback", "flag")
#: The reasons a window check can give, in the order they are reported when several fail at once:
#: broken data before suspicious data, the statistical guess last.
WINDOW_REASONS = (Reason.NON_FINITE, Reason.OUT_OF_RANGE, Reason.SATURATED, Reason.GAP, Reason.STALE,
                  Reason.STUCK, Reason.OUT_OF_DISTRIBUTION)
#: Reasons a policy can name: the window checks and the model's own confidence.
POLICY_REASONS = WINDOW_REASONS + (Reason.LOW_CONFIDENCE,)
#: A timestamp step longer than this many sample periods is a gap (one dropped sample is two periods).
DEFAULT_GAP_PERIODS = 1.5
DEFAULT_SATURATION_TOLERANCE = 0.001
DEFAULT_SATURATED_MIN_SAMPLES = 2

#: A sample within this fraction of the range's span from a limit is at the limit: below half the span.
SATURATION_TOLERANCE = values.Number(minimum=0.0, below=0.5)
#: The share of clean windows the OOD threshold may flag: strictly between 0 and 1.
FALSE_ALARM_RATE = values.Number(above=0.0, below=1.0)

CHECKS_KEYS = ("range_min", "range_max", "saturation_tolerance", "saturated_min_samples", "stuck_min_spread",
               "stuck_frames", "max_gap_s", "min_fresh_fraction", "policy")
OOD_KEYS = ("features", "mean", "scale", "inv_cov", "threshold", "false_alarm_rate", "calibration")


@dataclass
class ChecksConfig:
    """What the input guard checks, with which limits, and what each failure does.

    ``range_min``/``range_max``: physical range per channel (None: not checked, nor saturation).
    ``saturation_tolerance``: a sample within this fraction of the range's span from a limit is at it.
    ``stuck_min_spread``: per channel, the standard deviation over the last ``stuck_frames`` frames
    below which the channel is stuck (None: not checked).
    ``check_time``: timestamp checks on (a ``[checks]`` table exists); ``max_gap_s`` None means only
    repeated or backwards timestamps are gaps.
    ``min_fresh_fraction``: share of the window's frames that must differ from the frame before (None: off).
    """

    window: int
    channels: int
    range_min: Optional[np.ndarray] = None
    range_max: Optional[np.ndarray] = None
    saturation_tolerance: float = DEFAULT_SATURATION_TOLERANCE
    saturated_min_samples: int = DEFAULT_SATURATED_MIN_SAMPLES
    stuck_min_spread: Optional[np.ndarray] = None
    stuck_frames: int = 0
    check_time: bool = False
    max_gap_s: Optional[float] = None
    min_fresh_fraction: Optional[float] = None
    policy: Dict[Reason, str] = field(default_factory=lambda: {r: "fallback" for r in POLICY_REASONS})
    ood: Optional[OodModel] = None

    def flags(self, reason: Reason) -> bool:
        """True if a failure for ``reason`` lets the model decide and only flags the record."""
        return self.policy[reason] == "flag"


def parse_checks(spec: SpecTables) -> ChecksConfig:
    """The validated checks for ``spec``; raises :class:`SpecError` naming the first wrong key."""
    return _Parser(spec).parse()


class _Parser:
    def __init__(self, spec: SpecTables):
        self.spec = spec
        self.where = spec.spec_path or spec.model_path
        self.channels = len(spec.channels)

    def fail(self, key: str, problem: str) -> SpecError:
        return SpecError(f"spec {self.where}: {key} {problem}")

    def table(self, name: str, known: "tuple[str, ...]") -> Optional[Dict[str, Any]]:
        value = self.spec.extra.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(f"[{name}]", "must be a table")
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise self.fail(f"[{name}].{unknown[0]}", f"is not a known key (known: {', '.join(known)})")
        return value

    def parse(self) -> ChecksConfig:
        config = ChecksConfig(window=self.spec.window, channels=self.channels)
        checks = self.table("checks", CHECKS_KEYS)
        ood = self.table("ood", OOD_KEYS)
        if checks is not None:
            self._checks(checks, config)
        if ood is not None:
            config.ood = self._ood(ood)
        return config

    # --- [checks] ---------------------------------------------------------------------------------

    def _checks(self, table: Dict[str, Any], config: ChecksConfig) -> None:
        config.check_time = True
        if ("range_min" in table) != ("range_max" in table):
            raise self.fail("[checks].range_min" if "range_max" in table else "[checks].range_max",
                            "is missing: give range_min and range_max together")
        if "range_min" in table:
            low = self._vector(table, "range_min", self.channels)
            high = self._vector(table, "range_max", self.channels)
            if not np.all(low < high):
                raise self.fail("[checks].range_max", "must be greater than range_min for every channel")
            config.range_min, config.range_max = low, high
        config.saturation_tolerance = self._number(table, "saturation_tolerance", DEFAULT_SATURATION_TOLERANCE,
                                                   SATURATION_TOLERANCE)
        config.saturated_min_samples = self._int(table, "saturated_min_samples", DEFAULT_SATURATED_MIN_SAMPLES,
                                                 1, config.window)
        if "stuck_min_spread" in table:
            spread = self._vector(table, "stuck_min_spread", self.channels)
            if np.any(spread < 0):
                raise self.fail("[checks].stuck_min_spread", "must be at least 0 for every channel")
            config.stuck_min_spread = spread
        config.stuck_frames = self._int(table, "stuck_frames", config.window, 2, config.window)
        rate = self.spec.sample_rate_hz
        default_gap = DEFAULT_GAP_PERIODS / rate if rate else None
        config.max_gap_s = self._number(table, "max_gap_s", default_gap, values.SECONDS)
        config.min_fresh_fraction = self._number(table, "min_fresh_fraction", None, values.FRACTION)
        policy = table.get("policy", {})
        if not isinstance(policy, dict):
            raise self.fail("[checks.policy]", "must be a table")
        for key, value in policy.items():
            reason = self._policy_reason(key)
            if value not in POLICIES:
                raise self.fail(f"[checks.policy].{key}", f"must be \"fallback\" or \"flag\", not {value!r}")
            config.policy[reason] = value

    def _policy_reason(self, key: str) -> Reason:
        known = ", ".join(r.code for r in POLICY_REASONS)
        try:
            reason = Reason.from_code(key)
        except ValueError:
            raise self.fail(f"[checks.policy].{key}", f"is not a reason an input check gives (known: {known})") \
                from None
        if reason not in POLICY_REASONS:
            raise self.fail(f"[checks.policy].{key}", f"is not a reason an input check gives (known: {known})")
        return reason

    # --- [ood] ------------------------------------------------------------------------------------

    def _ood(self, table: Dict[str, Any]) -> OodModel:
        size = len(FEATURES) * self.channels
        for key in ("features", "mean", "scale", "inv_cov", "threshold"):
            if key not in table:
                raise self.fail(f"[ood].{key}", "is missing (write the table with scripts/calibrate_checks.py)")
        if table["features"] != list(FEATURES):
            raise self.fail("[ood].features", f"must be {list(FEATURES)} (the features this version computes), "
                                              f"not {table['features']!r}")
        mean = self._vector(table, "mean", size, section="ood")
        scale = self._vector(table, "scale", size, section="ood")
        if np.any(scale <= 0):
            raise self.fail("[ood].scale", "must be greater than 0 for every feature")
        inv_cov = self._matrix(table, "inv_cov", size)
        threshold = self._number(table, "threshold", None, values.POSITIVE, section="ood")
        rate = self._number(table, "false_alarm_rate", None, FALSE_ALARM_RATE, section="ood")
        if "calibration" in table and not isinstance(table["calibration"], str):
            raise self.fail("[ood].calibration", "must be a string (a note on how the table was made)")
        model = OodModel(mean=mean, scale=scale, inv_cov=inv_cov, threshold=threshold, false_alarm_rate=rate)
        try:
            model.whitening()
        except np.linalg.LinAlgError:
            raise self.fail("[ood].inv_cov", "is not positive definite (re-run scripts/calibrate_checks.py)") \
                from None
        return model

    # --- values -----------------------------------------------------------------------------------

    def _vector(self, table: Dict[str, Any], key: str, size: int, section: str = "checks") -> np.ndarray:
        numbers = table[key]
        if (not isinstance(numbers, list) or len(numbers) != size
                or not all(_is_number(v) and math.isfinite(v) for v in numbers)):
            what = ("one per channel" if size == self.channels
                    else f"{len(FEATURES)} features x {self.channels} channels")
            raise self.fail(f"[{section}].{key}", f"must be a list of {size} finite numbers ({what})")
        return np.array(numbers, dtype=np.float64)

    def _matrix(self, table: Dict[str, Any], key: str, size: int) -> np.ndarray:
        rows = table[key]
        if (not isinstance(rows, list) or len(rows) != size
                or not all(isinstance(r, list) and len(r) == size for r in rows)
                or not all(_is_number(v) and math.isfinite(v) for r in rows for v in r)):
            raise self.fail(f"[ood].{key}", f"must be {size} lists of {size} finite numbers")
        matrix = np.array(rows, dtype=np.float64)
        if not np.allclose(matrix, matrix.T, rtol=1e-6, atol=1e-9):
            raise self.fail(f"[ood].{key}", "must be symmetric")
        return matrix

    def _number(self, table: Dict[str, Any], key: str, default: Any, rule: values.Number,
                section: str = "checks") -> Any:
        if key not in table:
            return default
        try:
            return rule.check(table[key])
        except values.ValueProblem as exc:
            raise self.fail(f"[{section}].{key}", str(exc)) from None

    def _int(self, table: Dict[str, Any], key: str, default: int, low: int, high: int) -> int:
        if key not in table:
            return default
        try:
            return int(values.count(low, high).check(table[key]))
        except values.ValueProblem as exc:
            raise self.fail(f"[checks].{key}", f"{exc} (the window is {high})") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)

