"""Live source URIs: ``serial:PATH[?baud=N]``, parsed and checked before anything is opened."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SourceError

SCHEMES = ("serial",)
DEFAULT_BAUD = 115200  #: PROTOCOL.md's suggestion; USB CDC-ACM boards ignore it
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
