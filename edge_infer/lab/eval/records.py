"""Decision records out of ``eval``: one file per log, golden decisions, and the comparison with them.

A record is what ``replay --decisions`` writes (README: "Decision record"),
with ``latency_us`` and ``invoke_us`` null: offline there is no deadline and
the windows ran in batches, so neither means what it means on a device.

Golden decisions (openpilot's ``process_replay`` idea): ``--update-golden``
stores each log's records in ``GOLDEN_DIR/<log name>.jsonl``; ``--golden``
compares a run with them, record by record while the log is evaluated (no
log is held in memory), outputs and OOD scores within a tolerance, and says
which windows changed in which fields. That is the CI gate for a model
change: a new model, a new spec, a new backend or a new runtime must make the
same decisions on the fleet's logs, or the change is looked at.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Optional, Sequence

from ...decide.reasons import Reason
from ...errors import EdgeInferError
from ...model.spec import Action
from .batch import Decisions

#: Fields a golden comparison looks at (timing fields are null offline and never compared).
COMPARED_FIELDS = ("seq", "t", "action", "source", "reason", "output", "label", "ood_score")
#: The OOD score is rounded to 3 decimals in a record: one rounding step apart is the same score.
OOD_TOLERANCE = 0.0011
#: Changed windows listed per log.
FIRST_CHANGES = 10


def records(d: Decisions, actions: Sequence[Action]) -> Iterator[Dict[str, Any]]:
    """The records of a chunk's decisions, in window order."""
    outputs = d.output.tolist()
    labels = [None] * len(d) if d.label is None else d.label.tolist()
    for i, seq in enumerate(d.seq.tolist()):
        reason = int(d.reason[i])
        ood = float(d.ood[i])
        yield {
            "seq": seq,
            "t": float(d.t[i]),
            "action": actions[int(d.action[i])],
            "source": "fallback" if d.fallback[i] else "model",
            "reason": None if reason == 0 else Reason(reason).code,
            "latency_us": None,
            "invoke_us": None,
            "output": outputs[i] if d.has_output[i] else None,
            "label": labels[i],
            "ood_score": None if math.isnan(ood) else round(ood, 3),
        }


def record_file_name(log_name: str) -> str:
    """``unit7/day1.csv`` -> ``unit7__day1.csv.jsonl``: one flat folder, one file per log, named after it."""
    return log_name.replace(os.sep, "__").replace("/", "__") + ".jsonl"


class RecordFile:
    """Decision records of one log, as JSON lines; an existing file is refused, never overwritten."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._file: IO[str] = path.open("x", encoding="utf-8")
        except FileExistsError:
            raise EdgeInferError(f"decision file {path} exists; eval never overwrites decisions "
                                 "(move it, or choose another --decisions-dir)") from None
        except OSError as exc:
            raise EdgeInferError(f"cannot write decision file {path}: {exc.strerror or exc}") from None

        self.written = 0

    def write(self, record: Dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.written += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def discard_if_empty(self) -> None:
        """After a log failed: an empty file would only look like a log without windows (records are kept)."""
        self.close()
        if self.written == 0:
            self.path.unlink(missing_ok=True)


class GoldenWriter:
    """``--update-golden``: the log's records to a temporary file, moved over the golden one only once the log
    was evaluated to its end (a failed log keeps its old golden decisions)."""

    def __init__(self, path: Path):
        self.path = path
        self._partial = path.with_name(path.name + ".partial")
        try:
            self._file: IO[str] = self._partial.open("w", encoding="utf-8")
        except OSError as exc:
            raise EdgeInferError(f"cannot write golden decisions {path}: {exc.strerror or exc}") from None

    def write(self, record: Dict[str, Any]) -> None:
        self._file.write(json.dumps({k: record[k] for k in COMPARED_FIELDS}, separators=(",", ":")) + "\n")

    def commit(self) -> None:
        self._file.close()
        os.replace(self._partial, self.path)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
            self._partial.unlink(missing_ok=True)


class GoldenComparison:
    """Compares a log's records, as they come, with its golden file; :meth:`result` says what changed."""

    def __init__(self, path: Path, output_tolerance: float, ignore: Sequence[str] = ()):
        self.path = path
        self.tolerance = output_tolerance
        self.fields = [f for f in COMPARED_FIELDS if f not in set(ignore)]
        self.changed = 0
        self.compared = 0
        self.first: List[Dict[str, Any]] = []
        self.problem: Optional[str] = None
        self._file: Optional[IO[str]] = None
        self._line = 0
        try:
            self._file = path.open(encoding="utf-8")
        except FileNotFoundError:
            self.problem = f"no golden decisions {path} (write them with --update-golden)"
        except OSError as exc:
            self.problem = f"cannot read golden decisions {path}: {exc.strerror or exc}"

    def compare(self, record: Dict[str, Any]) -> None:
        if self._file is None:
            self.changed += 1
            return
        self.compared += 1
        old = self._next()
        if old is None:
            self._change(record["seq"], ["(not in golden)"], None, record)
            return
        differ = [f for f in self.fields if not self._same(f, old.get(f), record.get(f))]
        if differ:
            self._change(record["seq"], differ, old, record)

    def _next(self) -> Optional[Dict[str, Any]]:
        assert self._file is not None
        line = self._file.readline()
        if not line:
            return None
        self._line += 1
        try:
            return json.loads(line)
        except ValueError:
            raise EdgeInferError(f"golden decisions {self.path} line {self._line} is not JSON") from None

    def _same(self, name: str, old: Any, new: Any) -> bool:
        if name == "output":
            if old is None or new is None:
                return old is new
            return len(old) == len(new) and all(abs(a - b) <= self.tolerance for a, b in zip(old, new))
        if name == "ood_score":
            if old is None or new is None:
                return old is new
            return abs(old - new) <= OOD_TOLERANCE
        return old == new

    def _change(self, seq: Any, fields: List[str], old: Optional[Dict[str, Any]], new: Dict[str, Any]) -> None:
        self.changed += 1
        if len(self.first) < FIRST_CHANGES:
            keys = [f for f in fields if f in COMPARED_FIELDS]
            self.first.append({"seq": seq, "fields": fields,
                               "golden": None if old is None else {k: old.get(k) for k in keys},
                               "now": {k: new.get(k) for k in keys}})

    def result(self) -> Dict[str, Any]:
        """``same``, ``changed_windows``, ``first_changes`` (seq, fields, golden and new values), ``problem``."""
        missing = 0
        if self._file is not None:
            while self._next() is not None:
                missing += 1
            self._file.close()
        if missing:
            self.changed += missing
            self.problem = f"{missing} golden windows at the end were not decided now"
        return {"file": str(self.path), "same": self.changed == 0 and self.problem is None,
                "compared_windows": self.compared, "changed_windows": self.changed,
                "first_changes": self.first, "problem": self.problem, "ignored_fields":
                [f for f in COMPARED_FIELDS if f not in self.fields]}

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
