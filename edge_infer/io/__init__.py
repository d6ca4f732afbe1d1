"""Recorded-log readers, chosen by file suffix (as python-can's ``LogReader`` does)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Iterator

from ..errors import LogError
from .csv_log import CHUNK_ROWS, RecordedLog, iter_csv_log, read_csv_log
from .mcap_log import iter_mcap_log, read_mcap_log

#: suffix -> reader(path, strict) -> RecordedLog
LOG_READERS: Dict[str, Callable[..., RecordedLog]] = {".csv": read_csv_log, ".mcap": read_mcap_log}

#: suffix -> reader(path, strict, chunk_rows) -> chunks of the log, in bounded memory
LOG_CHUNK_READERS: Dict[str, Callable[..., Iterator[RecordedLog]]] = {".csv": iter_csv_log, ".mcap": iter_mcap_log}


def _reader(path: Path, readers: Dict[str, Callable]) -> Callable:
    if path.is_dir():
        raise LogError(f"log {path} is a directory; give one log file (to evaluate every log in a folder, use "
                       "'edge-infer eval')")
    reader = readers.get(path.suffix.lower())
    if reader is None:
        known = ", ".join(sorted(readers))
        raise LogError(f"log {path}: unknown format {path.suffix or '(no suffix)'!r}; known: {known}")
    return reader


def iter_log(path: "str | Path", strict: bool = False, chunk_rows: int = CHUNK_ROWS) -> Iterator[RecordedLog]:
    """A recorded log in chunks of at most ``chunk_rows`` rows (the same rows as :func:`read_log`)."""
    path = Path(path)
    return _reader(path, LOG_CHUNK_READERS)(path, strict=strict, chunk_rows=chunk_rows)


def read_log(path: "str | Path", strict: bool = False) -> RecordedLog:
    """Read a recorded log with the reader its suffix names."""
    path = Path(path)
    return _reader(path, LOG_READERS)(path, strict=strict)


__all__ = ["RecordedLog", "read_log", "read_csv_log", "read_mcap_log", "LOG_READERS", "iter_log",
           "LOG_CHUNK_READERS"]
