"""Several streams in one runtime, publishing through one MQTT client to a real Mosquitto (docs/fleet.md, "Several
streams on one board"): each decision record names its stream, a failed or unplugged device shows in the states
and in ``fleet watch``, nothing is lost through a broker outage, and control commands reach one stream or all.

The streams are paced copies of a small log and virtual devices on ptys (``firmware_bridge.sim``), run by
``edge-infer run`` as a user runs it; no assertion depends on how fast anything runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
from conftest import ROOT, read_jsonl, run_cli
from mqtt_helpers import Broker, Collector
from replay_helpers import timing_free
from serial_helpers import write_spec  # puts fb_helpers on the path

from fb_helpers import start_sim, write_log  # noqa: E402  (isort: after serial_helpers)

KEY = b"0123456789abcdef0123456789abcdef"
DEVICE = "board"


@pytest.fixture
def broker(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    yield broker
    broker.stop()


def start(tmp_path: Path, url: str, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "edge_infer", "run", *args, "--mqtt", url, "--device-id", DEVICE,
               "--spool", str(tmp_path / "spool"), "--show", "none", "--json", "--mqtt-drain-timeout", "5"]
    return subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> "tuple[dict, str]":
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out), err


def by_stream(records: List[dict]) -> Dict[str, List[dict]]:
    out: Dict[str, List[dict]] = {}
    for record in records:
        out.setdefault(record["stream"], []).append(record)
    return out


def states_heard(sub: Collector) -> Dict[str, str]:
    """Every stream's last state, from the stream_state events."""
    states: Dict[str, str] = {}
    for event in sub.events(DEVICE):
        if event["event"] == "stream_state":
            states.update(event["streams"])
    return states


def test_streams_publish_through_one_client_and_a_failed_or_unplugged_device_shows(tmp_path, broker):
    """Two paced logs, a device whose schema does not match the model and a device unplugged for good, in one
    runtime: one MQTT connection; every stream's records arrive with its name, as its decision log has them;
    the failed stream's state, the unplugged stream's no_data and their bursts are published and watched."""
    spec = write_spec(tmp_path)
    log = write_log(tmp_path / "motor.csv", 600)
    other = write_log(tmp_path / "other.csv", 600, channels=("a", "b", "c", "d", "e", "f"))
    wrong, gone = tmp_path / "wrong", tmp_path / "gone"
    sims = [start_sim(other, wrong, "--speed", "4", "--wait-host"),
            start_sim(log, gone, "--speed", "4", "--wait-host", "--unplug-after", "2", "--unplug-for", "600")]
    sub = Collector(broker.port)
    shared = tmp_path / "decisions.jsonl"
    proc = start(tmp_path, broker.url, "--source", str(log), "--source", str(log), "--source", f"serial:{wrong}",
                 "--source", f"serial:{gone}", "--model", str(spec), "--speed", "10", "--no-data-ms", "1000",
                 "--decisions", str(shared))
    names = [str(log), f"{log}#2", f"serial:{wrong}", f"serial:{gone}"]
    try:
        def seen() -> bool:
            states = states_heard(sub)
            gone_no_data = [r for r in sub.decision_records(DEVICE)
                            if r["stream"] == names[3] and r["reason"] == "no_data"]
            return states.get(names[0]) == states.get(names[1]) == "ended" and \
                states.get(names[2], "").startswith("failed: device schema does not match") and len(gone_no_data) >= 3
        assert sub.wait_for(seen, timeout=60), (states_heard(sub), proc.poll())
        watch = run_cli("fleet", "watch", "--mqtt", broker.url, "--once", "--duration", "1.5", "--json")
        table = run_cli("fleet", "watch", "--mqtt", broker.url, "--once", "--duration", "1.5")
        proc.send_signal(signal.SIGINT)
        summary, err = finish(proc)
    finally:
        proc.kill()
        for sim in sims:
            sim.kill()
            sim.communicate()
    # one board, one client: Mosquitto saw one connection of edge-infer-board
    connects = [line for line in broker.log.read_text().splitlines() if "New client connected" in line
                and f"as edge-infer-{DEVICE} " in line]
    assert len(connects) == 1, connects
    # every stream's records, in its order, as the shared decision log has them
    local = by_stream(read_jsonl(shared))
    assert sub.wait_for(lambda: len(sub.decision_records(DEVICE)) >= sum(map(len, local.values())))
    published = by_stream(sub.decision_records(DEVICE))
    assert set(published) == set(local) == set(names)
    for name in names:
        assert timing_free(published[name]) == timing_free(local[name]), name
    # the paced logs are decided by the model; four streams in one loop on a loaded machine may let a newer window
    # take the odd one over (overrun), never anything else
    logs = published[names[0]] + published[names[1]]
    assert sum(r["source"] == "model" for r in logs) > 0.9 * len(logs)
    assert {r["reason"] for r in logs if r["source"] == "fallback"} <= {"overrun"}
    assert published[names[2]] and {r["reason"] for r in published[names[2]]} <= {"no_data", "shutdown"}
    # the start event lists the streams; the final summary has each one's state
    start_event = next(e for e in sub.events(DEVICE) if e["event"] == "start")
    assert [s["stream"] for s in start_event["streams"]] == names
    assert set(start_event["thresholds"]) == set(names)
    final = sub.bodies(DEVICE, "summary")[-1]
    assert final["final"] and final["mqtt"]["dropped"] == 0
    states = [s["state"] for s in final["summary"]["streams"]]
    assert states[:2] == ["ended", "ended"] and states[2].startswith("failed: device schema") and states[3] == "running"
    assert [s["state"] for s in summary["streams"]] == states
    # a burst is a stream's: the two silent devices have one each, the logs none
    bursts = [e for e in sub.events(DEVICE) if e["event"] == "fallback_burst" and e["state"] == "start"]
    assert sorted(e["stream"] for e in bursts) == sorted(names[2:]), bursts
    # (the last windows before the unplug may add a reason of their own to the burst's count; no_data is there)
    assert all("no_data" in e["reasons"] for e in bursts), bursts
    # fleet watch: the board, and under it its four streams with their states
    assert watch.returncode == 0, watch.stderr
    row = {r["device"]: r for r in json.loads(watch.stdout)}[DEVICE]
    assert row["status"] == "online" and [s["stream"] for s in row["streams"]] == names
    watched = {s["stream"]: s for s in row["streams"]}
    assert watched[names[0]]["state"] == "ended" and watched[names[2]]["state"].startswith("failed: device schema")
    assert watched[names[3]]["state"] == "running" and watched[names[3]]["fallback_rate"] == 1.0
    assert watched[names[3]]["top_reasons"] == {"no_data": watched[names[3]]["top_reasons"]["no_data"]}
    lines = table.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(DEVICE))
    assert [line.split()[0] for line in lines[at + 1:at + 5]] == names
    assert lines[at + 3].split()[1:3] == ["failed:", "device"] and lines[at + 4].split()[1] == "running"
    assert "stream state" in err


def test_broker_stopped_for_5_s_with_several_streams_every_decision_still_arrives(tmp_path, broker):
    spec = write_spec(tmp_path)
    log = write_log(tmp_path / "motor.csv", 800)
    config = tmp_path / "config.toml"
    config.write_text(f'[model]\nspec = "{spec}"\n[source]\nspeed = 4\n[sinks]\ndecisions = "all.jsonl"\n'
                      + "".join(f'[[stream]]\nname = "m{i}"\nsource = "{log}"\n' for i in range(3)))
    sub = Collector(broker.port)
    proc = start(tmp_path, broker.url, "--config", str(config))
    assert sub.wait_for(lambda: len(by_stream(sub.decision_records(DEVICE))) == 3), "no decisions before the outage"
    broker.stop()
    time.sleep(5)
    broker.start()
    assert proc.poll() is None, "the run ended while the broker was down (machine too slow for this test)"
    summary, err = finish(proc)
    local = read_jsonl(tmp_path / "all.jsonl")
    assert len(local) == summary["decisions"] == 3 * 197
    assert sub.wait_for(lambda: len(sub.decision_records(DEVICE)) >= len(local), timeout=30), \
        f"{len(sub.decision_records(DEVICE))} of {len(local)} arrived"
    published, mine = by_stream(sub.decision_records(DEVICE)), by_stream(local)
    for name in ("m0", "m1", "m2"):  # all of them, each stream in its order, repeats dropped
        assert timing_free(published[name]) == timing_free(mine[name]), name
    events = sub.events(DEVICE)
    reconnected = [e for e in events if e["event"] == "connected" and e["connections"] == 2]
    assert reconnected and reconnected[0]["offline_s"] >= 4.0 and "disconnected" in [e["event"] for e in events]
    assert "spooling to" in err


def control(url: str, key: Path, *args: str) -> "tuple[int, dict]":
    proc = run_cli("fleet", "control", "--mqtt", url, "--device-id", DEVICE, "--key-file", str(key), "--timeout", "15",
                   *args)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout.splitlines()[0])


def test_control_sets_one_streams_threshold_or_every_streams_and_records_one_stream(tmp_path, broker):
    spec = write_spec(tmp_path)
    log = write_log(tmp_path / "motor.csv", 3000)
    key = tmp_path / "control.key"
    key.write_bytes(KEY + b"\n")
    key.chmod(0o600)
    config = tmp_path / "config.toml"
    config.write_text(f'[model]\nspec = "{spec}"\n[source]\nspeed = 4\n[sinks]\ndecisions = "all.jsonl"\n'
                      f'[fleet]\ncontrol_key_file = "{key}"\nremote_recordings = "remote"\n'
                      + "".join(f'[[stream]]\nname = "m{i}"\nsource = "{log}"\n' for i in range(3)))
    sub = Collector(broker.port)
    proc = start(tmp_path, broker.url, "--config", str(config))
    try:
        assert sub.wait_for(lambda: len(by_stream(sub.decision_records(DEVICE))) == 3)
        code, answer = control(broker.url, key, "--stream", "m1", "--set", "min_confidence=1.0")
        assert code == 0, answer
        assert answer["answer"]["stream"] == "m1" and answer["answer"]["thresholds"] == \
            {"m1": {"min_confidence": 1.0, "ood_threshold": None}}
        assert set(answer["answer"]["after_seq"]) == {"m1"}
        code, answer = control(broker.url, key, "--stream", "m9", "--set", "min_confidence=0.5")
        assert code == 1 and answer["answer"]["refused"].startswith("no stream 'm9' on this board")
        code, answer = control(broker.url, key, "--set", "ood_threshold=3")
        assert code == 1 and "has no ood_threshold" in answer["answer"]["refused"]
        code, answer = control(broker.url, key, "--recording", "start")
        assert code == 1 and "name it" in answer["answer"]["refused"]
        code, answer = control(broker.url, key, "--stream", "m2", "--recording", "start")
        assert code == 0 and answer["answer"]["recording_state"] == "started" and "-m2-" in answer["answer"]["path"]
        time.sleep(1.5)
        code, answer = control(broker.url, key, "--stream", "m2", "--recording", "stop")
        assert code == 0 and answer["answer"]["recording_state"] == "stopped"
        recording = Path(answer["answer"]["paths"][0])
        code, answer = control(broker.url, key, "--set", "min_confidence=1.0")  # every stream
        assert code == 0 and set(answer["answer"]["thresholds"]) == {"m0", "m1", "m2"}
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        finish(proc)
    finally:
        proc.kill()
    from edge_infer.io import read_log
    assert recording.parent == tmp_path / "remote" and len(read_log(str(recording))) > 5
    local = read_jsonl(tmp_path / "all.jsonl")
    assert sub.wait_for(lambda: len(sub.decision_records(DEVICE)) >= len(local))
    published = by_stream(sub.decision_records(DEVICE))

    def marked(records: List[dict], what: str) -> List[int]:
        return [i for i, r in enumerate(records) if any(what in m for m in _marks(r))]
    # m1: one mark for its own command, one for every stream's; no low_confidence before the first
    first = marked(published["m1"], "set")
    assert len(first) == 2
    assert not any(r["reason"] == "low_confidence" for r in published["m1"][:first[0]])
    assert any(r["reason"] == "low_confidence" for r in published["m1"][first[0]:first[1]])
    for name in ("m0", "m2"):  # the command for m1 did not touch them: marked once, by the one for every stream
        only = marked(published[name], "set")
        assert len(only) == 1, name
        assert not any(r["reason"] == "low_confidence" for r in published[name][:only[0]]), name
        assert any(r["reason"] == "low_confidence" for r in published[name][only[0]:]), name
    assert marked(published["m2"], "recording_state") and not marked(published["m0"], "recording_state")


def _marks(record: dict) -> List[dict]:
    mark = record.get("control")
    return [] if mark is None else mark if isinstance(mark, list) else [mark]
