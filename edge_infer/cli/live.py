"""``run --source serial:PORT``: the decision loop on a live sensor board instead of a recorded log.

The model names the channels the board must send (its HELLO is checked
against them); a bare ``.tflite`` takes whatever the board sends if the
channel count fits. Every decision goes back to the board as an ACTION
frame (:mod:`edge_infer.sinks.device`). See docs/serial.md.
"""

from __future__ import annotations

import argparse
from typing import Optional

from ..deadline.options import runtime_options
from ..runtime import Runtime
from ..service.config import is_source_uri
from ..sinks.device import attach_device
from ..sources import open_live_source
from .common import build_sinks, open_model_for


def is_live_source(text: Optional[str]) -> bool:
    """True for ``serial:...`` (any ``scheme:``), False for a log path or None (the bundled log)."""
    return text is not None and is_source_uri(text)


def live_runtime(args: argparse.Namespace, uri: str) -> Runtime:
    """A runtime deciding on the frames of the device ``uri`` names, answering it with ACTION frames."""
    spec, engine = open_model_for(args)
    source = open_live_source(uri, spec.channels if spec.spec_path is not None else None, engine.channels,
                              sample_rate_hz=spec.sample_rate_hz, link_key_file=args.link_key)
    options = runtime_options(spec, args)  # before the sinks: a bad option must not leave a run_start behind
    runtime = Runtime(spec, engine, source, build_sinks(args, spec, engine, uri), **options)
    attach_device(runtime)
    return runtime
