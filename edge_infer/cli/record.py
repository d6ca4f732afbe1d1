"""``edge-infer record``: record a source's frames (and the device's HELLO) to MCAP, without a model.

In the field the first job is often just to capture data -- a new sensor
mount, a new site -- for training and for later replays; this needs no
model at all. The recording is the same MCAP that ``run --record`` writes,
without the decisions channel's messages.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from typing import Optional

from ..runtime import POLL_S
from ..settings import argtypes
from ..sinks.recorder import RecordingSink
from ..sources.base import EndOfStream, Source
from .common import add_source_option, open_source
from .recording import add_rotation_option, check_mcap_path, max_bytes, source_metadata, subscribe_hello


def add_parser(sub: "argparse._SubParsersAction") -> None:
    parser = sub.add_parser("record", help="record a source's frames to MCAP, without a model",
                            description="Record raw frames (and the device's HELLO) from a source to an MCAP "
                                        "file until the source ends, --duration passes, or SIGINT/SIGTERM.")
    add_source_option(parser)
    parser.add_argument("--out", required=True, metavar="FILE.mcap", help="the recording to write")
    parser.add_argument("--duration", type=argtypes.seconds, metavar="S", help="stop after S seconds")
    parser.add_argument("--speed", default="max", type=argtypes.speed, metavar="max|FACTOR",
                        help="pace of a log source: 'max' (default) or a factor of real time")
    parser.add_argument("--strict", action="store_true", help="fail on the first bad log row instead of skipping it")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_rotation_option(parser)
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    check_mcap_path(args.out, "--out")
    limit = max_bytes(args)
    source = open_source(args.source, None, speed=args.speed, strict=args.strict, link_key_file=args.link_key)
    try:
        recorder = RecordingSink(args.out, source.channels, source_metadata(source), max_bytes=limit)
    except BaseException:
        source.close()
        raise
    subscribe_hello(source, recorder)
    started = time.monotonic()
    try:
        frames = record_until_stopped(source, recorder, args.duration)
    finally:
        recorder.close()
        source.close()
    result = {"frames": frames, "files": [str(p) for p in recorder.paths],
              "elapsed_s": round(time.monotonic() - started, 3), "source": source.counters()}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"recorded {frames} frames in {result['elapsed_s']:.2f} s to {', '.join(result['files'])}")
    return 0


def record_until_stopped(source: Source, recorder: RecordingSink, duration_s: Optional[float]) -> int:
    """Hand every frame to the recorder until the source ends, ``duration_s`` passes or SIGINT/SIGTERM."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    end_at = None if duration_s is None else time.monotonic() + duration_s
    frames = 0
    try:
        while not stop.is_set() and (end_at is None or time.monotonic() < end_at):
            timeout = POLL_S if end_at is None else max(0.0, min(POLL_S, end_at - time.monotonic()))
            try:
                frame = source.recv(timeout)
            except EndOfStream:
                break
            if frame is not None:
                recorder.on_frame(frame)
                frames += 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return frames
