"""Bare .tflite models of other shapes and dtypes run through `replay`, with correct dequantized outputs.

The reference is the interpreter called directly, with quantization written
out here by hand, so a bug in edge-infer's conversion cannot hide in both.
"""

import json

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from conftest import read_jsonl, run_cli

from edge_infer.testing.tflite_builder import dense_model

CASES = [  # dtype, window, channels, outputs, hidden, hop
    ("int8", 16, 3, 5, None, None),
    ("uint8", 20, 2, 3, 8, 5),
    ("float32", 12, 4, 6, None, 3),
]


def write_log(path, n, channels, seed):
    rng = np.random.default_rng(seed)
    values = rng.uniform(-3, 3, size=(n, channels))
    header = "t," + ",".join(f"c{i}" for i in range(channels)) + ",label\n"
    rows = [f"{i / 50:.2f}," + ",".join(f"{v:.5f}" for v in row) + f",{i % 2}\n" for i, row in enumerate(values)]
    path.write_text(header + "".join(rows))
    return values.astype(np.float32)


def direct_outputs(model_bytes, windows):
    interpreter = Interpreter(model_content=model_bytes, num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    results = []
    for window in windows:
        x = window.reshape(inp["shape"])
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x.astype(np.float64) / scale) + zero, info.min, info.max)
        interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"]).reshape(-1).astype(np.float64)
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y - zero) * scale
        results.append(y)
    return np.array(results), out["quantization"][0]


@pytest.mark.parametrize("dtype,window,channels,outputs,hidden,hop", CASES)
def test_bare_model_replay_matches_the_interpreter(tmp_path, dtype, window, channels, outputs, hidden, hop):
    model_bytes = dense_model(window, channels, outputs, dtype=dtype, hidden=hidden, seed=7)
    model = tmp_path / f"m_{dtype}.tflite"
    model.write_bytes(model_bytes)
    values = write_log(tmp_path / "log.csv", 101, channels, seed=3)
    args = ["replay", str(tmp_path / "log.csv"), "--model", str(model), "--budget-ms", "5000",
            "--decisions", str(tmp_path / "d.jsonl"), "--json"]
    if hop:
        args += ["--hop", str(hop)]
    proc = run_cli(*args, check=True)
    summary = json.loads(proc.stdout)
    records = read_jsonl(tmp_path / "d.jsonl")

    step = hop or window
    ends = list(range(window - 1, 101, step))
    assert [r["seq"] for r in records] == ends
    assert summary["decisions"] == len(ends) and summary["fallback_decisions"] == 0
    expected, out_scale = direct_outputs(model_bytes, [values[e - window + 1:e + 1] for e in ends])
    got = np.array([r["output"] for r in records])
    tolerance = out_scale * 1.01 if dtype != "float32" else 1e-4  # float32 rounding of the log's 5 decimals
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)
    assert [r["action"] for r in records] == [int(np.argmax(r["output"])) for r in records]
    assert summary["accuracy"] is not None  # labels 0/1 compared with argmax indices


def test_bare_model_fallback_flag_sets_the_safe_action(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(dense_model(8, 2, 3, dtype="int8"))
    write_log(tmp_path / "log.csv", 30, 2, seed=1)
    # a budget no model can meet on any machine: every decision must be the fallback
    proc = run_cli("replay", str(tmp_path / "log.csv"), "--model", str(model), "--budget-ms", "0.000001",
                   "--fallback", "9", "--decisions", str(tmp_path / "d.jsonl"), "--json", check=True)
    records = read_jsonl(tmp_path / "d.jsonl")
    assert {(r["action"], r["source"]) for r in records} == {(9, "fallback")}
    # each window either timed out waiting (deadline) or found the model still on an earlier one (busy)
    reasons = json.loads(proc.stdout)["fallback_reasons"]
    assert set(reasons) <= {"deadline", "busy", "overrun"} and sum(reasons.values()) == len(records)
