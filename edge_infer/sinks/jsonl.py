"""Decision log: one JSON object per line, one line per decision, appended run after run.

A service restarted by systemd after a crash opens the same ``--decisions``
file again; opening it with ``"w"`` erased the record of the very run that
crashed. So the file is only ever appended to, and every run starts with one
marker line, ``{"event": "run_start", ...}`` (when, which process, which
model), so that the runs in a file can be told apart. Decision records never
have an ``event`` key; every reader of decision files goes through
:func:`read_decisions`, which skips event lines and by default takes the last
run (README: "Decision log").

A crash can cut the last line of a run short; the next run starts on a new
line, and the reader skips (and counts) a line that is not JSON.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from .._version import __version__
from ..decide.decision import Decision
from ..errors import EdgeInferError
from .base import Sink

#: The ``event`` of the line that opens each run's records.
RUN_START = "run_start"


def run_start_record(about: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The marker line of a new run: when, where, which version, and what the caller adds (model, source)."""
    return {"event": RUN_START,
            "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "host": socket.gethostname(), "pid": os.getpid(), "edge_infer_version": __version__, **(about or {})}


class JsonLinesSink(Sink):
    """Appends :meth:`Decision.to_record` lines to a file, line-buffered so a crash loses at most one line."""

    def __init__(self, path: "str | Path", about: Optional[Dict[str, Any]] = None):
        self.path = Path(path)
        try:
            self._file = self.path.open("a", encoding="utf-8", buffering=1)
            if not _ends_with_newline(self.path):
                self._file.write("\n")  # the last run was cut off mid-line: start ours on a line of its own
            self._write(run_start_record(about))
        except OSError as exc:
            raise EdgeInferError(f"cannot write decision log {self.path}: {exc.strerror or exc}") from None

    def on_decision(self, decision: Decision) -> None:
        self._write(decision.to_record())

    def _write(self, record: Dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            try:
                os.fsync(self._file.fileno())
            except OSError:  # a pipe or a device: nothing to sync
                pass
            self._file.close()


def _ends_with_newline(path: Path) -> bool:
    """True for an empty file, one that ends a line, or no regular file at all (a pipe, /dev/stdout)."""
    if not path.is_file() or path.stat().st_size == 0:
        return True
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


@dataclass
class DecisionLog:
    """A decision file read back: its runs' decision records, their run_start lines, and lines skipped."""

    runs: List[List[Dict[str, Any]]] = field(default_factory=list)
    starts: List[Optional[Dict[str, Any]]] = field(default_factory=list)
    bad_lines: int = 0


def read_decision_log(path: "str | Path") -> DecisionLog:
    """Every run in a decision file. Lines before the first run_start (files of older versions) are a run
    of their own; a line that is not a JSON object (a crash cut it) is skipped and counted."""
    log = DecisionLog()
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    log.bad_lines += 1
                    continue
                if not isinstance(record, dict):
                    log.bad_lines += 1
                elif record.get("event") == RUN_START:
                    log.runs.append([])
                    log.starts.append(record)
                elif "event" not in record:  # other events may come: readers of decisions skip them all
                    if not log.runs:
                        log.runs.append([])
                        log.starts.append(None)
                    log.runs[-1].append(record)
    except OSError as exc:
        raise EdgeInferError(f"cannot read decision log {path}: {exc.strerror or exc}") from None
    return log


def read_decisions(path: "str | Path", run: Optional[int] = -1) -> List[Dict[str, Any]]:
    """The decision records of one run of a decision file: the last by default, ``None`` for all runs."""
    log = read_decision_log(path)
    if run is None:
        return [record for records in log.runs for record in records]
    if not log.runs:
        return []
    try:
        return log.runs[run]
    except IndexError:
        raise EdgeInferError(f"decision log {path} has {len(log.runs)} runs; there is no run {run}") from None
