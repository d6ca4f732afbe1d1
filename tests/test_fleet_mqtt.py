"""``run --mqtt`` against a real Mosquitto started by the tests: decisions arrive, nothing is lost while the
broker is away (stopped for 5 s mid-run, or down for a whole run), status online/offline, TLS with a test CA
and client certificates, passwords, the signed control topic, and ``fleet watch`` over two devices."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, read_jsonl, run_cli
from mqtt_helpers import Broker, Collector, issue, make_ca
from replay_helpers import timing_free, write_log, write_model, write_spec

from edge_infer.fleet.control import sign
from edge_infer.io import read_log

KEY = b"0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fleet-model")
    spec = write_spec(directory / "m.toml", write_model(directory / "m.tflite", seed=3))
    return directory, spec


def log_of(directory: Path, rows: int, name: str = "log.csv") -> Path:
    path = directory / name
    if not path.exists():
        write_log(path, rows)
    return path


def start_run(tmp_path: Path, url: str, device: str, log: Path, spec: Path, speed: str = "max", *extra: str,
              decisions: str = None) -> "tuple[subprocess.Popen, Path]":
    out = tmp_path / (decisions or f"decisions-{device}.jsonl")
    args = [sys.executable, "-m", "edge_infer", "run", "--source", str(log), "--model", str(spec), "--speed", speed,
            "--mqtt", url, "--device-id", device, "--spool", str(tmp_path / f"spool-{device}"),
            "--decisions", str(out), "--show", "none", "--json", "--mqtt-drain-timeout", "5", *extra]
    proc = subprocess.Popen(args, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc, out


def finish(proc: subprocess.Popen) -> "tuple[dict, str]":
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out), err


@pytest.fixture
def broker(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    yield broker
    broker.stop()


def test_decisions_arrive_in_order_and_status_is_online_then_offline(tmp_path, broker, model_files):
    directory, spec = model_files
    sub = Collector(broker.port)
    proc, decisions = start_run(tmp_path, broker.url, "d1", log_of(directory, 400), spec, "4",
                                "--mqtt-summary-interval", "0.5")
    assert sub.wait_for(lambda: b"online" in sub.on("d1", "status")), "never online"
    summary, _ = finish(proc)
    assert sub.wait_for(lambda: sub.on("d1", "status")[-1:] == [b"offline"]), sub.on("d1", "status")
    local = read_jsonl(decisions)
    assert len(local) == summary["decisions"] > 90
    assert sub.wait_for(lambda: len(sub.decision_records("d1")) >= len(local))
    assert timing_free(sub.decision_records("d1")) == timing_free(local)
    events = [event["event"] for event in sub.events("d1")]
    assert events[0] == "start" and "connected" in events and events[-1] == "stop"
    summaries = sub.bodies("d1", "summary")
    assert [body["final"] for body in summaries] == [False] * (len(summaries) - 1) + [True] and len(summaries) > 2
    assert all(a["summary"]["decisions"] <= b["summary"]["decisions"] for a, b in zip(summaries, summaries[1:]))
    final = summaries[-1]
    assert final["final"] and final["summary"]["decisions"] == len(local)
    assert final["mqtt"]["dropped"] == 0 and final["mqtt"]["corrupt"] == 0
    sub.close()


def test_broker_stopped_for_5_s_mid_run_every_decision_still_arrives(tmp_path, broker, model_files):
    directory, spec = model_files
    sub = Collector(broker.port)
    proc, decisions = start_run(tmp_path, broker.url, "d1", log_of(directory, 1500, "longer.csv"), spec, "2")
    assert sub.wait_for(lambda: len(sub.decision_records("d1")) > 10), "no decisions before the outage"
    broker.stop()
    stopped = time.monotonic()
    time.sleep(5)
    broker.start()
    assert proc.poll() is None, "the run ended while the broker was down (machine too slow for this test)"
    summary, err = finish(proc)
    assert time.monotonic() - stopped < 30
    local = read_jsonl(decisions)
    assert len(local) == summary["decisions"] > 200
    assert sub.wait_for(lambda: len(sub.decision_records("d1")) >= len(local), timeout=30), \
        f"{len(sub.decision_records('d1'))} of {len(local)} arrived"
    assert timing_free(sub.decision_records("d1")) == timing_free(local)  # all of them, in order, repeats dropped
    events = sub.events("d1")
    assert "disconnected" in [e["event"] for e in events]
    reconnected = [e for e in events if e["event"] == "connected" and e["connections"] == 2]
    assert reconnected and reconnected[0]["offline_s"] >= 4.0, events
    assert sub.wait_for(lambda: sub.on("d1", "status")[-1:] == [b"offline"])
    assert "spooling to" in err
    sub.close()


def test_a_run_while_the_broker_is_down_is_sent_at_the_next_start_first(tmp_path, model_files):
    directory, spec = model_files
    broker = Broker(tmp_path / "broker")  # not started: nothing listens on its port
    log = log_of(directory, 400)
    first, first_decisions = start_run(tmp_path, broker.url, "d1", log, spec, decisions="first.jsonl")
    summary, err = finish(first)
    assert "not reachable" in err and " 0 sent" in err and " 0 waiting" not in err
    broker.start()
    try:
        sub = Collector(broker.port)
        second, second_decisions = start_run(tmp_path, broker.url, "d1", log, spec, decisions="second.jsonl")
        finish(second)
        local = read_jsonl(first_decisions) + read_jsonl(second_decisions)
        assert sub.wait_for(lambda: len(sub.decision_records("d1")) >= len(local))
        assert timing_free(sub.decision_records("d1")) == timing_free(local)
        starts = [e for e in sub.events("d1") if e["event"] == "start"]
        assert [s["previous_stop"] for s in starts] == ["first start", "clean"]
        assert starts[1]["backlog"] > 0
        sub.close()
    finally:
        broker.stop()


def test_the_spool_bound_drops_the_oldest_and_says_so(tmp_path, model_files):
    directory, spec = model_files
    broker = Broker(tmp_path / "broker")
    log = log_of(directory, 2000, "big.csv")
    first, first_decisions = start_run(tmp_path, broker.url, "d1", log, spec, "max", "--spool-max-mb", "0.05",
                                       decisions="first.jsonl")
    _, err = finish(first)
    assert "dropped the" in err
    broker.start()
    try:
        sub = Collector(broker.port)
        second, _ = start_run(tmp_path, broker.url, "d1", log_of(directory, 100, "small.csv"), spec,
                              decisions="second.jsonl")
        finish(second)
        assert sub.wait_for(lambda: len([e for e in sub.events("d1") if e["event"] == "stop"]) == 2)
        dropped = [e for e in sub.events("d1") if e["event"] == "spool_dropped"]
        assert dropped and dropped[-1]["dropped_total"] > 0
        first_run = dropped[-1]["run"]
        kept = [r for body in sub.bodies("d1", "decisions") if body["run"] == first_run for r in body["records"]]
        local = read_jsonl(first_decisions)
        assert 0 < len(kept) < len(local)
        assert timing_free(kept) == timing_free(local[-len(kept):])  # the newest survive, the oldest went
        sub.close()
    finally:
        broker.stop()


def test_tls_with_a_test_ca_and_client_certificates(tmp_path, model_files):
    directory, spec = model_files
    certs = tmp_path / "certs"
    certs.mkdir()
    ca = make_ca(certs)
    server = issue(certs, ca, "broker", server=True)
    device_cert = issue(certs, ca, "d-tls", server=False)
    broker = Broker(tmp_path / "broker", tls=(ca[0], *server), require_cert=True).start()
    try:
        sub = Collector(broker.port, host="localhost", tls_ca=ca[0], client_cert=issue(certs, ca, "watcher", False))
        url = f"mqtts://localhost:{broker.port}"
        log = log_of(directory, 200, "short.csv")
        proc, decisions = start_run(tmp_path, url, "d-tls", log, spec, "max", "--mqtt-ca", str(ca[0]),
                                    "--mqtt-cert", str(device_cert[0]), "--mqtt-key", str(device_cert[1]))
        finish(proc)
        local = read_jsonl(decisions)
        assert sub.wait_for(lambda: len(sub.decision_records("d-tls")) >= len(local))
        assert timing_free(sub.decision_records("d-tls")) == timing_free(local)
        # A broker whose certificate another CA signed is not trusted: nothing is sent, all stays spooled.
        other_ca = make_ca(certs, "some other CA")
        proc, _ = start_run(tmp_path, url, "d-wrong-ca", log, spec, "max", "--mqtt-ca", str(other_ca[0]),
                            "--mqtt-cert", str(device_cert[0]), "--mqtt-key", str(device_cert[1]))
        _, err = finish(proc)
        assert "waiting in" in err and " 0 sent" in err
        time.sleep(0.5)
        assert sub.on("d-wrong-ca", "decisions") == [] and sub.on("d-wrong-ca", "status") == []
        sub.close()
    finally:
        broker.stop()


def test_password_from_a_file_and_a_wrong_one_refused(tmp_path, model_files):
    directory, spec = model_files
    broker = Broker(tmp_path / "broker", users={"dev": "s3cret-pass", "watch": "w"}).start()
    try:
        sub = Collector(broker.port, auth=("watch", "w"))
        good, bad = tmp_path / "good", tmp_path / "bad"
        good.write_text("s3cret-pass\n")
        bad.write_text("guess\n")
        good.chmod(0o600)
        bad.chmod(0o600)
        log = log_of(directory, 200, "short.csv")
        proc, decisions = start_run(tmp_path, broker.url, "d-pw", log, spec, "max", "--mqtt-username", "dev",
                                    "--mqtt-password-file", str(good))
        finish(proc)
        assert sub.wait_for(lambda: len(sub.decision_records("d-pw")) >= len(read_jsonl(decisions)))
        proc, _ = start_run(tmp_path, broker.url, "d-bad", log, spec, "max", "--mqtt-username", "dev",
                            "--mqtt-password-file", str(bad))
        _, err = finish(proc)
        assert "refused the connection" in err and sub.on("d-bad", "decisions") == []
        # As a service: the [fleet] table, the password handed over as a systemd credential.
        credentials = tmp_path / "credentials"
        credentials.mkdir()
        (credentials / "mqtt-password").write_text("s3cret-pass")
        (credentials / "mqtt-password").chmod(0o600)
        config = tmp_path / "config.toml"
        config.write_text(f"""[source]\nuri = "{log}"\n[model]\nspec = "{spec}"\n[deadline]\nstrict_budget = false
[sinks]\ndecisions = "service.jsonl"\n[fleet]\nmqtt = "{broker.url}"\ndevice_id = "d-service"\nspool = "spool-service"
username = "dev"\npassword_file = "${{CREDENTIALS_DIRECTORY}}/mqtt-password"\n""")
        service = run_cli("run", "--config", str(config), "--show", "none", "--json",
                          env={"CREDENTIALS_DIRECTORY": str(credentials)})
        assert service.returncode == 0, service.stderr
        assert (tmp_path / "spool-service" / "acked").exists()  # relative to the config file
        local = read_jsonl(tmp_path / "service.jsonl")
        assert sub.wait_for(lambda: len(sub.decision_records("d-service")) >= len(local) > 0)
        sub.close()
    finally:
        broker.stop()


def test_a_password_over_plain_mqtt_to_another_host_is_refused_before_anything_starts(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("x")
    proc = run_cli("run", "--mqtt", "mqtt://192.0.2.7", "--mqtt-username", "u", "--mqtt-password-file", str(secret),
                   "--spool", str(tmp_path / "spool"))
    assert proc.returncode == 2 and "refusing to send a password over plain MQTT" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "spool").exists()


def control(url: str, key: Path, *args: str) -> "tuple[int, dict]":
    proc = run_cli("fleet", "control", "--mqtt", url, "--device-id", "d1", "--key-file", str(key), "--timeout", "15",
                   *args)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout.splitlines()[0])


def test_control_sets_thresholds_and_records_signed_commands_only(tmp_path, broker, model_files):
    directory, spec = model_files
    key = tmp_path / "control.key"
    key.write_bytes(KEY + b"\n")
    key.chmod(0o600)
    sub = Collector(broker.port)
    recordings = tmp_path / "remote"
    proc, decisions = start_run(tmp_path, broker.url, "d1", log_of(directory, 4000, "longest.csv"), spec, "2",
                                "--control-key-file", str(key), "--remote-recordings", str(recordings))
    assert sub.wait_for(lambda: len(sub.decision_records("d1")) > 5)

    code, answer = control(broker.url, key, "--set", "min_confidence=0.99")
    assert code == 0, answer
    assert answer["answer"]["event"] == "control" and answer["answer"]["thresholds"]["min_confidence"] == 0.99

    code, answer = control(broker.url, key, "--recording", "start")
    assert code == 0 and answer["answer"]["recording_state"] == "started"
    time.sleep(1.5)
    code, answer = control(broker.url, key, "--recording", "stop")
    assert code == 0 and answer["answer"]["recording_state"] == "stopped"
    recording = Path(answer["answer"]["paths"][0])
    assert recording.parent == recordings and len(read_log(str(recording))) > 20

    def refusals():
        return [e for e in sub.events("d1") if e["event"] == "control_refused"]

    now = time.time()
    bad_key = sign(b"not the device key at all!", {"device": "d1", "ts": now, "id": "x1", "set": {"min_confidence": 0.1}})
    not_allowed = sign(KEY, {"device": "d1", "ts": now + 1, "id": "x2", "set": {"budget_ms": 1}})
    replay = sign(KEY, {"device": "d1", "ts": now - 100, "id": "x3", "set": {"min_confidence": 0.1}})
    for count, payload in enumerate((bad_key, not_allowed, replay), 1):
        sub.client.publish("edge-infer/d1/control", payload, qos=1)
        assert sub.wait_for(lambda: len(refusals()) == count), refusals()
        time.sleep(1.1)  # refusals are announced at most once a second
    proc.send_signal(signal.SIGINT)
    summary, err = finish(proc)

    refused = refusals()
    assert [r["refused"].split(" ")[0] for r in refused] == ["bad", "not", "replayed"], refused
    assert refused[1]["id"] == "x2" and refused[0]["id"] is None
    records = read_jsonl(decisions)
    assert sub.wait_for(lambda: len(sub.decision_records("d1")) >= len(records))
    published = sub.decision_records("d1")
    assert timing_free(published) == timing_free(records)
    marked = [i for i, r in enumerate(published) if "control" in r and "set" in _first(r["control"])]
    assert len(marked) == 1
    before, after = published[:marked[0]], published[marked[0]:]
    assert not any(r["reason"] == "low_confidence" for r in before)
    assert any(r["reason"] == "low_confidence" for r in after)
    assert all(r["reason"] in ("low_confidence", "shutdown") for r in after if r["source"] == "fallback")
    assert "control command" in err and "accepted" in err and "refused" in err  # every command is logged
    sub.close()


def _first(mark):
    return mark[0] if isinstance(mark, list) else mark


def test_fleet_watch_shows_two_devices(tmp_path, broker, model_files):
    directory, spec = model_files
    log = log_of(directory, 4000, "longest.csv")  # stopped by the test once it has seen what it needs
    runs = [start_run(tmp_path, broker.url, device, log, spec, "2") for device in ("alpha", "beta")]
    sub = Collector(broker.port)
    assert sub.wait_for(lambda: all(len(sub.decision_records(d)) > 5 for d in ("alpha", "beta")))
    proc = run_cli("fleet", "watch", "--mqtt", broker.url, "--once", "--duration", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["device"]: row for row in json.loads(proc.stdout)}
    assert set(rows) == {"alpha", "beta"}
    for row in rows.values():
        assert row["status"] == "online" and row["decisions_per_s"] > 0 and row["last_seen_s"] < 5
    table = run_cli("fleet", "watch", "--mqtt", broker.url, "--once", "--duration", "1.5")
    lines = table.stdout.splitlines()
    assert table.returncode == 0 and "DECISIONS/S" in lines[1] and "FALLBACK" in lines[1]
    assert [line.split()[:2] for line in lines[2:4]] == [["alpha", "online"], ["beta", "online"]]
    screen = watch_in_a_terminal(tmp_path, broker.url)
    assert screen.count("DECISIONS/S") == 1  # redrawn in place, not scrolled
    assert [line.split()[:2] for line in screen.splitlines() if line.startswith(("alpha", "beta"))] == \
        [["alpha", "online"], ["beta", "online"]]
    for proc_, _ in runs:
        proc_.send_signal(signal.SIGINT)
        finish(proc_)
    live = run_cli("fleet", "watch", "--mqtt", broker.url, "--duration", "3", "--interval", "0.5")
    assert live.returncode == 0 and live.stdout.count("DECISIONS/S") >= 3  # redrawn (plain text: not a terminal)
    assert "\033[" not in live.stdout
    after = run_cli("fleet", "watch", "--mqtt", broker.url, "--once", "--duration", "1", "--json")
    assert {row["device"]: row["status"] for row in json.loads(after.stdout)} == {"alpha": "offline", "beta": "offline"}
    sub.close()


def watch_in_a_terminal(tmp_path: Path, url: str) -> str:
    """``fleet watch`` in a real terminal (a detached tmux on its own socket): the screen after a few redraws."""
    tmux = ["tmux", "-L", f"edge-infer-test-{os.getpid()}-{time.monotonic_ns()}"]
    command = (f"cd {ROOT} && PYTHONPATH={ROOT} {sys.executable} -m edge_infer fleet watch --mqtt {url} "
               f"--interval 0.3 --duration 30")
    subprocess.run(tmux + ["new-session", "-d", "-x", "150", "-y", "20", command], check=True,
                   env=dict(os.environ, TERM="xterm"))
    try:
        deadline = time.monotonic() + 20
        screen = ""
        while time.monotonic() < deadline:
            time.sleep(0.5)
            screen = subprocess.run(tmux + ["capture-pane", "-p"], capture_output=True, text=True).stdout
            if "beta" in screen and "alpha" in screen:
                time.sleep(1.0)  # a few more redraws
                return subprocess.run(tmux + ["capture-pane", "-p"], capture_output=True, text=True).stdout
        return screen
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True)


def test_watch_reports_a_broker_it_cannot_reach(tmp_path):
    proc = run_cli("fleet", "watch", "--mqtt", f"mqtt://127.0.0.1:{Broker(tmp_path / 'b').port}", "--once",
                   "--duration", "1")
    assert proc.returncode == 2 and "could not connect" in proc.stderr and "Traceback" not in proc.stderr


def test_a_killed_run_goes_offline_by_its_last_will_and_the_next_start_says_crash(tmp_path, broker, model_files):
    directory, spec = model_files
    sub = Collector(broker.port)
    log = log_of(directory, 1000, "long.csv")
    proc, _ = start_run(tmp_path, broker.url, "d1", log, spec, "2")
    assert sub.wait_for(lambda: len(sub.decision_records("d1")) > 5)
    proc.kill()
    proc.communicate()
    assert sub.wait_for(lambda: sub.on("d1", "status")[-1:] == [b"offline"], timeout=60)  # the broker's doing
    again, _ = start_run(tmp_path, broker.url, "d1", log_of(directory, 100, "small.csv"), spec,
                         decisions="again.jsonl")
    finish(again)
    assert sub.wait_for(lambda: len([e for e in sub.events("d1") if e["event"] == "start"]) == 2)
    starts = [e for e in sub.events("d1") if e["event"] == "start"]
    assert [s["previous_stop"] for s in starts] == ["first start", "crash"]


def test_fleet_control_refuses_what_it_cannot_sign_before_connecting(tmp_path):
    key = tmp_path / "key"
    key.write_bytes(KEY)
    for args, message in ((["--set", "budget_ms=1"], "expected NAME=VALUE"), (["--set", "min_confidence=x"],
                          "is not a number")):
        proc = run_cli("fleet", "control", "--mqtt", "mqtt://127.0.0.1:1", "--device-id", "d1", "--key-file",
                       str(key), *args)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    key.write_bytes(b"short")
    proc = run_cli("fleet", "control", "--mqtt", "mqtt://127.0.0.1:1", "--device-id", "d1", "--key-file", str(key),
                   "--recording", "stop")
    assert proc.returncode == 2 and "at least 16" in proc.stderr


def test_a_ca_file_that_is_no_certificate_is_one_line(tmp_path, model_files):
    directory, spec = model_files
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    proc = run_cli("run", "--source", str(log_of(directory, 100, "small.csv")), "--model", str(spec),
                   "--mqtt", "mqtts://localhost:1", "--mqtt-ca", str(bogus), "--spool", str(tmp_path / "spool"))
    assert proc.returncode == 2 and "TLS set-up failed" in proc.stderr and "Traceback" not in proc.stderr
    for args, message in ((["--mqtt", "mqtt://u:p@host"], "no credentials in the URL"),
                          (["--mqtt", "http://host"], "expected mqtt://HOST"),
                          (["--mqtt", "mqtt://host", "--device-id", "a/b"], "device id 'a/b'"),
                          (["--mqtt", "mqtt://host", "--mqtt-ca", str(bogus)], "need a TLS broker URL")):
        proc = run_cli("run", *args)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_new_model_and_a_fallback_burst_are_events(tmp_path, broker, model_files):
    directory, spec = model_files
    other = write_spec(tmp_path / "other.toml", write_model(tmp_path / "other.tflite", seed=11))
    sub = Collector(broker.port)
    log = log_of(directory, 200, "short.csv")
    finish(start_run(tmp_path, broker.url, "d1", log, spec, decisions="a.jsonl")[0])
    finish(start_run(tmp_path, broker.url, "d1", log, other, "max", "--budget-ms", "0.001",
                     decisions="b.jsonl")[0])  # no model answers in a microsecond: every window falls back
    assert sub.wait_for(lambda: len([e for e in sub.events("d1") if e["event"] == "stop"]) == 2)
    events = sub.events("d1")
    changed = [e for e in events if e["event"] == "model_changed"]
    assert len(changed) == 1 and changed[0]["from"]["sha256"] != changed[0]["to"]["sha256"]
    bursts = [e for e in events if e["event"] == "fallback_burst"]
    assert bursts and bursts[0]["state"] == "start" and set(bursts[0]["reasons"]) <= {"deadline", "busy", "overrun"}
    assert bursts[0]["run"] == changed[0]["run"]
