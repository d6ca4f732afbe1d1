"""``--record FILE.mcap`` for ``run`` and ``replay``: the recording sink, its options and its metadata.

``run --record`` records what the service saw and decided, so that a
surprising decision in the field can be replayed in the lab with the same
frames; the recording names the model that decided (hash and spec
included). The ``record`` command (:mod:`.record`) shares these helpers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
from typing import Any, Dict, Optional

from ..errors import EdgeInferError
from ..settings import argtypes
from ..sinks.recorder import RecordingSink
from ..sources.base import Source


def add_record_options(parser: argparse.ArgumentParser) -> None:
    """``--record`` and ``--record-max-mb`` (run, replay)."""
    parser.add_argument("--record", metavar="FILE.mcap",
                        help="record raw frames, decisions and the device's HELLO to an MCAP file "
                             "(flushed every second: a crash loses at most about a second)")
    add_rotation_option(parser)


def add_rotation_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--record-max-mb", type=argtypes.megabytes, metavar="N",
                        help="start a new part when a recording reaches N MB: FILE-0001.mcap, FILE-0002.mcap, ...")


def max_bytes(args: argparse.Namespace) -> Optional[int]:
    if args.record_max_mb is None:
        return None
    return int(args.record_max_mb * 1024 * 1024)


def check_mcap_path(path: str, option: str) -> None:
    if not path.lower().endswith(".mcap"):
        raise EdgeInferError(f"{option} {path}: recordings are MCAP files; name it with the .mcap suffix")


def source_metadata(source: Source) -> Dict[str, str]:
    """What every recording says about where its frames came from."""
    return {
        "source": str(getattr(source, "name", type(source).__name__)),
        "host": socket.gethostname(),
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def runtime_metadata(runtime: Any) -> Dict[str, str]:
    """The model a recording was decided by: enough to reproduce the decisions in the lab."""
    spec, engine = runtime.spec, runtime.engine
    meta = {
        "model": spec.name or spec.model_path.name,
        "model_version": spec.version,
        "model_file": spec.model_path.name,
        "model_sha256": engine.sha256,
        "model_spec": str(spec.spec_path or ""),
        "window": str(spec.window),
        "hop": str(spec.hop),
        "budget_ms": f"{spec.budget_ms:g}",
        "fallback_action": json.dumps(spec.fallback_action),
        "backend": f"{engine.backend.name} {engine.backend_version}",
    }
    if spec.sample_rate_hz is not None:
        meta["sample_rate_hz"] = f"{spec.sample_rate_hz:g}"
    if spec.spec_path is not None:
        try:
            meta["model_spec_toml"] = spec.spec_path.read_text(encoding="utf-8")
        except OSError:
            pass  # the spec was read at start; a spec gone since only costs the copy in the recording
    return meta


def subscribe_hello(source: Source, recorder: RecordingSink) -> None:
    """Record the device's HELLOs: the one it sent before the recording started, and each one after.

    A source that talks to a device exposes ``hello`` (its last HELLO, or None)
    and ``hello_listeners`` (called with each new HELLO and its receipt time on
    the loop's clock); a log source has neither.
    """
    hello = getattr(source, "hello", None)
    if hello is not None:
        recorder.on_hello(hello)
    listeners = getattr(source, "hello_listeners", None)
    if listeners is not None:
        listeners.append(recorder.on_hello)


def attach_recorder(runtime: Any, args: argparse.Namespace) -> Optional[RecordingSink]:
    """Add the recording sink ``--record`` asks for to a built runtime (run, replay)."""
    if not getattr(args, "record", None):
        return None
    check_mcap_path(args.record, "--record")
    recorder = RecordingSink(args.record, runtime.source.channels,
                             {**source_metadata(runtime.source), **runtime_metadata(runtime)},
                             max_bytes=max_bytes(args))
    runtime.sinks.append(recorder)
    subscribe_hello(runtime.source, recorder)
    return recorder
