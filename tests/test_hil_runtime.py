"""Software- and hardware-in-the-loop: the real runtime against a device over a real serial link.

The devices: the Python virtual device (``python -m firmware_bridge.sim``)
on a pty; ``sim_device``, compiled here with gcc from the C reference
(``firmware_bridge/c``), so the device-side protocol code itself talks to the
host; and a real board when ``EDGE_INFER_HIL_PORT`` names its port
(scripts/flash_board.md; skipped otherwise). The host is ``python -m
edge_infer run --source serial:PORT`` as a user runs it, or the same Runtime
in-process where the test must see every frame.

Nothing here asserts on time: runs are stopped by a signal once the decision
log shows what the test waits for, and every wait is a generous safety net.
Each device prints what it received, so the checks compare both ends' counts.
"""

from __future__ import annotations

import signal

import numpy as np
import pytest
from fb_helpers import c_build_dir, finish, hil_board, log_values, sim_device_exe, start_sim, write_log  # noqa: F401,F811  (fixtures)
from serial_helpers import CHANNELS, WINDOW, CDevice, LiveRun, RuntimeProcess, seeded_faults, wait_for, write_spec

from edge_infer.model.loader import open_model

ROWS = 3000  # longer than any run here: the devices never run out of log before the host stops
BOARD = hil_board()


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    return write_log(tmp_path_factory.mktemp("log") / "log.csv", ROWS)


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return write_spec(tmp_path_factory.mktemp("spec"), BOARD.channels if BOARD else CHANNELS)


class Device:
    """One device under test: its source URI, and (if it can tell) what it received."""

    def __init__(self, kind: str, tmp_path, log, exe):
        self.kind, self.sim, self.c = kind, None, None
        link = tmp_path / "dev"
        if kind == "python-sim":
            self.sim = start_sim(log, link, "--speed", "5", "--wait-host", "--linger", "600")
            self.uri = f"serial:{link}"
        elif kind == "c-device":
            self.c = CDevice(exe, log, link, "--speed", "5", "--linger", "600")
            self.uri = f"serial:{link}"
        else:
            self.uri = f"serial:{BOARD.port}?baud={BOARD.baud}"

    def summary(self):
        """Stop the device and return its JSON summary; None for a board."""
        if self.sim is not None:
            self.sim.send_signal(signal.SIGTERM)
            return finish(self.sim)
        if self.c is not None:
            return self.c.summary()
        return None

    def close(self):
        if self.sim is not None and self.sim.poll() is None:
            self.sim.kill()
            self.sim.communicate()
        if self.c is not None:
            self.c.close()


@pytest.mark.parametrize("kind, stop", [
    pytest.param("python-sim", signal.SIGINT, id="python-sim-SIGINT"),
    pytest.param("c-device", signal.SIGTERM, id="c-device-SIGTERM"),
    pytest.param("board", signal.SIGINT, id="board-SIGINT",
                 marks=pytest.mark.skipif(BOARD is None, reason="no board: set EDGE_INFER_HIL_PORT")),
])
def test_run_decides_from_the_link_and_the_device_gets_one_action_per_decision(kind, stop, spec, log, tmp_path,
                                                                                request):
    exe = request.getfixturevalue("sim_device_exe") if kind == "c-device" else None
    device = Device(kind, tmp_path, log, exe)
    run = None
    try:
        run = RuntimeProcess(device.uri, spec, tmp_path / "decisions.jsonl", "--warmup", "2", "--no-data-ms", "0")
        run.wait_for(lambda records: sum(r["source"] == "model" for r in records) >= 10, "10 model decisions")
        summary = run.stop(stop)
        device_summary = device.summary()
    finally:
        if run is not None:
            run.kill()
        device.close()

    src = summary["source"]
    records = run.records()
    assert summary["decisions"] == len(records) and summary["model_decisions"] >= 10
    assert records[-1]["reason"] == "shutdown" and summary["fallback_reasons"]["shutdown"] == 1
    # a frame can arrive after the loop took its last one: the reader counts it as unread, never lost silently
    assert summary["frames"] + src["unread_frames"] == src["sensor_frames"] and src["hellos"] >= 1
    assert src["actions_sent"] == summary["decisions"] and src["actions_unsent"] == 0
    assert src["crc_errors"] + src["cobs_errors"] <= 1  # at most a fragment caught when the port opened
    assert src["disconnects"] == 0 and src["low_latency"] is not None
    if device_summary is None:
        return
    assert device_summary["actions_received"] == summary["decisions"]
    assert device_summary["actions_bad"] == 0
    assert device_summary["action_sources"] == {"model": summary["model_decisions"],
                                                "fallback": summary["fallback_decisions"]}
    assert device_summary["action_reasons"]["shutdown"] == 1
    assert device_summary["actions_safe"] >= 1  # the shutdown action: -1, the device's own safe state
    assert device_summary["heartbeats_received"] == src["heartbeats_sent"]
    assert device_summary["link"]["frames"] == src["actions_sent"] + src["heartbeats_sent"]
    assert device_summary["link"]["crc_errors"] == 0 and device_summary["link"]["seq_gaps"] == 0


def test_duration_ends_the_run_with_the_summary_and_every_decision_answered(spec, log, tmp_path, sim_device_exe):
    device = Device("c-device", tmp_path, log, sim_device_exe)
    try:
        run = RuntimeProcess(device.uri, spec, tmp_path / "decisions.jsonl", "--warmup", "2", "--no-data-ms", "0",
                             "--duration", "4")
        summary = run.finish()
        device_summary = device.summary()
    finally:
        device.close()
    assert summary["elapsed_s"] >= 4 and summary["decisions"] == len(run.records())
    assert device_summary["actions_received"] == summary["decisions"] == summary["source"]["actions_sent"]
    assert device_summary["actions_bad"] == 0


@pytest.mark.parametrize("kind", ["python-sim", "c-device"])
def test_a_noisy_line_is_survived_every_damaged_frame_is_rejected_and_decisions_continue(kind, spec, log, tmp_path,
                                                                                         request):
    """Bit flips, lost bytes and noise bursts on the device-to-host line (the sim's own faults; a fault relay
    in front of the C device). The runtime runs in-process so that every frame it took can be checked."""
    link = tmp_path / "dev"
    fault_args = ("--corrupt", "0.003", "--drop", "0.002", "--garbage", "0.03", "--seed", "11")
    if kind == "python-sim":
        sim, c = start_sim(log, link, "--speed", "10", "--wait-host", "--linger", "600", *fault_args), None
    else:
        sim, c = None, CDevice(request.getfixturevalue("sim_device_exe"), log, link, "--speed", "10", "--linger", "600",
                               faults=seeded_faults(11, corrupt=0.003, drop=0.002, garbage=0.03))
    run = None
    try:
        run = LiveRun(open_model(str(spec)), link, no_data_ms=0)
        wait_for(lambda: run.model_decisions() >= 40 and run.source.counters()["resyncs"] >= 3,
                 "40 model decisions through at least 3 recoveries", 4 * 30)
        summary = run.finish()
        if sim is not None:
            sim.send_signal(signal.SIGTERM)
            device_summary = finish(sim)
        else:
            device_summary = c.summary()
    finally:
        if run is not None and run.summary is None:
            run.finish()
        if sim is not None and sim.poll() is None:
            sim.kill()
        if c is not None:
            c.close()

    src = summary["source"]
    rejected = sum(src[k] for k in ("crc_errors", "cobs_errors", "oversize", "bad_length", "bad_value",
                                    "bad_version", "unknown_type"))
    assert rejected >= 3 and src["seq_gaps"] >= 1 and src["resyncs"] >= 3
    # every frame the loop took is exactly a row of the log: nothing damaged got through
    t = run.collect.column("frame_t")
    values = run.collect.frame_matrix()
    rows = np.rint(t * 10).astype(int)
    expected = np.array(log_values(ROWS), dtype=np.float32)[rows]
    assert len(values) == summary["frames"] >= 4 * WINDOW and np.array_equal(values, expected)
    # frames were lost (gaps in the rows), and the loop kept deciding on the frames that came after
    first_gap = int(np.argmax(np.diff(rows) > 1))
    assert np.diff(rows).max() > 1 and np.all(np.diff(rows) >= 1)
    decided = run.collect.column("seq")[~run.collect.column("fallback").astype(bool)]
    assert (decided > first_gap + WINDOW).sum() >= 10
    # the host-to-device direction is clean: every ACTION written arrived and was usable
    assert device_summary["actions_received"] == src["actions_sent"] == summary["decisions"]
    assert device_summary["actions_bad"] == 0


def test_pulling_the_link_is_survived_counted_and_the_run_resumes(spec, log, tmp_path):
    link = tmp_path / "dev"
    sim = start_sim(log, link, "--speed", "5", "--wait-host", "--linger", "600", "--unplug-after", "1.5",
                    "--unplug-for", "1.5")
    run = None
    try:
        run = RuntimeProcess(f"serial:{link}", spec, tmp_path / "decisions.jsonl", "--warmup", "2", "--no-data-ms", "300")

        def resumed(records):
            reasons = [r["reason"] for r in records]
            return "no_data" in reasons and None in reasons[reasons.index("no_data"):]

        run.wait_for(resumed, "no_data while unplugged, then model decisions again")
        run.wait_for(lambda records: sum(r["source"] == "model" for r in records[records.index(
            next(r for r in records if r["reason"] == "no_data")):]) >= 5, "5 model decisions after the replug")
        summary = run.stop(signal.SIGINT)
        sim.send_signal(signal.SIGTERM)
        device_summary = finish(sim)
    finally:
        if run is not None:
            run.kill()
        if sim.poll() is None:
            sim.kill()
            sim.communicate()

    src = summary["source"]
    assert device_summary["unplugs"] == 1
    assert src["disconnects"] == 1 and src["reconnects"] == 1 and src["disconnected_ms"] > 0
    assert summary["fallback_reasons"]["no_data"] >= 1
    assert summary["decisions"] == src["actions_sent"] + src["actions_unsent"] and src["actions_unsent"] >= 1
    # no ACTION answered a frame from before the device's reboot; every one sent arrived
    assert device_summary["actions_received"] == src["actions_sent"] and device_summary["actions_bad"] == 0
    assert "lost" in run.stderr and "is back after" in run.stderr


def test_a_device_with_other_channels_is_refused_with_one_error_line_and_gets_no_action(spec, tmp_path):
    other = write_log(tmp_path / "other.csv", 50, channels=("a", "b", "c", "d", "e", "f"))
    link = tmp_path / "dev"
    sim = start_sim(other, link, "--speed", "5", "--wait-host", "--linger", "600")
    try:
        run = RuntimeProcess(f"serial:{link}", spec, tmp_path / "decisions.jsonl", "--warmup", "2", "--log-level", "warning")
        out, err = run.proc.communicate(timeout=120)
        sim.send_signal(signal.SIGTERM)
        device_summary = finish(sim)
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.communicate()
    assert run.proc.returncode == 2 and out == "" and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("edge-infer: error:")]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1]
    assert "device schema does not match the model" in errors[0] and "[a,b,c,d,e,f]" in errors[0]
    assert ",".join(CHANNELS) in errors[0]
    assert device_summary["actions_received"] == 0
