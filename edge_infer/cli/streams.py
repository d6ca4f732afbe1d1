"""``run`` with several streams: one runtime deciding for many sources (docs/streams.md).

The streams come from ``--source`` given more than once (every stream uses
``--model`` and the other options), or from the service config's
``[[stream]]`` tables (each may name its own model spec, budget, fallback,
hop and decision log). Streams that name the same model file share one
loaded model; a log named by several streams is read once.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..deadline.options import runtime_options
from ..errors import EdgeInferError
from ..io import RecordedLog
from ..model.engine import Engine
from ..model.loader import bundled_log, with_overrides
from ..model.spec import ModelSpec
from ..runtime import StreamSetup, StreamsRuntime
from ..sinks.base import Sink
from ..sinks.console import ConsoleSink
from ..sinks.device import attach_device
from ..sinks.jsonl import JsonLinesSink
from ..sources import open_live_source, parse_source_uri
from ..sources.log_replay import LogSource, channel_columns
from ..sources.serial_link import SerialSource
from .common import open_model_for, read_usable_log, refuse_link_key_for_logs, run_about, show_mode
from .live import is_live_source


def wants_streams(args: argparse.Namespace) -> bool:
    """Several ``--source`` options, or ``[[stream]]`` tables in the config: the many-stream runtime."""
    sources = args.source if isinstance(args.source, list) else [args.source]
    return bool(getattr(args, "streams", None)) or len(sources) > 1


def stream_entries(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """One dict per stream (``source`` and optional ``name``, ``spec``, ``budget_ms``, ``fallback``, ``hop``,
    ``decisions``): the config's ``[[stream]]`` tables, else one per ``--source``."""
    configured = getattr(args, "streams", None)
    if configured and isinstance(args.source, list) and getattr(args, "_sources_given", None):
        raise EdgeInferError("--source on the command line and [[stream]] tables in the config both name the "
                             "streams; give one or the other")
    if configured:
        return [dict(entry) for entry in configured]
    sources = args.source if isinstance(args.source, list) else [args.source]
    return [{"source": text} for text in sources]


def stream_names(entries: List[Dict[str, Any]]) -> List[str]:
    """Each stream's name: its own, else its source; the same source twice gets ``#2``, ``#3``, ..."""
    names = [entry.get("name") or entry.get("source") or str(bundled_log()) for entry in entries]
    repeated = Counter(names)
    seen: Counter = Counter()
    out = []
    for name in names:
        seen[name] += 1
        out.append(f"{name}#{seen[name]}" if repeated[name] > 1 and seen[name] > 1 else name)
    if len(set(out)) != len(out):
        raise EdgeInferError(f"stream names must differ: {out}")
    return out


def refuse_for_streams(args: argparse.Namespace) -> None:
    """What several streams in one runtime cannot do, refused in one line (by ``run``, and by ``check-config``
    before a service would fail at start), rather than ignored."""
    if getattr(args, "record", None):
        raise EdgeInferError("--record records one stream; with several streams, record each device on its own "
                             "(edge-infer record) or keep decision logs per stream ([[stream]] decisions)")
    if getattr(args, "mode", None) == "process":
        raise EdgeInferError("--mode process runs one stream's model in a child process; with several streams use "
                             "inline (default) or thread (docs/streams.md)")
    policies = [option for option in ("overload", "admission") if getattr(args, option, None) is not None]
    if policies:
        given = " and ".join(f"--{option} ([deadline].{option})" for option in policies)
        it, are = ("it", "is a single-stream scheduling policy") if len(policies) == 1 else \
            ("them", "are single-stream scheduling policies")
        raise EdgeInferError(f"{given} {are}; with several streams, earliest-deadline-first scheduling replaces {it} "
                             f"and never starts a window that cannot finish in time (docs/streams.md): remove {it}")
    entries = stream_entries(args)
    ports = [parse_source_uri(e["source"]).path for e in entries if e.get("source") and is_live_source(e["source"])]
    repeated = sorted({port for port in ports if ports.count(port) > 1})
    if repeated:
        raise EdgeInferError(f"serial port {repeated[0]} is named by two streams; one device is one stream")
    if getattr(args, "link_key", None) and not ports:
        refuse_link_key_for_logs(args)
    shared = getattr(args, "decisions", None)
    if shared and any(e.get("decisions") and Path(e["decisions"]).resolve() == Path(shared).resolve()
                      for e in entries):
        raise EdgeInferError(f"decision log {shared} is both the shared one and a stream's own; every record "
                             "would be written twice: give the stream another file")


def streams_runtime(args: argparse.Namespace) -> StreamsRuntime:
    """The runtime for every stream ``args`` names, with a console line prefix and a device sink per stream."""
    refuse_for_streams(args)
    entries = stream_entries(args)
    names = stream_names(entries)
    models: Dict[Optional[str], Tuple[ModelSpec, Engine]] = {}
    logs: Dict[str, RecordedLog] = {}
    setups: List[StreamSetup] = []
    for entry, name in zip(entries, names):
        model = entry.get("spec") or args.model
        if model not in models:  # through the trust checks (--trusted-key, [trust]) as a single stream is
            plain = argparse.Namespace(**{**vars(args), "model": model, "hop": None, "budget_ms": None,
                                          "fallback": None})
            models[model] = open_model_for(plain, None)
        base, engine = models[model]
        spec = with_overrides(base, hop=entry.get("hop") or args.hop, budget_ms=entry.get("budget_ms") or args.budget_ms,
                              fallback=entry.get("fallback") or args.fallback)
        text = entry.get("source")
        has_spec = spec.spec_path is not None
        if text is not None and is_live_source(text):
            source: Any = open_live_source(text, spec.channels if has_spec else None, engine.channels,
                                           sample_rate_hz=spec.sample_rate_hz, link_key_file=args.link_key)
        else:
            path = text or str(bundled_log())
            if path not in logs:
                logs[path] = read_usable_log(path, args.strict)
            log = logs[path]
            columns = channel_columns(log, spec.channels if has_spec else None, engine.channels, path)
            source = LogSource(log, columns, spec.channels, speed=args.speed, name=path)
        sinks: List[Sink] = [ConsoleSink(show_mode(args), prefix=name)]
        if entry.get("decisions"):
            sinks.append(JsonLinesSink(entry["decisions"], run_about(args, name, spec, engine)))
        setups.append(StreamSetup(name, spec, engine, source, sinks, **runtime_options(spec, args)))
    # opened last: a stream that fails to open must not leave a run_start line behind
    shared: List[Sink] = [JsonLinesSink(args.decisions, _shared_about(args, models))] if args.decisions else []
    runtime = StreamsRuntime(setups, shared)
    for stream in runtime.streams:
        if isinstance(stream.source, SerialSource):
            attach_device(stream)  # served first; a reconnect or reboot resets the window on the loop's thread
    return runtime



def _shared_about(args: argparse.Namespace, models: Dict[Optional[str], Tuple[ModelSpec, Engine]]) -> Dict[str, Any]:
    """The shared decision log's run_start line: every model the streams use, with its version and hash."""
    about = run_about(args, "streams")
    about["models"] = [{"model": spec.name or spec.model_path.name, "model_version": spec.version,
                        "model_sha256": engine.sha256} for spec, engine in models.values()]
    return about
