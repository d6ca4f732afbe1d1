"""Fault injection end to end: scripts/corrupt_log.py corrupts the bundled log with labelled faults, the real
command line replays it through the bundled model, and every fault type must get its reason in at least 95%
of the windows that hold it, while clean windows stay model decisions (at most 1% fall back).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BUNDLED_LOG, BUNDLED_SPEC, ROOT, read_jsonl, run_cli

from edge_infer.checks.config import parse_checks
from edge_infer.io import read_log
from edge_infer.model.spec import load_spec
from edge_infer.testing.fault_report import score

SCRIPT = ROOT / "scripts" / "corrupt_log.py"


def corrupt(tmp_path: Path, seed: int) -> "tuple[Path, dict]":
    out, side = tmp_path / f"corrupt{seed}.csv", tmp_path / f"corrupt{seed}.faults.json"
    done = subprocess.run([sys.executable, str(SCRIPT), str(BUNDLED_LOG), str(out), "--faults-out", str(side),
                           "--seed", str(seed)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out, json.loads(side.read_text())


@pytest.fixture(scope="module", params=[1, 2])
def replayed(request, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp(f"corrupt{request.param}")
    log, side = corrupt(tmp_path, request.param)
    decisions = tmp_path / "decisions.jsonl"
    result = run_cli("replay", str(log), "--decisions", str(decisions), "--json", "--mode", "inline", check=True)
    return log, side, json.loads(result.stdout), read_jsonl(decisions)


def test_every_fault_type_gets_its_reason(replayed):
    _, side, _, records = replayed
    result = score(side, records)
    expected_types = {f["type"] for f in side["faults"] if f["reason"] is not None}
    assert set(result.types) >= expected_types
    for kind, s in result.types.items():
        if kind in expected_types:
            assert s.windows >= 10 and s.rate >= 0.95, (kind, s)


def test_clean_windows_stay_model_decisions(replayed):
    _, side, _, records = replayed
    result = score(side, records)
    assert result.clean_windows > 200
    assert result.false_fallback_rate <= 0.01 and result.false_flags == 0


def test_unparseable_lines_are_counted_and_the_run_goes_on(replayed):
    _, side, summary, records = replayed
    assert summary["source"]["bad_rows"] == len(side["bad_lines"]) > 0
    assert summary["source"]["first_bad_line"] == side["bad_lines"][0]
    assert summary["frames"] == side["frames"]
    assert summary["input_checks"]["windows"] == len([r for r in records if r["reason"] != "shutdown"])


def test_the_side_file_says_where_the_faults_are(replayed):
    """Check the labels against the corrupted data itself, so the detection test cannot agree with a wrong label."""
    log_path, side, _, _ = replayed
    spec = load_spec(BUNDLED_SPEC)
    checks = parse_checks(spec)
    log = read_log(log_path)
    values = log.values[:, [log.channels.index(c) for c in spec.channels]]
    for fault in side["faults"]:
        first, last = fault["seqs"]
        rows = values[first:last + 1]
        kind = fault["type"]
        c = spec.channels.index(fault["channel"]) if "channel" in fault else None
        if kind == "nan_burst":
            assert not np.isfinite(rows[:, [spec.channels.index(n) for n in fault["channels"]]]).any()
        elif kind == "spike":
            assert not checks.range_min[c] <= rows[0, c] <= checks.range_max[c]
        elif kind == "saturated":
            assert np.all(rows[:, c] == np.float32(fault["value"]))
        elif kind == "stuck":
            assert np.ptp(rows[:, c]) <= 2 * fault["noise"] + 1e-4
        elif kind == "stale":
            assert np.all(rows == values[first - 1])
        elif kind in ("dropped_rows", "unparseable_row", "junk_line"):
            assert last == first + 1
            step = log.t[last] - log.t[first]
            assert step == pytest.approx(0.1 * (1 + fault.get("dropped", kind == "unparseable_row")), abs=1e-6)
        elif kind == "duplicate_row":
            assert last == first + 1 and log.t[last] == log.t[first] and np.all(values[last] == values[first])
        elif kind == "backwards_time":
            assert log.t[last] < log.t[first]


def test_at_most_one_percent_of_the_clean_log_falls_back():
    summary = json.loads(run_cli("replay", str(BUNDLED_LOG), "--json", "--mode", "inline", check=True).stdout)
    assert summary["fallback_decisions"] <= 0.01 * summary["decisions"]


def test_bad_arguments_are_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "missing.csv"), str(tmp_path / "o.csv"),
                           "--faults-out", str(tmp_path / "f.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
