"""The signed link (PROTOCOL.md section 13) at the protocol level: key files, sessions, and the known traps.

The traps are the bugs other signed links shipped with: a timestamp that never
advanced (pymavlink #961), a missing key that quietly turned signing off (PX4
#26847), frames with bad signatures still delivered (mavlink-arduino #4), and a
timestamp taken from a frame whose signature failed (mavlink-devguide #108).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from fb_helpers import ROOT

from edge_infer.decide.reasons import Reason
from firmware_bridge import keys
from firmware_bridge.auth import AUTH_LEN, KEY_LEN, ZERO_SESSION, LinkAuth, Side
from firmware_bridge.cobs import cobs_decode, cobs_encode
from firmware_bridge.crc import crc16_ccitt_false
from firmware_bridge.protocol import (
    MAX_SIGNED_PAYLOAD,
    Action,
    ActionSource,
    ErrorReport,
    Flags,
    FrameEncoder,
    Heartbeat,
    Hello,
    SampleType,
    Sensor,
    Session,
    encode,
    schema_hash,
)
from firmware_bridge.stream import FrameDecoder

KEY = bytes(range(1, 33))
HELLO = Hello(fw_version=(1, 0, 0), sample_type=SampleType.INT16, sample_rate_millihz=10_000,
              schema_hash=schema_hash(["a", "b"], SampleType.INT16), scales=(1.0, 1.0), channels=("a", "b"))


class End:
    """One side of a link in memory: its signing state, encoder and decoder."""

    def __init__(self, side: Side, key: bytes = KEY):
        self.auth = LinkAuth(key, side)
        self.enc = FrameEncoder(auth=self.auth)
        self.dec = FrameDecoder(auth=self.auth)


def handshake(host: End, device: End) -> bytes:
    """The host offers, the device answers (SESSION, then HELLO); returns the device's answer bytes."""
    assert device.dec.feed(host.enc.encode(Session(host_nonce=host.auth.offer()))) != []
    h, d = device.auth.session[:8], device.auth.session[8:]
    answer = device.enc.encode(Session(host_nonce=h, device_nonce=d)) + device.enc.encode(HELLO)
    assert [type(f) for f in host.dec.feed(answer)] == [Session, Hello]
    assert host.auth.established and host.auth.session == device.auth.session
    return answer


@pytest.fixture
def pair():
    host, device = End(Side.HOST), End(Side.DEVICE)
    handshake(host, device)
    return host, device


def sensor(i: int) -> Sensor:
    return Sensor(sample_type=SampleType.INT16, values=(i, -i))


# --- the handshake and normal traffic -----------------------------------------------------------


def test_both_sides_agree_on_a_session_and_frames_flow_both_ways(pair):
    host, device = pair
    got = host.dec.feed(b"".join(device.enc.encode(sensor(i)) for i in range(5)))
    assert [f.values for f in got] == [(i, -i) for i in range(5)] and all(f.flags & Flags.SIGNED for f in got)
    action = host.enc.action(1, source=ActionSource.MODEL, answers_seq=got[-1].seq, name="walk")
    (back,) = device.dec.feed(action)
    assert isinstance(back, Action) and back.answers_seq == got[-1].seq
    assert host.dec.counters.auth_dropped == device.dec.counters.auth_dropped == 0


def test_every_frame_a_keyed_encoder_makes_is_signed_and_its_ts_advances():
    """pymavlink #961: a signing timestamp that never advanced let recorded frames be played again."""
    device = End(Side.DEVICE)
    frames = [Heartbeat(), sensor(1), HELLO, ErrorReport(code=1, text="x"), sensor(2)] * 20
    stamps = []
    for frame in frames:
        inner = cobs_decode(device.enc.encode(frame)[:-1])
        assert inner[2] & Flags.SIGNED
        stamps.append(int.from_bytes(inner[-2 - 8 - 6:-2 - 8], "little"))
    assert stamps == list(range(1, len(frames) + 1))


def test_the_signed_payload_limit_leaves_room_for_the_trailer():
    device = End(Side.DEVICE)
    big = Hello(fw_version=(1, 0, 0), sample_type=SampleType.FLOAT32, sample_rate_millihz=0, schema_hash=0,
                scales=(1.0,) * 30, channels=tuple(f"c{i:02d}" for i in range(30)))  # 16 + 120 + 119 bytes
    assert len(encode(big)) > 0
    with pytest.raises(ValueError, match="signed payload"):
        device.enc.encode(big)
    assert MAX_SIGNED_PAYLOAD + AUTH_LEN == 255


def test_a_frame_cannot_claim_to_be_signed_without_a_signature():
    with pytest.raises(ValueError, match="SIGNED flag is set by signing"):
        encode(Heartbeat(flags=Flags.SIGNED))


# --- the traps ------------------------------------------------------------------------------------


def test_a_keyed_receiver_delivers_no_unsigned_frame_of_any_type():
    """PX4 #26847: a missing key silently turned signing off. Here a key, once given, is required of every frame."""
    host = End(Side.HOST)
    unsigned = [HELLO, sensor(1), Heartbeat(), ErrorReport(code=3), Session(host_nonce=b"\x01" * 8),
                Action(action=1, source=ActionSource.MODEL, answers_seq=0)]
    assert host.dec.feed(b"".join(encode(f) for f in unsigned)) == []
    assert host.dec.counters.unsigned == len(unsigned) and host.dec.counters.resyncs == 0


def test_a_frame_with_any_bit_of_it_changed_is_never_delivered_even_with_its_crc_fixed(pair):
    """mavlink-arduino #4: frames with bad signatures were still delivered to the application."""
    host, device = pair
    inner = cobs_decode(device.enc.encode(sensor(7))[:-1])
    body = inner[:-2]
    delivered = 0
    for bit in range(8 * len(body)):
        if bit // 8 == 2 and bit % 8 == 1:
            continue  # the SIGNED flag itself: without it the frame is counted as unsigned (below)
        tampered = bytearray(body)
        tampered[bit // 8] ^= 1 << (bit % 8)
        tampered += crc16_ccitt_false(bytes(tampered)).to_bytes(2, "little")
        delivered += len(host.dec.feed(cobs_encode(bytes(tampered)) + b"\x00"))
    assert delivered == 0
    c = host.dec.counters
    assert c.frames == 2 and c.auth_dropped + c.bad_length + c.unknown_type + c.bad_version + c.bad_value > 0
    assert c.replayed == 0 or c.bad_signature > 0  # a changed ts or tag never passes as merely "replayed"


def test_a_failed_signature_does_not_move_the_replay_floor(pair):
    """mavlink-devguide #108: never take a timestamp from a frame whose signature failed."""
    host, device = pair
    floor = host.auth.rx_last
    forged = End(Side.DEVICE, key=bytes(range(50, 82)))
    forged.auth.session, forged.auth.tx_ts = host.auth.session, 10**9
    assert host.dec.feed(forged.enc.encode(sensor(1))) == []
    assert host.auth.rx_last == floor and host.dec.counters.bad_signature == 1
    assert len(host.dec.feed(device.enc.encode(sensor(2)))) == 1  # the real device's next frame still passes


def test_a_recorded_frame_played_again_is_refused(pair):
    host, device = pair
    wire = device.enc.encode(sensor(1))
    assert len(host.dec.feed(wire)) == 1
    assert host.dec.feed(wire) == [] and host.dec.counters.replayed == 1


def test_a_frame_reflected_to_its_sender_is_refused(pair):
    host, device = pair
    action = host.enc.action(-1, source=ActionSource.FALLBACK, answers_seq=0, reason=Reason.SHUTDOWN)
    assert host.dec.feed(action) == [] and host.dec.counters.bad_signature == 1
    heartbeat = device.enc.heartbeat()
    assert device.dec.feed(heartbeat) == [] and device.dec.counters.bad_signature == 1


# --- replay across reboots, restarts, re-HELLO and timeouts -----------------------------------


def test_host_frames_recorded_before_the_device_rebooted_are_refused_after_it(pair):
    host, device = pair
    recorded = [host.enc.action(2, source=ActionSource.MODEL, answers_seq=i) for i in range(3)]
    rebooted = End(Side.DEVICE)  # RAM is gone: no session, a new nonce at the next offer
    assert rebooted.dec.feed(b"".join(recorded)) == []
    assert rebooted.dec.counters.bad_signature == 3
    handshake(host, rebooted)
    assert rebooted.dec.feed(b"".join(recorded)) == []  # nor in the new session
    assert rebooted.dec.counters.bad_signature == 6


def test_a_whole_device_session_played_to_a_restarted_host_is_refused(pair):
    """A host that restarts forgets everything; the device's recorded answer and frames name the old offer."""
    host, device = pair
    recording = handshake(host, device) + b"".join(device.enc.encode(sensor(i)) for i in range(3))
    restarted = End(Side.HOST)
    restarted.auth.offer()  # it speaks first, with a nonce nobody has seen
    assert restarted.dec.feed(recording) == []
    c = restarted.dec.counters
    assert c.replayed == 1 and c.bad_signature == 4 and not restarted.auth.established


def test_a_re_offer_ends_the_old_session_for_held_back_frames(pair):
    host, device = pair
    held = host.enc.action(1, source=ActionSource.MODEL, answers_seq=1)  # an attacker holds it back
    handshake(host, device)  # the host offers again (e.g. it saw the device lose its session)
    assert device.dec.feed(held) == [] and device.dec.counters.bad_signature == 1


def test_a_device_that_timed_out_ends_its_session_and_the_host_learns_it(pair):
    host, device = pair
    held = host.enc.action(1, source=ActionSource.MODEL, answers_seq=1)
    device.auth.end()  # the host was silent past the safe timeout
    assert device.dec.feed(held) == []
    assert host.dec.feed(device.enc.encode(sensor(1))) == [] and host.dec.counters.unbound == 1


def test_a_re_hello_changes_nothing_in_the_session(pair):
    host, device = pair
    session = host.auth.session
    assert [type(f) for f in host.dec.feed(device.enc.encode(HELLO) + device.enc.encode(sensor(1)))] == [Hello,
                                                                                                       Sensor]
    assert host.auth.session == device.auth.session == session


def test_an_offer_played_again_to_the_device_is_refused(pair):
    host, device = pair
    offer = host.enc.encode(Session(host_nonce=host.auth.offer()))
    assert len(device.dec.feed(offer)) == 1
    assert device.dec.feed(offer) == [] and device.dec.counters.replayed == 1


def test_an_old_offer_played_to_the_device_can_only_make_it_start_over(pair):
    """The worst an old SESSION frame can do: a new session no host is in, so the device stays safe."""
    host, device = pair
    old = host.enc.encode(Session(host_nonce=host.auth.offer()))
    handshake(host, device)
    assert len(device.dec.feed(old)) == 1 and device.auth.session[:8] != host.auth.session[:8]
    action = host.enc.action(1, source=ActionSource.MODEL, answers_seq=0)
    assert device.dec.feed(action) == [] and device.dec.counters.bad_signature == 1


def test_a_receiver_without_a_key_takes_no_signed_frame(pair):
    _, device = pair
    keyless = FrameDecoder()
    assert keyless.feed(device.enc.encode(sensor(1))) == [] and keyless.counters.no_key == 1


def test_the_zero_session_is_never_a_session():
    host = End(Side.HOST)
    device = End(Side.DEVICE)  # no session: it signs in the zero session
    assert host.auth.session == ZERO_SESSION
    assert host.dec.feed(device.enc.encode(sensor(1))) == [] and host.dec.counters.unbound == 1


# --- key files ------------------------------------------------------------------------------------


def write(path, data: bytes, mode: int = 0o600):
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_a_key_file_holds_32_raw_bytes_or_64_hex_digits(tmp_path):
    assert keys.load_key(write(tmp_path / "raw", KEY)) == KEY
    assert keys.load_key(write(tmp_path / "hex", KEY.hex().encode() + b"\n")) == KEY
    assert keys.load_key(write(tmp_path / "HEX", KEY.hex().upper().encode(), 0o400)) == KEY


@pytest.mark.parametrize("data, mode, message", [
    (KEY, 0o644, "accessible to others \\(mode 0644\\); chmod 600"),
    (KEY, 0o640, "accessible to others \\(mode 0640\\)"),
    (KEY, 0o602, "accessible to others"),
    (KEY[:31], 0o600, "must hold 32 raw bytes or 64 hex digits, not 31 bytes"),
    (KEY.hex().encode()[:-1], 0o600, "must hold 32 raw bytes or 64 hex digits"),
    (b"z" * 64, 0o600, "must hold 32 raw bytes or 64 hex digits"),
    (b"", 0o600, "not 0 bytes"),
    (bytes(KEY_LEN), 0o600, "all zeros"),
])
def test_a_key_file_that_cannot_be_trusted_is_refused_in_one_line(tmp_path, data, mode, message):
    with pytest.raises(keys.LinkKeyError, match=message) as info:
        keys.load_key(write(tmp_path / "key", data, mode))
    assert "\n" not in str(info.value)


def test_keygen_writes_a_private_key_and_never_overwrites_one(tmp_path):
    path = tmp_path / "link.key"
    run = [sys.executable, "-m", "firmware_bridge.keys"]
    proc = subprocess.run([*run, "keygen", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and stat.S_IMODE(path.stat().st_mode) == 0o600
    key = keys.load_key(path)
    again = subprocess.run([*run, "keygen", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 2 and "never overwritten" in again.stderr and keys.load_key(path) == key
    header = subprocess.run([*run, "c-header", str(path)], cwd=ROOT, capture_output=True, text=True).stdout
    assert "#define EDGE_LINK_KEY" in header and f"0x{key[0]:02x}" in header and header.count("0x") == 32


def test_a_key_path_that_is_not_a_file_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(keys.LinkKeyError, match="is not a regular file"):
        keys.load_key(fifo)
    with pytest.raises(keys.LinkKeyError, match="cannot read it"):
        keys.load_key(tmp_path / "missing")
