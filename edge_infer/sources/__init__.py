"""Frame sources, the first stage of the data path: a recorded log, or a live device.

* :mod:`.base` -- the :class:`~.base.Source` interface (``recv(timeout)``, ``counters()``, ``close()``)
* :mod:`.log_replay` -- a recorded log, paced or as fast as possible
* :mod:`.serial_link`, :mod:`.serial_port` -- a sensor board on a serial port (edge-link protocol)

On the command line a source is a log path or a URI. The one live scheme is
``serial:PATH[?baud=N]``, e.g. ``serial:/dev/serial/by-id/usb-Arduino...-if00?baud=115200``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ..errors import SourceError

SCHEMES = ("serial",)
DEFAULT_BAUD = 115200  #: PROTOCOL.md's suggestion; USB CDC-ACM boards ignore it
#: How long a source without a model waits for the device's HELLO (an Uno resets on open: ~2 s in its bootloader).
HELLO_TIMEOUT_S = 10.0
#: Query keys a ``serial:`` URI may carry.
SERIAL_OPTIONS = ("baud",)


@dataclass(frozen=True)
class SerialAddress:
    """A parsed ``serial:PATH[?baud=N]``."""

    path: str
    baud: int


def parse_source_uri(text: str) -> SerialAddress:
    """Parse a live source URI; :class:`SourceError` names what is wrong with it."""
    scheme, _, rest = text.partition(":")
    if scheme.lower() not in SCHEMES:
        raise SourceError(f"unknown source scheme {scheme!r} in {text!r} (known: {', '.join(SCHEMES)}); "
                          f"to read a log whose name has a ':', write it as ./{text}")
    path, _, query = rest.partition("?")
    if not path:
        raise SourceError(f"source {text!r} names no port; write serial:/dev/serial/by-id/... or serial:/dev/ttyUSB0")
    baud = DEFAULT_BAUD
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if key not in SERIAL_OPTIONS:
            raise SourceError(f"source {text!r}: unknown option {key!r} (known: {', '.join(SERIAL_OPTIONS)})")
        if not eq or not value.isdigit() or int(value) == 0:
            raise SourceError(f"source {text!r}: baud must be a positive integer, not {value!r}")
        baud = int(value)
    return SerialAddress(path, baud)


def open_live_source(text: str, channels: Optional[Sequence[str]] = None, channel_count: Optional[int] = None):
    """The :class:`~.serial_link.SerialSource` a URI names; the port opens on the first ``recv``.

    ``channels`` are the model's (the device's HELLO is checked against them);
    None takes the device's own, and without a ``channel_count`` either the
    caller needs their names before the first frame (a recording without a
    model), so the source first waits up to ``HELLO_TIMEOUT_S`` for the HELLO.
    """
    address = parse_source_uri(text)
    from .serial_link import SerialSource  # late: log replays need neither pyserial nor the protocol

    source = SerialSource(address.path, address.baud, channels, channel_count, name=text)
    if channels is None and channel_count is None:
        try:
            source.wait_for_hello(HELLO_TIMEOUT_S)
        except BaseException:
            source.close()
            raise
    return source
