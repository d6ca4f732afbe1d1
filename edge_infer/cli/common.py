"""Options and plumbing that several sub-commands share."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any, Dict, List, Optional

from ..deadline.options import add_deadline_options, runtime_options
from ..errors import EdgeInferError
from ..io import RecordedLog, read_log
from ..model.loader import bundled_log, open_model
from ..runtime import Runtime
from ..service.config import is_source_uri
from ..settings import argtypes
from ..sinks.base import Sink
from ..sinks.console import SHOW_MODES, ConsoleSink
from ..sinks.jsonl import JsonLinesSink
from ..sinks.stats import format_summary
from ..sources import open_live_source
from ..sources.base import Source
from ..sources.log_replay import LogSource, channel_columns
from .recording import add_record_options


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="SPEC_OR_TFLITE",
                        help="model spec (.toml) or bare .tflite (default: the bundled model)")
    parser.add_argument("--backend", help="litert, tflite-runtime or tensorflow (default: first installed)")
    parser.add_argument("--budget-ms", type=argtypes.positive_float,
                        help="time budget per decision (overrides the spec)")
    parser.add_argument("--fallback", metavar="ACTION", type=argtypes.action,
                        help="safe default action (overrides the spec)")
    parser.add_argument("--hop", type=int, help="frames between decisions (default: spec, or the window)")


def add_source_option(parser: argparse.ArgumentParser, many: bool = False) -> None:
    """``--source``; with ``many``, given again for each stream (docs/streams.md): then a list, else one value."""
    parser.add_argument("--source", metavar="LOG|serial:PORT", action=_Sources if many else "store",
                        help="where frames come from: a recorded log path, or a device on a serial port, "
                             "serial:PORT[?baud=N] (default: the bundled log)"
                             + ("; give it once per stream to run several streams in one runtime" if many else ""))


class _Sources(argparse.Action):
    """``--source A --source B``: a list of the values given on the command line; they replace a config file's
    source (a default of the second parse) instead of adding to it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        given = getattr(namespace, "_sources_given", None)
        if given is None:
            given = []
            setattr(namespace, "_sources_given", given)
        given.append(values)
        setattr(namespace, self.dest, list(given))


def add_run_options(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--speed", default="max", type=argtypes.speed, metavar="max|FACTOR",
                        help="replay pace: 'max' (default) or a factor of real time, e.g. 1.0")
    parser.add_argument("--decisions", metavar="FILE", help="write every decision record to FILE (JSON lines)")
    parser.add_argument("--duration", type=argtypes.positive_float, metavar="S", help="stop after S seconds")
    parser.add_argument("--strict", action="store_true", help="fail on the first bad log row instead of skipping it")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--show", choices=SHOW_MODES, default=None,
                        help="decision lines on stdout: changes of action/source, all, or none "
                             "(default: changes; none with --json)")
    add_record_options(parser)
    add_deadline_options(parser)


def build_sinks(args: argparse.Namespace) -> List[Sink]:
    sinks: List[Sink] = [ConsoleSink(show_mode(args))]
    if args.decisions:
        sinks.append(JsonLinesSink(args.decisions))
    return sinks


def show_mode(args: argparse.Namespace) -> str:
    """``--show``, or its default: changes, none with --json."""
    return args.show or ("none" if args.json else "changes")


def read_usable_log(path: str, strict: bool) -> RecordedLog:
    """A recorded log with at least one good row."""
    log = read_log(path, strict=strict)
    if len(log) == 0:
        raise EdgeInferError(f"log {path} has no usable rows")
    return log


def log_runtime(args: argparse.Namespace, log_path: Optional[str]) -> Runtime:
    """A runtime replaying ``log_path`` (the bundled log if None) through the model the options name."""
    path = log_path or str(bundled_log())
    log = read_usable_log(path, args.strict)
    spec, engine = open_model(args.model, log.channels, backend=args.backend, hop=args.hop,
                              budget_ms=args.budget_ms, fallback=args.fallback)
    has_spec = spec.spec_path is not None
    columns = channel_columns(log, spec.channels if has_spec else None, engine.channels, path)
    source = LogSource(log, columns, spec.channels, speed=args.speed, name=path)
    return Runtime(spec, engine, source, build_sinks(args), **runtime_options(spec, args))


def open_source(text: Optional[str], channels: Optional[List[str]] = None, *, speed: Optional[float] = None,
                strict: bool = False) -> Source:
    """The frame source a ``--source`` value names: a recorded log path (the bundled log if None).

    ``channels`` picks and orders the source's channels by name; None keeps all of them in the source's order.
    Live sources (``serial:...``) plug in here.
    """
    if text is not None and is_source_uri(text):  # serial:PORT[?baud=N]: a device (docs/serial.md)
        return open_live_source(text, channels)
    path = text or str(bundled_log())
    log = read_usable_log(path, strict)
    names = list(channels) if channels is not None else log.channels
    return LogSource(log, channel_columns(log, names, len(names), path), names, speed=speed, name=path)


def run_until_stopped(runtime: Runtime, duration_s: Optional[float], hooks: Optional[Any] = None) -> Dict[str, Any]:
    """Run with SIGINT/SIGTERM asking the loop to stop (sinks are flushed, the summary still printed)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return runtime.run(duration_s=duration_s, stop=stop, hooks=hooks)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def print_summary(summary: Dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, sort_keys=False))
    else:
        print(format_summary(summary), file=sys.stdout)
