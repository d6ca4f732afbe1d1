"""The OOD score (edge_infer/checks/ood.py) and the calibration that writes [checks] and [ood] into a spec
(edge_infer/checks/calibrate.py, scripts/calibrate_checks.py), without touching the model."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BUNDLED_SPEC, ROOT

from edge_infer.checks import ood
from edge_infer.checks.calibrate import calibrate, calibrate_spec, strip_tables
from edge_infer.checks.config import parse_checks
from edge_infer.model.loader import open_model
from edge_infer.model.spec import load_spec
from edge_infer.testing.tflite_builder import dense_model, write_model

WINDOW = 16


def recording(n: int, seed: int, level: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    return level + 2.0 * np.sin(t / 5.0 + rng.uniform(0, 6, 2)) + rng.normal(0.0, 0.3, (n, 2))


def test_distance_is_the_mahalanobis_distance_of_the_features():
    rng = np.random.default_rng(0)
    windows = rng.normal(size=(4000, WINDOW, 2)) * [1.0, 3.0] + [0.0, 5.0]
    model = ood.fit(windows, shrinkage=0.0)
    features = ood.window_features(windows[:50])
    covariance = np.cov(ood.window_features(windows), rowvar=False, bias=True)
    diff = features - ood.window_features(windows).mean(axis=0)
    expected = np.sqrt(np.einsum("ni,ij,nj->n", diff, np.linalg.inv(covariance), diff))
    np.testing.assert_allclose(model.distance(features), expected, rtol=1e-6)
    w, w0 = model.whitening()
    np.testing.assert_allclose(np.linalg.norm(features @ w.T - w0, axis=1), expected, rtol=1e-6)


def test_the_threshold_rejects_the_stated_share_of_held_out_windows():
    distances = np.arange(1, 1001, dtype=float)
    assert ood.threshold_at(distances, 0.01) == 991.0
    assert np.mean(distances > ood.threshold_at(distances, 0.01)) <= 0.01
    with pytest.raises(ValueError):
        ood.threshold_at(distances, 1.5)


def test_calibration_holds_out_folds_and_finds_a_shifted_recording():
    series = [recording(120, seed) for seed in range(20)]
    result = calibrate(series, WINDOW, 10.0, false_alarm_rate=0.01, seed=3)
    report = result.report
    assert report["held_out_windows"] > 0 and report["threshold"] == result.ood["threshold"]
    model = ood.OodModel(mean=np.array(result.ood["mean"]), scale=np.array(result.ood["scale"]),
                         inv_cov=np.array(result.ood["inv_cov"]), threshold=result.ood["threshold"])

    def windows(frames):
        return np.lib.stride_tricks.sliding_window_view(frames, WINDOW, axis=0).transpose(0, 2, 1)

    fresh = np.concatenate([recording(120, 100 + s) for s in range(10)])
    false_alarms = np.mean(model.distance(ood.window_features(windows(fresh))) > model.threshold)
    assert false_alarms <= 0.05  # clean recordings it never saw: about the stated rate
    shifted = recording(120, 999, level=3.0)
    assert np.mean(model.distance(ood.window_features(windows(shifted))) > model.threshold) > 0.9
    checks = result.checks
    assert all(lo < hi for lo, hi in zip(checks["range_min"], checks["range_max"]))
    assert checks["stuck_frames"] == WINDOW // 2 and checks["max_gap_s"] == pytest.approx(0.15)


def spec_for(tmp_path: Path) -> Path:
    write_model(tmp_path / "m.tflite", dense_model(WINDOW, 2, 3, seed=4))
    path = tmp_path / "m.toml"
    digest = hashlib.sha256((tmp_path / "m.tflite").read_bytes()).hexdigest()
    path.write_text(f"""# my model
[model]
file = "m.tflite"
sha256 = "{digest}"

[input]
channels = ["a", "b"]
sample_rate_hz = 10.0
window = {WINDOW}
hop = 4

[output]
kind = "classes"
labels = ["x", "y", "z"]   # keep this comment

[fallback]
action = "safe"

# old checks, to be replaced
[checks]
max_gap_s = 9.0

[checks.policy]
gap = "flag"

[ood]
threshold = 1.0
""")
    return path


def test_calibrate_spec_replaces_only_the_check_tables(tmp_path):
    path = spec_for(tmp_path)
    before = path.read_text()
    model_before = (tmp_path / "m.tflite").read_bytes()
    result = calibrate_spec(path, [recording(100, s) for s in range(10)], seed=1)
    after = path.read_text()
    assert strip_tables(after).rstrip("\n") == strip_tables(before).rstrip("\n")  # the rest byte for byte
    assert "# keep this comment" in after and "# old checks" not in after and "9.0" not in after
    assert (tmp_path / "m.tflite").read_bytes() == model_before
    spec, _ = open_model(str(path))  # the sha256 still matches the model
    assert spec.extra["checks"] == result.checks and spec.extra["ood"] == result.ood
    config = parse_checks(spec)
    assert config.ood is not None and config.policy and config.range_min is not None
    calibrate_spec(path, [recording(100, s) for s in range(10)], seed=1)  # again: same file
    assert path.read_text() == after


def test_calibrate_checks_script_takes_a_recorded_log(tmp_path):
    path = spec_for(tmp_path)
    frames = np.concatenate([recording(100, s) for s in range(12)])
    labels = np.repeat(["p", "q", "r"], 400)
    log = tmp_path / "train.csv"
    log.write_text("t,a,b,label\n" + "".join(f"{i / 10:.1f},{a:.6g},{b:.6g},{c}\n"
                                             for i, ((a, b), c) in enumerate(zip(frames, labels))))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "calibrate_checks.py"), str(path),
                           "--train-data", str(log), "--json", "--false-alarm-rate", "0.01"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["series"] >= 20  # 3 label runs, cut into pieces so that folds can hold some out
    assert load_spec(path).extra["ood"]["false_alarm_rate"] == 0.01
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "calibrate_checks.py"), str(path),
                          "--train-data", str(tmp_path / "missing.csv")], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_the_bundled_spec_is_calibrated_and_matches_its_model():
    spec, engine = open_model(str(BUNDLED_SPEC))
    config = parse_checks(spec)
    assert config.ood is not None and config.ood.false_alarm_rate is not None
    assert config.range_min is not None and config.stuck_min_spread is not None
    assert config.min_fresh_fraction is not None and config.max_gap_s is not None
    assert spec.sha256 == engine.sha256
