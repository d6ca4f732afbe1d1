"""A serial port that survives being unplugged: open, read, write, and reopen with backoff.

pyserial has no reconnect (pyserial #558): when a USB adapter is pulled, a
read raises ``SerialException`` ("device reports readiness to read but
returned no data") or ``OSError``/``termios.error``, and the port object is
dead. :class:`SerialPort` turns every such failure into "not connected",
closes the dead port and tries to open the path again: after 0.1 s, then
doubling up to 2 s between attempts, so a port that keeps failing is not
hammered. While the path is missing, each call also checks (one ``stat``)
whether it is back, so a device that reappears is opened at once rather than
at the next backoff step. The caller (the serial source) keeps the decision
loop running meanwhile.

A device that comes back often does so under another name (``ttyUSB0``
becomes ``ttyUSB1``); ``/dev/serial/by-id/...`` names stay put, which is why
the warnings suggest them. The port is opened ``exclusive`` (an advisory
lock: two readers on one port each get half the bytes) and, where the driver
supports it, in low-latency mode (FTDI adapters otherwise hold received
bytes for up to 16 ms).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import termios
import time
from typing import Any, Callable, Optional, Tuple

import serial

from ..errors import SourceError

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.1  #: the first reopen attempt after the port is lost
RETRY_MAX_S = 2.0  #: the longest wait between reopen attempts
WRITE_TIMEOUT_S = 0.05  #: a frame that cannot go out by then is cut off (the device is not reading)
READ_SIZE = 4096
#: Failures that mean "the port is gone (for now)"; pyserial leaks the last two raw (pyserial #417).
PORT_ERRORS = (serial.SerialException, OSError, termios.error)
#: errno values of an open() that may succeed later: the device is not plugged in (yet).
_ABSENT = (errno.ENOENT, errno.ENODEV, errno.ENXIO)
#: Kernel names that can change on replug: the warnings suggest a /dev/serial/by-id/ name instead.
_UNSTABLE_NAME = re.compile(r"^/dev/tty(USB|ACM)\d+$")


def by_id_tip(path: str) -> str:
    """A hint to use a stable name, for paths that can change on replug; "" otherwise."""
    if not _UNSTABLE_NAME.match(path):
        return ""
    return (f" ({path} may come back as another ttyUSB/ttyACM number: name the port by its "
            "/dev/serial/by-id/... path, see ls -l /dev/serial/by-id/)")


class Backoff:
    """Delays between reopen attempts: ``first``, doubling up to ``maximum``; :meth:`reset` on success."""

    def __init__(self, first: float = RETRY_FIRST_S, maximum: float = RETRY_MAX_S):
        self.first = first
        self.maximum = maximum
        self._next = first

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.first


class SerialPort:
    """One serial device path, opened on demand and reopened after it disappears.

    ``now`` is the monotonic clock the retry schedule runs on (seconds).
    Counters: ``reconnects`` (opens after the first), ``disconnects`` (ports
    lost), ``write_timeouts`` (writes dropped because the device did not
    read), ``disconnected_ms`` (time spent without a port once it had been
    open). ``low_latency`` is True/False once the first open tried it, None before.
    """

    def __init__(self, path: str, baud: int, *, backoff: Optional[Backoff] = None,
                 now: Callable[[], float] = time.monotonic):
        self.path = path
        self.baud = baud
        self._now = now
        self._backoff = backoff or Backoff()
        self._ser: Optional[serial.Serial] = None
        #: A write found the port gone (why, and on which connection); the next read closes it.
        self._write_failed: Optional[Tuple[BaseException, Any]] = None
        self.retry_at = 0.0  #: when :meth:`open_if_due` may try again
        self.opened_once = False
        self._lost_at: Optional[float] = None
        self._outage_error = ""  # the last open failure reported in this outage (warn once per kind)
        self.low_latency: Optional[bool] = None
        self.reconnects = 0
        self.disconnects = 0
        self.write_timeouts = 0
        self.disconnected_ms = 0

    @property
    def connected(self) -> bool:
        return self._ser is not None

    def open_if_due(self) -> bool:
        """Try to open the port if it is closed and a retry is due; True only when it has just opened.

        Before the port was ever open, a missing device is waited for (a
        service may start before USB is up), but any other failure is the
        user's to fix and raises :class:`SourceError`.
        """
        now = self._now()
        if self._ser is not None or (now < self.retry_at and not self._reappeared()):
            return False
        try:
            ser = serial.Serial(self.path, self.baud, timeout=0, write_timeout=0, exclusive=True)
        except (ValueError, *PORT_ERRORS) as exc:
            self._open_failed(exc, now)
            return False
        self._ser = ser
        self._backoff.reset()
        self._set_low_latency(ser)
        if self._lost_at is not None:
            away = now - self._lost_at
            self.disconnected_ms += int(away * 1000)
            self.reconnects += 1
            log.warning("serial port %s is back after %.1f s (reconnect %d)", self.path, away, self.reconnects)
        self._lost_at = None
        self._outage_error = ""
        self.opened_once = True
        return True

    def _reappeared(self) -> bool:
        """The path was missing and is back (udev made the node, a sim its link): try at once, not at the backoff."""
        return self._outage_error == "absent" and os.path.exists(self.path)

    def _open_failed(self, exc: BaseException, now: float) -> None:
        code = getattr(exc, "errno", None)
        absent = code in _ABSENT
        if not self.opened_once and not absent:
            raise SourceError(_open_error(self.path, exc)) from None
        self.retry_at = now + self._backoff.next_delay()
        kind = "absent" if absent else str(exc)
        repeated, self._outage_error = kind == self._outage_error, kind
        if repeated or (absent and self.opened_once):  # the "lost" warning already said we keep trying
            log.debug("serial port %s: cannot open it yet: %s", self.path, exc)
        elif absent:
            log.warning("serial port %s does not exist (yet): waiting for the device, deciding without it%s",
                        self.path, by_id_tip(self.path))
        else:
            log.warning("serial port %s cannot be opened yet: %s; retrying", self.path, exc)

    def _set_low_latency(self, ser: serial.Serial) -> None:
        """Ask the driver to hand over received bytes at once; say what happened the first time only."""
        try:
            ser.set_low_latency_mode(True)
            done, why = True, ""
        except (ValueError, NotImplementedError, AttributeError, *PORT_ERRORS) as exc:
            done, why = False, str(exc)
        first = self.low_latency is None
        self.low_latency = done
        if not first:
            return
        if done:
            log.info("serial port %s: low-latency mode set (ASYNC_LOW_LATENCY)", self.path)
        else:
            log.info("serial port %s: low-latency mode not supported by its driver (%s); a USB adapter may "
                     "hold bytes up to its latency timer, see docs/serial.md", self.path, why)

    def fileno(self) -> int:
        """The open port's file descriptor, -1 if it is not open."""
        return -1 if self._ser is None else self._ser.fileno()

    def read(self, wait_s: float) -> Optional[bytes]:
        """Whatever arrives within ``wait_s`` seconds (b"" if nothing); None if the port is (now) lost."""
        ser = self._ser
        if ser is None:
            return None
        failed = self._write_failed
        if failed is not None:
            self._write_failed = None
            if failed[1] is ser:  # (a write to a connection lost and replaced since says nothing of this one)
                self.lost(failed[0])
                return None
        try:
            ready, _, _ = select.select([ser.fileno()], [], [], max(wait_s, 0.0))
            return ser.read(READ_SIZE) if ready else b""
        except PORT_ERRORS as exc:
            self.lost(exc)
            return None

    def write(self, data: bytes) -> bool:
        """Write ``data``; False if it could not all go out (no port, the device not reading, the port lost).

        The port is non-blocking (``write_timeout=0``): each write puts out
        what fits once ``select`` says there is room, until ``WRITE_TIMEOUT_S``.
        (pyserial's own write timeout also fires when the process was merely
        descheduled during a write that succeeded, which would miscount.)
        """
        ser = self._ser
        failed = self._write_failed
        if ser is None or (failed is not None and failed[1] is ser):
            return False
        deadline = self._now() + WRITE_TIMEOUT_S
        rest = memoryview(data)
        try:
            while rest:
                _, room, _ = select.select([], [ser.fileno()], [], max(deadline - self._now(), 0.0))
                if not room:
                    self.write_timeouts += 1
                    return False
                rest = rest[ser.write(rest):]
            return True
        except PORT_ERRORS as exc:
            self.write_failed(exc, ser)
            return False

    @property
    def connection(self) -> Any:
        """What identifies the open connection (None when closed): a reopened port is another one."""
        return self._ser

    def write_failed(self, exc: BaseException, connection: Any) -> None:
        """A write (here, or the backstop's) found the port gone.

        The reader owns the port: it closes it at its next read (the runtime writes from another thread, and
        closing the port under a reader blocked on it would count one unplug twice).
        """
        self._write_failed = (exc, connection)

    def lost(self, exc: BaseException) -> None:
        """The port failed: close it, warn, and schedule the first reopen attempt."""
        self._write_failed = None
        self._close_quietly()
        self.disconnects += 1
        now = self._now()
        self._lost_at = now
        self._outage_error = ""
        self.retry_at = now + self._backoff.next_delay()
        log.warning("serial port %s lost (%s): deciding without it and retrying every %g-%g s until it is back%s",
                    self.path, exc, self._backoff.first, self._backoff.maximum, by_id_tip(self.path))

    def close(self) -> None:
        """Close for good (the runtime is stopping). Safe to call twice."""
        if self._lost_at is not None:
            self.disconnected_ms += int((self._now() - self._lost_at) * 1000)
            self._lost_at = None
        self._close_quietly()

    def _close_quietly(self) -> None:
        ser, self._ser = self._ser, None
        if ser is not None:
            try:
                ser.close()
            except PORT_ERRORS:
                pass  # a dead port may fail to close; it is gone either way


def _open_error(path: str, exc: BaseException) -> str:
    """One line that says why ``path`` cannot be opened and what to do about it."""
    code = getattr(exc, "errno", None)
    if code in (errno.EACCES, errno.EPERM):
        return (f"serial port {path}: permission denied; add your user to the 'dialout' group "
                "(sudo usermod -aG dialout $USER, then log in again)")
    if code in (errno.EAGAIN, errno.EBUSY):
        return (f"serial port {path} is in use by another program (another edge-infer, a serial monitor, "
                "ModemManager?); stop it, or name another port")
    if "configure port" in str(exc) or code in (errno.ENOTTY, errno.EINVAL):
        return f"{path} is not a serial port ({exc}); name the device, e.g. serial:/dev/serial/by-id/..."
    return f"serial port {path} cannot be opened: {exc}"
