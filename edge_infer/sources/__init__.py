"""Frame sources, the first stage of the data path: a recorded log, or a live device.

* :mod:`.base` -- the :class:`~.base.Source` interface (``recv(timeout)``, ``counters()``, ``close()``)
* :mod:`.log_replay` -- a recorded log, paced or as fast as possible
* :mod:`.serial_link`, :mod:`.serial_port` -- a sensor board on a serial port (edge-link protocol)

On the command line a source is a log path or a URI. The one live scheme is
``serial:PATH[?baud=N]``, e.g. ``serial:/dev/serial/by-id/usb-Arduino...-if00?baud=115200``.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from .uri import DEFAULT_BAUD, SCHEMES, SERIAL_OPTIONS, SerialAddress, parse_source_uri

__all__ = ["DEFAULT_BAUD", "HELLO_TIMEOUT_S", "SCHEMES", "SERIAL_OPTIONS", "SerialAddress", "open_live_source",
           "parse_source_uri"]

#: How long a source without a model waits for the device's HELLO (an Uno resets on open: ~2 s in its bootloader).
HELLO_TIMEOUT_S = 10.0


def open_live_source(text: str, channels: Optional[Sequence[str]] = None, channel_count: Optional[int] = None, *,
                     sample_rate_hz: Optional[float] = None, link_key_file: Optional[str] = None):
    """The :class:`~.serial_link.SerialSource` a URI names; the port opens on the first ``recv``.

    ``sample_rate_hz`` is the model's (HELLO's rate must agree);
    ``link_key_file`` a key file's path: the link is signed with its key (read
    now, so a bad key file is refused before the port opens).
    ``channels`` are the model's (the device's HELLO is checked against them);
    None takes the device's own, and without a ``channel_count`` either the
    caller needs their names before the first frame (a recording without a
    model), so the source first waits up to ``HELLO_TIMEOUT_S`` for the HELLO.
    """
    address = parse_source_uri(text)
    from firmware_bridge.keys import load_key  # late: log replays need neither pyserial nor the protocol

    from .serial_link import SerialSource

    # ${CREDENTIALS_DIRECTORY}/link.key: systemd's LoadCredential= (systemd/drop-ins/link-key.conf), as the
    # fleet's secret files are named
    key = load_key(os.path.expandvars(link_key_file)) if link_key_file else None
    source = SerialSource(address.path, address.baud, channels, channel_count, name=text,
                          sample_rate_hz=sample_rate_hz, link_key=key)
    if channels is None and channel_count is None:
        try:
            source.wait_for_hello(HELLO_TIMEOUT_S)
        except BaseException:
            source.close()
            raise
    return source
