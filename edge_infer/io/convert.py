"""Convert recorded logs between CSV and MCAP, by suffix, without changing a value.

CSV is what people edit, plot and train on; MCAP is what the field records
and Foxglove opens. A conversion keeps every frame's ``t``, values and label
exactly: values are written with the shortest text that reads back to the
same float32 (and ``t`` to the same float64), so CSV -> MCAP -> CSV gives the
same numbers. A CSV has no place for decisions or HELLOs; converting a
recording to CSV says how many it left out. The target must not exist: a
conversion never overwrites a file (:mod:`edge_infer.io.files`), and a
failed one leaves nothing behind.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict

import numpy as np

from ..errors import EdgeInferError
from . import read_log
from .csv_log import LABEL_COLUMN, TIME_COLUMN, RecordedLog
from .files import create_new, refuse_existing
from .mcap_log import read_mcap, write_mcap_log

#: Formats ``convert`` writes, by suffix.
WRITABLE = (".csv", ".mcap")


def write_csv_log(path: "str | Path", log: RecordedLog) -> None:
    """Write ``log`` as CSV: ``t``, the channels, and ``label`` if it has labels."""
    path = Path(path)
    header = [TIME_COLUMN, *log.channels] + ([LABEL_COLUMN] if log.labels is not None else [])
    try:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for i in range(len(log)):
                row = [repr(float(log.t[i]))] + [str(v) for v in log.values[i].astype(np.float32)]
                if log.labels is not None:
                    row.append(log.labels[i])
                writer.writerow(row)
    except OSError as exc:
        raise EdgeInferError(f"cannot write {path}: {exc.strerror or exc}") from None


def convert_log(source: "str | Path", target: "str | Path", strict: bool = False) -> Dict[str, Any]:
    """Convert ``source`` to ``target`` (formats by suffix); returns what was written and left out."""
    source, target = Path(source), Path(target)
    kind_in, kind_out = source.suffix.lower(), target.suffix.lower()
    if kind_out not in WRITABLE:
        raise EdgeInferError(f"cannot write {target}: unknown format {target.suffix or '(no suffix)'!r}; "
                             f"known: {', '.join(WRITABLE)}")
    if kind_in == kind_out:
        raise EdgeInferError(f"{source} and {target} are both {kind_in} files: nothing to convert "
                             "(to re-index a cut-off MCAP recording, use the mcap CLI's 'mcap recover')")
    refuse_existing(target, "target")  # before reading a long recording, not after
    result: Dict[str, Any] = {"from": str(source), "to": str(target)}
    if kind_in == ".mcap":
        recording = read_mcap(source, strict=strict)
        log = recording.frames
        result.update(decisions_left_out=len(recording.decisions), hellos_left_out=len(recording.hellos),
                      cut_off=recording.cut_off)
    else:
        log = read_log(source, strict=strict)
    metadata = {"source": str(source), "converted_from": kind_in.lstrip(".")}
    create_new(target, (lambda path: write_mcap_log(path, log, metadata)) if kind_out == ".mcap"
               else (lambda path: write_csv_log(path, log)), "target")
    result.update(frames=len(log), bad_rows=len(log.bad_rows))
    return result
