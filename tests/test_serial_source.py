"""The serial source and port on real ptys, against a device the test plays frame by frame.

Each test writes exactly the device's bytes and checks what the source made
of them (frames, counters) and what the host wrote back. The waits are safety
nets: nothing asserts how long anything took.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from serial_helpers import CHANNELS, ScriptedDevice, hello_for, pump_until, wait_for

from edge_infer import sources
from edge_infer.errors import SourceError
from edge_infer.sources import DEFAULT_BAUD, SerialAddress, parse_source_uri
from edge_infer.sources.serial_link import RATE_BLOCK, SEQ_RING, SerialSource
from edge_infer.sources.serial_port import Backoff, SerialPort, by_id_tip
from firmware_bridge.protocol import (
    MIN_SAFE_TIMEOUT_MS,
    Action,
    ActionSource,
    ErrorReport,
    Heartbeat,
    Hello,
    SampleType,
    SchemaMismatch,
    Sensor,
    encode,
    heartbeat_interval_s,
)


@pytest.fixture
def device(tmp_path):
    dev = ScriptedDevice(tmp_path / "dev")
    yield dev
    dev.close()


@pytest.fixture
def source(device):
    src = SerialSource(str(device.link), channels=list(CHANNELS))
    yield src
    src.close()


#: The silence after which a device that announced nothing goes safe (PROTOCOL.md section 7).
DEFAULT_SAFE_TIMEOUT_S = 0.5


def greet(source: SerialSource, device: ScriptedDevice, hello: Hello = None) -> None:
    """Open the port, wait for the host's heartbeat, answer with HELLO (as PROTOCOL.md section 7 says)."""
    pump_until(source, device, lambda _: device.of_type(Heartbeat), "the host's first heartbeat")
    device.send(hello or hello_for())


def rows(n: int, start: int = 0):
    return [tuple(float(i * 10 + c) for c in range(len(CHANNELS))) for i in range(start, start + n)]


# --- the source URI -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("serial:/dev/ttyUSB0", SerialAddress("/dev/ttyUSB0", DEFAULT_BAUD)),
    ("serial:/dev/serial/by-id/usb-Arduino_1234-if00?baud=9600", SerialAddress("/dev/serial/by-id/usb-Arduino_1234-if00", 9600)),
    ("SERIAL:/tmp/dev0?baud=250000", SerialAddress("/tmp/dev0", 250000)),
])
def test_source_uris_name_the_port_and_baud(text, expected):
    assert parse_source_uri(text) == expected


@pytest.mark.parametrize("text, message", [
    ("serial:", "names no port"),
    ("serial:/dev/ttyUSB0?baud=fast", "baud must be a positive integer"),
    ("serial:/dev/ttyUSB0?baud=0", "baud must be a positive integer"),
    ("serial:/dev/ttyUSB0?parity=E", "unknown option 'parity'"),
    ("tcp:localhost:5000", "unknown source scheme 'tcp'"),
])
def test_bad_source_uris_say_what_is_wrong(text, message):
    with pytest.raises(SourceError, match=message):
        parse_source_uri(text)


def test_reopen_backoff_doubles_up_to_two_seconds_and_restarts_after_success():
    backoff = Backoff()
    assert [backoff.next_delay() for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    backoff.reset()
    assert backoff.next_delay() == 0.1


def test_the_by_id_tip_is_given_for_names_that_change_on_replug():
    assert "/dev/serial/by-id/" in by_id_tip("/dev/ttyUSB0") and "/dev/serial/by-id/" in by_id_tip("/dev/ttyACM12")
    assert by_id_tip("/dev/serial/by-id/usb-FTDI-if00-port0") == "" and by_id_tip("/tmp/dev0") == ""


# --- greeting, HELLO, values ------------------------------------------------------------------------------


def test_the_host_speaks_first_and_ignores_sensor_frames_until_a_checked_hello(source, device):
    assert pump_until(source, device, lambda _: device.of_type(Heartbeat), "the host's first heartbeat") == []
    device.sensor(rows(1)[0], 0)  # before HELLO: not trusted
    device.send(hello_for())
    for i, values in enumerate(rows(5)):
        device.sensor(values, 100_000 * (i + 1))
    frames = pump_until(source, device, lambda got: len(got) == 5, "5 frames")
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4]
    assert [tuple(f.values) for f in frames] == rows(5)
    assert all(f.values.dtype == np.float32 for f in frames)
    assert [f.device_seq for f in frames] == [2, 3, 4, 5, 6]  # the device numbered its SENSOR, HELLO before
    assert [round(f.t, 6) for f in frames] == [0.1, 0.2, 0.3, 0.4, 0.5]
    c = source.counters()
    assert c["ignored_before_hello"] == 1 and c["hellos"] == 1 and c["sensor_frames"] == 5
    assert c["frames"] == 7 and c["crc_errors"] == 0 and c["seq_gaps"] == 0
    assert c["low_latency"] is False  # a pty has no ASYNC_LOW_LATENCY: said, and not fatal
    assert source.hello.fw_version == (1, 2, 3)


def test_int16_samples_become_physical_values_with_the_hello_scales(source, device):
    scales = [0.5, 0.25, 2.0, 1.0, 0.125, 4.0]
    greet(source, device, hello_for(sample_type=SampleType.INT16, scales=scales))
    device.sensor([100, -200, 300, -32768, 32767, 0], 0, SampleType.INT16)
    (frame,) = pump_until(source, device, lambda got: len(got) == 1, "one frame")
    assert list(frame.values) == [50.0, -50.0, 600.0, -32768.0, 4095.875, 0.0]


def test_a_device_for_other_channels_is_refused_with_one_line_naming_both_sides(source, device):
    greet(source, device, hello_for(channels=("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "mag_z")))
    with pytest.raises(SchemaMismatch) as info:
        pump_until(source, device, lambda _: False, "the refusal")
    message = str(info.value)
    assert "\n" not in message and "mag_z" in message and "gyr_z" in message
    assert isinstance(info.value, SourceError)  # the CLI prints it as one line and exits 2
    device.sensor(rows(1)[0], 0)
    assert not source.send_action(0, ActionSource.MODEL, 0, 0, "rest")  # a refused device gets no ACTION


def test_a_sensor_frame_that_does_not_fit_the_hello_is_dropped_and_counted(source, device, caplog):
    greet(source, device)
    device.sensor(rows(1)[0][:4], 0)  # 4 values, HELLO said 6
    device.sensor(rows(1)[0], 100_000)
    with caplog.at_level(logging.WARNING):
        frames = pump_until(source, device, lambda got: len(got) == 1, "the good frame")
    assert len(frames) == 1 and source.counters()["sensor_mismatch"] == 1
    assert "has 4 float32 values, its HELLO announced 6" in caplog.text


def test_without_a_model_the_source_takes_the_devices_channels(device):
    source = SerialSource(str(device.link))
    greet(source, device, hello_for(channels=("a", "b")))
    hello = source.wait_for_hello(30)
    assert source.channels == ["a", "b"] and hello.channel_count == 2
    source.close()


def test_a_bare_model_takes_any_device_with_its_channel_count(device):
    source = SerialSource(str(device.link), channels=None, channel_count=3)
    assert source.channels == ["ch0", "ch1", "ch2"]
    greet(source, device, hello_for(channels=("a", "b")))
    with pytest.raises(SchemaMismatch, match="sends 2 channels .* the model takes 3"):
        pump_until(source, device, lambda _: False, "the refusal")
    source.close()


def test_open_live_source_without_channels_waits_for_the_hello_and_says_so_if_none_comes(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "HELLO_TIMEOUT_S", 0.3)
    with pytest.raises(SourceError, match="no HELLO from the device .*port not open"):
        sources.open_live_source(f"serial:{tmp_path / 'nothing-here'}")


# --- a noisy line ---------------------------------------------------------------------------------


def test_damaged_frames_are_counted_and_the_next_intact_frame_is_decoded(source, device):
    greet(source, device)
    good = rows(6)
    device.sensor(good[0], 0)
    wire = bytearray(encode(Sensor(sample_type=SampleType.FLOAT32, values=good[1], seq=2, t_us=100_000)))
    wire[10] ^= 0x04  # a flipped bit: the CRC catches it
    device.write(bytes(wire))
    wire = encode(Sensor(sample_type=SampleType.FLOAT32, values=good[2], seq=3, t_us=200_000))
    device.write(wire[:5] + wire[6:])  # a lost byte
    device.write(b"\x13\x37\x00\x00\xff\xfe\x00")  # noise: two broken chunks and an empty one
    device.enc.next_seq = 4
    for i in (3, 4, 5):
        device.sensor(good[i], 100_000 * i)
    frames = pump_until(source, device, lambda got: len(got) == 4, "the intact frames")
    assert [tuple(f.values) for f in frames] == [good[0], good[3], good[4], good[5]]
    c = source.counters()
    assert (c["crc_errors"], c["cobs_errors"]) == (1, 3) and c["frames"] == 5  # HELLO and 4 SENSOR frames
    assert c["seq_gaps"] == 2 and c["resyncs"] == 1  # seq 2 and 3 lost; one recovery after the burst


def test_device_errors_and_heartbeats_are_counted(source, device, caplog):
    greet(source, device)
    device.send(Heartbeat())
    device.send(ErrorReport(code=1, text="IMU does not answer"))
    with caplog.at_level(logging.WARNING):
        pump_until(source, device, lambda _: source.counters()["device_errors"] == 1, "the ERROR frame")
    assert source.counters()["heartbeats_received"] == 1
    assert "reports error 1: IMU does not answer" in caplog.text


# --- time and epochs --------------------------------------------------------------------------------


def test_device_time_is_unwrapped_across_the_32_bit_wrap(source, device):
    greet(source, device)
    stamps = [0xFFFF_FFFF - 150_000, 0xFFFF_FFFF - 50_000, 49_999, 149_999]
    for values, t_us in zip(rows(4), stamps):
        device.sensor(values, t_us)
    frames = pump_until(source, device, lambda got: len(got) == 4, "4 frames")
    steps = np.diff([f.t for f in frames])
    assert np.allclose(steps, 0.1)


def test_a_hello_that_does_not_continue_the_numbering_is_a_reboot_a_new_epoch(source, device):
    restarts = []
    source.restart_listeners.append(lambda: restarts.append(source.counters()["sensor_frames"]))
    greet(source, device)
    for i, values in enumerate(rows(3)):
        device.sensor(values, 5_000_000 + 100_000 * i)
    before = pump_until(source, device, lambda got: len(got) == 3, "3 frames")
    assert source.device_seq_of(before[-1].seq) == 3  # HELLO was 0
    device.send(Heartbeat())  # the host came back after a stall: HELLO continues the numbering, same epoch
    device.send(hello_for())
    device.sensor(rows(1, 3)[0], 5_300_000)
    pump_until(source, device, lambda got: len(got) == 1, "the 4th frame")
    assert source.counters()["device_restarts"] == 0 and restarts == [0]  # only the connect

    device.enc.next_seq = 0  # the board rebooted: seq from 0, its clock from 0
    device.send(hello_for())
    device.sensor(rows(1, 4)[0], 0)
    after = pump_until(source, device, lambda got: len(got) == 1, "a frame after the reboot")
    assert source.counters()["device_restarts"] == 1 and restarts == [0, 4]
    assert source.device_seq_of(before[-1].seq) is None  # that seq means nothing to the rebooted device
    assert source.device_seq_of(after[-1].seq) == 1
    assert after[-1].t > before[-1].t  # the time line does not go back
    assert not source.send_action(0, ActionSource.MODEL, 0, before[-1].seq, "rest")
    assert source.counters()["actions_unsent"] == 1


def test_actions_answer_the_devices_sequence_numbers(source, device):
    greet(source, device)
    device.enc.next_seq = 1000
    for i, values in enumerate(rows(3)):
        device.sensor(values, 100_000 * i)
    frames = pump_until(source, device, lambda got: len(got) == 3, "3 frames")
    assert source.send_action(2, ActionSource.MODEL, 0, frames[1].seq, "run")
    assert source.send_action(-1, ActionSource.FALLBACK, 4, frames[2].seq, "idle")
    wait_for(lambda: device.read(0.02) is not None and len(device.of_type(Action)) == 2, "2 ACTIONs")
    actions = device.of_type(Action)
    assert [(a.action, a.answers_seq, a.name, int(a.reason)) for a in actions] == [(2, 1001, "run", 0),
                                                                                  (-1, 1002, "idle", 4)]
    assert source.device_seq_of(frames[0].seq - 1) is None and source.device_seq_of(frames[2].seq + 1) is None


def test_only_recent_frames_can_be_answered(source, device):
    greet(source, device)
    for i in range(SEQ_RING + 2):
        device.sensor(rows(1)[0], 1000 * i)
    pump_until(source, device, lambda got: len(got) == SEQ_RING + 2, "the frames")
    assert source.device_seq_of(0) is None and source.device_seq_of(2) == 3


# --- keep-alive ---------------------------------------------------------------------------------------


def test_an_idle_host_sends_heartbeats_so_the_device_stays_out_of_its_safe_state(source, device):
    greet(source, device, hello_for(safe_timeout_ms=200))
    pump_until(source, device, lambda _: len(device.of_type(Heartbeat)) >= 4, "heartbeats while idle")
    assert source.counters()["heartbeats_sent"] == len(device.of_type(Heartbeat))


def test_without_a_hello_the_host_goes_quiet_then_asks_again(source, device):
    """A device that thinks the host never left does not say HELLO: the host must fall silent first.

    The device is the observer: it stamps when each host frame reaches it. The silence it sees between the
    last heartbeat before the host gave up and the first one after must outlast the default safe timeout
    (500 ms; the host stays quiet 750 ms). A late read of the frame *before* the silence can only shorten
    the measured gap, so 250 ms of observer delay separate a correct host from a failing test; a host that
    kept talking fails whatever the delays.
    """
    arrivals = []  # (monotonic time the device read it, frame)

    def stamp(_):
        now = time.monotonic()
        arrivals.extend((now, f) for f in device.received[len(arrivals):])
        return False

    def until(cond, what):
        pump_until(source, device, lambda got: stamp(got) or cond(got), what)

    until(lambda _: device.of_type(Heartbeat), "the first heartbeat")
    until(lambda _: source.counters()["hello_requests"] == 1, "the host to go quiet")
    quiet_from, heartbeats = len(arrivals), source.counters()["heartbeats_sent"]
    until(lambda _: len(arrivals) > quiet_from, "the host to speak again")
    before, after = arrivals[quiet_from - 1], arrivals[quiet_from]
    assert isinstance(before[1], Heartbeat) and isinstance(after[1], Heartbeat)
    assert after[0] - before[0] >= DEFAULT_SAFE_TIMEOUT_S, "the host did not stay quiet past the safe timeout"
    assert source.counters()["heartbeats_sent"] == heartbeats + 1  # nothing went out during the silence
    device.send(hello_for())
    device.sensor(rows(1)[0], 0)
    pump_until(source, device, lambda got: len(got) == 1, "a frame after the HELLO")
    assert source.counters()["hellos"] == 1


# --- the port comes and goes ------------------------------------------------------------------------


def test_an_unplugged_port_is_survived_and_reopened_when_the_device_comes_back(source, device, caplog):
    restarts = []
    source.restart_listeners.append(lambda: restarts.append(True))
    greet(source, device)
    device.sensor(rows(1)[0], 0)
    (old,) = pump_until(source, device, lambda got: len(got) == 1, "a frame")
    with caplog.at_level(logging.WARNING):
        device.unplug()
        pump_until(source, device, lambda _: source.counters()["disconnects"] == 1, "the loss to be noticed")
        assert source.recv(0.05) is None  # no exception: the loop keeps deciding (no_data)
        assert not source.send_action(-1, ActionSource.FALLBACK, 4, old.seq, "idle")
        back = ScriptedDevice(device.link)
        try:
            greet(source, back)
            back.sensor(rows(1, 1)[0], 0)
            (new,) = pump_until(source, back, lambda got: len(got) == 1, "a frame after")
        finally:
            back.close()
    c = source.counters()
    assert c["reconnects"] == 1 and c["disconnects"] == 1 and c["disconnected_ms"] >= 0
    assert len(restarts) == 2  # the first connect, the reconnect: the runtime resets its window
    assert new.seq == old.seq + 1 and new.t >= old.t
    assert source.device_seq_of(old.seq) is None
    assert "lost" in caplog.text and "is back after" in caplog.text


def test_a_port_missing_at_start_is_waited_for(tmp_path, caplog):
    link = tmp_path / "later"
    source = SerialSource(str(link), channels=list(CHANNELS))
    with caplog.at_level(logging.WARNING):
        assert source.recv(0.05) is None
    assert "does not exist (yet): waiting for the device" in caplog.text
    device = ScriptedDevice(link)
    try:
        greet(source, device)
        device.sensor(rows(1)[0], 0)
        pump_until(source, device, lambda got: len(got) == 1, "a frame")
        assert source.counters()["reconnects"] == 0  # a first open is not a reconnect
    finally:
        device.close()
        source.close()


def test_a_file_that_is_not_a_serial_port_is_refused_at_once(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("t,a\n")
    with pytest.raises(SourceError, match="is not a serial port"):
        SerialSource(str(path), channels=["a"]).recv(0.05)


def test_a_port_held_by_another_program_is_refused_with_a_hint(source, device):
    greet(source, device)
    other = SerialSource(str(device.link), channels=list(CHANNELS))
    with pytest.raises(SourceError, match="in use by another program"):
        other.recv(0.05)


def test_a_missing_port_is_opened_as_soon_as_it_reappears_not_at_the_next_backoff_step(tmp_path):
    clock = [100.0]  # the retry schedule's clock stands still: only the path's return can let the open through
    link = tmp_path / "dev"
    port = SerialPort(str(link), DEFAULT_BAUD, now=lambda: clock[0])
    assert not port.open_if_due() and port.retry_at == 100.1
    assert not port.open_if_due()  # still missing: no attempt before the backoff step
    device = ScriptedDevice(link)
    try:
        assert port.open_if_due() and port.connected
    finally:
        port.close()
        device.close()


# --- the host behaviour a device must fit (PROTOCOL.md 7.2) ----------------------------------------


@pytest.mark.parametrize("safe_timeout_ms, interval_s", [
    (0, 0.125), (1, 0.025), (99, 0.025), (100, 0.025), (200, 0.05), (500, 0.125), (4000, 1.0), (65535, 1.0)])
def test_the_heartbeat_interval_is_a_quarter_of_the_clamped_safe_timeout(safe_timeout_ms, interval_s):
    assert heartbeat_interval_s(safe_timeout_ms) == interval_s


@pytest.mark.parametrize("safe_timeout_ms", [200, 1])
def test_the_heartbeat_rate_fits_the_devices_safe_timeout(source, device, safe_timeout_ms, caplog):
    """Measured from the heartbeats' own send stamps (the host's t_us), so a busy machine cannot fake it:
    the host never speaks more often than its interval, and (safe timeout 1 ms) not 1,592 times a second."""
    interval_us = heartbeat_interval_s(safe_timeout_ms) * 1e6
    with caplog.at_level(logging.WARNING):
        greet(source, device, hello_for(safe_timeout_ms=safe_timeout_ms))
        before = len(device.of_type(Heartbeat))
        pump_until(source, device, lambda _: len(device.of_type(Heartbeat)) >= before + 12, "12 heartbeats")
    stamps = [h.t_us for h in device.of_type(Heartbeat)[before:]]
    steps = np.diff(stamps)
    assert steps.min() >= interval_us - 1000, steps  # never faster than the interval (1 ms: clock rounding)
    span_s = (stamps[-1] - stamps[0]) / 1e6
    assert (len(stamps) - 1) / span_s <= 1e6 / interval_us
    assert ("shorter than a host can keep fed" in caplog.text) == (safe_timeout_ms < MIN_SAFE_TIMEOUT_MS)


def test_a_re_hello_with_its_numbering_restarted_is_not_a_reboot(source, device):
    """A device that says HELLO again every few frames, its seq from 0 each time, its clock running on."""
    restarts = []
    source.restart_listeners.append(lambda: restarts.append(True))
    greet(source, device)
    t = 0
    for burst in range(4):
        device.enc.next_seq = 0
        device.send(hello_for())
        for _ in range(5):
            t += 100_000
            device.sensor(rows(1)[0], t)
    frames = pump_until(source, device, lambda got: len(got) == 20, "20 frames")
    assert source.counters()["device_restarts"] == 0 and len(restarts) == 1  # the connect only
    assert np.allclose(np.diff([f.t for f in frames]), 0.1)
    assert source.counters()["hellos"] == 5


def test_a_hello_after_which_the_device_clock_went_back_is_a_reboot(source, device):
    greet(source, device)
    device.sensor(rows(1)[0], 9_000_000)
    pump_until(source, device, lambda got: len(got) == 1, "a frame")
    device.enc.next_seq = 0
    device.send(hello_for())
    device.sensor(rows(1)[0], 50_000)
    (after,) = pump_until(source, device, lambda got: len(got) == 1, "a frame after the reboot")
    assert source.counters()["device_restarts"] == 1 and after.t > 9.0


def test_a_hello_with_another_sample_rate_than_the_model_is_refused_in_one_line(device):
    source = SerialSource(str(device.link), channels=list(CHANNELS), sample_rate_hz=10.0)
    try:
        greet(source, device, Hello(**{**hello_for().__dict__, "sample_rate_millihz": 50_000}))
        with pytest.raises(SchemaMismatch) as info:
            pump_until(source, device, lambda _: False, "the refusal")
        assert "samples at 50 Hz, the model expects 10 Hz" in str(info.value) and "\n" not in str(info.value)
    finally:
        source.close()


def test_a_hello_rate_within_two_percent_of_the_model_is_taken(device):
    source = SerialSource(str(device.link), channels=list(CHANNELS), sample_rate_hz=10.0)
    try:
        greet(source, device, Hello(**{**hello_for().__dict__, "sample_rate_millihz": 10_150}))
        device.sensor(rows(1)[0], 0)
        pump_until(source, device, lambda got: len(got) == 1, "a frame")
    finally:
        source.close()


def test_a_device_clock_that_disagrees_with_its_hello_rate_is_counted_and_logged(source, device, caplog):
    greet(source, device)  # HELLO says 10 Hz
    with caplog.at_level(logging.WARNING):
        for i in range(RATE_BLOCK + 1):
            device.sensor(rows(1)[0], i * 50_000)  # but it samples at 20 Hz
        pump_until(source, device, lambda got: len(got) == RATE_BLOCK + 1, "the frames")
    assert source.counters()["rate_mismatch"] == 1
    assert "its clock (t_us) says 20 samples/s" in caplog.text and "its HELLO says 10 Hz" in caplog.text


def test_a_write_that_failed_on_a_connection_lost_since_does_not_close_the_next_one(tmp_path):
    # a write from another thread (the loop's, the backstop's) can fail on the old connection after the reader
    # has already counted its loss and opened the port again: that failure says nothing of the new connection
    # (it made the runtime count one unplug twice, 1 run in 3-10 of the unplug tests)
    device = ScriptedDevice(tmp_path / "dev")
    port = SerialPort(str(device.link), 115200)
    try:
        assert port.open_if_due()
        old = port.connection
        port.lost(OSError("unplugged"))
        port.retry_at = 0.0
        assert port.open_if_due() and port.connection is not old
        port.write_failed(OSError(5, "Input/output error"), old)  # the late news of the old connection
        assert port.read(0.01) == b"" and port.connected and port.disconnects == 1
        assert port.write(b"\x00")
        port.write_failed(OSError(5, "Input/output error"), port.connection)  # news of this one: lost
        assert port.read(0.01) is None and not port.connected and port.disconnects == 2
    finally:
        port.close()
        device.close()
