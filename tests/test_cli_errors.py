"""Every bad input a user can give ends in one line on stderr and exit code 2 — never a traceback."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import BUNDLED_LOG, BUNDLED_SPEC, ROOT, run_cli


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edge-infer: error: ")
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def model_copy(tmp_path):
    """The bundled spec and model copied somewhere they may be damaged."""
    for name in ("basic_motions.toml", "basic_motions.tflite"):
        shutil.copy(BUNDLED_SPEC.parent / name, tmp_path / name)
    return tmp_path / "basic_motions.toml", tmp_path / "basic_motions.tflite"


def test_missing_model(tmp_path):
    assert_one_line_error(run_cli("replay", str(BUNDLED_LOG), "--model", str(tmp_path / "none.tflite")), "not found")


def test_not_a_tflite_file(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"this is not a flatbuffer at all")
    assert_one_line_error(run_cli("replay", str(BUNDLED_LOG), "--model", str(bad)), "not a TFLite flatbuffer")


def test_truncated_model(model_copy, tmp_path):
    _, model = model_copy
    short = tmp_path / "short.tflite"
    short.write_bytes(model.read_bytes()[: len(model.read_bytes()) // 2])
    assert_one_line_error(run_cli("replay", str(BUNDLED_LOG), "--model", str(short)), "cannot be loaded")


def test_hash_mismatch(model_copy):
    spec, model = model_copy
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    assert_one_line_error(run_cli("replay", str(BUNDLED_LOG), "--model", str(spec)), "sha256")


MINIMAL_SPEC = """
[model]
file = "basic_motions.tflite"
[input]
channels = {channels}
window = {window}
hop = 4
[output]
kind = "classes"
labels = {labels}
[fallback]
action = "idle"
"""
CHANNELS = ["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"]
LABELS = ["Standing", "Running", "Walking", "Badminton"]


@pytest.mark.parametrize("window,channels,labels,fragment", [
    (30, CHANNELS, LABELS, "[input].window is 30 but the model's input takes 32"),
    (32, CHANNELS[:5], LABELS, "names 5 channels but the model's input takes 6"),
    (32, CHANNELS, LABELS + ["extra"], "names 5 outputs but the model has 4"),
])
def test_spec_disagrees_with_model(model_copy, window, channels, labels, fragment):
    spec, _ = model_copy
    spec.write_text(MINIMAL_SPEC.format(window=window, channels=json.dumps(channels), labels=json.dumps(labels)))
    assert_one_line_error(run_cli("replay", str(BUNDLED_LOG), "--model", str(spec)), fragment)


def test_log_with_wrong_columns_for_a_bare_model(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("t,a,b\n" + "".join(f"{i / 10},1,2\n" for i in range(40)))
    model = BUNDLED_SPEC.parent / "basic_motions.tflite"
    assert_one_line_error(run_cli("replay", str(log), "--model", str(model)),
                          "has 2 channel columns", "takes 6 channels")


def test_log_missing_a_spec_channel(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("t,acc_x,acc_y\n0,1,2\n")
    assert_one_line_error(run_cli("replay", str(log)), "no column 'acc_z'")


def test_unparseable_row_in_strict_mode_names_the_line(tmp_path):
    lines = BUNDLED_LOG.read_text().splitlines()
    lines[5] = "0.4,oops,1,2,3,4,5,Standing"
    log = tmp_path / "log.csv"
    log.write_text("\n".join(lines) + "\n")
    assert_one_line_error(run_cli("replay", str(log), "--strict"), "line 6")


def test_bad_rows_are_skipped_and_reported_without_strict(tmp_path):
    lines = BUNDLED_LOG.read_text().splitlines()
    lines[5] = "0.4,oops,1,2,3,4,5,Standing"
    lines[9] = "0.8,1,2"
    log = tmp_path / "log.csv"
    log.write_text("\n".join(lines) + "\n")
    proc = run_cli("replay", str(log))
    assert proc.returncode == 0, proc.stderr
    assert "skipped 2 bad log rows (first at line 6)" in proc.stdout


def test_unknown_backend():
    assert_one_line_error(run_cli("replay", str(BUNDLED_LOG), "--backend", "onnx"), "unknown backend 'onnx'")


def test_missing_log(tmp_path):
    assert_one_line_error(run_cli("replay", str(tmp_path / "none.csv")), "cannot read log")


@pytest.mark.parametrize("args,fragment", [
    (["--budget-ms", "0"], "argument --budget-ms: must be a number greater than 0 and at most 86400000 (ms), not 0"),
    (["--speed", "fast"], "argument --speed: must be 'max' or a number at least 0.001 and at most 1000000, not 'fast'"),
    (["--duration", "-1"], "argument --duration: must be a number greater than 0 and at most 315360000 (s), not -1"),
    (["--fallback", ""], "argument --fallback: must name an action"),
    (["--hop", "x"], "argument --hop: must be a whole number at least 1 and at most 100000000, not 'x'"),
])
def test_bad_options_are_one_line_usage_errors(args, fragment):
    assert_one_line_error(run_cli("replay", str(BUNDLED_LOG), *args), fragment, "see 'edge-infer replay --help'")


@pytest.mark.parametrize("args", [["run"], ["replay", str(BUNDLED_LOG)]])
def test_reader_closing_the_pipe_ends_quietly(args, tmp_path):
    """``edge-infer ... --show all | head -1``: no BrokenPipeError traceback, not even from the shutdown decision.

    The full output (about 90 kB) is more than a pipe holds, so the CLI is still writing when the pipe closes.
    """
    stderr = tmp_path / "stderr"
    with stderr.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edge_infer", *args, "--show", "all"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=err, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert proc.stdout.readline().startswith(b"seq ")
        proc.stdout.close()
        assert proc.wait(timeout=300) == 0
    assert "Traceback" not in stderr.read_text()
