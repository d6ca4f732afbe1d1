"""The shared test vectors: Python and the C reference decode the same bytes the same way."""

from __future__ import annotations

import hashlib
import hmac
import random
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from fb_helpers import (
    C_DIR,
    ROOT,
    build_c,
    c_build_dir,  # noqa: F401  (fixture)
)

from firmware_bridge import vectors
from firmware_bridge.cobs import cobs_decode, cobs_encode
from firmware_bridge.crc import crc16_ccitt_false, crc32_iso_hdlc
from firmware_bridge.auth import ZERO_SESSION, Side
from firmware_bridge.protocol import Flags, SampleType, decode_frame, encode, schema_hash
from firmware_bridge.stream import COUNTER_NAMES, FrameDecoder

VF = vectors.load()
SPEC = ROOT / "firmware_bridge" / "PROTOCOL.md"


def test_vector_file_is_what_the_generator_makes():
    assert vectors.main(["--check"]) == 0, "run: python -m firmware_bridge.vectors"


def test_vector_file_covers_every_frame_type_and_every_counter():
    described = " ".join(f for v in VF.vectors for f in v.frames)
    for kind in ("HELLO", "SENSOR", "ACTION", "HEARTBEAT", "ERROR"):
        assert kind + " " in described
    for counter in COUNTER_NAMES:
        assert any(v.counters[counter] for v in VF.vectors), counter
    assert "SESSION " in described


@pytest.mark.parametrize("vector", VF.vectors, ids=lambda v: v.name)
def test_python_decoder_passes_the_vector(vector):
    for split in ("whole", "bytes", "random"):
        dec = vector.decoder()
        if split == "whole":
            frames = dec.feed(vector.wire)
        elif split == "bytes":
            frames = [f for b in vector.wire for f in dec.feed(bytes([b]))]
        else:
            rng, frames, i = random.Random(vector.name), [], 0
            while i < len(vector.wire):
                n = rng.randint(1, 40)
                frames += dec.feed(vector.wire[i:i + n])
                i += n
        assert [vectors.describe(f) for f in frames] == vector.frames, split
        assert dec.counters.as_dict() == vector.counters, split
        if vector.receiver is not None:
            assert (dec.auth.session, dec.auth.rx_last) == vector.session_after, split
    if vector.roundtrip:
        (frame,) = frames
        assert encode(frame) == vector.wire
        assert decode_frame(vector.wire[:-1]) == frame or vector.name == "sensor_float32_nonfinite"


def test_python_passes_the_signing_lines():
    assert VF.sha256 and VF.hmac and VF.sign
    for data, digest in VF.sha256:
        assert hashlib.sha256(data).digest() == digest
    for key, data, mac in VF.hmac:
        assert hmac.new(key, data, hashlib.sha256).digest() == mac
    for case in VF.sign:
        frame = decode_frame(case.unsigned[:-1])
        assert vectors.signed(frame, case.side, case.ts, case.session, case.key) == case.signed
        if case.session != ZERO_SESSION:  # the peer in that session takes it
            peer = vectors.Receiver(case.side.peer, case.key, case.session).auth()
            assert decode_frame(case.signed[:-1], peer) == replace(frame, flags=frame.flags | Flags.SIGNED)


def test_python_passes_the_crc_cobs_and_schema_lines():
    for data, crc in VF.crc16:
        assert crc16_ccitt_false(data) == crc
    for data, crc in VF.crc32:
        assert crc32_iso_hdlc(data) == crc
    for raw, enc in VF.cobs:
        assert cobs_encode(raw) == enc and cobs_decode(enc) == raw
    for label, names, h in VF.schema:
        assert schema_hash(names, SampleType[label.upper()]) == h


def test_the_worked_example_in_the_spec_is_the_vector():
    spec = SPEC.read_text()
    (example,) = [v for v in VF.vectors if v.name == "spec_example_action"]
    spaced = " ".join(f"{b:02x}" for b in example.wire)
    assert spaced in " ".join(spec.split()), "PROTOCOL.md's worked example differs from the vector"


@pytest.fixture(scope="module")
def c_vector_test(c_build_dir) -> Path:
    return build_c(c_build_dir / "test_vectors", C_DIR / "test_vectors.c", C_DIR / "edge_link.c")


def test_c_reference_passes_the_vectors(c_vector_test):
    proc = subprocess.run([str(c_vector_test), str(vectors.DEFAULT_PATH)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(VF.vectors)} vectors" in proc.stdout and "0 failures" in proc.stdout


def test_c_test_program_notices_a_wrong_expectation(c_vector_test, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text(vectors.DEFAULT_PATH.read_text().replace("name=walking", "name=running", 1))
    proc = subprocess.run([str(c_vector_test), str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "FAIL spec_example_action: frame differs" in proc.stdout


def test_c_reference_is_clean_under_valgrind(c_vector_test):
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        pytest.skip("valgrind is not installed")
    proc = subprocess.run([valgrind, "-q", "--error-exitcode=1", "--leak-check=full", str(c_vector_test),
                           str(vectors.DEFAULT_PATH)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_c_core_builds_for_an_8_bit_avr_if_the_toolchain_is_there(tmp_path):
    if shutil.which("avr-gcc") is None:
        pytest.skip("avr-gcc is not installed (apt-get install gcc-avr avr-libc)")
    build_c(tmp_path / "edge_link.o", C_DIR / "edge_link.c", compiler="avr-gcc",
            flags=["-mmcu=atmega328p", "-std=c99", "-Os", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c"])


# --- differential: the C and Python decoders on random, damaged and hostile input ----------------


def _random_valid_frame(rng: random.Random) -> bytes:
    from firmware_bridge import protocol as p
    kind = rng.randrange(5)
    hdr = dict(seq=rng.randrange(65536), t_us=rng.randrange(2**32), flags=rng.randrange(256) & ~0x02)
    if kind == 0:
        n = rng.randint(1, 8)
        return encode(p.Hello(fw_version=(1, 2, 3), sample_type=rng.choice(list(SampleType)),
                              sample_rate_millihz=rng.randrange(2**32), schema_hash=rng.randrange(2**32),
                              scales=tuple(rng.uniform(-2, 2) for _ in range(n)),
                              channels=tuple(f"c{i}" for i in range(n)) if rng.random() < 0.5 else (), **hdr))
    if kind == 1:
        n = rng.randint(1, 32)
        if rng.random() < 0.5:
            return encode(p.Sensor(sample_type=SampleType.INT16, values=tuple(rng.randint(-32768, 32767)
                                                                              for _ in range(n)), **hdr))
        return encode(p.Sensor(sample_type=SampleType.FLOAT32, values=tuple(rng.uniform(-1e6, 1e6)
                                                                            for _ in range(n)), **hdr))
    if kind == 2:
        return encode(p.Action(action=rng.randint(-1, 40), source=rng.choice(list(p.ActionSource)),
                               reason=rng.randrange(256), answers_seq=rng.randrange(65536),
                               name="".join(rng.choice("abcé ") for _ in range(rng.randint(0, 12))), **hdr))
    if kind == 3:
        return encode(p.Heartbeat(**hdr))
    return encode(p.ErrorReport(code=rng.randrange(65536), text="x" * rng.randint(0, 64), **hdr))


def _random_stream(rng: random.Random) -> bytes:
    """Valid frames, frames with a valid CRC but random type/payload, noise; then damage."""
    from firmware_bridge.protocol import encode_raw
    parts = []
    for _ in range(rng.randint(1, 6)):
        r = rng.random()
        if r < 0.5:
            parts.append(_random_valid_frame(rng))
        elif r < 0.85:  # intact CRC, hostile content: exercises every length/value check
            parts.append(encode_raw(rng.choice([1, 2, 3, 4, 5, rng.randrange(256)]),
                                    bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 3, 7, 8, 15, 16, 40,
                                                                                          rng.randint(0, 255)]))),
                                    seq=rng.randrange(65536), version=rng.choice([1, 1, 1, 1, 0, 2]),
                                    flags=rng.choice([0, 0, 0x02])))  # signed, at a receiver without a key
        else:
            parts.append(bytes(rng.randrange(256) for _ in range(rng.randint(1, 400))))
    data = bytearray(b"".join(parts))
    for _ in range(rng.choice([0, 0, 1, 2, 5])):
        if not data:
            break
        i, what = rng.randrange(len(data)), rng.random()
        if what < 0.4:
            data[i] ^= 1 << rng.randrange(8)
        elif what < 0.6:
            del data[i]
        elif what < 0.8:
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 10)))
        else:
            data[i] = 0
    return bytes(data)


def _canonical_nans(line: str) -> str:
    """NaN payloads may be quieted by Python's float conversion; compare NaNs as 'nan'."""
    def fix(token: str) -> str:
        if len(token) == 8 and all(c in "0123456789abcdef" for c in token):
            bits = int(token, 16)
            if bits & 0x7F800000 == 0x7F800000 and bits & 0x7FFFFF:
                return "nan"
        return token
    out = []
    for field in line.split(" "):
        key, eq, value = field.partition("=")
        out.append(key + eq + ",".join(map(fix, value.split(","))) if key in ("values", "scales") else field)
    return " ".join(out)


def test_c_and_python_decoders_agree_on_random_damaged_input(c_vector_test):
    rng = random.Random(2024)
    streams = [_random_stream(rng) for _ in range(3000)]
    proc = subprocess.run([str(c_vector_test), "--decode"], input="".join((s.hex() or "-") + "\n" for s in streams),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    c_out = proc.stdout.split("end\n")[:-1]
    assert len(c_out) == len(streams)
    totals = dict.fromkeys(COUNTER_NAMES, 0)
    for stream, c_text in zip(streams, c_out):
        dec = FrameDecoder()
        lines = [f"frame {vectors.describe(f)}" for f in dec.feed(stream)]
        lines.append(f"counters {vectors.describe_counters(dec.counters.as_dict())}")
        got = [_canonical_nans(x) for x in c_text.splitlines()]
        assert got == [_canonical_nans(x) for x in lines], stream.hex()
        for k, v in dec.counters.as_dict().items():
            totals[k] += v
    keyless = ("unsigned", "bad_signature", "unbound", "replayed")  # a receiver without a key never counts these
    assert all(v for k, v in totals.items() if k not in keyless), totals  # the input reached every other counter


def _random_signed_stream(rng: random.Random, receiver: vectors.Receiver) -> bytes:
    """Frames from the receiver's peer: in its session or not, ts rising or not, other keys, SESSION frames,
    reflections, unsigned ones; then damage."""
    from firmware_bridge import protocol as p
    peer = receiver.side.peer
    ts, parts = receiver.rx_last, []
    for _ in range(rng.randint(1, 8)):
        r = rng.random()
        ts = max(1, ts + rng.choice([1, 1, 1, 2, 0, -1, -5, 1000]))
        frame = p.Heartbeat(seq=rng.randrange(65536)) if rng.random() < 0.3 else \
            p.Sensor(seq=rng.randrange(65536), sample_type=SampleType.INT16,
                     values=tuple(rng.randint(-5, 5) for _ in range(rng.randint(1, 4))))
        if r < 0.45:
            parts.append(vectors.signed(frame, peer, ts, receiver.session))
        elif r < 0.55:
            parts.append(vectors.signed(frame, peer, ts, receiver.session, vectors.OTHER_KEY))
        elif r < 0.62:
            parts.append(vectors.signed(frame, peer, ts, ZERO_SESSION))
        elif r < 0.68:
            parts.append(vectors.signed(frame, receiver.side, ts, receiver.session))
        elif r < 0.75:
            parts.append(encode(frame))
        else:  # SESSION frames: offers (to a device) or answers (to a host), for this session or another
            host = rng.choice([receiver.session[:8], vectors.HOST_NONCE, bytes(8), b"\x33" * 8])
            device = bytes(8) if peer is Side.HOST and rng.random() < 0.8 else rng.choice(
                [vectors.DEVICE_NONCE, b"\x44" * 8, bytes(8)])
            parts.append(vectors.signed(p.Session(seq=rng.randrange(65536), host_nonce=host, device_nonce=device),
                                        peer, rng.choice([1, ts]), ZERO_SESSION))
    data = bytearray(b"".join(parts))
    for _ in range(rng.choice([0, 0, 0, 1, 3])):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    return bytes(data)


@pytest.mark.parametrize("side", [Side.HOST, Side.DEVICE])
def test_c_and_python_agree_on_random_signed_input(c_vector_test, side):
    established = vectors.Receiver(side, vectors.KEY, vectors.SESSION, 3, vectors.DEVICE_NONCE)
    offered = vectors.Receiver(side, vectors.KEY, vectors.HOST_NONCE + bytes(8), 0, vectors.DEVICE_NONCE)
    totals = dict.fromkeys(COUNTER_NAMES, 0)
    for receiver in (established, offered):
        rng = random.Random(f"{side.name}{receiver.session.hex()}")
        streams = [_random_signed_stream(rng, receiver) for _ in range(600)]
        args = [side.name.lower(), receiver.key.hex(), receiver.session.hex(), str(receiver.rx_last),
                receiver.nonce.hex()]
        proc = subprocess.run([str(c_vector_test), "--decode-auth", *args],
                              input="".join(s.hex() + "\n" for s in streams),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        c_out = proc.stdout.split("end\n")[:-1]
        assert len(c_out) == len(streams)
        for stream, c_text in zip(streams, c_out):
            dec = FrameDecoder(auth=receiver.auth())
            lines = [f"frame {vectors.describe(f)}" for f in dec.feed(stream)]
            lines.append(f"counters {vectors.describe_counters(dec.counters.as_dict())}")
            lines.append(f"session {dec.auth.session.hex()} {dec.auth.rx_last}")
            assert c_text.splitlines() == lines, stream.hex()
            for k, v in dec.counters.as_dict().items():
                totals[k] += v
    assert all(totals[k] for k in ("frames", "crc_errors", "unsigned", "bad_signature", "unbound", "replayed")), totals
