"""One log, start to end: read it in chunks, decide every window, count, write and compare the records.

Memory is bounded by the chunk size, not by the log: each chunk's decisions
are counted (:class:`~.results.Tally`), written and compared, then dropped.
A log that cannot be read (missing columns, not a log, cut off under
``--strict``, ...) ends as a result with ``error`` set; the corpus goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

from ...errors import EdgeInferError
from ...io import iter_log
from ...sources.log_replay import channel_columns
from .batch import WindowStream
from .model import LoadedModel, output_tolerance
from .paths import LogPath
from .records import GoldenComparison, GoldenWriter, RecordFile, record_file_name, records
from .results import Agreement, LogResult


@dataclass(frozen=True)
class Outputs:
    """Where each log's records go (picklable: sent to workers). Folders must exist (the CLI checks)."""

    decisions_dir: Optional[str] = None
    golden_dir: Optional[str] = None
    update_golden: bool = False
    tolerance: Optional[float] = None  #: output tolerance against golden; None: one quantization step
    ignore_fields: Sequence[str] = ()


def evaluate_log(log: LogPath, model: LoadedModel, baseline: Optional[LoadedModel] = None,
                 outputs: Outputs = Outputs(), on_rows: Optional[Callable[[int], None]] = None) -> LogResult:
    """Evaluate one log; never raises for a bad log (the result's ``error`` says what was wrong)."""
    started = time.perf_counter()
    result = LogResult(path=log.path, name=log.name)
    sinks: List[Any] = []
    try:
        sinks = _open_sinks(log, model, outputs)
        _evaluate(log, model, baseline, sinks, result, on_rows)
        for sink in sinks:
            if isinstance(sink, GoldenWriter):
                sink.commit()
            elif isinstance(sink, GoldenComparison):
                result.golden = sink.result()
    except EdgeInferError as exc:
        result.error = str(exc)
    except Exception as exc:  # a malformed log must not stop the corpus: name it, go on
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        for sink in sinks:
            if result.error is not None and isinstance(sink, RecordFile):
                sink.discard_if_empty()
            sink.close()
    result.elapsed_s = time.perf_counter() - started
    return result


def _open_sinks(log: LogPath, model: LoadedModel, outputs: Outputs) -> List[Any]:
    name = record_file_name(log.name)
    sinks: List[Any] = []
    try:
        if outputs.decisions_dir:
            sinks.append(RecordFile(Path(outputs.decisions_dir) / name))
        if outputs.golden_dir and outputs.update_golden:
            sinks.append(GoldenWriter(Path(outputs.golden_dir) / name))
        elif outputs.golden_dir:
            tolerance = output_tolerance(model.engine) if outputs.tolerance is None else outputs.tolerance
            sinks.append(GoldenComparison(Path(outputs.golden_dir) / name, tolerance, outputs.ignore_fields))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks


def _evaluate(log: LogPath, model: LoadedModel, baseline: Optional[LoadedModel], sinks: List[Any],
              result: LogResult, on_rows: Optional[Callable[[int], None]]) -> None:
    stream = old = None
    threshold = model.checks.ood.threshold if model.checks.ood is not None else None
    writers = [sink.write for sink in sinks if not isinstance(sink, GoldenComparison)]
    writers += [sink.compare for sink in sinks if isinstance(sink, GoldenComparison)]
    for chunk in iter_log(log.path, strict=model.options.strict, chunk_rows=model.options.chunk_rows):
        if stream is None:
            stream = WindowStream(model, _columns(model, chunk, log.path))
            if baseline is not None:
                old = WindowStream(baseline, _columns(baseline, chunk, log.path))
                result.agreement = Agreement()
        if chunk.bad_rows:
            result.first_bad_line = result.first_bad_line or chunk.bad_rows[0][0]
            result.bad_rows += len(chunk.bad_rows)
        result.tally.frames += len(chunk)
        decisions = stream.feed(chunk)
        result.tally.add(decisions, model.actions, threshold)
        if old is not None and result.agreement is not None:
            old_decisions = old.feed(chunk)
            result.agreement.baseline.frames += len(chunk)
            result.agreement.baseline.add(old_decisions, baseline.actions, None)  # type: ignore[union-attr]
            result.agreement.add(decisions, old_decisions, model.actions, baseline.actions)  # type: ignore[union-attr]
        if writers:
            for record in records(decisions, model.actions):
                for write in writers:
                    write(record)
        if on_rows is not None:
            on_rows(len(chunk))
    if stream is None or result.tally.frames == 0:
        raise EdgeInferError(f"log {log.path} has no usable rows")
    result.input_checks = stream.guard.summary()
    result.invoke_us = stream.invoke_us
    result.batch_s = stream.batch_s
    result.rechecked = stream.rechecked
    for sink in sinks:
        if isinstance(sink, RecordFile):
            result.decisions_file = str(sink.path)


def _columns(model: LoadedModel, chunk: Any, path: str) -> List[int]:
    """The log's columns in the model's channel order: by name with a spec, all in order for a bare model."""
    return channel_columns(chunk, model.spec.channels if model.has_spec else None, model.engine.channels, path)
