"""``edge-infer replay LOG``: run a model over a recorded log and report accuracy and latency."""

from __future__ import annotations

import argparse

from .common import add_run_options, log_runtime, print_summary, run_until_stopped


def add_parser(sub: "argparse._SubParsersAction") -> None:
    parser = sub.add_parser("replay", help="replay a recorded log through a model",
                            description="Replay a recorded sensor log (CSV) through a model and summarise "
                                        "decisions, fallbacks, latency and accuracy.")
    parser.add_argument("log", help="recorded log (.csv with t, channel columns, optional label)")
    add_run_options(parser)
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    runtime = log_runtime(args, args.log)
    summary = run_until_stopped(runtime, args.duration)
    print_summary(summary, args.json)
    return 0
