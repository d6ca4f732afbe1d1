"""``eval --engine ray`` on a real local Ray: the same results as ``--engine local``.

One Ray for the module (its start takes seconds): started here with two CPUs
and no dashboard, joined by the command line through ``--ray-address``, and by
the library directly; shut down at the end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import pytest

from conftest import run_cli
from replay_helpers import write_log, write_spec

from edge_infer.lab.eval.engines import Job, run_local, run_ray
from edge_infer.lab.eval.model import EvalOptions
from edge_infer.lab.eval.paths import expand
from edge_infer.testing.tflite_builder import dense_model

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_address():
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield context.address_info["address"]
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("ray")
    logs = root / "logs"
    logs.mkdir()
    for i in range(5):
        write_log(logs / f"unit{i}.csv", 300 + 150 * i, hz=10.0, seed=i)
    (logs / "garbage.csv").write_text("not,a\x00log\n")
    model = root / "m.tflite"
    model.write_bytes(dense_model(16, 3, 4, dtype="uint8", seed=3))
    return {"logs": logs, "spec": write_spec(root / "spec.toml", model, min_confidence=0.5)}


def without_timing(summary: Dict) -> Dict:
    skip = {"elapsed_s", "invoke_us", "engine", "workers", "batch_invoke_s", "decisions_file"}
    out = {k: v for k, v in summary.items() if k not in skip}
    out["per_log"] = [{k: v for k, v in log.items() if k not in skip} for log in summary["per_log"]]
    return out


def test_ray_engine_gives_the_local_results(ray_address: str, corpus: Dict[str, Path], tmp_path: Path) -> None:
    args = [str(corpus["logs"]), "--model", str(corpus["spec"]), "--json", "--batch", "64"]  # batch: measured otherwise
    local = run_cli("eval", *args, "--workers", "2")
    on_ray = run_cli("eval", *args, "--engine", "ray", "--ray-address", ray_address, "--workers", "2",
                     "--decisions-dir", str(tmp_path / "dd"))
    assert local.returncode == on_ray.returncode == 1  # the garbage log, named on one line
    assert [line for line in on_ray.stderr.splitlines() if "error: log" in line][0].count("garbage.csv") == 1
    local_summary, ray_summary = json.loads(local.stdout), json.loads(on_ray.stdout)
    assert ray_summary["engine"] == "ray" and ray_summary["workers"] == 2
    assert without_timing(ray_summary) == without_timing(local_summary)
    assert len(list((tmp_path / "dd").iterdir())) == 5  # the actors wrote each good log's decisions


def test_ray_engine_from_the_library_joins_the_running_ray(ray_address: str, corpus: Dict[str, Path]) -> None:
    logs = expand([str(corpus["logs"])])
    job = Job(options=EvalOptions(model=str(corpus["spec"]), batch=16))
    here = run_local(logs, job, workers=1)
    there = run_ray(logs, job, workers=2)
    assert ray.is_initialized()  # not started here, so not shut down here
    assert [r.name for r in there] == [r.name for r in here]
    for a, b in zip(here, there):
        assert (a.error, a.tally.to_dict(), a.tally.confusion, a.input_checks) == \
            (b.error, b.tally.to_dict(), b.tally.confusion, b.input_checks)
