"""Property tests: the decoder survives anything, and valid frames always come back intact."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge import protocol as p
from firmware_bridge.cobs import cobs_decode, cobs_encode, max_encoded_len
from firmware_bridge.stream import FrameDecoder

SETTINGS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
flags = st.integers(0, 0xFF).map(lambda f: f & ~0x02)  # SIGNED comes from signing (test_bridge_auth.py)
f32 = st.floats(width=32, allow_nan=False)
text = st.text(max_size=24).filter(lambda s: len(s.encode()) <= 24)
name = st.text(st.characters(blacklist_characters=",", blacklist_categories=("Cc", "Cs")), min_size=1, max_size=3)


@st.composite
def hellos(draw):
    n = draw(st.integers(1, 16))
    stype = draw(st.sampled_from(list(p.SampleType)))
    channels = tuple(draw(st.lists(name, min_size=n, max_size=n))) if draw(st.booleans()) else ()
    return p.Hello(seq=draw(u16), t_us=draw(u32), flags=draw(flags), fw_version=tuple(draw(st.lists(
        st.integers(0, 255), min_size=3, max_size=3))), sample_type=stype, sample_rate_millihz=draw(u32),
        schema_hash=draw(u32), safe_timeout_ms=draw(u16), scales=tuple(draw(st.lists(f32, min_size=n, max_size=n))),
        channels=channels)


@st.composite
def sensors(draw):
    stype = draw(st.sampled_from(list(p.SampleType)))
    value = st.integers(-32768, 32767) if stype == p.SampleType.INT16 else f32
    values = tuple(draw(st.lists(value, min_size=1, max_size=p.MAX_CHANNELS)))
    return p.Sensor(seq=draw(u16), t_us=draw(u32), flags=draw(flags), sample_type=stype, values=values)


actions = st.builds(p.Action, seq=u16, t_us=u32, flags=flags, action=st.integers(-1, 32767),
                    source=st.sampled_from(list(p.ActionSource)), reason=st.integers(0, 255), answers_seq=u16,
                    name=text)
errors = st.builds(p.ErrorReport, seq=u16, t_us=u32, flags=flags, code=u16,
                   text=st.text(max_size=64).filter(lambda s: len(s.encode()) <= 64))
heartbeats = st.builds(p.Heartbeat, seq=u16, t_us=u32, flags=flags)
frames = st.one_of(hellos(), sensors(), actions, errors, heartbeats)


@SETTINGS
@given(st.binary(max_size=2000), st.lists(st.integers(1, 300), max_size=20))
def test_decoder_never_raises_and_stays_bounded_on_arbitrary_bytes(data, cuts):
    dec = FrameDecoder()
    i = 0
    for cut in cuts + [len(data)]:
        for frame in dec.feed(data[i:i + cut]):
            assert isinstance(frame, (p.Hello, p.Sensor, p.Action, p.Heartbeat, p.ErrorReport))
        assert len(dec._buf) <= p.MAX_ENCODED
        i += cut
    c = dec.counters
    assert min(c.as_dict().values()) >= 0
    assert c.resyncs <= c.frames and c.resyncs <= c.rejected


@SETTINGS
@given(frames)
def test_encode_then_decode_is_identity(frame):
    wire = p.encode(frame)
    assert len(wire) <= p.MAX_WIRE
    got = FrameDecoder().feed(wire)
    assert got == [frame]


@SETTINGS
@given(st.lists(frames, min_size=1, max_size=5), st.binary(max_size=300), st.integers(1, 64))
def test_frames_after_garbage_and_a_delimiter_are_all_recovered(good, garbage, chunk):
    wire = garbage + b"\x00" + b"".join(map(p.encode, good))
    dec = FrameDecoder()
    got = [f for i in range(0, len(wire), chunk) for f in dec.feed(wire[i:i + chunk])]
    assert got[-len(good):] == good
    assert len(got) - len(good) <= len(garbage)  # garbage can pass the CRC only by (rare) accident


@SETTINGS
@given(frames, st.integers(0, 10_000), st.integers(0, 7))
def test_every_single_bit_error_in_a_frame_is_caught_by_the_crc(frame, where, bit):
    inner = bytearray(cobs_decode(p.encode(frame)[:-1]))
    inner[where % len(inner)] ^= 1 << bit
    dec = FrameDecoder()
    assert dec.feed(cobs_encode(bytes(inner)) + b"\x00") == []
    assert dec.counters.crc_errors == 1 and dec.counters.rejected == 1


@SETTINGS
@given(st.binary(max_size=1500))
def test_cobs_round_trips_with_bounded_overhead(data):
    enc = cobs_encode(data)
    assert b"\x00" not in enc and cobs_decode(enc) == data
    assert len(enc) <= max_encoded_len(len(data)) <= len(data) + max(1, math.ceil(len(data) / 254))
