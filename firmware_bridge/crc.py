"""The two CRCs of the edge-link protocol.

* CRC-16/CCITT-FALSE guards every frame (cheap on an 8-bit MCU, strong
  enough for frames of at most 266 bytes).
* CRC-32/ISO-HDLC (the zlib/Ethernet CRC) makes the schema hash, where a
  longer value makes accidental matches between different schemas unlikely.

Both are the catalogued algorithms, so any CRC library reproduces them; the
parameters and check values are in PROTOCOL.md.
"""

from __future__ import annotations

import binascii
import zlib


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, xorout 0; check 0x29B1."""
    # binascii.crc_hqx is the unreflected 0x1021 CRC with a caller-chosen init.
    return binascii.crc_hqx(data, 0xFFFF)


def crc32_iso_hdlc(data: bytes) -> int:
    """CRC-32/ISO-HDLC (zlib.crc32): poly 0x04C11DB7 reflected, init and xorout 0xFFFFFFFF; check 0xCBF43926."""
    return zlib.crc32(data) & 0xFFFFFFFF
