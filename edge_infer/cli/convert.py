"""``edge-infer convert IN OUT``: a recorded log from CSV to MCAP or back, formats by suffix."""

from __future__ import annotations

import argparse
import json

from ..io.convert import convert_log


def add_parser(sub: "argparse._SubParsersAction") -> None:
    parser = sub.add_parser("convert", help="convert a recorded log between CSV and MCAP",
                            description="Convert a recorded log between CSV and MCAP (formats by suffix), "
                                        "keeping every frame's t, values and label exactly. A CSV holds "
                                        "frames only: a recording's decisions and HELLOs are left out.")
    parser.add_argument("input", help="the log to read (.csv or .mcap)")
    parser.add_argument("output", help="the log to write (.csv or .mcap)")
    parser.add_argument("--strict", action="store_true",
                        help="fail on the first bad row (or a cut-off recording) instead of skipping it")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    result = convert_log(args.input, args.output, strict=args.strict)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"converted {result['frames']} frames from {result['from']} to {result['to']}")
    if result["bad_rows"]:
        print(f"  skipped {result['bad_rows']} bad rows")
    if result.get("cut_off"):
        print(f"  the recording was read up to where it was cut off: {result['cut_off']}")
    if result.get("decisions_left_out") or result.get("hellos_left_out"):
        print(f"  left out (a CSV holds frames only): {result['decisions_left_out']} decisions, "
              f"{result['hellos_left_out']} HELLOs")
    return 0
