"""``replay --baseline``: the comparison's numbers against the two models' own decision logs."""

import json
from collections import Counter

from conftest import read_jsonl, run_cli
from replay_helpers import CHANNELS, CLASSES, write_log, write_model

from edge_infer.decide.decision import Decision
from edge_infer.lab.compare import compare_runs, format_comparison
from edge_infer.sinks.collect import CollectSink
from edge_infer.testing.tflite_builder import dense_model

OPTIONS = ["--hop", "4", "--budget-ms", "5000"]


def test_baseline_numbers_match_the_two_decision_logs(tmp_path):
    write_log(tmp_path / "log.csv", 1500)
    new, old = write_model(tmp_path / "new.tflite", seed=3), write_model(tmp_path / "old.tflite", seed=11)
    proc = run_cli("replay", str(tmp_path / "log.csv"), "--model", str(new), "--baseline", str(old), *OPTIONS,
                   "--decisions", str(tmp_path / "new.jsonl"), "--json", check=True)
    summary = json.loads(proc.stdout)
    comparison = summary["baseline"]
    alone = run_cli("replay", str(tmp_path / "log.csv"), "--model", str(old), *OPTIONS,
                    "--decisions", str(tmp_path / "old.jsonl"), "--json", check=True)
    new_records, old_records = read_jsonl(tmp_path / "new.jsonl"), read_jsonl(tmp_path / "old.jsonl")

    assert [r["seq"] for r in new_records] == [r["seq"] for r in old_records]
    differ = [a["seq"] for a, b in zip(new_records, old_records) if a["action"] != b["action"]]
    assert 0 < len(differ) < len(new_records)  # the models truly disagree, on some windows only
    assert comparison["compared_windows"] == len(new_records)
    assert comparison["disagreements"] == len(differ)
    assert comparison["first_disagreements"] == differ[:10]
    assert comparison["disagreement_rate"] == round(len(differ) / len(new_records), 4)
    pairs = Counter((str(a["action"]), str(b["action"])) for a, b in zip(new_records, old_records))
    assert {(a, b): n for a, row in comparison["matrix"].items() for b, n in row.items()} == dict(pairs)
    assert comparison["only_new_windows"] == comparison["only_baseline_windows"] == 0
    old_summary = json.loads(alone.stdout)
    assert comparison["model"] == "old" and comparison["summary"]["accuracy"] == old_summary["accuracy"]
    assert comparison["summary"]["decisions"] == old_summary["decisions"]
    assert summary["accuracy"] != old_summary["accuracy"]  # what the side-by-side is for

    human = run_cli("replay", str(tmp_path / "log.csv"), "--model", str(new), "--baseline", str(old), *OPTIONS,
                    "--show", "none", check=True)  # a report: exit 0 even though they disagree
    assert f"compared with baseline old on {len(new_records)} windows: {len(differ)} disagree" in human.stdout
    assert f"first at seq {', '.join(map(str, differ[:10]))}" in human.stdout
    assert f"accuracy            {summary['accuracy']:g}" in human.stdout


def test_models_with_different_windows_are_compared_where_both_decided(tmp_path):
    write_log(tmp_path / "log.csv", 200)
    new = write_model(tmp_path / "new.tflite", seed=3)  # window 16: decides at seq 15, 19, ...
    old = tmp_path / "old.tflite"
    old.write_bytes(dense_model(8, CHANNELS, CLASSES, seed=5))  # window 8: at seq 7, 11, 15, ...
    proc = run_cli("replay", str(tmp_path / "log.csv"), "--model", str(new), "--baseline", str(old), *OPTIONS,
                   "--json", check=True)
    comparison = json.loads(proc.stdout)["baseline"]
    assert comparison["compared_windows"] == len(range(15, 200, 4))
    assert comparison["only_baseline_windows"] == 2 and comparison["only_new_windows"] == 0


def _run(actions, start=0):
    run = CollectSink()
    for i, action in enumerate(actions):
        run.on_decision(Decision(seq=start + 2 * i, t=i, action=action, source="model", reason=None,
                                 latency_us=1.0, invoke_us=1.0, output=None, label=None))
    return run


def test_the_matrix_and_the_human_block():
    new = _run(["walk", "walk", "run", "idle", "walk"])  # seq 0, 2, 4, 6, 8
    old = _run(["run", "run", "run", "walk"], start=2)  # seq 2, 4, 6, 8
    comparison = compare_runs(new, old, {"model": "old", "accuracy": None})
    assert comparison["compared_windows"] == 4 and comparison["only_new_windows"] == 1
    assert comparison["disagreements"] == 2 and comparison["first_disagreements"] == [2, 6]
    assert comparison["matrix"] == {"idle": {"run": 1}, "run": {"run": 1}, "walk": {"run": 1, "walk": 1}}
    text = format_comparison(comparison, {"model": "new", "accuracy": None})
    assert "2 disagree (50.0%)" in text and "walk -> run: 1" in text and "idle -> run: 1" in text
    assert "run -> run" not in text  # agreements are not disagreements
