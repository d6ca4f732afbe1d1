"""Logging for a process that runs for weeks under systemd: stderr, levels, no floods.

A service's log is read by an operator with ``journalctl -u edge-infer``.
journald captures stderr by itself, so the runtime writes one line per event
to stderr and nothing else; when stderr *is* the journal (``$JOURNAL_STREAM``
names its device and inode, systemd.exec(5)) each line starts with the
syslog priority in angle brackets (``<4>`` for a warning, sd-daemon(3)), so
``journalctl -p warning`` filters by level, and the timestamp is left to
journald. On a terminal the lines carry a time and the level name instead.

A warning that repeats at the sensor's rate (a bad CRC every frame, a
saturated channel) would drown everything else and wear the SD card, so
:class:`RepeatFilter` lets the first of a kind through and then at most one
per interval, saying how many it held back.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, TextIO, Tuple

#: The level names ``--log-level`` and ``[logging].level`` accept.
LEVELS = ("debug", "info", "warning", "error")
_LEVEL_NUMBERS: Dict[str, int] = {name: getattr(logging, name.upper()) for name in LEVELS}
#: A repeated warning is let through at most once per this many seconds.
DEFAULT_REPEAT_INTERVAL_S = 10.0

#: syslog priorities for the ``<N>`` prefix journald parses (sd-daemon(3): SD_ERR=3, SD_WARNING=4, ...).
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
#: Distinct message templates remembered by the filter; the oldest is forgotten first (constant memory).
_MAX_REMEMBERED = 256


def stream_is_journal(stream: TextIO) -> bool:
    """True when ``stream`` is connected to journald (its ``device:inode`` equals ``$JOURNAL_STREAM``)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in expected.split(":"))
        status = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):  # unset or malformed variable; a stream without a descriptor
        return False
    return (status.st_dev, status.st_ino) == (device, inode)


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``: journald adds the time and reads the level from the prefix."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        # A multi-line message (a traceback) must keep its level on every line, or journald files the rest as info.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


class RepeatFilter(logging.Filter):
    """Passes the first record of each (logger, level, message template), then one per ``interval_s``.

    The template (``record.msg`` before ``%`` formatting) is the key, so "CRC error on frame 17" and
    "... 18" count as repeats. The record that ends a quiet interval carries the number held back.
    """

    def __init__(self, interval_s: float = DEFAULT_REPEAT_INTERVAL_S, min_level: int = logging.WARNING,
                 now: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval_s = interval_s
        self.min_level = min_level
        self._now = now
        self._seen: "OrderedDict[Tuple[str, int, str], List[float]]" = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level or self.interval_s <= 0:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._now()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.interval_s:
            entry[1] += 1
            return False
        held_back = 0 if entry is None else int(entry[1])
        self._seen[key] = [now, 0]
        self._seen.move_to_end(key)
        if len(self._seen) > _MAX_REMEMBERED:
            self._seen.popitem(last=False)
        if held_back:
            record.msg = f"{record.getMessage()} ({held_back} more like this in the last {now - entry[0]:.0f} s)"
            record.args = None
        return True


class _OurHandler(logging.StreamHandler):
    """Marks the handler :func:`setup_logging` installed, so a second call replaces it instead of doubling lines."""


def setup_logging(level: str = "info", stream: Optional[TextIO] = None,
                  repeat_interval_s: float = DEFAULT_REPEAT_INTERVAL_S) -> logging.Handler:
    """Send log records at ``level`` and above to ``stream`` (stderr), journald-aware and repeat-limited."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    stream = stream or sys.stderr
    handler = _OurHandler(stream)
    if stream_is_journal(stream):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RepeatFilter(repeat_interval_s))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVEL_NUMBERS[level])
    return handler

