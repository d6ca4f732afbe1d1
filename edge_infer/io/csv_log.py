"""Recorded sensor logs in CSV: ``t`` in seconds, one column per channel, optional ``label``.

A field log is messy: a row may be cut short by a power loss, a value may be
garbage. The reader never raises on a bad row. It skips the row and keeps
``(line number, what is wrong)`` so the run can report it, unless the caller
asked for ``strict`` reading, where the first bad row is a :class:`LogError`
that names its line.
"""

from __future__ import annotations

import csv
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import LogError

TIME_COLUMN = "t"
LABEL_COLUMN = "label"
#: Rows per chunk of :func:`iter_csv_log` (and of MCAP recordings): under a megabyte of text for a 9-channel
#: log, so memory stays bounded, while numpy's parser still runs long enough per call to be fast.
CHUNK_ROWS = 8192


@dataclass
class RecordedLog:
    """A whole recorded log in memory, one row per frame.

    ``bad_rows`` lists the rows that were skipped, as (1-based line number,
    reason); they are not in ``t``/``values``/``labels``.
    """

    t: np.ndarray
    values: np.ndarray
    channels: List[str]
    labels: Optional[List[str]]
    bad_rows: List[Tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.t)


def _open_log(path: Path) -> IO[str]:
    """The log as text for the csv module. utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which
    would stick to the first column's name ('\\ufefft'); its CRLF line ends are the csv module's own."""
    try:
        return path.open(newline="", encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise LogError(f"cannot read log {path}: {exc.strerror or exc}") from None


def read_csv_log(path: "str | Path", strict: bool = False) -> RecordedLog:
    """Read a CSV log. Raises :class:`LogError` only for a file that cannot be a log at all
    (missing, empty, no ``t`` column, no channels) or, when ``strict``, for the first bad row."""
    path = Path(path)
    with _open_log(path) as handle:
        reader = csv.reader(handle)
        header = _read_header(reader, path)
        return _read_rows(reader, header, path, strict)


def _read_header(reader: "csv._reader", path: Path) -> List[str]:
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise LogError(f"log {path} is empty: expected a header line such as 't,ch1,ch2,label'") from None
    except csv.Error as exc:
        raise LogError(f"log {path} line 1: cannot parse the header: {exc}") from None
    if TIME_COLUMN not in header:
        raise LogError(f"log {path} line 1: no '{TIME_COLUMN}' column in the header {header}; "
                       "the first column must be the timestamp in seconds")
    if len(set(header)) != len(header):
        raise LogError(f"log {path} line 1: duplicate column names in the header {header}")
    if len([c for c in header if c not in (TIME_COLUMN, LABEL_COLUMN)]) == 0:
        raise LogError(f"log {path} line 1: no channel columns in the header {header}")
    return header


def _read_rows(reader: "csv._reader", header: List[str], path: Path, strict: bool, line_before: int = 0) -> RecordedLog:
    t_col = header.index(TIME_COLUMN)
    label_col = header.index(LABEL_COLUMN) if LABEL_COLUMN in header else None
    channel_cols = [i for i, name in enumerate(header) if name not in (TIME_COLUMN, LABEL_COLUMN)]
    times: List[float] = []
    rows: List[List[float]] = []
    labels: List[str] = []
    bad: List[Tuple[int, str]] = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            _bad_row(bad, line_before + reader.line_num, f"cannot parse: {exc}", path, strict)
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        problem = _parse_row(row, len(header), t_col, channel_cols, times, rows)
        if problem:
            _bad_row(bad, line_before + reader.line_num, problem, path, strict)
            continue
        if label_col is not None:
            labels.append(row[label_col].strip())
    with np.errstate(over="ignore"):  # a value beyond float32 becomes Inf: a sensor fault for the checks to judge
        values = np.array(rows, dtype=np.float32).reshape(len(rows), len(channel_cols))
    return RecordedLog(
        t=np.array(times, dtype=np.float64),
        values=values,
        channels=[header[i] for i in channel_cols],
        labels=labels if label_col is not None else None,
        bad_rows=bad,
    )


def _parse_row(row: List[str], width: int, t_col: int, channel_cols: List[int],
               times: List[float], rows: List[List[float]]) -> Optional[str]:
    """Append a good row to ``times``/``rows``; return what is wrong with a bad one."""
    if len(row) != width:
        return f"{len(row)} fields, expected {width}"
    try:
        t = float(row[t_col])
    except ValueError:
        return f"timestamp {row[t_col]!r} is not a number"
    if not math.isfinite(t):
        return f"timestamp {row[t_col]!r} is not finite"
    try:
        # NaN and Inf are kept: they are sensor faults for the checks to judge, not parse errors.
        sample = [float(row[i]) for i in channel_cols]
    except ValueError as exc:
        return f"value is not a number ({exc})"
    times.append(t)
    rows.append(sample)
    return None


def _bad_row(bad: List[Tuple[int, str]], line: int, problem: str, path: Path, strict: bool) -> None:
    if strict:
        raise LogError(f"log {path} line {line}: {problem} (fix or delete the line, "
                       "or run without --strict to skip bad rows)")
    bad.append((line, problem))


def iter_csv_log(path: "str | Path", strict: bool = False,
                 chunk_rows: int = CHUNK_ROWS) -> Iterator[RecordedLog]:
    """The log in chunks of at most ``chunk_rows`` lines: the same rows, values and ``bad_rows`` as
    :func:`read_csv_log`, in bounded memory (``eval`` reads day-long logs this way).

    Each chunk is parsed by numpy's C parser when its lines are plain (the right number of fields, no quotes,
    no blank lines, finite timestamps); any chunk it rejects goes through :func:`_parse_row`, the one rule
    for a row, line by line. A quoted field that spans lines is only read right within one chunk.
    """
    path = Path(path)
    with _open_log(path) as handle:
        header_reader = csv.reader(itertools.islice(handle, 1))
        header = _read_header(header_reader, path)
        line = header_reader.line_num
        while True:
            lines = list(itertools.islice(handle, chunk_rows))
            if not lines:
                return
            yield _fast_chunk(lines, header) or _slow_chunk(lines, header, line, path, strict)
            line += len(lines)


def _fast_chunk(lines: List[str], header: List[str]) -> Optional[RecordedLog]:
    """A chunk of plain lines parsed by ``numpy.loadtxt``, or None where only the row-by-row reader may judge."""
    text = "".join(lines)
    if '"' in text or "\0" in text or text.count(",") != len(lines) * (len(header) - 1):
        return None
    t_col = header.index(TIME_COLUMN)
    label_col = header.index(LABEL_COLUMN) if LABEL_COLUMN in header else None
    channel_cols = [i for i, name in enumerate(header) if name not in (TIME_COLUMN, LABEL_COLUMN)]
    try:
        numbers = np.loadtxt(lines, delimiter=",", usecols=[t_col, *channel_cols], dtype=np.float64,
                             comments=None, ndmin=2)
    except ValueError:
        return None
    if len(numbers) != len(lines) or not np.isfinite(numbers[:, 0]).all():  # a blank line: the reader's call
        return None
    with np.errstate(over="ignore"):
        values = numbers[:, 1:].astype(np.float32)
    labels = None
    if label_col == len(header) - 1:
        labels = [line.rsplit(",", 1)[1].strip() for line in lines]
    elif label_col is not None:
        labels = [line.split(",")[label_col].strip() for line in lines]
    return RecordedLog(t=np.ascontiguousarray(numbers[:, 0]), values=values,
                       channels=[header[i] for i in channel_cols], labels=labels)


def _slow_chunk(lines: List[str], header: List[str], line_before: int, path: Path, strict: bool) -> RecordedLog:
    """A chunk through the row-by-row reader, its bad rows numbered by their line in the file."""
    return _read_rows(csv.reader(lines), header, path, strict, line_before)
