"""Recorded-log readers, chosen by file suffix (as python-can's ``LogReader`` does)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

from ..errors import LogError
from .csv_log import RecordedLog, read_csv_log
from .mcap_log import read_mcap_log

#: suffix -> reader(path, strict) -> RecordedLog
LOG_READERS: Dict[str, Callable[..., RecordedLog]] = {".csv": read_csv_log, ".mcap": read_mcap_log}


def read_log(path: "str | Path", strict: bool = False) -> RecordedLog:
    """Read a recorded log with the reader its suffix names."""
    path = Path(path)
    if path.is_dir():
        raise LogError(f"log {path} is a directory; replay takes one log file (to evaluate every log in a "
                       "folder, use 'edge-infer eval')")
    reader = LOG_READERS.get(path.suffix.lower())
    if reader is None:
        known = ", ".join(sorted(LOG_READERS))
        raise LogError(f"log {path}: unknown format {path.suffix or '(no suffix)'!r}; known: {known}")
    return reader(path, strict=strict)


__all__ = ["RecordedLog", "read_log", "read_csv_log", "read_mcap_log", "LOG_READERS"]
