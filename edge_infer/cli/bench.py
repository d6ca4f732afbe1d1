"""``edge-infer bench MODEL``: invoke latency percentiles on this device and a recommended budget."""

from __future__ import annotations

import argparse
import json

from ..model.bench import bench_invoke
from ..model.loader import open_model
from ..settings import argtypes
from ..settings.values import MAX_THREADS


def add_parser(sub: "argparse._SubParsersAction") -> None:
    parser = sub.add_parser("bench", help="measure invoke latency and recommend a budget")
    parser.add_argument("model", nargs="?", help="a .tflite or its .toml spec (default: the bundled model)")
    parser.add_argument("--backend", help="litert, tflite-runtime or tensorflow")
    parser.add_argument("--runs", type=argtypes.count(1), default=2000, help="timed invokes (default 2000)")
    parser.add_argument("--warmup", type=argtypes.count(0), default=50, help="untimed invokes first (default 50)")
    parser.add_argument("--threads", type=argtypes.threads, default=1,
                        help=f"interpreter threads, 1 to {MAX_THREADS} (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    _, engine = open_model(args.model, backend=args.backend, num_threads=args.threads)
    result = bench_invoke(engine, runs=args.runs, warmup=args.warmup)
    if args.json:
        print(json.dumps(result))
        return 0
    inv = result["invoke_us"]
    print(f"{result['model']} on {result['backend']} {result['backend_version']}: {result['runs']} invokes "
          f"after {result['warmup']} warm-up")
    print(f"  invoke us  p50 {inv['p50']}  p99 {inv['p99']}  p99.9 {inv['p99.9']}  max {inv['max']}  "
          f"mean {result['mean_us']}")
    print(f"  recommended budget: {result['recommended_budget_ms']} ms")
    return 0
