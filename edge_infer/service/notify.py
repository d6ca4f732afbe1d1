"""The systemd notify protocol (sd_notify(3)), written with the standard library.

A ``Type=notify`` service tells systemd how it is doing by sending datagrams
to the socket named in ``$NOTIFY_SOCKET``: ``READY=1`` when it is really
ready (model loaded and warmed up, source open — not merely "process
started"), ``STATUS=...`` for ``systemctl status``, ``WATCHDOG=1`` as a
keep-alive, ``STOPPING=1`` when it begins to shut down. Each datagram holds
newline-separated ``KEY=VALUE`` lines. A name starting with ``@`` is a
Linux abstract socket (the ``@`` stands for a leading NUL byte).

The Python packages for this are unmaintained or need libsystemd headers;
the protocol is one ``sendto`` (systemd's own sd_notify(3) man page shows a
standard-library version), so it lives here.

The watchdog: with ``WatchdogSec=`` set, systemd passes ``$WATCHDOG_USEC``
(and ``$WATCHDOG_PID``) and kills the service when no ``WATCHDOG=1`` arrives
within that time. sd_watchdog_enabled(3) recommends a ping every half of it;
:meth:`Notifier.feed_watchdog` sends one when that much time has passed since
the last, and must be called from the decision loop itself so that a stuck
loop stops feeding and gets restarted.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping, Optional, Union

log = logging.getLogger(__name__)

Address = Union[str, bytes]
#: How long READY=1 and STOPPING=1 may wait for room in systemd's receive queue.
MUST_ARRIVE_S = 1.0


def socket_address(name: str) -> Address:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value: a path, or ``@name`` for an abstract socket."""
    if name.startswith("@"):
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    raise ValueError(f"NOTIFY_SOCKET={name!r} is neither a socket path nor an abstract '@' name")


def watchdog_interval_ns(environ: Mapping[str, str], pid: Optional[int] = None) -> Optional[int]:
    """How often to send ``WATCHDOG=1``: half of ``$WATCHDOG_USEC``, or None when the watchdog is not ours.

    Like sd_watchdog_enabled(3): no (or a non-positive, or an unparseable) ``$WATCHDOG_USEC`` means no
    watchdog; a ``$WATCHDOG_PID`` naming another process means the variables were inherited, not meant for us.
    """
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec * 1000 // 2


def format_message(**fields: object) -> bytes:
    """One notify datagram: ``KEY=VALUE`` lines. Newlines in a value would start a new field, so they go."""
    lines = []
    for key, value in fields.items():
        text = str(value).replace("\n", " ")
        lines.append(f"{key}={text}")
    return "\n".join(lines).encode("utf-8")


class Notifier:
    """Sends notify messages to one socket; does nothing at all when there is none (not under systemd).

    Sending never blocks the decision loop (the socket is non-blocking) and never raises: a notify
    message that cannot be delivered is logged (repeats are rate-limited by :mod:`edge_infer.service.logs`).
    """

    def __init__(self, address: Optional[Address] = None, watchdog_ns: Optional[int] = None):
        self.address = address
        self.watchdog_ns = watchdog_ns if address is not None else None
        self.sent = 0
        self.failed = 0
        self._next_watchdog_ns: Optional[int] = None
        self._socket: Optional[socket.socket] = None
        if address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)

    @classmethod
    def from_environ(cls, environ: Optional[Mapping[str, str]] = None) -> "Notifier":
        """The notifier systemd's environment asks for (``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC``, ``$WATCHDOG_PID``)."""
        environ = os.environ if environ is None else environ
        name = environ.get("NOTIFY_SOCKET", "")
        if not name:
            return cls(None)
        try:
            address = socket_address(name)
        except ValueError as exc:
            log.warning("%s; not notifying systemd", exc)
            return cls(None)
        return cls(address, watchdog_interval_ns(environ))

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, wait_s: float = 0.0, **fields: object) -> bool:
        """Send one datagram with ``fields``; True if it went out (False when disabled or it failed).

        With ``wait_s`` > 0, wait that long for room in systemd's receive queue (for the messages that
        must not be lost: READY, STOPPING); otherwise a full queue drops the message at once (a late
        WATCHDOG or STATUS costs nothing, a blocked decision loop would).
        """
        if self._socket is None:
            return False
        try:
            if wait_s > 0:
                self._socket.settimeout(wait_s)
            self._socket.sendto(format_message(**fields), self.address)
        except OSError as exc:
            self.failed += 1
            log.warning("cannot notify systemd at %r: %s", self.address, exc.strerror or exc)
            return False
        finally:
            if wait_s > 0:
                self._socket.setblocking(False)
        self.sent += 1
        return True

    def ready(self, status: str, now_ns: int) -> None:
        """``READY=1``: start-up is complete. Also starts the watchdog schedule: systemd arms it now.

        (systemd arms the watchdog when the service leaves its start state, i.e. on ``READY=1``; loading
        and warming up the model before that is bounded by ``TimeoutStartSec=`` instead.)
        """
        self.send(MUST_ARRIVE_S, READY=1, STATUS=status)
        if self.watchdog_ns is not None:
            self._next_watchdog_ns = now_ns + self.watchdog_ns

    def status(self, text: str) -> None:
        self.send(STATUS=text)

    def feed_watchdog(self, now_ns: int) -> bool:
        """Send ``WATCHDOG=1`` when the next ping (every half watchdog period after READY) is due; True if sent.

        Cheap enough to call on every loop iteration: one comparison when nothing is due.
        """
        due = self._next_watchdog_ns
        if due is None or now_ns < due:
            return False
        # Anchored to the schedule, so the loop's tick granularity does not stretch every gap; after a
        # stall longer than a whole interval, start again from now rather than send a burst.
        step = self.watchdog_ns
        self._next_watchdog_ns = due + step if now_ns - due < step else now_ns + step
        return self.send(WATCHDOG=1)

    def stopping(self, status: str = "stopping") -> None:
        """``STOPPING=1``: shutdown has begun. The watchdog is no longer fed after this."""
        self._next_watchdog_ns = None
        self.send(MUST_ARRIVE_S, STOPPING=1, STATUS=status)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
