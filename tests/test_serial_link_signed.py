"""The signed link end to end: ``edge-infer run --link-key`` against both simulated devices on real ptys.

With the same key the model decides as on an unsigned link. With another key,
an unsigned device at a host with a key, or a signing device at a host without
one, the model decides nothing, nothing crashes, and both ends count the drops.
The host's session logic (re-offering when the device lost its session) is
driven frame by frame by a scripted device. No assertion depends on timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from serial_helpers import CHANNELS, CDevice, RuntimeProcess, ScriptedDevice, hello_for, pump_until, write_spec
from fb_helpers import ROOT, c_build_dir, finish, sim_device_exe, start_sim, write_log  # noqa: F401,I001  (fixtures; after serial_helpers, which puts it on the path)

from edge_infer.sources.serial_link import SerialSource
from firmware_bridge.auth import LinkAuth, Side
from firmware_bridge.keys import write_new_key
from firmware_bridge.protocol import Action, FrameEncoder, Heartbeat, Session
from firmware_bridge.stream import FrameDecoder

ROWS = 3000
DROPS = ("unsigned", "bad_signature", "unbound", "replayed", "no_key")


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    return write_log(tmp_path_factory.mktemp("log") / "log.csv", ROWS)


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return write_spec(tmp_path_factory.mktemp("spec"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    for name in ("a", "b"):
        write_new_key(directory / name)
    return directory


def start_device(kind, log, link, exe, key):
    extra = ("--link-key", str(key)) if key else ()
    if kind == "python-sim":
        return start_sim(log, link, "--speed", "5", "--wait-host", "--linger", "600", *extra), None
    return None, CDevice(exe, log, link, "--speed", "5", "--linger", "600", *extra)


def stop_device(sim, c):
    if sim is not None:
        sim.send_signal(signal.SIGTERM)
        return finish(sim)
    return c.summary()


def close_device(sim, c):
    if sim is not None and sim.poll() is None:
        sim.kill()
        sim.communicate()
    if c is not None:
        c.close()


@pytest.mark.parametrize("kind", ["python-sim", "c-device"])
def test_with_the_same_key_the_model_decides_and_every_action_is_signed_and_taken(kind, spec, log, keys, tmp_path,
                                                                                   request):
    exe = request.getfixturevalue("sim_device_exe") if kind == "c-device" else None
    sim, c = start_device(kind, log, tmp_path / "dev", exe, keys / "a")
    run = None
    try:
        run = RuntimeProcess(f"serial:{tmp_path / 'dev'}", spec, tmp_path / "decisions.jsonl", "--warmup", "2",
                             "--no-data-ms", "0", "--link-key", str(keys / "a"))
        run.wait_for(lambda records: sum(r["source"] == "model" for r in records) >= 10, "10 model decisions")
        summary = run.stop(signal.SIGINT)
        device = stop_device(sim, c)
    finally:
        if run is not None:
            run.kill()
        close_device(sim, c)
    src = summary["source"]
    assert src["link_signed"] and src["sessions"] >= 1 and src["session_offers"] >= 1
    assert summary["model_decisions"] >= 10 and src["actions_sent"] == summary["decisions"]
    assert all(src[k] == 0 for k in ("unsigned", "bad_signature", "replayed", "no_key")), src
    assert device["sessions"] >= 1 and device["actions_received"] == summary["decisions"]
    assert device["actions_bad"] == 0 and all(device["link"][k] == 0 for k in DROPS), device["link"]
    assert device["action_reasons"]["shutdown"] == 1 and device["actions_safe"] >= 1


@pytest.mark.parametrize("kind, device_key, host_key, counted", [
    pytest.param("python-sim", "a", "b", "bad_signature", id="python-sim-other-key"),
    pytest.param("python-sim", None, "a", "unsigned", id="python-sim-unsigned-device"),
    pytest.param("python-sim", "a", None, "no_key", id="python-sim-host-without-key"),
    pytest.param("c-device", "a", "b", "bad_signature", id="c-device-other-key"),
    pytest.param("c-device", None, "a", "unsigned", id="c-device-unsigned-device"),
])
def test_without_a_shared_key_the_model_decides_nothing_and_the_drops_are_counted(kind, device_key, host_key, counted,
                                                                                 spec, log, keys, tmp_path, request):
    exe = request.getfixturevalue("sim_device_exe") if kind == "c-device" else None
    sim, c = start_device(kind, log, tmp_path / "dev", exe, keys / device_key if device_key else None)
    try:
        args = ("--link-key", str(keys / host_key)) if host_key else ()
        run = RuntimeProcess(f"serial:{tmp_path / 'dev'}", spec, tmp_path / "decisions.jsonl", "--warmup", "2",
                             "--no-data-ms", "300", "--duration", "3", "--log-level", "warning", *args)
        summary = run.finish()
        device = stop_device(sim, c)
    finally:
        close_device(sim, c)
    src = summary["source"]
    assert summary["model_decisions"] == 0 and src["sensor_frames"] == 0  # the host acted on nothing
    assert src[counted] > 0 and summary["fallback_reasons"].get("no_data", 0) >= 1
    assert device["actions_received"] == 0 and device["action_sources"] == {"model": 0, "fallback": 0}
    assert sum(device["link"][k] for k in DROPS) > 0  # the device refused what the host sent, and counted it
    assert run.stderr.count(f"device on {tmp_path / 'dev'}") >= 1  # one warning says why, not one per frame
    assert run.stderr.count("they are dropped") <= 2


def test_a_signed_link_survives_an_unplug_with_a_new_session(spec, log, keys, tmp_path):
    link = tmp_path / "dev"
    sim = start_sim(log, link, "--speed", "5", "--wait-host", "--linger", "600", "--unplug-after", "1.5",
                    "--unplug-for", "1.0", "--link-key", str(keys / "a"))
    run = None
    try:
        run = RuntimeProcess(f"serial:{link}", spec, tmp_path / "decisions.jsonl", "--warmup", "2",
                             "--no-data-ms", "300", "--link-key", str(keys / "a"))

        def resumed(records):
            reasons = [r["reason"] for r in records]
            if "no_data" not in reasons:
                return False
            return sum(r["source"] == "model" for r in records[reasons.index("no_data"):]) >= 5

        run.wait_for(resumed, "model decisions again after the replug")
        summary = run.stop(signal.SIGINT)
        device = stop_device(sim, None)
    finally:
        if run is not None:
            run.kill()
        close_device(sim, None)
    src = summary["source"]
    assert src["reconnects"] == 1 and src["sessions"] >= 2 and device["unplugs"] == 1
    # every ACTION the device got was sent and valid; the one or two written in the moment between the unplug
    # and the host noticing it went into a pty nobody read any more (the old code failed 1 run in 4-14 on this)
    assert src["actions_sent"] - 2 <= device["actions_received"] <= src["actions_sent"] and device["actions_bad"] == 0


def test_a_key_file_others_can_read_is_refused_before_the_port_is_opened(spec, keys, tmp_path):
    key = tmp_path / "open.key"
    key.write_bytes((keys / "a").read_bytes())
    os.chmod(key, 0o644)
    proc = subprocess.run([sys.executable, "-m", "edge_infer", "run", "--source", f"serial:{tmp_path / 'none'}",
                           "--model", str(spec), "--link-key", str(key)], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"edge-infer: error: link key {key} is accessible to others "
                                                f"(mode 0644); chmod 600 {key} (and keep it owned by the "
                                                "service's user)"]


def test_a_link_key_for_a_recorded_log_is_refused(keys):
    proc = subprocess.run([sys.executable, "-m", "edge_infer", "run", "--link-key", str(keys / "a")], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "--link-key signs a serial link; the source is a recorded log" in proc.stderr


def test_check_config_validates_the_link_key(spec, keys, tmp_path):
    def check(source, key):
        config = tmp_path / "config.toml"
        config.write_text(f'[model]\nspec = "{spec}"\n[source]\nuri = "{source}"\nlink_key = "{key}"\n')
        return subprocess.run([sys.executable, "-m", "edge_infer", "check-config", str(config)], cwd=ROOT,
                              capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                              timeout=120)

    ok = check("serial:/dev/ttyUSB0", keys / "a")
    assert ok.returncode == 0 and f"link key {keys / 'a'}" in ok.stdout
    open_key = tmp_path / "open.key"
    open_key.write_bytes((keys / "a").read_bytes())
    os.chmod(open_key, 0o604)
    bad = check("serial:/dev/ttyUSB0", open_key)
    assert bad.returncode == 2 and "accessible to others" in bad.stderr and bad.stderr.count("\n") == 1
    missing = check("serial:/dev/ttyUSB0", tmp_path / "nope.key")
    assert missing.returncode == 2 and "cannot read it" in missing.stderr
    log_source = check(str(ROOT / "models" / "basic_motions" / "basic_motions_test.csv"), keys / "a")
    assert log_source.returncode == 2 and "[source].link_key signs a serial link" in log_source.stderr


# --- the host's session logic, frame by frame -------------------------------------------------------


class SignedDevice(ScriptedDevice):
    """A scripted device with a key: it answers the host's offers as PROTOCOL.md section 13 says."""

    def __init__(self, link, key: bytes):
        super().__init__(link)
        self.auth = LinkAuth(key, Side.DEVICE)
        self.enc = FrameEncoder(clock_us=lambda: self.t_us, auth=self.auth)
        self.dec = FrameDecoder(auth=self.auth)

    def answer(self) -> None:
        """Answer the offer the decoder just took: SESSION with both nonces, then HELLO."""
        s = self.auth.session
        self.send(Session(host_nonce=s[:8], device_nonce=s[8:]))
        self.send(hello_for())

    def reboot(self) -> None:
        self.auth.end()
        self.enc = FrameEncoder(clock_us=lambda: self.t_us, auth=self.auth)


def test_the_host_offers_a_new_session_when_the_device_lost_its_own(tmp_path):
    key = os.urandom(32)
    device = SignedDevice(tmp_path / "dev", key)
    source = SerialSource(str(device.link), channels=list(CHANNELS), link_key=key)
    try:
        pump_until(source, device, lambda _: device.of_type(Session), "the host's offer")
        device.answer()
        device.sensor([1.0] * 6, 100_000)
        pump_until(source, device, lambda got: len(got) == 1, "a frame in the session")
        assert not device.of_type(Heartbeat) or device.dec.counters.bad_signature == 0
        device.reboot()  # no session any more: its frames are signed in none
        device.sensor([2.0] * 6, 0)
        pump_until(source, device, lambda _: len(device.of_type(Session)) == 2, "a second offer")
        assert source.counters()["sessions_lost"] == 1 and source.counters()["unbound"] >= 1
        device.answer()
        device.sensor([3.0] * 6, 100_000)
        frames = pump_until(source, device, lambda got: len(got) == 1, "a frame in the new session")
        assert frames[0].values[0] == 3.0  # the unbound frame was never delivered
        assert source.send_action(1, 0, 0, frames[0].seq, "walk")
        pump_until(source, device, lambda _: device.of_type(Action), "the ACTION")
        assert device.dec.counters.auth_dropped == 0 and source.counters()["sessions"] == 2
    finally:
        source.close()
        device.close()


def test_a_host_with_a_key_sends_nothing_unsigned_and_no_heartbeat_outside_a_session(tmp_path):
    key = os.urandom(32)
    device = ScriptedDevice(tmp_path / "dev")  # an unsigned device: it decodes what the host sends, keyless
    source = SerialSource(str(device.link), channels=list(CHANNELS), link_key=key)
    try:
        pump_until(source, device, lambda _: device.dec.counters.no_key >= 1, "the host's signed offer")
        device.send(hello_for())
        device.sensor([1.0] * 6, 0)
        pump_until(source, device, lambda _: source.counters()["unsigned"] >= 2, "the device's frames counted")
        assert device.received == [] and source.recv(0.05) is None
        assert source.counters()["heartbeats_sent"] == 0 and source.counters()["sensor_frames"] == 0
    finally:
        source.close()
        device.close()


def test_the_link_key_drop_in_verifies_and_check_config_accepts_a_credential_path(spec, tmp_path):
    from test_systemd_unit import ANALYZE, unit_with_existing_binary

    proc = subprocess.run([ANALYZE, "verify", str(unit_with_existing_binary(tmp_path / "unit", ("link-key.conf",)))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
    config = tmp_path / "config.toml"
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    for credential in ("/run/credentials/edge-infer.service/link.key", "${CREDENTIALS_DIRECTORY}/link.key"):
        config.write_text(f'[model]\nspec = "{spec}"\n[source]\nuri = "serial:/dev/ttyACM0"\n'
                          f'link_key = "{credential}"\n')
        ok = subprocess.run([sys.executable, "-m", "edge_infer", "check-config", str(config)], cwd=ROOT,
                            capture_output=True, text=True, env=dict(env, PYTHONPATH=str(ROOT)), timeout=120)
        assert ok.returncode == 0 and "is a systemd credential, checked when the service starts" in ok.stdout
    # inside the service the variable is set: the key is read from there, never from the config's folder
    (tmp_path / "creds").mkdir()
    key = tmp_path / "creds" / "link.key"
    key.write_bytes(bytes(range(1, 33)))
    key.chmod(0o600)
    ok = subprocess.run([sys.executable, "-m", "edge_infer", "check-config", str(config)], cwd=ROOT,
                        capture_output=True, text=True, timeout=120,
                        env=dict(env, PYTHONPATH=str(ROOT), CREDENTIALS_DIRECTORY=str(tmp_path / "creds")))
    assert ok.returncode == 0 and "is a systemd credential" not in ok.stdout, ok.stderr
