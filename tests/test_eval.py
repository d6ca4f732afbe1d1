"""``edge-infer eval``: the same decisions as ``replay``, computed in bulk, over a corpus, with golden decisions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from conftest import BUNDLED_LOG, BUNDLED_SPEC, ROOT, read_jsonl, run_cli
from replay_helpers import write_log, write_spec

from edge_infer.testing.tflite_builder import dense_model

#: Record fields that must be equal, not just close.
EXACT = ("seq", "t", "action", "source", "reason", "label")


def replay_records(log: Path, model: Path, out: Path, *extra: str) -> List[Dict]:
    run_cli("replay", str(log), "--model", str(model), "--decisions", str(out), "--json", "--budget-ms", "100000",
            *extra, check=True)
    return read_jsonl(out)


def eval_json(*args: str, check: bool = True) -> Dict:
    proc = run_cli("eval", *args, "--json")
    if check:
        assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def output_step(model: Path) -> float:
    from edge_infer.model.loader import open_model
    _, engine = open_model(str(model))
    return engine.output_params.scale * 1.0001 if engine.output_params.quantized else 1e-5


def assert_same_decisions(ours: List[Dict], theirs: List[Dict], step: float) -> None:
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        assert {k: a[k] for k in EXACT} == {k: b[k] for k in EXACT}, (a, b)
        assert (a["output"] is None) == (b["output"] is None), (a, b)
        if a["output"] is not None:
            assert np.max(np.abs(np.subtract(a["output"], b["output"]))) <= step, (a, b)
        assert (a["ood_score"] is None) == (b["ood_score"] is None)
        if a["ood_score"] is not None:
            assert abs(a["ood_score"] - b["ood_score"]) <= 0.0011
        assert a["latency_us"] is None and a["invoke_us"] is None  # no deadline offline


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "damaged.csv"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "corrupt_log.py"), str(BUNDLED_LOG), str(out),
                    "--faults-out", str(out.with_suffix(".json")), "--seed", "1"], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("chunk_rows", ["50", "32768"])
def test_bundled_model_on_a_damaged_log_decides_as_replay(damaged: Path, tmp_path: Path, chunk_rows: str) -> None:
    theirs = replay_records(damaged, BUNDLED_SPEC, tmp_path / "replay.jsonl")
    replay_summary = json.loads(run_cli("replay", str(damaged), "--json", "--budget-ms", "100000", check=True).stdout)
    summary = eval_json(str(damaged), "--decisions-dir", str(tmp_path / "dd"), "--chunk-rows", chunk_rows)
    ours = read_jsonl(tmp_path / "dd" / "damaged.csv.jsonl")
    assert_same_decisions(ours, theirs, output_step(BUNDLED_SPEC))
    assert {r["reason"] for r in ours} >= {"non_finite", "out_of_range", "saturated", "stale", "stuck", "gap"}
    log = summary["per_log"][0]
    for key in ("decisions", "model_decisions", "fallback_decisions", "fallback_reasons", "flagged_reasons",
                "accuracy", "input_checks"):
        assert log[key] == replay_summary[key], key
    assert summary["fallback_reasons"] == replay_summary["fallback_reasons"]


@pytest.mark.parametrize("dtype", ["int8", "uint8", "float32"])
def test_test_built_models_decide_as_replay(tmp_path: Path, dtype: str) -> None:
    log = tmp_path / "log.csv"
    write_log(log, 2500, seed=4)
    model = tmp_path / f"m_{dtype}.tflite"
    model.write_bytes(dense_model(16, 3, 4, dtype=dtype, seed=2, hidden=8))
    spec = write_spec(tmp_path / "spec.toml", model, min_confidence=0.6)  # some low-confidence fallbacks
    theirs = replay_records(log, spec, tmp_path / "replay.jsonl", "--hop", "1")
    summary = eval_json(str(log), "--model", str(spec), "--hop", "1", "--decisions-dir", str(tmp_path / "dd"),
                        "--chunk-rows", "333")
    assert summary["batch"] > 1  # the builder's models take a batch: the batched path is what is compared
    ours = read_jsonl(tmp_path / "dd" / "log.csv.jsonl")
    assert_same_decisions(ours, theirs, output_step(model))
    assert 0 < summary["fallback_reasons"].get("low_confidence", 0) < summary["decisions"]


def test_a_bare_model_decides_as_replay_in_batches_and_one_by_one(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    write_log(log, 1200, seed=5)
    model = tmp_path / "m.tflite"
    model.write_bytes(dense_model(16, 3, 4, dtype="int8", seed=3))
    theirs = replay_records(log, model, tmp_path / "replay.jsonl", "--hop", "3")
    for batch in ("1", "256"):
        eval_json(str(log), "--model", str(model), "--hop", "3", "--batch", batch,
                  "--decisions-dir", str(tmp_path / batch))
        assert_same_decisions(read_jsonl(tmp_path / batch / "log.csv.jsonl"), theirs, output_step(model))


def test_corpus_in_two_workers_with_one_malformed_log(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "unit1").mkdir(parents=True)
    (corpus / "unit2").mkdir()
    for i in range(3):
        write_log(corpus / "unit1" / f"day{i}.csv", 400 + 100 * i, hz=10.0, seed=i)
        write_log(corpus / "unit2" / f"day{i}.csv", 300, hz=10.0, seed=10 + i)
    (corpus / "unit2" / "broken.csv").write_text("time,x\n1,2\n")  # no t column: not a log
    model = tmp_path / "m.tflite"
    model.write_bytes(dense_model(16, 3, 4, dtype="int8", seed=1))
    spec = write_spec(tmp_path / "spec.toml", model)
    runs = {}
    for workers in ("1", "2"):
        proc = run_cli("eval", str(corpus), "--model", str(spec), "--workers", workers, "--json")
        assert proc.returncode == 1
        errors = [line for line in proc.stderr.splitlines() if line.startswith("edge-infer: error:")]
        assert len(errors) == 1 and "broken.csv" in errors[0] and "'t' column" in errors[0]
        runs[workers] = json.loads(proc.stdout)
    one, two = runs["1"], runs["2"]
    assert two["workers"] == 2 and two["logs"] == 7 and two["failed_logs"] == 1
    names = [log["name"] for log in two["per_log"]]
    assert names == sorted(names) and "unit1/day0.csv" in names and "unit2/broken.csv" in names
    broken = next(log for log in two["per_log"] if log["name"] == "unit2/broken.csv")
    assert set(broken) == {"path", "name", "error"}
    for key in ("frames", "decisions", "fallback_reasons", "accuracy", "confusion", "per_class", "ood"):
        assert one[key] == two[key], key
    assert [strip_timing(log) for log in one["per_log"]] == [strip_timing(log) for log in two["per_log"]]
    for key in ("logs", "frames", "decisions", "model_decisions", "fallback_decisions", "fallback_reasons",
                "flagged_reasons", "accuracy", "per_log", "engine", "workers", "elapsed_s"):
        assert key in two
    assert sum(log["decisions"] for log in two["per_log"] if "error" not in log) == two["decisions"]
    labelled = two["labelled_windows"]
    assert sum(sum(row.values()) for row in two["confusion"].values()) == labelled > 0


def strip_timing(log: Dict) -> Dict:
    return {k: v for k, v in log.items() if k not in ("elapsed_s", "invoke_us")}


def test_golden_decisions_gate_a_model_change(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    for i in range(2):
        write_log(logs / f"run{i}.csv", 600, seed=i)
    old, new = tmp_path / "old.tflite", tmp_path / "new.tflite"
    old.write_bytes(dense_model(16, 3, 4, dtype="int8", seed=1))
    new.write_bytes(dense_model(16, 3, 4, dtype="int8", seed=2))
    golden = tmp_path / "golden"
    run_cli("eval", str(logs), "--model", str(old), "--golden", str(golden), "--update-golden", check=True)
    assert sorted(p.name for p in golden.iterdir()) == ["run0.csv.jsonl", "run1.csv.jsonl"]
    same = run_cli("eval", str(logs), "--model", str(old), "--golden", str(golden), "--workers", "2")
    assert same.returncode == 0, same.stderr
    changed = run_cli("eval", str(logs), "--model", str(new), "--golden", str(golden), "--json")
    assert changed.returncode == 1
    lines = [line for line in changed.stderr.splitlines() if "golden decisions changed in" in line]
    assert len(lines) == 2 and "run0.csv" in lines[0] and "seq " in lines[0]
    result = json.loads(changed.stdout)
    assert result["golden"]["changed_logs"] == ["run0.csv", "run1.csv"]
    first = result["per_log"][0]["golden"]["first_changes"][0]
    assert "action" in first["fields"] or "output" in first["fields"]
    # what may change is said, not hidden: without the output, actions and sources still changed
    ignored = run_cli("eval", str(logs), "--model", str(new), "--golden", str(golden), "--ignore-fields",
                      "output,action,ood_score")
    assert ignored.returncode == 0, ignored.stderr
    # a tolerance wide enough for any output, and the actions still changed
    loose = run_cli("eval", str(logs), "--model", str(new), "--golden", str(golden), "--tolerance", "1000")
    assert loose.returncode == 1


def test_decisions_are_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "dd"
    run_cli("eval", str(BUNDLED_LOG), "--decisions-dir", str(out), check=True)
    before = (out / "basic_motions_test.csv.jsonl").read_text()
    again = run_cli("eval", str(BUNDLED_LOG), "--decisions-dir", str(out))
    assert again.returncode == 2 and "never overwrites" in again.stderr and "Traceback" not in again.stderr
    assert (out / "basic_motions_test.csv.jsonl").read_text() == before


@pytest.mark.parametrize("args, message", [
    (["--update-golden"], "--update-golden needs --golden"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--ray-address", "x:1"], "--ray-address needs --engine ray"),
    (["--golden", "/nonexistent/golden"], "no such directory"),
    (["--ignore-fields", "latency"], "unknown field"),
])
def test_bad_options_are_one_line_errors(args: List[str], message: str) -> None:
    proc = run_cli("eval", str(BUNDLED_LOG), *args)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_paths_globs_and_names(tmp_path: Path) -> None:
    for name in ("a.csv", "b.csv"):
        write_log(tmp_path / name, 100, hz=10.0)
    (tmp_path / "sub").mkdir()
    write_log(tmp_path / "sub" / "a.csv", 100, hz=10.0)
    model = tmp_path / "m.tflite"
    model.write_bytes(dense_model(16, 3, 4, dtype="int8"))
    summary = eval_json(str(tmp_path / "*.csv"), "--model", str(model))
    assert [log["name"] for log in summary["per_log"]] == ["a.csv", "b.csv"]
    clash = run_cli("eval", str(tmp_path / "a.csv"), str(tmp_path / "sub" / "a.csv"), "--model", str(model))
    assert clash.returncode == 2 and "share the name 'a.csv'" in clash.stderr
    nothing = run_cli("eval", str(tmp_path / "*.mcap"), "--model", str(model))
    assert nothing.returncode == 2 and "matches no" in nothing.stderr


def test_report_baseline_and_progress(damaged: Path, tmp_path: Path) -> None:
    other, another = tmp_path / "other.tflite", tmp_path / "another.tflite"
    other.write_bytes(dense_model(32, 6, 4, dtype="int8", seed=7))
    another.write_bytes(dense_model(32, 6, 4, dtype="int8", seed=8))
    report = tmp_path / "corpus.html"
    proc = run_cli("eval", str(damaged), str(BUNDLED_LOG), "--baseline", str(BUNDLED_SPEC), "--report", str(report),
                   "--progress", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["baseline"]["agreement"] == 1.0  # the model against itself
    assert summary["baseline"]["compared_windows"] == summary["decisions"]
    assert "eval [" in proc.stderr and "2/2 logs" in proc.stderr
    text = report.read_text()
    assert "damaged.csv" in text and "basic_motions_test.csv" in text and text.count("data:image/png;base64,") >= 4
    # bare against bare (a bare model's actions are indices, a spec's are labels: never compared)
    against_other = eval_json(str(BUNDLED_LOG), "--model", str(another), "--baseline", str(other))
    assert against_other["baseline"]["disagreements"] > 0
    assert against_other["per_log"][0]["baseline"]["first_disagreements"]


def test_peak_memory_does_not_grow_with_the_log(tmp_path: Path) -> None:
    """A log three times longer uses at most 25% more peak RSS (the whole log is never in memory)."""
    model = tmp_path / "m.tflite"
    model.write_bytes(dense_model(16, 3, 4, dtype="float32"))
    peaks = []
    for rows in (60_000, 180_000):
        log = tmp_path / f"log{rows}.csv"
        write_log(log, rows, seed=1)
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, from this (larger) pytest process
        code = ("import sys; from edge_infer.cli import main; "
                f"rc = main(['eval', {str(log)!r}, '--model', {str(model)!r}, '--hop', '1', '--json']); "
                "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0], file=sys.stderr)")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
        peaks.append(int(proc.stderr.strip().splitlines()[-1]))
        assert json.loads(proc.stdout)["decisions"] == rows - 15
    assert peaks[1] <= 1.25 * peaks[0], peaks


def test_an_mcap_recording_decides_as_its_csv(damaged: Path, tmp_path: Path) -> None:
    recording = tmp_path / "damaged.mcap"
    run_cli("convert", str(damaged), str(recording), check=True)
    from_csv = eval_json(str(damaged), "--decisions-dir", str(tmp_path / "csv"))
    from_mcap = eval_json(str(recording), "--decisions-dir", str(tmp_path / "mcap"), "--chunk-rows", "100")
    assert read_jsonl(tmp_path / "mcap" / "damaged.mcap.jsonl") == read_jsonl(tmp_path / "csv" / "damaged.csv.jsonl")
    assert from_mcap["fallback_reasons"] == from_csv["fallback_reasons"]


def test_hold_last_holds_on_the_log_clock(damaged: Path, tmp_path: Path) -> None:
    """With a hold longer than the log, the log's clock and a full-speed replay's wall clock agree."""
    spec = tmp_path / "hold.toml"
    text = BUNDLED_SPEC.read_text().replace('file = "basic_motions.tflite"',
                                            f'file = "{BUNDLED_SPEC.parent / "basic_motions.tflite"}"')
    spec.write_text(text.replace('action = "idle"', 'action = "idle"\nstrategy = "hold_last"\nhold_ms = 86400000'))
    theirs = replay_records(damaged, spec, tmp_path / "replay.jsonl")
    eval_json(str(damaged), "--model", str(spec), "--decisions-dir", str(tmp_path / "dd"))
    ours = read_jsonl(tmp_path / "dd" / "damaged.csv.jsonl")
    assert_same_decisions(ours, theirs, output_step(BUNDLED_SPEC))
    held = [r for r in ours if r["source"] == "fallback" and r["action"] != "idle"]
    assert held  # fallbacks repeated the last model action
