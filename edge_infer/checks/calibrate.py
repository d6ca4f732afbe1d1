"""Fit the input checks and the OOD score on clean training data, and write them into a spec.

Every limit comes from the training recordings with a stated margin, and
the OOD threshold from *held-out* training windows at a stated false-alarm
rate: the series are split into folds; for each fold, the feature statistics
are fitted on the other folds and the held-out fold's windows are scored;
the threshold is the (1 - rate) quantile of those held-out distances, and the
final statistics are fitted on all series (as cross-validation does). Test
data is never needed, so it stays a fair check of the result.

Windows are cut the way the runtime sees a recording: each fold's series are
laid back to back in a few random orders and a window starts at every frame,
so windows straddling two recordings (a change of activity) count as clean.

Used by ``scripts/calibrate_checks.py`` (re-calibrate a spec without touching
its model) and at the end of ``scripts/train_model.py``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..decide.reasons import Reason
from ..errors import SpecError
from ..io.files import replace_atomically
from ..model.spec import ModelSpec, load_spec
from . import ood
from .config import DEFAULT_GAP_PERIODS, DEFAULT_SATURATED_MIN_SAMPLES, DEFAULT_SATURATION_TOLERANCE, POLICY_REASONS

DEFAULT_FALSE_ALARM_RATE = 0.005
#: The physical range is the training envelope widened by this share of its span on each side
#: (the data does not say what the sensor's full scale is; a datasheet value is better where known).
DEFAULT_RANGE_MARGIN = 0.25
#: A channel is stuck when its spread falls below this share of the smallest spread in training.
DEFAULT_STUCK_MARGIN = 0.25
#: Too few fresh samples: more than this many times the largest share of repeated samples in training.
DEFAULT_FRESH_MARGIN = 2.0
DEFAULT_FOLDS = 5
DEFAULT_ORDERS = 4
#: The tables this module writes into a spec (and replaces there).
TABLES = ("checks", "ood")


@dataclass
class Calibration:
    """The ``[checks]`` and ``[ood]`` tables, and what they were derived from (for the docs)."""

    checks: Dict[str, Any]
    ood: Dict[str, Any]
    report: Dict[str, Any] = field(default_factory=dict)


def calibrate(series: Sequence[np.ndarray], window: int, sample_rate_hz: Optional[float],
              labels: Optional[Sequence[str]] = None, *, false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
              stuck_frames: Optional[int] = None, folds: int = DEFAULT_FOLDS, orders: int = DEFAULT_ORDERS,
              range_margin: float = DEFAULT_RANGE_MARGIN, stuck_margin: float = DEFAULT_STUCK_MARGIN,
              fresh_margin: float = DEFAULT_FRESH_MARGIN, seed: int = 0) -> Calibration:
    """Calibrate on clean recordings ``series`` (each ``(frames, channels)`` in physical units).

    ``labels`` (one per series) stratifies the folds; ``stuck_frames``
    defaults to half the window (a frozen sensor is caught within that many frames).
    """
    series = [np.asarray(s, dtype=np.float64) for s in series]
    if len(series) < folds or any(len(s) < window for s in series):
        raise ValueError(f"calibration needs at least {folds} series of at least {window} frames each")
    stuck_frames = stuck_frames or max(2, window // 2)
    frames = np.concatenate(series)
    low, high = frames.min(axis=0), frames.max(axis=0)
    span = high - low
    min_spread = np.min([_spreads(s, stuck_frames).min(axis=0) for s in series], axis=0)
    repeat_share = max(_repeat_share(s, window) for s in series)
    checks: Dict[str, Any] = {
        "range_min": _rounded(low - range_margin * span),
        "range_max": _rounded(high + range_margin * span),
        "saturation_tolerance": DEFAULT_SATURATION_TOLERANCE,
        "saturated_min_samples": DEFAULT_SATURATED_MIN_SAMPLES,
        "stuck_frames": stuck_frames,
        "stuck_min_spread": _rounded(stuck_margin * min_spread),
        "min_fresh_fraction": math.floor(max(0.0, 1.0 - fresh_margin * repeat_share) * 100) / 100,
    }
    if sample_rate_hz:
        checks["max_gap_s"] = round(DEFAULT_GAP_PERIODS / sample_rate_hz, 6)
    # A lost or repeated sample here and there (a noisy serial line loses a frame in ten) barely changes a
    # window, and falling back on every window that holds one would silence the model on such a link: gaps
    # are flagged and the model decides; too few fresh samples (stale) still falls back.
    checks["policy"] = {reason.code: "flag" if reason is Reason.GAP else "fallback" for reason in POLICY_REASONS}

    rng = np.random.default_rng(seed)
    fold_of = _folds(len(series), labels, folds, rng)
    held_out = []
    for k in range(folds):
        fit_on = [s for s, f in zip(series, fold_of) if f != k]
        scored = [s for s, f in zip(series, fold_of) if f == k]
        model = ood.fit(_runtime_windows(fit_on, window, orders, rng))
        held_out.append(model.distance(ood.window_features(_runtime_windows(scored, window, orders, rng))))
    distances = np.concatenate(held_out)
    final = ood.fit(_runtime_windows(series, window, orders, rng))
    final.threshold = ood.threshold_at(distances, false_alarm_rate)
    final.false_alarm_rate = false_alarm_rate
    ood_table = final.to_table()
    report = {
        "series": len(series), "frames": len(frames), "folds": folds, "orders": orders,
        "held_out_windows": len(distances), "false_alarm_rate": false_alarm_rate,
        "threshold": ood_table["threshold"],
        "held_out_distance": {q: round(float(np.quantile(distances, q / 100)), 3) for q in (50, 90, 99, 99.9)},
        "training_min": _rounded(low), "training_max": _rounded(high),
        "training_min_spread": _rounded(min_spread), "training_max_repeat_share": round(repeat_share, 4),
        "range_margin": range_margin, "stuck_margin": stuck_margin, "fresh_margin": fresh_margin,
    }
    ood_table["calibration"] = (f"{len(series)} clean training series, {folds}-fold held-out threshold at a "
                                f"false-alarm rate of {false_alarm_rate:g} over {len(distances)} windows")
    return Calibration(checks=checks, ood=ood_table, report=report)


def calibrate_spec(spec_path: "str | Path", series: Sequence[np.ndarray], labels: Optional[Sequence[str]] = None,
                   source: str = "clean training data", write: bool = True, **options: Any) -> Calibration:
    """Calibrate the spec at ``spec_path`` on ``series`` and (unless ``write`` is False) write the tables into it.

    The spec's current ``[checks]``/``[ood]`` tables are ignored (they may be
    from an older version, or wrong). ``options`` are :func:`calibrate`'s
    keyword arguments; ``source`` names the data in the spec's comment.
    """
    path = Path(spec_path)
    spec = spec_without_checks(path)
    result = calibrate(series, spec.window, spec.sample_rate_hz, labels, **options)
    if write:
        write_tables(path, result, note=describe(result, source))
    return result


def describe(result: Calibration, source: str) -> str:
    """A few lines on where the limits come from, for the spec's comment and the script's output."""
    r = result.report
    return (f"Calibrated on {r['series']} series of {source} ({r['frames']} frames) by scripts/calibrate_checks.py.\n"
            f"range: the training envelope widened by {r['range_margin']:g} of its span per side (no datasheet);\n"
            f"stuck: {r['stuck_margin']:g} x the smallest spread over {result.checks['stuck_frames']} frames seen "
            f"in training; stale: {r['fresh_margin']:g} x the largest share of repeated samples;\n"
            f"ood: threshold at a false-alarm rate of {r['false_alarm_rate']:g} on {r['held_out_windows']} "
            f"held-out windows ({r['folds']} folds).")


def _spreads(frames: np.ndarray, k: int) -> np.ndarray:
    """Standard deviation per channel over every stretch of ``k`` frames: ``(stretches, channels)``."""
    return np.lib.stride_tricks.sliding_window_view(frames, k, axis=0).std(axis=2)


def _repeat_share(frames: np.ndarray, window: int) -> float:
    """The largest share of a window's frames that repeat the frame before them exactly."""
    repeated = np.concatenate([[0], np.all(frames[1:] == frames[:-1], axis=1).astype(int)])
    counts = np.convolve(repeated, np.ones(window, dtype=int), mode="valid")
    return float(counts.max()) / window


def _folds(n: int, labels: Optional[Sequence[str]], folds: int, rng: np.random.Generator) -> np.ndarray:
    """Assign each series to a fold, stratified by label when labels are given."""
    fold_of = np.empty(n, dtype=int)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(np.asarray(labels) == c)
                                                   for c in sorted(set(labels))]
    start = 0
    for members in groups:
        shuffled = rng.permutation(members)
        fold_of[shuffled] = (np.arange(len(shuffled)) + start) % folds
        start += len(shuffled)
    return fold_of


def _runtime_windows(series: List[np.ndarray], window: int, orders: int, rng: np.random.Generator) -> np.ndarray:
    """Every window (hop 1) over ``series`` laid back to back, in ``orders`` random orders."""
    parts = []
    for _ in range(orders):
        recording = np.concatenate([series[i] for i in rng.permutation(len(series))])
        parts.append(np.lib.stride_tricks.sliding_window_view(recording, window, axis=0).transpose(0, 2, 1))
    return np.concatenate(parts)


def _rounded(values: np.ndarray) -> List[float]:
    return [float(f"{v:.6g}") for v in values]


# --- writing the tables into a spec -------------------------------------------------------------------

_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(#.*)?$")


def render_tables(calibration: Calibration, note: str = "") -> str:
    """``[checks]``, ``[checks.policy]`` and ``[ood]`` as TOML text."""
    lines = ["# Input checks and OOD score (README: \"Input checks\"; docs/robustness.md)."]
    if note:
        lines += [f"# {line}" for line in note.splitlines()]
    lines.append("[checks]")
    policy = calibration.checks.get("policy", {})
    lines += [f"{key} = {_toml(value)}" for key, value in calibration.checks.items() if key != "policy"]
    lines += ["", "[checks.policy]"] + [f"{key} = {_toml(value)}" for key, value in policy.items()]
    lines += ["", "[ood]"]
    for key, value in calibration.ood.items():
        if key == "inv_cov":
            lines.append("inv_cov = [")
            lines += [f"  {_toml(row)}," for row in value]
            lines.append("]")
        else:
            lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def write_tables(spec_path: "str | Path", calibration: Calibration, note: str = "") -> None:
    """Replace the spec's ``[checks]``/``[ood]`` tables (and only those) with ``calibration``'s.

    The rest of the file is kept byte for byte (so ``[model].sha256`` still
    names the same model); the result is parsed back and compared before the
    file is replaced, and a spec that would not load is never written.
    """
    path = Path(spec_path)
    kept = strip_tables(path.read_text(encoding="utf-8")).rstrip("\n")
    text = kept + "\n\n" + render_tables(calibration, note)
    spec = _load_text(path, text)
    if spec.extra.get("checks") != calibration.checks or spec.extra.get("ood") != calibration.ood:
        raise SpecError(f"spec {path}: the calibrated tables did not read back as written")
    replace_atomically(path, text.encode("utf-8"), "spec")  # an edit of the spec: whole or not at all


def spec_without_checks(spec_path: "str | Path") -> "ModelSpec":
    """The spec at ``spec_path`` as if it had no ``[checks]``/``[ood]`` tables (they may be old, or wrong)."""
    path = Path(spec_path)
    return _load_text(path, strip_tables(path.read_text(encoding="utf-8")))


def _load_text(path: Path, text: str) -> "ModelSpec":
    """Load ``text`` as if it were the spec at ``path`` (relative paths resolve the same way); nothing is
    written beside the spec to do so."""
    return load_spec(path, data=text.encode("utf-8"))


def strip_tables(text: str) -> str:
    """``text`` without the ``[checks...]`` and ``[ood...]`` tables and the comment block just above them."""
    out: List[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        header = _HEADER.match(line)
        if header:
            name = header.group(1).strip().strip("\"'")
            skipping = name.split(".")[0] in TABLES
            if skipping:
                while out and out[-1].lstrip().startswith("#"):  # the table's own comment lines
                    out.pop()
        if not skipping:
            out.append(line)
    return "".join(out)


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)
