"""The Python codec: frames round-trip, bad input is counted not raised, the API fits a serial reader."""

from __future__ import annotations

import math
import re
import struct

import numpy as np
import pytest
from fb_helpers import C_DIR, CHANNELS

from edge_infer.decide.reasons import Reason
from edge_infer.errors import SourceError
from firmware_bridge import protocol as p
from firmware_bridge.cobs import cobs_decode, cobs_encode, max_encoded_len
from firmware_bridge.crc import crc16_ccitt_false, crc32_iso_hdlc
from firmware_bridge.stream import COUNTER_NAMES, FrameDecoder

HELLO = p.Hello(fw_version=(1, 2, 3), sample_type=p.SampleType.INT16, sample_rate_millihz=10_000,
                schema_hash=p.schema_hash(CHANNELS, p.SampleType.INT16), scales=(0.5,) * 3 + (0.25,) * 3,
                channels=CHANNELS, seq=0, t_us=17)

FRAMES = [
    HELLO,
    p.Sensor(seq=1, t_us=100_000, sample_type=p.SampleType.INT16, values=(0, -1, 32767, -32768, 5, 6)),
    p.Sensor(seq=2, t_us=200_000, flags=p.Flags.DEVICE_SAFE, sample_type=p.SampleType.FLOAT32, values=(1.5, -2.25)),
    p.Action(seq=3, action=4, source=p.ActionSource.MODEL, reason=Reason.NONE, answers_seq=2, name="jump"),
    p.Action(seq=4, action=p.SAFE_ACTION, source=p.ActionSource.FALLBACK, reason=Reason.NO_DATA, answers_seq=0),
    p.Heartbeat(seq=5, t_us=2**32 - 1),
    p.ErrorReport(seq=6, code=p.ErrorCode.SENSOR, text="IMU \u26a0 timeout"),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: type(f).__name__)
def test_every_frame_type_round_trips(frame):
    wire = p.encode(frame)
    assert wire.endswith(b"\x00") and b"\x00" not in wire[:-1]
    assert p.decode_frame(wire[:-1]) == frame
    dec = FrameDecoder()
    assert dec.feed(wire) == [frame]
    assert dec.counters.frames == 1 and dec.counters.rejected == 0


def test_a_stream_of_frames_decodes_in_order_whatever_the_read_sizes():
    wire = b"".join(map(p.encode, FRAMES))
    for size in (1, 2, 3, 7, 64, len(wire)):
        dec = FrameDecoder()
        got = [f for i in range(0, len(wire), size) for f in dec.feed(wire[i:i + size])]
        assert got == FRAMES
        assert dec.counters.seq_gaps == 0


def test_feed_accepts_bytearray_and_memoryview():
    wire = p.encode(FRAMES[1])
    assert FrameDecoder().feed(bytearray(wire)) == [FRAMES[1]]
    assert FrameDecoder().feed(memoryview(wire)) == [FRAMES[1]]


def test_crc_check_values_are_the_catalogued_ones():
    assert crc16_ccitt_false(b"123456789") == 0x29B1
    assert crc32_iso_hdlc(b"123456789") == 0xCBF43926


@pytest.mark.parametrize("n", [0, 1, 253, 254, 255, 507, 508, 509, 1000])
def test_cobs_overhead_is_at_most_one_byte_per_254(n):
    for data in (bytes([1]) * n, bytes(n), bytes(i % 256 for i in range(n))):
        enc = cobs_encode(data)
        assert b"\x00" not in enc and cobs_decode(enc) == data
        assert len(enc) <= max_encoded_len(n) == n + max(1, math.ceil(n / 254))


def test_largest_frame_fits_the_documented_buffers():
    assert (p.MAX_INNER, p.MAX_ENCODED, p.MAX_WIRE) == (266, 268, 269)


def test_schema_hash_is_crc32_of_the_canonical_string():
    assert p.schema_string(CHANNELS, p.SampleType.INT16) == "int16:acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z"
    assert p.schema_hash(CHANNELS, p.SampleType.FLOAT32) == crc32_iso_hdlc(
        b"float32:acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z")
    assert p.schema_hash(CHANNELS, p.SampleType.INT16) != p.schema_hash(CHANNELS, p.SampleType.FLOAT32)
    assert p.schema_hash(CHANNELS, 1) != p.schema_hash(tuple(reversed(CHANNELS)), 1)
    for bad in ([], ["a,b"], [""], ["a\n"]):
        with pytest.raises(ValueError):
            p.schema_hash(bad, p.SampleType.INT16)


def test_check_hello_accepts_the_model_channels_and_refuses_others_clearly():
    p.check_hello(HELLO, list(CHANNELS))
    with pytest.raises(p.SchemaMismatch) as err:
        p.check_hello(HELLO, ["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "mag_z"])
    msg = str(err.value)
    assert isinstance(err.value, SourceError) and "\n" not in msg
    assert "acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z" in msg and "mag_z" in msg and "flash" in msg


def test_physical_values_apply_the_hello_scales():
    values = HELLO.physical_values(FRAMES[1])
    assert values.dtype == np.float32 and values.tolist() == [0.0, -0.5, 16383.5, -8192.0, 1.25, 1.5]
    assert HELLO.fits(FRAMES[1]) and not HELLO.fits(FRAMES[2])
    assert HELLO.sample_rate_hz == 10.0 and HELLO.channel_count == 6
    with pytest.raises(ValueError):
        HELLO.physical_values(FRAMES[2])


def test_frame_encoder_numbers_frames_and_wraps():
    enc = p.FrameEncoder(clock_us=lambda: 2**32 + 5, first_seq=65535)
    dec = FrameDecoder()
    a = dec.feed(enc.action(2, source=p.ActionSource.MODEL, answers_seq=9, name="walk"))[0]
    hb = dec.feed(enc.heartbeat())[0]
    assert (a.seq, a.t_us, a.action, a.name, a.reason) == (65535, 5, 2, "walk", Reason.NONE)
    assert hb.seq == 0 and dec.counters.seq_gaps == 0


def test_encode_action_is_ready_to_write():
    wire = p.encode_action(3, source=p.ActionSource.FALLBACK, reason=Reason.LOW_CONFIDENCE, answers_seq=7)
    frame = FrameDecoder().feed(wire)[0]
    assert (frame.action, frame.source, frame.reason, frame.answers_seq) == (3, 1, Reason.LOW_CONFIDENCE, 7)


def test_long_names_and_texts_are_cut_at_a_character_boundary():
    action = p.Action(action=0, source=p.ActionSource.MODEL, answers_seq=0, name="ab" + "\u00e9" * 20)
    name = p.decode_frame(p.encode(action)[:-1]).name
    assert name == "ab" + "\u00e9" * 11 and len(name.encode()) == 24
    err = p.decode_frame(p.encode(p.ErrorReport(code=1, text="x" * 100))[:-1])
    assert err.text == "x" * p.MAX_ERROR_TEXT


@pytest.mark.parametrize("frame", [
    p.Sensor(sample_type=p.SampleType.INT16, values=()),
    p.Sensor(sample_type=p.SampleType.INT16, values=(1,) * 33),
    p.Sensor(sample_type=p.SampleType.INT16, values=(40000,)),
    p.Sensor(sample_type=p.SampleType.INT16, values=(1.5,)),
    p.Action(action=-2, source=p.ActionSource.MODEL, answers_seq=0),
    p.Action(action=1, source=p.ActionSource.MODEL, answers_seq=70000),
    p.Action(action=1, source=7, answers_seq=0),
    p.Hello(fw_version=(1, 0, 0), sample_type=1, sample_rate_millihz=1, schema_hash=0, scales=()),
    p.Hello(fw_version=(1, 0, 0), sample_type=1, sample_rate_millihz=1, schema_hash=0, scales=(1.0,),
            channels=("a", "b")),
    p.Hello(fw_version=(1, 0, 0), sample_type=1, sample_rate_millihz=1, schema_hash=0, scales=(1.0,) * 32,
            channels=tuple(f"channel_{i:02d}" for i in range(32))),
    p.ErrorReport(code=70000),
])
def test_encoding_a_field_that_cannot_go_on_the_wire_is_a_value_error(frame):
    with pytest.raises(ValueError):
        p.encode(frame)


def test_unknown_reason_from_a_newer_host_is_kept_as_its_number():
    wire = p.encode(p.Action(action=0, source=p.ActionSource.MODEL, reason=99, answers_seq=0))
    assert FrameDecoder().feed(wire)[0].reason == 99


def test_oversize_garbage_keeps_memory_bounded_and_is_counted_once():
    dec = FrameDecoder()
    for _ in range(100):
        assert dec.feed(b"\x01" * 1000) == []
        assert len(dec._buf) <= p.MAX_ENCODED
    assert dec.feed(b"\x00" + p.encode(FRAMES[5])) == [FRAMES[5]]
    assert (dec.counters.oversize, dec.counters.resyncs) == (1, 1)


def test_reset_forgets_a_partial_frame_and_the_seq_anchor():
    dec = FrameDecoder()
    dec.feed(p.encode(p.Heartbeat(seq=10)) + p.encode(p.Heartbeat(seq=11))[:5])
    dec.reset()
    assert dec.feed(p.encode(p.Heartbeat(seq=500))) == [p.Heartbeat(seq=500)]
    assert dec.counters.seq_gaps == 0 and dec.counters.rejected == 0


def test_counter_names_are_the_documented_ones():
    assert COUNTER_NAMES == ("frames", "crc_errors", "cobs_errors", "oversize", "bad_length", "bad_value",
                             "bad_version", "unknown_type", "seq_gaps", "resyncs", "unsigned", "bad_signature",
                             "unbound", "replayed", "no_key")


def _c_defines() -> dict:
    text = (C_DIR / "edge_link.h").read_text()
    pattern = r"#define (EL_\w+) \(?(-?(?:0x[0-9a-fA-F]+|\d+))u?\)?\s"
    return {m[1]: int(m[2], 0) for m in re.finditer(pattern, text)}


def test_c_header_constants_match_python():
    d = _c_defines()
    assert (d["EL_VERSION"], d["EL_MAX_PAYLOAD"], d["EL_MIN_INNER"], d["EL_MAX_INNER"]) == (
        p.VERSION, p.MAX_PAYLOAD, p.MIN_INNER, p.MAX_INNER)
    assert (d["EL_MAX_ENCODED"], d["EL_MAX_WIRE"], d["EL_MAX_CHANNELS"]) == (p.MAX_ENCODED, p.MAX_WIRE,
                                                                            p.MAX_CHANNELS)
    assert (d["EL_MAX_ACTION_NAME"], d["EL_MAX_ERROR_TEXT"], d["EL_SAFE_ACTION"]) == (
        p.MAX_ACTION_NAME, p.MAX_ERROR_TEXT, p.SAFE_ACTION)
    assert d["EL_HEADER_LEN"] == p.HEADER.size and d["EL_CRC_LEN"] == p.CRC.size
    assert d["EL_FLAG_DEVICE_SAFE"] == p.Flags.DEVICE_SAFE
    for t in p.FrameType:
        assert d[f"EL_{t.name}"] == t
    for s in p.SampleType:
        assert d[f"EL_{s.name}"] == s
    for e in p.ErrorCode:
        assert d[f"EL_ERR_{e.name}"] == e


def test_c_reason_codes_are_the_runtime_reasons():
    d = _c_defines()
    c_reasons = {k[len("EL_REASON_"):]: v for k, v in d.items() if k.startswith("EL_REASON_")}
    assert c_reasons == {r.name: r.value for r in Reason}


def test_hello_payload_layout_is_what_the_spec_says():
    inner = cobs_decode(p.encode(HELLO)[:-1])
    fixed = struct.pack("<BBBBBIIH", 1, 2, 3, 6, 1, 10_000, HELLO.schema_hash, 500)
    scales = struct.pack("<6f", *HELLO.scales)
    names = b"acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z"
    header = struct.pack("<BBBHI", 1, 1, 0, 0, 17)
    body = header + fixed + scales + bytes([len(names)]) + names
    assert inner == body + struct.pack("<H", crc16_ccitt_false(body))


def test_non_canonical_trailing_full_block_decodes_the_same():
    data = bytes(range(1, 255))  # 254 non-zero bytes
    assert cobs_encode(data) == b"\xff" + data
    assert cobs_decode(b"\xff" + data + b"\x01") == data


def test_c_sim_device_reason_names_are_the_runtime_reasons():
    text = (C_DIR / "sim_device.c").read_text()
    table = text[text.index("REASONS[] = {"):text.index("};", text.index("REASONS[] = {"))]
    assert re.findall(r'"(\w+)"', table) == [r.code for r in Reason]
