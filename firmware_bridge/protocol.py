"""The edge-link wire protocol: frame types, their layout, and stateless encode/decode.

This module is the one Python definition of the layout (the ``struct``
formats below); ``firmware_bridge/PROTOCOL.md`` is the normative spec and
``c/edge_link.c`` the C twin, and the shared test vectors keep the three in
step. A wire frame is::

    COBS( ver u8 | type u8 | flags u8 | seq u16 | t_us u32 | payload | crc16 ) 0x00

little-endian, packed, the payload's length implied by the frame's.

Encoding raises :class:`ValueError` on fields that cannot go on the wire (a
caller's bug). Decoding never raises: a bad frame comes back as a
:class:`Reject`, whose value names the counter it goes into, so a noisy
cable can never take the runtime down.
"""

from __future__ import annotations

import enum
import struct
import time
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Callable, ClassVar, Optional, Sequence, Tuple, Union

import numpy as np
from edge_infer.decide.reasons import Reason
from edge_infer.errors import SourceError

from .auth import AUTH_LEN, SESSION_LEN, TAG_LEN, LinkAuth
from .cobs import cobs_decode, cobs_encode, max_encoded_len
from .crc import crc16_ccitt_false, crc32_iso_hdlc

# --- layout: the single definition --------------------------------------------------------

VERSION = 1
HEADER = struct.Struct("<BBBHI")  #: ver, type, flags, seq, t_us
CRC = struct.Struct("<H")  #: CRC-16/CCITT-FALSE over header + payload
HELLO_FIXED = struct.Struct("<BBBBBIIH")  #: fw major/minor/patch, channels, sample type, rate mHz, hash, safe ms
SCALE = struct.Struct("<f")  #: one per channel in HELLO, after HELLO_FIXED
SENSOR_FIXED = struct.Struct("<B")  #: sample type, then the samples
ACTION_FIXED = struct.Struct("<hBBHB")  #: action, source, reason, answers_seq, name_len, then the name
ERROR_FIXED = struct.Struct("<HB")  #: code, text_len, then the text
LEN_PREFIX = struct.Struct("<B")  #: the HELLO names length, after the scales

MAX_PAYLOAD = 255
MAX_SIGNED_PAYLOAD = MAX_PAYLOAD - AUTH_LEN  #: 240: a signed frame's trailer shares the 255 bytes
SESSION_FIXED = struct.Struct(f"<{SESSION_LEN}s")  #: host nonce || device nonce
MIN_INNER = HEADER.size + CRC.size  #: 11: a frame with an empty payload
MAX_INNER = HEADER.size + MAX_PAYLOAD + CRC.size  #: 266
MAX_ENCODED = max_encoded_len(MAX_INNER)  #: 268: the receive buffer a peer needs
MAX_WIRE = MAX_ENCODED + 1  #: with the 0x00 delimiter
MAX_CHANNELS = 32
MAX_ACTION_NAME = 24  #: bytes of UTF-8
MAX_ERROR_TEXT = 64  #: bytes of UTF-8
SAFE_ACTION = -1  #: the ACTION code for "the device's own safe default action"
DEFAULT_SAFE_TIMEOUT_MS = 500
#: The shortest host-silence timeout a host keeps fed: a device announcing less gets heartbeats as if it
#: had announced this (PROTOCOL.md 7.2). Below it, one late write or a busy scheduler tick would trip it.
MIN_SAFE_TIMEOUT_MS = 100
HEARTBEATS_PER_TIMEOUT = 4  #: the host speaks at least this often within the device's safe timeout
MAX_HEARTBEAT_S = 1.0  #: ... and at least once a second, however long the timeout


def heartbeat_interval_s(safe_timeout_ms: int) -> float:
    """How long a host may stay silent before it sends a HEARTBEAT, for a device's HELLO ``safe_timeout_ms``.

    The one definition of the rule PROTOCOL.md section 7.2 states: a quarter
    of the safe timeout, the timeout first clamped to at least
    :data:`MIN_SAFE_TIMEOUT_MS` (a device announcing 1 ms would otherwise get
    4,000 heartbeats a second and still time out between them), the interval
    capped at :data:`MAX_HEARTBEAT_S`. 0 means the device has no host-silence
    timeout; the host then uses the interval of the default 500 ms timeout.
    """
    timeout_ms = safe_timeout_ms or DEFAULT_SAFE_TIMEOUT_MS
    return min(max(timeout_ms, MIN_SAFE_TIMEOUT_MS) / HEARTBEATS_PER_TIMEOUT / 1000.0, MAX_HEARTBEAT_S)


class FrameType(enum.IntEnum):
    """The frame's ``type`` byte."""

    HELLO = 1  #: device -> host, at boot and when the host comes back after silence
    SENSOR = 2  #: device -> host, one sample of every channel
    ACTION = 3  #: host -> device, the decision for one SENSOR frame
    HEARTBEAT = 4  #: both ways, when there is nothing else to send
    ERROR = 5  #: device -> host, a code and a short text
    SESSION = 6  #: both ways on a signed link: the host offers a session nonce, the device answers with its own


class SampleType(enum.IntEnum):
    """How SENSOR samples are carried; the name is part of the schema hash."""

    INT16 = 1  #: signed 16-bit, physical value = raw * the channel's HELLO scale
    FLOAT32 = 2  #: IEEE-754 binary32 (NaN and Inf travel as they are)

    @property
    def label(self) -> str:
        """The name used in the schema hash's canonical string: ``int16`` or ``float32``."""
        return self.name.lower()


class ActionSource(enum.IntEnum):
    """Who made an ACTION's decision."""

    MODEL = 0
    FALLBACK = 1


class ErrorCode(enum.IntEnum):
    """Suggested ERROR codes; a device may use others (the host logs the code and the text)."""

    SENSOR = 1  #: the sensor does not answer or reports a fault
    OVERRUN = 2  #: samples were lost: the device could not keep up
    LINK = 3  #: the device keeps receiving malformed frames
    CONFIG = 4  #: the device's configuration is invalid


class Flags(enum.IntFlag):
    """Header flag bits. Receivers ignore bits they do not know; senders set them to 0."""

    DEVICE_SAFE = 0x01  #: device -> host: the device is in its own safe state
    SIGNED = 0x02  #: the frame carries the signing trailer (PROTOCOL.md section 13)


_SAMPLE_CODE = {SampleType.INT16: "h", SampleType.FLOAT32: "f"}


class Reject(enum.Enum):
    """Why a frame was dropped; the value is the name of the counter it is counted in."""

    COBS = "cobs_errors"  #: the COBS structure is broken (a code byte overruns the frame)
    CRC = "crc_errors"  #: the CRC does not match
    OVERSIZE = "oversize"  #: longer than the largest legal frame
    BAD_LENGTH = "bad_length"  #: too short for a header, or a payload length its type does not allow
    BAD_VALUE = "bad_value"  #: a field outside its range (unknown sample type, action < -1, ...)
    BAD_VERSION = "bad_version"  #: a protocol version this decoder does not speak
    UNKNOWN_TYPE = "unknown_type"  #: a type byte this decoder does not know
    # signing (PROTOCOL.md section 13): the frame is intact, but it is not to be acted on
    UNSIGNED = "unsigned"  #: an unsigned frame on a link that has a key
    NO_KEY = "no_key"  #: a signed frame at a receiver that has no key
    BAD_SIGNATURE = "bad_signature"  #: the tag is wrong: another key, another session, a forgery, a reflection
    UNBOUND = "unbound"  #: signed by the key but in no session: the sender lost its session (e.g. it rebooted)
    REPLAYED = "replayed"  #: a correct tag, but its ts is not above the last one accepted: a replay or duplicate

    @property
    def is_auth(self) -> bool:
        """A signing reject: a whole intact frame refused, not a loss of sync."""
        return self in _AUTH_REJECTS


# --- frames --------------------------------------------------------------------------------


# Every frame class ends with the header fields ``seq``, ``t_us`` and ``flags``:
#   ``seq`` counts every frame its sender sends (mod 2**16), so the receiver can count lost
#   frames; ``t_us`` is the sender's microsecond clock (mod 2**32); ``flags`` are Flags bits.
# (They are repeated in each class, not inherited, so that the dataclasses work on Python 3.9,
# which has no kw_only; build frames with keyword arguments.)


@dataclass(frozen=True)
class Hello:
    """What the device is: sent before its first SENSOR frame and whenever the host comes back.

    ``scales`` has one entry per channel: the physical value is raw * scale
    (float32 devices normally send 1.0). ``channels`` are the channel names
    if the device sends them (it may not, to save flash), else ``()``; the
    host trusts ``schema_hash``, the names are for its error message.
    ``safe_timeout_ms`` is how long the device waits without a valid frame
    from the host before it goes to its own safe state.
    """

    TYPE: ClassVar[FrameType] = FrameType.HELLO
    fw_version: Tuple[int, int, int]
    sample_type: SampleType
    sample_rate_millihz: int
    schema_hash: int
    scales: Tuple[float, ...]
    safe_timeout_ms: int = DEFAULT_SAFE_TIMEOUT_MS
    channels: Tuple[str, ...] = ()
    seq: int = 0
    t_us: int = 0
    flags: int = 0

    @property
    def channel_count(self) -> int:
        return len(self.scales)

    @property
    def sample_rate_hz(self) -> float:
        return self.sample_rate_millihz / 1000.0

    @cached_property
    def scale_array(self) -> np.ndarray:
        """``scales`` as float32, made once per HELLO: what :func:`scale_samples` multiplies by."""
        return np.asarray(self.scales, dtype=np.float32)

    def fits(self, sensor: "Sensor") -> bool:
        """Does a SENSOR frame carry what this HELLO announced (channel count and sample type)?"""
        return len(sensor.values) == self.channel_count and sensor.sample_type == self.sample_type

    def physical_values(self, sensor: "Sensor") -> np.ndarray:
        """The SENSOR frame's samples times this HELLO's scales, as float32 (:func:`scale_samples`).

        Raises ValueError if the frame does not fit this HELLO (channel count
        or sample type differ): the device changed without saying HELLO.
        """
        if not self.fits(sensor):
            raise ValueError(f"SENSOR frame seq {sensor.seq} has {len(sensor.values)} "
                             f"{SampleType(sensor.sample_type).label} values but the device's HELLO announced "
                             f"{self.channel_count} {SampleType(self.sample_type).label} channels")
        return scale_samples(sensor.values, self.scale_array)


@dataclass(frozen=True)
class Sensor:
    """One sample of every channel, raw: ints for INT16, floats for FLOAT32."""

    TYPE: ClassVar[FrameType] = FrameType.SENSOR
    sample_type: SampleType
    values: Tuple[Union[int, float], ...]
    seq: int = 0
    t_us: int = 0
    flags: int = 0


@dataclass(frozen=True)
class Action:
    """The host's decision for the SENSOR frame ``answers_seq``.

    ``action`` indexes the model's output labels; :data:`SAFE_ACTION` (-1)
    means "your own safe default". ``reason`` is an
    :class:`edge_infer.decide.reasons.Reason` value (a plain int if this side does
    not know it yet: reasons are appended over time). ``name`` is the
    action's label, for logs on the device; the encoder cuts it to
    :data:`MAX_ACTION_NAME` bytes at a character boundary.
    """

    TYPE: ClassVar[FrameType] = FrameType.ACTION
    action: int
    source: ActionSource
    answers_seq: int
    reason: int = Reason.NONE
    name: str = ""
    seq: int = 0
    t_us: int = 0
    flags: int = 0


@dataclass(frozen=True)
class Heartbeat:
    """A sign of life: sent by either side when it has had nothing else to send for a while."""

    TYPE: ClassVar[FrameType] = FrameType.HEARTBEAT
    seq: int = 0
    t_us: int = 0
    flags: int = 0


@dataclass(frozen=True)
class ErrorReport:
    """A device-side problem: a code (:class:`ErrorCode` or device-defined) and a short text."""

    TYPE: ClassVar[FrameType] = FrameType.ERROR
    code: int
    text: str = ""
    seq: int = 0
    t_us: int = 0
    flags: int = 0


@dataclass(frozen=True)
class Session:
    """A signed link's session handshake (PROTOCOL.md section 13.3).

    The host sends its fresh ``host_nonce`` with ``device_nonce`` all zero;
    the device answers with the same host nonce and a nonce of its own that
    it never used before. Every other frame's tag is bound to the pair.
    """

    TYPE: ClassVar[FrameType] = FrameType.SESSION
    host_nonce: bytes
    device_nonce: bytes = bytes(SESSION_LEN // 2)
    seq: int = 0
    t_us: int = 0
    flags: int = 0


LinkFrame = Union[Hello, Sensor, Action, Heartbeat, ErrorReport, Session]


def scale_samples(values: Sequence[Union[int, float]], scales: np.ndarray) -> np.ndarray:
    """Raw SENSOR samples times the HELLO's per-channel scales, in float32 (PROTOCOL.md 5.2).

    The one place the scaling rule lives: the host's serial source and every
    tool that reads SENSOR frames go through it, so a recording, a replay and
    a live run see the same numbers (an int16 sample and a float32 scale give
    the float32 product; float32 samples keep NaN and Inf as they are).
    """
    out = np.array(values, dtype=np.float32)
    out *= scales
    return out


# --- schema hash ---------------------------------------------------------------------------


def schema_string(channels: Sequence[str], sample_type: SampleType) -> str:
    """The canonical string the schema hash is computed from: ``int16:acc_x,acc_y``."""
    for name in channels:
        if not name or "," in name or any(ord(c) < 0x20 for c in name):
            raise ValueError(f"channel name {name!r} cannot be in a schema: names must be non-empty, "
                             "without commas or control characters")
    if not channels:
        raise ValueError("a schema needs at least one channel")
    return f"{SampleType(sample_type).label}:{','.join(channels)}"


def schema_hash(channels: Sequence[str], sample_type: SampleType) -> int:
    """CRC-32/ISO-HDLC of the UTF-8 :func:`schema_string`: what HELLO's ``schema_hash`` must be."""
    return crc32_iso_hdlc(schema_string(channels, sample_type).encode("utf-8"))


class SchemaMismatch(SourceError):
    """The device's HELLO does not describe the channels the model expects."""


def check_hello(hello: Hello, channels: Sequence[str]) -> None:
    """Refuse a device whose schema is not the model's, with a message that says what differs."""
    expected = schema_hash(channels, hello.sample_type)
    if hello.schema_hash == expected and hello.channel_count == len(channels):
        return
    device = ",".join(hello.channels) if hello.channels else "(names not sent)"
    raise SchemaMismatch(
        f"device schema does not match the model: the device (firmware "
        f"{'.'.join(map(str, hello.fw_version))}) sends {hello.channel_count} {hello.sample_type.label} "
        f"channels [{device}] with schema hash 0x{hello.schema_hash:08x}, the model expects "
        f"[{','.join(channels)}] (hash 0x{expected:08x} for {hello.sample_type.label}); "
        "flash firmware built for this model's channels, or run the model made for this device")


SAMPLE_RATE_TOLERANCE = 0.02  #: HELLO's rate may differ from the model's by this fraction (clock trim, rounding)


def check_sample_rate(hello: Hello, expected_hz: Optional[float]) -> None:
    """Refuse a device whose HELLO announces another sample rate than the model was made for.

    A model fed samples at the wrong rate sees stretched or squeezed motion and
    answers confidently wrong; like a schema mismatch, this is a one-line
    refusal before any decision. Nothing to check when either side does not
    say (HELLO's 0 means "not fixed"); the host still compares ``t_us`` with
    the rate it knows (PROTOCOL.md 7.2).
    """
    if not hello.sample_rate_millihz or not expected_hz:
        return
    if abs(hello.sample_rate_hz / expected_hz - 1.0) <= SAMPLE_RATE_TOLERANCE:
        return
    raise SchemaMismatch(
        f"device sample rate does not match the model: the device (firmware {'.'.join(map(str, hello.fw_version))}) "
        f"samples at {hello.sample_rate_hz:g} Hz, the model expects {expected_hz:g} Hz ([input].sample_rate_hz); "
        "flash firmware that samples at the model's rate, or run the model made for this device")


# --- encoding ------------------------------------------------------------------------------


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(what)


def _utf8_cut(text: str, limit: int) -> bytes:
    """UTF-8 of ``text``, cut to at most ``limit`` bytes without splitting a character."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return raw
    cut = limit
    while cut > 0 and (raw[cut] & 0xC0) == 0x80:
        cut -= 1
    return raw[:cut]


def _payload(frame: LinkFrame) -> bytes:
    if isinstance(frame, Sensor):
        n = len(frame.values)
        _check(1 <= n <= MAX_CHANNELS, f"a SENSOR frame carries 1..{MAX_CHANNELS} values, not {n}")
        code = _SAMPLE_CODE[SampleType(frame.sample_type)]
        return SENSOR_FIXED.pack(frame.sample_type) + struct.pack(f"<{n}{code}", *frame.values)
    if isinstance(frame, Action):
        _check(frame.action >= SAFE_ACTION, f"action {frame.action} < -1")
        name = _utf8_cut(frame.name, MAX_ACTION_NAME)
        return ACTION_FIXED.pack(frame.action, ActionSource(frame.source), frame.reason, frame.answers_seq,
                                 len(name)) + name
    if isinstance(frame, Heartbeat):
        return b""
    if isinstance(frame, Hello):
        n = frame.channel_count
        _check(1 <= n <= MAX_CHANNELS, f"a HELLO announces 1..{MAX_CHANNELS} channels, not {n}")
        _check(not frame.channels or len(frame.channels) == n,
               f"HELLO names {len(frame.channels)} channels but has {n} scales")
        names = ",".join(frame.channels).encode("utf-8")
        if frame.channels:
            schema_string(frame.channels, frame.sample_type)  # validates the names
        fixed = HELLO_FIXED.pack(*frame.fw_version, n, SampleType(frame.sample_type),
                                 frame.sample_rate_millihz, frame.schema_hash, frame.safe_timeout_ms)
        return fixed + struct.pack(f"<{n}f", *frame.scales) + LEN_PREFIX.pack(len(names)) + names
    if isinstance(frame, ErrorReport):
        text = _utf8_cut(frame.text, MAX_ERROR_TEXT)
        return ERROR_FIXED.pack(frame.code, len(text)) + text
    if isinstance(frame, Session):
        nonces = bytes(frame.host_nonce) + bytes(frame.device_nonce)
        _check(len(nonces) == SESSION_LEN, f"SESSION nonces are {SESSION_LEN // 2} bytes each")
        return nonces
    raise TypeError(f"not a link frame: {frame!r}")


def encode_raw(frame_type: int, payload: bytes, *, seq: int = 0, t_us: int = 0, flags: int = 0,
               version: int = VERSION, auth: Optional[LinkAuth] = None) -> bytes:
    """Wire bytes for any header and payload, unchecked beyond field widths: for tests and new types.

    With ``auth`` the frame is signed: the SIGNED flag is set and the trailer
    (made by ``auth``, which counts it) goes between the payload and the CRC.
    """
    if auth is None:
        _check(len(payload) <= MAX_PAYLOAD, f"payload of {len(payload)} bytes > {MAX_PAYLOAD}")
        inner = HEADER.pack(version, frame_type, flags, seq & 0xFFFF, t_us & 0xFFFFFFFF) + payload
    else:
        _check(len(payload) <= MAX_SIGNED_PAYLOAD, f"a signed payload of {len(payload)} bytes > {MAX_SIGNED_PAYLOAD}")
        body = HEADER.pack(version, frame_type, flags | Flags.SIGNED, seq & 0xFFFF, t_us & 0xFFFFFFFF) + payload
        inner = auth.sign(body, payload if frame_type == FrameType.SESSION else None)
    return cobs_encode(inner + CRC.pack(crc16_ccitt_false(inner))) + b"\x00"


def encode(frame: LinkFrame, auth: Optional[LinkAuth] = None) -> bytes:
    """The frame's wire bytes, COBS-encoded and 0x00-terminated: ready for ``serial.write``.

    ``seq`` and ``t_us`` are taken modulo their field widths. Raises
    ValueError (or struct.error) for a field that cannot go on the wire.
    With ``auth`` the frame is signed (:func:`encode_raw`).
    """
    _check(auth is not None or not frame.flags & Flags.SIGNED, "the SIGNED flag is set by signing (pass auth)")
    try:
        payload = _payload(frame)
    except struct.error as exc:
        raise ValueError(f"{type(frame).__name__}: a field is out of range: {exc}") from None
    return encode_raw(frame.TYPE, payload, seq=frame.seq, t_us=frame.t_us, flags=frame.flags, auth=auth)


def encode_action(action: int, *, source: ActionSource, answers_seq: int, reason: int = Reason.NONE,
                  name: str = "", seq: int = 0, t_us: int = 0) -> bytes:
    """Wire bytes of one ACTION frame (see :class:`Action`)."""
    return encode(Action(action=action, source=source, reason=reason, answers_seq=answers_seq, name=name,
                         seq=seq, t_us=t_us))


class FrameEncoder:
    """Stamps a sender's outgoing frames with its running ``seq`` and its microsecond clock.

    One per sender and link direction: the peer counts gaps in ``seq``.
    With ``auth`` every frame is signed (a link with a key never sends an
    unsigned frame).
    """

    def __init__(self, clock_us: Optional[Callable[[], int]] = None, first_seq: int = 0,
                 auth: Optional[LinkAuth] = None) -> None:
        self._clock_us = clock_us or (lambda: time.monotonic_ns() // 1000)
        self.next_seq = first_seq & 0xFFFF
        self.auth = auth

    def encode(self, frame: LinkFrame, flags: int = 0) -> bytes:
        """Wire bytes of ``frame`` with this sender's next seq, the clock's time and ``flags``."""
        wire = encode(replace(frame, seq=self.next_seq, t_us=self._clock_us() & 0xFFFFFFFF, flags=flags),
                      self.auth)
        self.next_seq = (self.next_seq + 1) & 0xFFFF
        return wire

    def action(self, action: int, *, source: ActionSource, answers_seq: int, reason: int = Reason.NONE,
               name: str = "") -> bytes:
        """Wire bytes of the next ACTION frame."""
        return self.encode(Action(action=action, source=source, reason=reason, answers_seq=answers_seq,
                                  name=name))

    def heartbeat(self, flags: int = 0) -> bytes:
        """Wire bytes of the next HEARTBEAT frame."""
        return self.encode(Heartbeat(), flags)


# --- decoding ------------------------------------------------------------------------------


def decode_frame(encoded: bytes, auth: Optional[LinkAuth] = None) -> Union[LinkFrame, Reject]:
    """Decode one COBS-encoded frame (the bytes between two 0x00 delimiters).

    Never raises: returns the frame, or the :class:`Reject` saying why not.
    The checks run in the order PROTOCOL.md gives, so every peer counts a
    bad frame in the same counter. ``auth`` is the receiver's signing state
    (None: a receiver without a key); it is updated as frames pass (session
    changes, the replay floor), so frames must be decoded in arrival order.
    """
    inner = cobs_decode(encoded)
    if inner is None:
        return Reject.COBS
    if len(inner) > MAX_INNER:
        return Reject.OVERSIZE
    if len(inner) < MIN_INNER:
        return Reject.BAD_LENGTH
    body, (crc,) = inner[:-CRC.size], CRC.unpack_from(inner, len(inner) - CRC.size)
    if crc16_ccitt_false(body) != crc:
        return Reject.CRC
    ver, ftype, flags, seq, t_us = HEADER.unpack_from(body)
    if ver != VERSION:
        return Reject.BAD_VERSION
    parse = _PARSERS.get(ftype)
    if parse is None:
        return Reject.UNKNOWN_TYPE
    end = len(body)
    if flags & Flags.SIGNED:
        end -= AUTH_LEN
        if end < HEADER.size:
            return Reject.BAD_LENGTH
        if auth is None:
            return Reject.NO_KEY
        session = None
        if ftype == FrameType.SESSION:
            if end - HEADER.size != SESSION_LEN:
                return Reject.BAD_LENGTH
            session = body[HEADER.size:end]
        why = auth.check(body[:end + AUTH_LEN - TAG_LEN], body[end + AUTH_LEN - TAG_LEN:], session)
        if why is not None:
            return Reject(why)
    elif auth is not None:
        return Reject.UNSIGNED
    frame = parse(body[HEADER.size:end], seq=seq, t_us=t_us, flags=flags)
    if auth is not None and not isinstance(frame, Reject) and ftype != FrameType.SESSION:
        auth.accepted()
    return frame


def _parse_hello(p: bytes, **hdr: int) -> Union[Hello, Reject]:
    if len(p) < HELLO_FIXED.size:
        return Reject.BAD_LENGTH
    major, minor, patch, n, stype, rate, shash, safe_ms = HELLO_FIXED.unpack_from(p)
    names_at = HELLO_FIXED.size + SCALE.size * n
    if len(p) < names_at + LEN_PREFIX.size:
        return Reject.BAD_LENGTH
    names_len = p[names_at]
    if len(p) != names_at + LEN_PREFIX.size + names_len:
        return Reject.BAD_LENGTH
    if not 1 <= n <= MAX_CHANNELS or stype not in _SAMPLE_TYPES:
        return Reject.BAD_VALUE
    channels: Tuple[str, ...] = ()
    if names_len:
        raw = p[names_at + 1:]
        parts = raw.split(b",")
        if len(parts) != n or not all(parts):
            return Reject.BAD_VALUE
        channels = tuple(part.decode("utf-8", "replace") for part in parts)
    scales = struct.unpack_from(f"<{n}f", p, HELLO_FIXED.size)
    return Hello(fw_version=(major, minor, patch), sample_type=SampleType(stype), sample_rate_millihz=rate,
                 schema_hash=shash, safe_timeout_ms=safe_ms, scales=scales, channels=channels, **hdr)


def _parse_sensor(p: bytes, **hdr: int) -> Union[Sensor, Reject]:
    if len(p) < SENSOR_FIXED.size:
        return Reject.BAD_LENGTH
    stype = p[0]
    if stype not in _SAMPLE_TYPES:
        return Reject.BAD_VALUE
    code = _SAMPLE_CODE[SampleType(stype)]
    size = struct.calcsize(code)
    body = len(p) - SENSOR_FIXED.size
    n = body // size
    if body % size or not 1 <= n <= MAX_CHANNELS:
        return Reject.BAD_LENGTH
    values = struct.unpack_from(f"<{n}{code}", p, SENSOR_FIXED.size)
    return Sensor(sample_type=SampleType(stype), values=values, **hdr)


def _parse_action(p: bytes, **hdr: int) -> Union[Action, Reject]:
    if len(p) < ACTION_FIXED.size:
        return Reject.BAD_LENGTH
    action, source, reason, answers, name_len = ACTION_FIXED.unpack_from(p)
    if len(p) != ACTION_FIXED.size + name_len:
        return Reject.BAD_LENGTH
    if name_len > MAX_ACTION_NAME or source not in _SOURCES or action < SAFE_ACTION:
        return Reject.BAD_VALUE
    name = p[ACTION_FIXED.size:].decode("utf-8", "replace")
    return Action(action=action, source=ActionSource(source), reason=_reason(reason), answers_seq=answers,
                  name=name, **hdr)


def _parse_heartbeat(p: bytes, **hdr: int) -> Union[Heartbeat, Reject]:
    return Reject.BAD_LENGTH if p else Heartbeat(**hdr)


def _parse_error(p: bytes, **hdr: int) -> Union[ErrorReport, Reject]:
    if len(p) < ERROR_FIXED.size:
        return Reject.BAD_LENGTH
    code, text_len = ERROR_FIXED.unpack_from(p)
    if len(p) != ERROR_FIXED.size + text_len:
        return Reject.BAD_LENGTH
    if text_len > MAX_ERROR_TEXT:
        return Reject.BAD_VALUE
    return ErrorReport(code=code, text=p[ERROR_FIXED.size:].decode("utf-8", "replace"), **hdr)


def _parse_session(p: bytes, **hdr: int) -> Union[Session, Reject]:
    if len(p) != SESSION_FIXED.size:
        return Reject.BAD_LENGTH
    half = SESSION_LEN // 2
    return Session(host_nonce=p[:half], device_nonce=p[half:], **hdr)


def _reason(value: int) -> int:
    try:
        return Reason(value)
    except ValueError:
        return value


_SAMPLE_TYPES = frozenset(int(t) for t in SampleType)
_SOURCES = frozenset(int(s) for s in ActionSource)
_PARSERS: "dict[int, Callable[..., Union[LinkFrame, Reject]]]" = {
    FrameType.HELLO: _parse_hello,
    FrameType.SENSOR: _parse_sensor,
    FrameType.ACTION: _parse_action,
    FrameType.HEARTBEAT: _parse_heartbeat,
    FrameType.ERROR: _parse_error,
    FrameType.SESSION: _parse_session,
}
_AUTH_REJECTS = frozenset((Reject.UNSIGNED, Reject.NO_KEY, Reject.BAD_SIGNATURE, Reject.UNBOUND, Reject.REPLAYED))
