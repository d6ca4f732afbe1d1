"""``edge-infer replay LOG``: run a model over a recorded log and report accuracy and latency."""

from __future__ import annotations

import argparse

from .analysis import Analysis, add_analysis_options, check_analysis_options
from .common import add_run_options, log_runtime, print_summary, run_until_stopped
from .recording import attach_recorder


def add_parser(sub: "argparse._SubParsersAction") -> None:
    parser = sub.add_parser("replay", help="replay a recorded log through a model",
                            description="Replay a recorded sensor log (CSV or MCAP) through a model and summarise "
                                        "decisions, fallbacks, latency and accuracy.")
    parser.add_argument("log", help="recorded log (.csv with t, channel columns, optional label; or an .mcap "
                                    "recording)")
    add_run_options(parser)
    add_analysis_options(parser)
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    check_analysis_options(args)
    runtime = log_runtime(args, args.log)
    attach_recorder(runtime, args)
    analysis = Analysis(args, runtime)
    summary = run_until_stopped(runtime, args.duration)
    analysis.finish(summary)
    print_summary(summary, args.json)
    comparison = analysis.text(summary)
    if comparison and not args.json:
        print(comparison)
    return 0
