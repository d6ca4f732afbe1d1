"""Consistent Overhead Byte Stuffing: frames that contain no 0x00, so 0x00 can delimit them.

A receiver that loses sync (noise, a dropped byte, joining mid-stream) finds
its way back at the next 0x00, and the overhead is bounded: at most one byte
per 254 (one byte for short frames). The encoding is the canonical one
(Cheshire & Baker): a block of 254 non-zero bytes at the very end is not
followed by an empty block, so the C and Python encoders emit identical
bytes for the shared test vectors.
"""

from __future__ import annotations

from typing import Optional

#: The longest run of data bytes one code byte can describe.
_RUN = 254


def max_encoded_len(n: int) -> int:
    """The most bytes :func:`cobs_encode` can produce for ``n`` input bytes (no delimiter)."""
    return n + max(1, -(-n // _RUN))


def cobs_encode(data: bytes) -> bytes:
    """Encode ``data`` so that the result contains no 0x00 (the delimiter is not appended)."""
    out = bytearray()
    blocks = bytes(data).split(b"\x00")
    last = len(blocks) - 1
    for i, block in enumerate(blocks):
        while len(block) >= _RUN:
            out.append(0xFF)
            out += block[:_RUN]
            block = block[_RUN:]
            if not block and i == last:
                return bytes(out)
        out.append(len(block) + 1)
        out += block
    return bytes(out)


def cobs_decode(data: bytes) -> Optional[bytes]:
    """Decode one COBS block sequence (without its delimiter); None if it is malformed.

    Malformed means a 0x00 inside, or a code byte that promises more bytes
    than are left. Returning None instead of raising keeps the stream
    decoder's hot path free of exception handling.
    """
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0:
            return None
        end = i + code
        if end > n:
            return None
        out += data[i + 1:end]
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)
