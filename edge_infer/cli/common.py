"""Options and plumbing that several sub-commands share."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any, Dict, List, Optional

from ..deadline.options import add_deadline_options, runtime_options
from ..errors import EdgeInferError
from ..io import RecordedLog, read_log
from ..model.engine import Engine
from ..model.loader import bundled_log, open_model, verify_model_bundle
from ..model.signing import describe_signature, load_trusted_keys
from ..model.spec import ModelSpec
from ..runtime import Runtime
from ..service.config import is_source_uri
from ..service.versions import AcceptedVersions, default_state_dir
from ..settings import argtypes
from ..sinks.base import Sink
from ..sinks.console import SHOW_MODES, ConsoleSink
from ..sinks.jsonl import JsonLinesSink
from ..sinks.stats import format_summary
from ..sources import open_live_source
from ..sources.base import Source
from ..sources.log_replay import LogSource, channel_columns
from .recording import add_record_options

log = logging.getLogger(__name__)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="SPEC_OR_TFLITE",
                        help="model spec (.toml) or bare .tflite (default: the bundled model)")
    parser.add_argument("--backend", help="litert, tflite-runtime or tensorflow (default: first installed)")
    parser.add_argument("--budget-ms", type=argtypes.milliseconds,
                        help="time budget per decision (overrides the spec)")
    parser.add_argument("--fallback", metavar="ACTION", type=argtypes.action,
                        help="safe default action (overrides the spec)")
    parser.add_argument("--hop", type=argtypes.count(1), help="frames between decisions (default: spec, or the window)")


def add_trust_options(parser: argparse.ArgumentParser, service: bool = False) -> None:
    """``--trusted-key`` (run, replay, eval); with ``service`` also the state directory options of ``run``."""
    group = parser.add_argument_group("signed bundles", "refuse a model bundle not signed by a trusted key "
                                                        "(docs/security.md)")
    group.add_argument("--trusted-key", action="append", metavar="PUB",
                       help="accept only bundles (spec + model) signed by this public key (PREFIX.pub from "
                            "'edge-infer keygen'); repeat for several keys")
    if service:
        group.add_argument("--state-dir", metavar="DIR",
                           help="where the highest accepted bundle version is kept, to refuse older ones "
                                "(default: $STATE_DIRECTORY, set by systemd's StateDirectory=)")
        group.add_argument("--allow-downgrade", action="store_true", default=None,
                           help="accept a signed bundle older than the one accepted before (once: it becomes "
                                "the new floor)")


def open_model_for(args: argparse.Namespace, channels: Optional[List[str]] = None,
                   record_version: bool = True) -> "tuple[ModelSpec, Engine]":
    """The model the options name, through the trust checks the options ask for.

    With trusted keys the bundle is verified before the interpreter sees it, loaded from the verified bytes,
    and (``run`` with a state directory) refused if older than one accepted before; its version is recorded
    once it has loaded (not by check-config: ``record_version=False``).
    """
    keys = getattr(args, "trusted_key", None) or []
    kwargs = dict(backend=args.backend, hop=args.hop, budget_ms=args.budget_ms, fallback=args.fallback)
    if not keys:
        return open_model(args.model, channels, **kwargs)
    bundle = verify_model_bundle(args.model, load_trusted_keys(keys))
    state_dir = getattr(args, "state_dir", None) or (default_state_dir() if hasattr(args, "state_dir") else None)
    versions = AcceptedVersions(state_dir) if state_dir else None
    if versions is not None:
        versions.check(bundle.signature, bool(getattr(args, "allow_downgrade", False)))
    elif hasattr(args, "state_dir") and record_version:
        log.warning("no state directory (--state-dir, or systemd's StateDirectory=): an older signed bundle "
                    "would not be refused")
    spec, engine = open_model(args.model, channels, bundle=bundle, **kwargs)
    if versions is not None and record_version:
        versions.record(bundle.signature)
    log.info("model bundle %s: %s", bundle.spec_path, describe_signature(bundle.signature))
    return spec, engine


def add_source_option(parser: argparse.ArgumentParser, many: bool = False) -> None:
    """``--source``; with ``many``, given again for each stream (docs/streams.md): then a list, else one value."""
    parser.add_argument("--source", metavar="LOG|serial:PORT", action=_Sources if many else "store",
                        help="where frames come from: a recorded log path, or a device on a serial port, "
                             "serial:PORT[?baud=N] (default: the bundled log)"
                             + ("; give it once per stream to run several streams in one runtime" if many else ""))
    parser.add_argument("--link-key", metavar="FILE",
                        help="sign the serial link with the key in FILE (32 raw bytes or 64 hex digits, mode "
                             "0600): frames not signed with it are dropped and counted (docs/link-security.md)")


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


LINK_KEY_FOR_A_LOG = ("--link-key signs a serial link; the source is a recorded log, which has none "
                      "(drop --link-key, or give --source serial:PORT)")


def refuse_link_key_for_logs(args: argparse.Namespace) -> None:
    """A key given for a recorded log would protect nothing: say so rather than ignore it."""
    if getattr(args, "link_key", None):
        raise EdgeInferError(LINK_KEY_FOR_A_LOG)


def add_run_options(parser: argparse.ArgumentParser, service: bool = False) -> None:
    add_model_options(parser)
    parser.add_argument("--speed", default="max", type=argtypes.speed, metavar="max|FACTOR",
                        help="replay pace: 'max' (default) or a factor of real time, e.g. 1.0")
    parser.add_argument("--decisions", metavar="FILE",
                        help="append every decision record to FILE (JSON lines; each run starts with a run_start line)")
    parser.add_argument("--duration", type=argtypes.seconds, metavar="S", help="stop after S seconds")
    parser.add_argument("--strict", action="store_true", help="fail on the first bad log row instead of skipping it")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--show", choices=SHOW_MODES, default=None,
                        help="decision lines on stdout: changes of action/source, all, or none "
                             "(default: changes; none with --json)")
    add_record_options(parser)
    add_deadline_options(parser)
    add_trust_options(parser, service=service)


def build_sinks(args: argparse.Namespace, spec: Optional[ModelSpec] = None, engine: Optional[Engine] = None,
                source: str = "") -> List[Sink]:
    """The console and, with ``--decisions``, the decision log (its run_start line names the model and source)."""
    sinks: List[Sink] = [ConsoleSink(show_mode(args))]
    if args.decisions:
        sinks.append(JsonLinesSink(args.decisions, run_about(args, source, spec, engine)))
    return sinks


def run_about(args: argparse.Namespace, source: str, spec: Optional[ModelSpec] = None,
              engine: Optional[Engine] = None) -> Dict[str, Any]:
    """What a decision log's run_start line says of the run: the command, the source, the model and its hash."""
    about: Dict[str, Any] = {"command": getattr(args, "command", None), "source": source}
    if spec is not None:
        about.update(model=spec.name or spec.model_path.name, model_version=spec.version,
                     model_sha256=engine.sha256 if engine is not None else None)
    return about


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
    refuse_link_key_for_logs(args)
    path = log_path or str(bundled_log())
    log = read_usable_log(path, args.strict)
    spec, engine = open_model_for(args, log.channels)
    has_spec = spec.spec_path is not None
    columns = channel_columns(log, spec.channels if has_spec else None, engine.channels, path)
    source = LogSource(log, columns, spec.channels, speed=args.speed, name=path)
    options = runtime_options(spec, args)  # before the sinks: a bad option must not leave a run_start behind
    return Runtime(spec, engine, source, build_sinks(args, spec, engine, path), **options)


def open_source(text: Optional[str], channels: Optional[List[str]] = None, *, speed: Optional[float] = None,
                strict: bool = False, link_key_file: Optional[str] = None) -> Source:
    """The frame source a ``--source`` value names: a recorded log path (the bundled log if None).

    ``channels`` picks and orders the source's channels by name; None keeps all of them in the source's order.
    Live sources (``serial:...``) plug in here.
    """
    if text is not None and is_source_uri(text):  # serial:PORT[?baud=N]: a device (docs/serial.md)
        return open_live_source(text, channels, link_key_file=link_key_file)
    if link_key_file:
        raise EdgeInferError(LINK_KEY_FOR_A_LOG)
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
