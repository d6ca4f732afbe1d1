"""edge-link: the serial protocol between a sensor board and the edge-infer runtime.

The spec is ``PROTOCOL.md`` beside this file. The pieces, one job each:

* :mod:`.protocol` - frame types, the layout, stateless encode/decode, the schema hash
* :mod:`.stream` - :class:`FrameDecoder`, bytes from a serial port in, frames and counters out
* :mod:`.cobs`, :mod:`.crc` - the framing and the checksums
* :mod:`.auth`, :mod:`.keys` - the signed link (PROTOCOL.md section 13): sessions and tags; key files
* :mod:`.vectors` - the shared test vectors (``python -m firmware_bridge.vectors``)
* :mod:`.sim` - a virtual device on a pty (``python -m firmware_bridge.sim``)
* ``c/`` - the C99 reference for the device side, an Arduino sketch, a C "firmware" harness

A serial reader needs only this::

    dec, enc, hello = FrameDecoder(), FrameEncoder(), None
    port.write(enc.heartbeat())                # "host here": the device answers with HELLO
    for frame in dec.feed(port.read(256)):     # whatever bytes arrived, split anywhere
        if isinstance(frame, Hello):
            check_hello(frame, spec.channels)  # SchemaMismatch (a SourceError) names both sides
            hello = frame
        elif isinstance(frame, Sensor) and hello is not None:
            values = hello.physical_values(frame)  # raw * scale, in the HELLO's channel order
            port.write(enc.action(2, source=ActionSource.MODEL, answers_seq=frame.seq, name="walking"))
    dec.counters.as_dict()                     # crc_errors, seq_gaps, ... for the summary

A signed link gives both the same :class:`LinkAuth` (``FrameDecoder(auth=...)``,
``FrameEncoder(auth=...)``) and opens with a SESSION offer instead of the HEARTBEAT.
"""

from .auth import LinkAuth, Side
from .protocol import (
                       MAX_WIRE,
                       SAFE_ACTION,
                       Action,
                       ActionSource,
                       ErrorCode,
                       ErrorReport,
                       Flags,
                       FrameEncoder,
                       FrameType,
                       Heartbeat,
                       Hello,
                       LinkFrame,
                       Reject,
                       SampleType,
                       SchemaMismatch,
                       Sensor,
                       Session,
                       check_hello,
                       decode_frame,
                       encode,
                       encode_action,
                       schema_hash,
)
from .stream import FrameDecoder, LinkCounters

__all__ = [
    "Action", "ActionSource", "ErrorCode", "ErrorReport", "Flags", "FrameDecoder", "FrameEncoder", "FrameType",
    "Heartbeat", "Hello", "LinkAuth", "LinkCounters", "LinkFrame", "MAX_WIRE", "Reject", "SAFE_ACTION", "SampleType",
    "SchemaMismatch", "Sensor", "Session", "Side", "check_hello", "decode_frame", "encode", "encode_action",
    "schema_hash",
]
