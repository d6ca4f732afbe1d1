"""``edge-infer run``: the main job — decide on frames from a source until it ends or is stopped.

With no arguments it runs the bundled model on the bundled recorded log.
"""

from __future__ import annotations

import argparse

from .common import add_run_options, log_runtime, print_summary, run_until_stopped


def add_parser(sub: "argparse._SubParsersAction") -> None:
    parser = sub.add_parser("run", help="run the decision loop (default: bundled model on the bundled log)",
                            description="Run the decision loop on a source until it ends, --duration "
                                        "passes, or SIGINT/SIGTERM; then print the summary.")
    parser.add_argument("--source", metavar="LOG",
                        help="where frames come from: a recorded log path (default: the bundled log)")
    add_run_options(parser)
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    runtime = log_runtime(args, args.source)
    summary = run_until_stopped(runtime, args.duration)
    print_summary(summary, args.json)
    return 0
