"""Incremental decoding of a byte stream into frames, with the link's error counters.

:class:`FrameDecoder` takes whatever a serial read returned (a byte, half a
frame, three frames and some noise) and hands back the complete frames. Its
buffer is bounded (one largest legal frame), it never raises, and every
byte that does not end up in a frame is accounted for in
:class:`LinkCounters` - the same counters, counted the same way, as the C
decoder in ``c/edge_link.c``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

from .auth import LinkAuth
from .protocol import MAX_ENCODED, FrameType, LinkFrame, Reject, decode_frame


@dataclass
class LinkCounters:
    """What the decoder has seen; see PROTOCOL.md, "Receiver counters"."""

    frames: int = 0  #: valid frames delivered
    crc_errors: int = 0
    cobs_errors: int = 0
    oversize: int = 0
    bad_length: int = 0
    bad_value: int = 0
    bad_version: int = 0
    unknown_type: int = 0
    seq_gaps: int = 0  #: frames missing from the sender's seq numbering (lost or rejected)
    resyncs: int = 0  #: valid frames that followed one or more rejected chunks
    # a signed link (PROTOCOL.md section 13): intact frames that are not to be acted on
    unsigned: int = 0  #: unsigned frames at a receiver with a key
    bad_signature: int = 0  #: wrong tag: another key or session, a forgery, a reflected frame
    unbound: int = 0  #: signed, but by a sender without a session (it lost it: reboot, safe timeout)
    replayed: int = 0  #: a correct tag whose ts is not above the last accepted: a replay or a duplicate
    no_key: int = 0  #: signed frames at a receiver without a key

    def as_dict(self) -> Dict[str, int]:
        return asdict(self)

    @property
    def rejected(self) -> int:
        """Chunks dropped for any reason."""
        return (self.crc_errors + self.cobs_errors + self.oversize + self.bad_length + self.bad_value
                + self.bad_version + self.unknown_type + self.auth_dropped)

    @property
    def auth_dropped(self) -> int:
        """Intact frames dropped by the signing checks."""
        return self.unsigned + self.bad_signature + self.unbound + self.replayed + self.no_key


#: The counter names, in the order the test vectors and the C decoder list them.
COUNTER_NAMES = tuple(LinkCounters().as_dict())


class FrameDecoder:
    """Turns a byte stream from one sender into frames.

    Bytes accumulate until a 0x00 delimiter; then the chunk is decoded. A
    chunk longer than ``max_encoded`` is dropped as it grows (counted once
    as ``oversize``) and the decoder waits for the next delimiter, so memory
    stays bounded whatever arrives. Empty chunks (0x00 0x00) are idle fill
    and ignored.

    Sequence numbers are checked across delivered frames: a jump forward of
    k counts k-1 ``seq_gaps``; a HELLO (the sender rebooted) or a jump
    backwards re-anchors without counting.
    """

    def __init__(self, max_encoded: int = MAX_ENCODED, auth: Optional[LinkAuth] = None) -> None:
        self.counters = LinkCounters()
        #: The receiver's signing state; with it, only frames signed in its session are delivered.
        self.auth = auth
        self._max = max_encoded
        self._buf = bytearray()
        self._overflow = False
        self._in_error = False
        self._next_seq: "int | None" = None

    def feed(self, data: bytes) -> List[LinkFrame]:
        """Consume ``data`` (any length, any content); return the frames it completed, in order."""
        frames: List[LinkFrame] = []
        if not isinstance(data, (bytes, bytearray)):
            data = bytes(data)  # memoryview, array, list of ints
        start, n = 0, len(data)
        while start <= n:
            end = data.find(b"\x00", start)
            self._append(data[start:] if end < 0 else data[start:end])
            if end < 0:
                break
            self._end_chunk(frames)
            start = end + 1
        return frames

    def reset(self) -> None:
        """Forget a partial frame and the seq anchor (after a reconnect); counters are kept."""
        self._buf.clear()
        self._overflow = False
        self._next_seq = None

    def _append(self, part: bytes) -> None:
        if self._overflow or not part:
            return
        if len(self._buf) + len(part) > self._max:
            self._buf.clear()
            self._overflow = True
            self._reject(Reject.OVERSIZE)
            return
        self._buf += part

    def _end_chunk(self, frames: List[LinkFrame]) -> None:
        if self._overflow:
            self._overflow = False
            return
        if not self._buf:
            return
        result = decode_frame(bytes(self._buf), self.auth)
        self._buf.clear()
        if isinstance(result, Reject):
            self._reject(result)
            return
        self._account_seq(result)
        c = self.counters
        c.frames += 1
        if self._in_error:
            c.resyncs += 1
            self._in_error = False
        frames.append(result)

    def _reject(self, why: Reject) -> None:
        setattr(self.counters, why.value, getattr(self.counters, why.value) + 1)
        self._in_error = self._in_error or not why.is_auth  # an intact frame refused is no loss of sync

    def _account_seq(self, frame: LinkFrame) -> None:
        if self._next_seq is not None and frame.TYPE != FrameType.HELLO:
            gap = (frame.seq - self._next_seq) & 0xFFFF
            if gap < 0x8000:
                self.counters.seq_gaps += gap
        self._next_seq = (frame.seq + 1) & 0xFFFF
