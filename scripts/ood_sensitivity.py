#!/usr/bin/env python3
"""How much a sensor must drift before the OOD score notices: share of windows over the threshold, per shift.

    python scripts/ood_sensitivity.py [--model SPEC] [--log LOG]

Applies whole-log distortions that stay inside the physical range, so that no
other check fires and only the OOD score can see them — an offset of k
standard deviations on one channel, a flipped or swapped axis, a gyroscope
gain error, an accelerometer reporting g instead of m/s², extra noise — and
prints, for each, the share of the log's windows (hop as in the spec) whose
distance exceeds the spec's ``[ood].threshold``. The clean log's share is the
false-alarm rate on data the calibration never saw. docs/robustness.md holds
the result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_infer.checks import ood  # noqa: E402
from edge_infer.checks.config import parse_checks  # noqa: E402
from edge_infer.io import read_log  # noqa: E402
from edge_infer.model.loader import bundled_log, bundled_spec  # noqa: E402
from edge_infer.model.spec import load_spec  # noqa: E402
from edge_infer.sources.log_replay import channel_columns  # noqa: E402


def distortions(x: np.ndarray, channels: list) -> Dict[str, Callable[[], np.ndarray]]:
    sd = x.std(axis=0)
    out: Dict[str, Callable[[], np.ndarray]] = {"clean log": lambda: x}
    for k in (1, 2, 3, 5):
        for c, name in enumerate(channels):
            out[f"{name} + {k} sd"] = lambda c=c, k=k: x + np.eye(len(channels))[c] * k * sd[c]
    out["first 3 axes negated (upside down)"] = lambda: x * np.r_[[-1.0] * 3, [1.0] * (len(channels) - 3)]
    out["axes 0 and 1 swapped"] = lambda: x[:, [1, 0, *range(2, len(channels))]]
    out["last 3 channels x 3 (gain)"] = lambda: x * np.r_[[1.0] * (len(channels) - 3), [3.0] * 3]
    out["first 3 channels / 9.81 (g, not m/s2)"] = lambda: x / np.r_[[9.81] * 3, [1.0] * (len(channels) - 3)]
    out["noise of 0.5 sd added"] = lambda: x + np.random.default_rng(0).normal(0.0, 0.5, x.shape) * sd
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model spec with an [ood] table (default: the bundled model)")
    parser.add_argument("--log", help="clean recorded log (default: the bundled log)")
    args = parser.parse_args()
    spec = load_spec(args.model or bundled_spec())
    model = parse_checks(spec).ood
    if model is None:
        print(f"ood_sensitivity: spec {spec.spec_path} has no [ood] table", file=sys.stderr)
        return 2
    log = read_log(args.log or bundled_log())
    x = log.values[:, channel_columns(log, spec.channels, len(spec.channels), "log")].astype(np.float64)
    print(f"threshold {model.threshold:g} (calibrated at a false-alarm rate of {model.false_alarm_rate})\n")
    print("| distortion | windows over the threshold |\n|---|---:|")
    for name, make in distortions(x, spec.channels).items():
        windows = np.lib.stride_tricks.sliding_window_view(make(), spec.window, axis=0)[::spec.hop]
        share = float(np.mean(model.distance(ood.window_features(windows.transpose(0, 2, 1))) > model.threshold))
        print(f"| {name} | {share:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
