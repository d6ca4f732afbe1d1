"""``edge-infer run``: the main job — decide on frames from a source until it ends or is stopped.

With no arguments it runs the bundled model on the bundled recorded log.
"""

from __future__ import annotations

import argparse

from ..service.hooks import ServiceHooks, add_service_options
from .common import add_run_options, add_source_option, log_runtime, print_summary, run_until_stopped
from .fleet import add_mqtt_options, attach_mqtt, mqtt_options
from .live import is_live_source, live_runtime
from .recording import attach_recorder
from .streams import streams_runtime, wants_streams


def add_parser(sub: "argparse._SubParsersAction") -> None:
    parser = sub.add_parser("run", help="run the decision loop (default: bundled model on the bundled log)",
                            description="Run the decision loop on a source until it ends, --duration "
                                        "passes, or SIGINT/SIGTERM; then print the summary.")
    add_source_option(parser, many=True)
    add_run_options(parser, service=True)
    add_service_options(parser)
    add_mqtt_options(parser)
    parser.set_defaults(handler=main, streams=None)  # streams: the config's [[stream]] tables


def main(args: argparse.Namespace) -> int:
    hooks = ServiceHooks.from_args(args)
    fleet = mqtt_options(args) if args.mqtt else None  # a bad fleet option fails before the model loads
    try:
        streams = wants_streams(args)
        if streams:
            runtime = streams_runtime(args)
        else:
            source = args.source[0] if isinstance(args.source, list) else args.source
            runtime = live_runtime(args, source) if is_live_source(source) else log_runtime(args, source)
        try:
            if not streams:
                attach_recorder(runtime, args)
            if fleet is not None:
                attach_mqtt(runtime, fleet)  # one sink for the runtime, however many streams it runs
        except BaseException:
            runtime.close()  # the scheduler's thread or process, the source, the sinks already made
            raise
        summary = run_until_stopped(runtime, args.duration, hooks)
    finally:
        hooks.close()
    print_summary(summary, args.json)
    return 0
