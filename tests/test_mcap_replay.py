"""Recording and replaying MCAP through the command line: same decisions as CSV, crash safety, record, convert."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import BUNDLED_LOG, BUNDLED_SPEC, ROOT, read_jsonl, run_cli
from replay_helpers import timing_free, write_log, write_model

from edge_infer.io import read_log
from edge_infer.io.mcap_log import read_mcap
from edge_infer.sinks.recorder import part_path


def replay_decisions(tmp_path, log, model_args, name):
    out = tmp_path / f"{name}.jsonl"
    run_cli("replay", str(log), *model_args, "--decisions", str(out), "--json", check=True)
    return read_jsonl(out)


def bundled_case(tmp_path):
    if not BUNDLED_SPEC.exists():
        pytest.skip("the bundled model is not in this checkout yet")
    return BUNDLED_LOG, ["--budget-ms", "5000"]  # decisions that depend on the data only, not on the load


def builder_case(tmp_path):
    write_log(tmp_path / "log.csv", 1500)
    return tmp_path / "log.csv", ["--model", str(write_model(tmp_path / "m.tflite", seed=3)), "--hop", "4",
                                  "--budget-ms", "5000"]


@pytest.mark.parametrize("case", [bundled_case, builder_case], ids=["bundled", "builder"])
def test_replaying_the_mcap_conversion_gives_the_csv_decisions(tmp_path, case):
    log, model_args = case(tmp_path)
    run_cli("convert", str(log), str(tmp_path / "log.mcap"), check=True)
    from_csv = replay_decisions(tmp_path, log, model_args, "csv")
    from_mcap = replay_decisions(tmp_path, tmp_path / "log.mcap", model_args, "mcap")
    assert len(from_csv) > 10
    assert timing_free(from_mcap) == timing_free(from_csv)


def test_run_record_holds_the_frames_and_decisions_it_saw(tmp_path):
    log, model_args = builder_case(tmp_path)
    proc = run_cli("run", "--source", str(log), *model_args, "--record", str(tmp_path / "r.mcap"),
                   "--decisions", str(tmp_path / "d.jsonl"), "--json", check=True)
    recording = read_mcap(tmp_path / "r.mcap")
    original = read_log(log)
    assert recording.cut_off is None
    np.testing.assert_array_equal(recording.frames.values, original.values)
    np.testing.assert_array_equal(recording.frames.t, original.t)
    assert recording.frames.labels == original.labels
    assert timing_free([r for _, r in recording.decisions]) == timing_free(read_jsonl(tmp_path / "d.jsonl"))
    meta = recording.metadata["edge_infer"]
    assert meta["model_sha256"] == json.loads(run_cli("inspect", model_args[1], "--json", check=True).stdout)["sha256"]
    assert meta["window"] == "16" and meta["hop"] == "4" and json.loads(meta["channels"]) == ["c0", "c1", "c2"]
    assert json.loads(proc.stdout)["frames"] == len(original)
    # the recording replays to the same decisions
    again = replay_decisions(tmp_path, tmp_path / "r.mcap", model_args, "again")
    assert timing_free(again) == timing_free(read_jsonl(tmp_path / "d.jsonl"))


def test_a_recording_killed_mid_write_is_readable_up_to_about_its_last_second(tmp_path):
    hz = 50.0
    log = tmp_path / "log.csv"
    write_log(log, 3000, hz=hz)  # a minute in real time: it is killed long before the end
    model = write_model(tmp_path / "m.tflite", seed=3)
    recording = tmp_path / "killed.mcap"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "edge_infer", "run", "--source", str(log), "--model", str(model),
                             "--hop", "4", "--budget-ms", "5000", "--speed", "1", "--record", str(recording),
                             "--show", "none"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120  # start-up on a busy machine: generous
        while time.monotonic() < deadline and not _has_frames(recording):
            assert proc.poll() is None, "the run ended before it was killed"
            time.sleep(0.1)
        assert _has_frames(recording), "no frames recorded within the safety timeout"
        time.sleep(2.5)
        killed_ns = time.time_ns()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    result = read_mcap(recording)
    assert result.cut_off is not None  # no footer: it really was cut off
    t = read_log(log).t
    # when each frame was due (log pacing against the first frame's receipt, on the recording's own clock)
    due_ns = result.frame_log_ns[0] + ((t - t[0]) * 1e9).astype(np.int64)
    expected = int((due_ns <= killed_ns - 2_000_000_000).sum())  # received 2 s before the kill: flushed by then
    assert expected >= hz  # the check is not empty: at least a second of frames
    assert expected <= len(result.frames) < len(t)
    np.testing.assert_array_equal(result.frames.t, t[:len(result.frames)])
    assert result.decisions and result.decisions[-1][1]["seq"] <= len(result.frames) - 1


def _has_frames(path):
    try:
        return path.exists() and len(read_mcap(path).frames) > 0
    except Exception:  # the header is still being written
        return False


def test_record_command_records_a_source_and_rotates(tmp_path):
    write_log(tmp_path / "log.csv", 1200)
    proc = run_cli("record", "--source", str(tmp_path / "log.csv"), "--out", str(tmp_path / "r.mcap"), "--json",
                   check=True)
    result = json.loads(proc.stdout)
    assert result["frames"] == 1200 and result["files"] == [str(tmp_path / "r.mcap")]
    original = read_log(tmp_path / "log.csv")
    recording = read_mcap(tmp_path / "r.mcap")
    np.testing.assert_array_equal(recording.frames.values, original.values)
    assert recording.decisions == [] and recording.metadata["edge_infer"]["source"] == str(tmp_path / "log.csv")

    # rotation: paced a little faster than real time so that the flush thread closes chunks and parts
    proc = run_cli("record", "--source", str(tmp_path / "log.csv"), "--out", str(tmp_path / "p.mcap"), "--speed", "8",
                   "--record-max-mb", "0.004", "--json", check=True)
    files = json.loads(proc.stdout)["files"]
    assert len(files) >= 2 and files == [str(part_path(tmp_path / "p.mcap", i)) for i in range(1, len(files) + 1)]
    parts = [read_mcap(f) for f in files]
    np.testing.assert_array_equal(np.concatenate([p.frames.values for p in parts]), original.values)


@pytest.mark.parametrize("args,message", [
    (["replay", "{csv_as_mcap}"], "not an MCAP file"),
    (["convert", "{log}", "{tmp}/same.csv"], "nothing to convert"),
    (["convert", "{log}", "{tmp}/x.txt"], "unknown format"),
    (["run", "--source", "{log}", "--model", "{model}", "--record", "{tmp}/x.csv"], "name it with the .mcap suffix"),
    (["record", "--source", "{log}", "--out", "{tmp}/no/such/dir/x.mcap"], "cannot write recording"),
    (["record", "--source", "{log}", "--out", "{tmp}/x.mcap", "--record-max-mb", "0"], "greater than 0"),
])
def test_bad_recording_input_is_one_line_and_exit_2(tmp_path, args, message):
    write_log(tmp_path / "log.csv", 50)
    (tmp_path / "csv.mcap").write_text((tmp_path / "log.csv").read_text())
    names = {"log": tmp_path / "log.csv", "tmp": tmp_path, "csv_as_mcap": tmp_path / "csv.mcap",
             "model": write_model(tmp_path / "m.tflite", seed=1)}
    proc = run_cli(*[a.format(**names) for a in args])
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("edge-infer")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


def test_without_the_mcap_package_the_message_says_what_to_install(tmp_path):
    blocker = tmp_path / "blocker" / "mcap"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('mcap is not installed')\n")
    write_log(tmp_path / "log.csv", 50)
    proc = run_cli("convert", str(tmp_path / "log.csv"), str(tmp_path / "x.mcap"),
                   env={"PYTHONPATH": f"{tmp_path / 'blocker'}{os.pathsep}{ROOT}"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("edge-infer: error: MCAP recordings need the 'mcap' package: "
                                   "pip install mcap (the 'record' extra)")


def test_record_from_a_serial_device_keeps_its_hello_and_every_frame(tmp_path):
    """``record --source serial:...`` against the simulated device on a real pty."""
    import serial_helpers  # noqa: F401 - puts the firmware_bridge test helpers (fb_helpers) on the path
    from fb_helpers import CHANNELS, log_values, start_sim
    from fb_helpers import write_log as write_device_log

    rows = 40
    log = write_device_log(tmp_path / "device.csv", rows)
    link = tmp_path / "dev"
    sim = start_sim(log, link, "--speed", "5", "--wait-host", "--linger", "600")
    out = tmp_path / "device.mcap"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "edge_infer", "record", "--source", f"serial:{link}", "--out",
                             str(out), "--json"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120  # a safety net: the device needs 40 / 50 s here
        while time.monotonic() < deadline and not (_has_frames(out) and len(read_mcap(out).frames) >= rows):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        for p in (proc, sim):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert proc.returncode == 0, stderr
    assert json.loads(stdout)["frames"] >= rows
    recording = read_mcap(out)
    assert recording.cut_off is None  # SIGTERM closes the file properly
    assert recording.frames.channels == list(CHANNELS)
    np.testing.assert_array_equal(recording.frames.values[:rows], np.array(log_values(rows), dtype=np.float32))
    hello = recording.hellos[0][2]
    assert hello["channels"] == list(CHANNELS) and hello["sample_type"] == "float32"
    assert len(hello["scales"]) == len(CHANNELS) and "fw_version" in hello
    assert recording.metadata["edge_infer"]["source"] == f"serial:{link}"
