"""The C side: sim_device.c (edge_link.c in a POSIX harness) and the Arduino sketch, talking to Python."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
import tty
from pathlib import Path

import pytest
from fb_helpers import C_DIR, CHANNELS, TIMEOUT, build_c, c_build_dir, log_values, row_of, sim_device_exe, write_log  # noqa: F401  (fixtures)

from edge_infer.decide.reasons import Reason
from firmware_bridge.protocol import (
    Action,
    ActionSource,
    Flags,
    FrameEncoder,
    Heartbeat,
    Hello,
    SampleType,
    Sensor,
    check_hello,
    encode,
)
from firmware_bridge.stream import FrameDecoder

HARNESS = Path(__file__).resolve().parent / "arduino_host"
SKETCH = C_DIR / "examples" / "arduino_imu" / "arduino_imu.ino"


def run_over_pty(exe: Path, log: Path, *args: str, answer: bool = True):
    """Run sim_device on a pty we hold the master of, as the host; return (frames, decoder, summary)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    dec, enc, frames = FrameDecoder(), FrameEncoder(), []
    proc = subprocess.Popen([str(exe), str(log), "--port", os.ttyname(slave), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        os.write(master, enc.heartbeat())  # queued for the device: the host is here
        end = time.monotonic() + TIMEOUT
        while True:
            running = proc.poll() is None
            assert time.monotonic() < end, "sim_device did not finish"
            if select.select([master], [], [], 0.05)[0]:
                for frame in dec.feed(os.read(master, 4096)):
                    frames.append(frame)
                    if answer and isinstance(frame, Sensor):
                        source = ActionSource.MODEL if frame.seq % 3 else ActionSource.FALLBACK
                        reason = Reason.NONE if frame.seq % 3 else Reason.LOW_CONFIDENCE
                        os.write(master, enc.action(frame.seq % 3 - 1, source=source, reason=reason,
                                                    answers_seq=frame.seq))
            elif not running:
                break
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
    assert proc.returncode == 0, err
    return frames, dec, json.loads(out)


@pytest.fixture
def log(tmp_path):
    return write_log(tmp_path / "log.csv", 50)


def test_c_device_plays_the_log_and_counts_the_python_host_actions(sim_device_exe, log):
    frames, dec, summary = run_over_pty(sim_device_exe, log, "--speed", "max", "--linger", str(TIMEOUT))
    hellos, sensors = [f for f in frames if isinstance(f, Hello)], [f for f in frames if isinstance(f, Sensor)]
    check_hello(hellos[0], list(CHANNELS))
    assert hellos[0].channels == CHANNELS and hellos[0].sample_type == SampleType.FLOAT32
    assert hellos[0].sample_rate_hz == 10.0 and hellos[0].safe_timeout_ms == 500
    assert [s.values for s in sensors] == log_values(50)
    assert [row_of(s) for s in sensors] == list(range(50))
    assert dec.counters.rejected == 0 and dec.counters.seq_gaps == 0

    model = sum(1 for s in sensors if s.seq % 3)
    assert summary["frames_sent"] == 50 and summary["actions_received"] == 50
    assert summary["actions_bad"] == 0 and summary["actions_unanswered"] == 0
    assert summary["action_sources"] == {"model": model, "fallback": 50 - model}
    assert summary["action_reasons"] == {"none": model, "low_confidence": 50 - model}
    assert summary["heartbeats_received"] == 1 and summary["end"] == "end_of_log"
    assert summary["link"]["frames"] == 51 and summary["link"]["crc_errors"] == 0


def test_c_device_int16_values_scale_back_to_the_log(sim_device_exe, log):
    frames, _, summary = run_over_pty(sim_device_exe, log, "--speed", "max", "--int16", "--linger", str(TIMEOUT))
    hello = next(f for f in frames if isinstance(f, Hello))
    check_hello(hello, list(CHANNELS))
    sensors = [f for f in frames if isinstance(f, Sensor)]
    for sensor, expected in zip(sensors, log_values(50)):
        for got, want, scale in zip(hello.physical_values(sensor), expected, hello.scales):
            assert abs(got - want) <= scale / 2 + 1e-9
    assert len(sensors) == summary["frames_sent"] == 50


def test_c_device_without_a_host_ends_unanswered(sim_device_exe, log):
    frames, _, summary = run_over_pty(sim_device_exe, log, "--speed", "max", "--linger", "0", answer=False)
    assert sum(isinstance(f, Sensor) for f in frames) == 50
    assert summary["actions_received"] == 0 and summary["actions_unanswered"] == 50


def test_c_device_on_stdio(sim_device_exe, log):
    proc = subprocess.run([str(sim_device_exe), str(log), "--speed", "max", "--linger", "0"],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    dec = FrameDecoder()
    frames = dec.feed(proc.stdout)
    assert isinstance(frames[0], Hello) and sum(isinstance(f, Sensor) for f in frames) == 50
    assert dec.counters.rejected == 0
    assert json.loads(proc.stderr)["frames_sent"] == 50


@pytest.mark.parametrize("args", [[], ["{log}", "--speed", "0"], ["{log}", "--bogus"], ["/no/such.csv"],
                                  ["{log}", "--link-key", "/dev/null"], ["{log}", "--link-key", "/no/such.key"]])
def test_c_device_bad_arguments_exit_2(sim_device_exe, log, args):
    argv = [a.format(log=log) for a in args]
    proc = subprocess.run([str(sim_device_exe), *argv], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 2 and proc.stderr.startswith("sim_device: ")


# --- the Arduino sketch, compiled for the build machine and driven on a simulated clock ----------


SKETCH_FLAGS = ["-Wall", "-Wextra", "-Werror", "-I", str(HARNESS), "-include", "Arduino.h", "-x", "c++", str(SKETCH),
                "-x", "none"]


def build_sketch(out: Path, *defines: str) -> Path:
    obj = build_c(out.with_suffix(".edge_link.o"), C_DIR / "edge_link.c",
                  flags=["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c"])
    return build_c(out, obj, HARNESS / "harness.cpp", compiler="g++", flags=["-std=c++11", *defines, *SKETCH_FLAGS])


def run_sketch(harness: Path, tmp_path: Path, script, until_ms: int):
    """Run the sketch; return ([(ms, frame)], [(ms, led)], decoder)."""
    path = tmp_path / "script.txt"
    path.write_text("".join(f"{ms} {data.hex()}\n" for ms, data in script))
    proc = subprocess.run([str(harness), str(path), str(until_ms)], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    dec, frames, leds = FrameDecoder(), [], []
    for line in proc.stdout.splitlines():
        ms, kind, value = line.split()
        if kind == "LED":
            leds.append((int(ms), int(value)))
        else:
            frames += [(int(ms), f) for f in dec.feed(bytes.fromhex(value))]
    return frames, leds, dec


@pytest.fixture(scope="module")
def sketch_harness(tmp_path_factory) -> Path:
    return build_sketch(tmp_path_factory.mktemp("sketch") / "harness")


def test_arduino_sketch_streams_obeys_actions_and_goes_safe_on_host_silence(sketch_harness, tmp_path):
    host = FrameEncoder(clock_us=lambda: 0)
    script = [(1000, host.heartbeat())]
    script += [(ms, host.action(1, source=ActionSource.MODEL, answers_seq=0, name="walk"))
               for ms in range(1050, 2000, 100)]
    script += [(3000, host.heartbeat()),
               (3100, host.action(-1, source=ActionSource.FALLBACK, reason=Reason.NO_DATA, answers_seq=0)),
               (3200, host.action(2, source=ActionSource.MODEL, answers_seq=0)),
               (3250, b"\xff\xff\x00\x05\x01\x00" + encode(Heartbeat(seq=500)))]
    frames, leds, dec = run_sketch(sketch_harness, tmp_path, script, 3600)
    assert dec.counters.rejected == 0 and dec.counters.seq_gaps == 0

    hellos = [ms for ms, f in frames if isinstance(f, Hello)]
    assert hellos == [0, 1000, 3000]  # boot, then each time the host appears after silence
    check_hello(frames[0][1], list(CHANNELS))
    sensors = [(ms, f) for ms, f in frames if isinstance(f, Sensor)]
    assert [ms for ms, _ in sensors] == list(range(100, 3601, 100))
    safe = [ms for ms, f in sensors if f.flags & Flags.DEVICE_SAFE]
    assert safe == [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000] + list(range(2500, 3101, 100))
    assert leds == [(0, 1), (1050, 0), (2451, 1), (3200, 0)]  # safe at boot, model, 500 ms silence, model
    assert not any(isinstance(f, Action) for _, f in frames)


def test_arduino_sketch_mpu6050_path_sends_the_chip_values(tmp_path):
    harness = build_sketch(tmp_path / "harness_mpu", "-DUSE_MPU6050")
    frames, _, dec = run_sketch(harness, tmp_path, [], 300)
    hello = frames[0][1]
    sensors = [f for _, f in frames if isinstance(f, Sensor)]
    assert len(sensors) == 3 and dec.counters.rejected == 0
    assert sensors[0].values == (1000, -2000, 16384, 131, -262, 0)  # the fake chip's sample (Wire.h)
    physical = hello.physical_values(sensors[0])
    assert physical[2] == 1.0 and abs(physical[3] - 1.0) < 1e-6 and abs(physical[4] + 2.0) < 1e-6


@pytest.mark.parametrize("defines", [[], ["-DUSE_MPU6050"]], ids=["synthetic", "mpu6050"])
def test_arduino_sketch_compiles_for_an_8_bit_avr(tmp_path, defines):
    if shutil.which("avr-g++") is None:
        pytest.skip("avr-g++ is not installed (apt-get install gcc-avr avr-libc)")
    build_c(tmp_path / "sketch.o", compiler="avr-g++",
            flags=["-mmcu=atmega328p", "-std=gnu++11", "-Os", "-c", *defines, *SKETCH_FLAGS])


def test_c_device_goes_safe_on_any_safe_action_even_for_a_frame_it_never_sent(sim_device_exe, tmp_path):
    """PROTOCOL.md 7: ACTION -1 means "go safe" whatever frame it answers; the device must not ignore it."""
    log = write_log(tmp_path / "log.csv", 25)
    master, slave = os.openpty()
    tty.setraw(slave)
    dec, enc, sensors, state = FrameDecoder(), FrameEncoder(), [], {"unsafe_at": None, "safe_sent_at": None}
    proc = subprocess.Popen([str(sim_device_exe), str(log), "--port", os.ttyname(slave), "--speed", "1",
                             "--linger", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        os.write(master, enc.heartbeat())
        end = time.monotonic() + TIMEOUT
        while proc.poll() is None:
            assert time.monotonic() < end, "sim_device did not finish"
            if not select.select([master], [], [], 0.05)[0]:
                continue
            for frame in dec.feed(os.read(master, 4096)):
                if not isinstance(frame, Sensor):
                    continue
                sensors.append(frame)
                safe = bool(frame.flags & Flags.DEVICE_SAFE)
                if state["unsafe_at"] is None and len(sensors) == 1:
                    os.write(master, enc.action(1, source=ActionSource.MODEL, answers_seq=frame.seq))
                elif not safe and state["unsafe_at"] is None:
                    state["unsafe_at"] = len(sensors)
                    os.write(master, enc.action(-1, source=ActionSource.FALLBACK, reason=Reason.NO_DATA,
                                                answers_seq=(frame.seq + 30000) & 0xFFFF))
                    state["safe_sent_at"] = len(sensors)
                else:
                    os.write(master, enc.heartbeat())  # keep the host present: only the ACTION may make it safe
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    after = sensors[state["safe_sent_at"] + 1:]
    assert state["unsafe_at"] is not None and after, "the device never left its safe state"
    assert all(s.flags & Flags.DEVICE_SAFE for s in after)
    assert summary["actions_bad"] == 1 and summary["safe_entries"] == 1


# --- the sketch with a link key -------------------------------------------------------------------

SKETCH_KEY = bytes(range(1, 33))
SIGNED_DEFINE = "-DEDGE_LINK_KEY={" + ",".join(str(b) for b in SKETCH_KEY) + "}"


def test_arduino_sketch_with_a_key_obeys_only_its_session_and_keeps_its_nonces_fresh(tmp_path):
    """The signed sketch on the simulated clock: the host's offer starts a session (SESSION and HELLO back,
    signed), a signed ACTION is obeyed, an unsigned or replayed one is not, and silence ends the session.
    A second boot (EEPROM kept) answers with a different nonce."""
    from firmware_bridge.auth import LinkAuth, Side

    harness = build_sketch(tmp_path / "harness_signed", SIGNED_DEFINE)
    eeprom = tmp_path / "eeprom.bin"
    host = LinkAuth(SKETCH_KEY, Side.HOST)
    offer_nonce = host.offer()
    enc = FrameEncoder(clock_us=lambda: 0, auth=host)
    from firmware_bridge.protocol import Session
    offer = enc.encode(Session(host_nonce=offer_nonce))
    device_nonce = bytes([1, 0, 0, 0, 1, 0, 0, 0])  # boot 1 (a fresh EEPROM), session 1 of that boot
    host.session = offer_nonce + device_nonce  # as if the answer had arrived: the script is written ahead
    go = enc.action(1, source=ActionSource.MODEL, answers_seq=0, name="walk")
    script = [(1000, offer), (1100, go), (1200, enc.heartbeat()),
              (1300, encode(Action(action=2, source=ActionSource.MODEL, answers_seq=0))),  # unsigned: dropped
              (1350, enc.action(-1, source=ActionSource.FALLBACK, answers_seq=0)), (1400, go)]  # replayed: dropped
    env_harness = [str(harness)]

    def run(until):
        path = tmp_path / "script.txt"
        path.write_text("".join(f"{ms} {data.hex()}\n" for ms, data in script))
        proc = subprocess.run([*env_harness, str(path), str(until)], capture_output=True, text=True,
                              timeout=TIMEOUT, env=dict(os.environ, HARNESS_EEPROM=str(eeprom)))
        assert proc.returncode == 0, proc.stderr
        observer = LinkAuth(SKETCH_KEY, Side.HOST)
        observer.session = offer_nonce + bytes(8)
        dec, frames, leds = FrameDecoder(auth=observer), [], []
        for line in proc.stdout.splitlines():
            ms, kind, value = line.split()
            if kind == "LED":
                leds.append((int(ms), int(value)))
            else:
                frames += [(int(ms), f) for f in dec.feed(bytes.fromhex(value))]
        return frames, leds, dec

    frames, leds, dec = run(2500)
    kinds = [(ms, type(f).__name__) for ms, f in frames if not isinstance(f, Sensor)]
    assert kinds[:2] == [(1000, "Session"), (1000, "Hello")]
    assert frames[0][1].device_nonce == device_nonce
    assert all(f.flags & Flags.SIGNED for _, f in frames)
    sensors = [(ms, f) for ms, f in frames if isinstance(f, Sensor)]
    assert [ms for ms, _ in sensors] == list(range(1000, 1801, 100))  # in the session: 1000 ms until the timeout
    safe = [ms for ms, f in sensors if f.flags & Flags.DEVICE_SAFE]
    assert safe == [1000, 1400, 1500, 1600, 1700, 1800]  # obeyed the signed 1 and -1; not the unsigned 2 or the replay
    assert leds == [(0, 1), (1100, 0), (1350, 1)]
    # before the session (boot HELLO, 9 samples) and after the silence ended it (7 samples): signed in none
    assert dec.counters.unbound == 10 + 7 and dec.counters.bad_signature == 0

    frames, _, _ = run(1100)  # the board boots again: the EEPROM kept its boot counter
    assert frames[0][1].device_nonce == bytes([2, 0, 0, 0, 1, 0, 0, 0]) != device_nonce


def test_arduino_sketch_with_a_key_compiles_for_an_8_bit_avr(tmp_path):
    if shutil.which("avr-g++") is None:
        pytest.skip("avr-g++ is not installed (apt-get install gcc-avr avr-libc)")
    build_c(tmp_path / "sketch.o", compiler="avr-g++",
            flags=["-mmcu=atmega328p", "-std=gnu++11", "-Os", "-c", SIGNED_DEFINE, *SKETCH_FLAGS])


def test_c_device_with_a_key_answers_an_offer_and_is_clean_under_valgrind(sim_device_exe, log, tmp_path):
    """sim_device --link-key on stdio: the host's offer begins a session (SESSION and HELLO back, signed in it);
    host frames signed in another session are refused; valgrind finds nothing."""
    from firmware_bridge.auth import LinkAuth, Side
    from firmware_bridge.keys import load_key, write_new_key
    from firmware_bridge.protocol import Session

    key_path = tmp_path / "link.key"
    write_new_key(key_path)
    host = LinkAuth(load_key(key_path), Side.HOST)
    enc = FrameEncoder(auth=host)
    offer = host.offer()
    wire = enc.encode(Session(host_nonce=offer))
    host.session = offer + b"\x11" * 8  # not the device's nonce: these two are refused
    wire += enc.action(1, source=ActionSource.MODEL, answers_seq=3) + enc.heartbeat()
    valgrind = shutil.which("valgrind")
    cmd = [valgrind, "-q", "--error-exitcode=9"] if valgrind else []
    proc = subprocess.run([*cmd, str(sim_device_exe), str(log), "--speed", "max", "--linger", "0", "--link-key",
                           str(key_path)], input=wire, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stderr.decode().strip().splitlines()[-1])
    assert summary["sessions"] == 1 and summary["link"]["bad_signature"] == 2 and summary["actions_received"] == 0
    observer = LinkAuth(host.key, Side.HOST)
    observer.session = offer + bytes(8)
    dec = FrameDecoder(auth=observer)
    frames = dec.feed(proc.stdout)
    assert isinstance(frames[0], Session) and frames[0].host_nonce == offer and isinstance(frames[1], Hello)
    assert dec.counters.bad_signature == 0 and dec.counters.unsigned == 0
    assert dec.counters.unbound >= 1  # what it sent before the offer: signed in no session
