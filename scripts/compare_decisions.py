#!/usr/bin/env python3
"""Compare two decision logs (JSON lines) of the same replay, e.g. x86 against aarch64.

Outputs of quantized models may differ by one quantization step between
kernels (LiteRT's ARM and x86 int8 kernels round differently in rare cases),
so outputs are compared with a tolerance of ``--tolerance`` real units
(pass the output tensor's scale for "one step"). Prints one JSON line and
exits 1 if any action or output differs beyond that.

usage: compare_decisions.py A.jsonl B.jsonl [--tolerance X]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List

from edge_infer.errors import EdgeInferError
from edge_infer.sinks.jsonl import read_decisions


def load(path: str) -> List[dict]:
    """The last run's decisions (a decision log is appended to run after run; run_start lines are skipped)."""
    try:
        return read_decisions(path)
    except EdgeInferError as exc:
        raise SystemExit(f"compare_decisions: error: {exc}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--tolerance", type=float, default=0.0, help="allowed output difference (real units)")
    args = parser.parse_args()
    a, b = load(args.a), load(args.b)
    if [r["seq"] for r in a] != [r["seq"] for r in b]:
        print(json.dumps({"same_windows": False, "a": len(a), "b": len(b)}))
        return 1
    action_diffs = sum(ra["action"] != rb["action"] for ra, rb in zip(a, b))
    worst, outputs_differing = 0.0, 0
    for ra, rb in zip(a, b):
        if ra["output"] is None or rb["output"] is None:
            continue
        gap = max(abs(x - y) for x, y in zip(ra["output"], rb["output"]))
        worst = max(worst, gap)
        outputs_differing += gap > 1e-9
    within = worst <= args.tolerance + 1e-9
    print(json.dumps({"windows": len(a), "action_differences": action_diffs,
                      "windows_with_output_differences": outputs_differing,
                      "max_output_difference": worst, "tolerance": args.tolerance,
                      "same": action_diffs == 0 and within}))
    return 0 if action_diffs == 0 and within else 1


if __name__ == "__main__":
    sys.exit(main())
