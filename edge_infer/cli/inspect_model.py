"""``edge-infer inspect MODEL``: what a model takes and gives, quantization included."""

from __future__ import annotations

import argparse
import json

from ..model.engine import Engine
from ..model.loader import bundled_spec
from ..model.spec import load_spec


def add_parser(sub: "argparse._SubParsersAction") -> None:
    parser = sub.add_parser("inspect", help="show a model's tensors, quantization, size and hash")
    parser.add_argument("model", nargs="?", help="a .tflite or its .toml spec (default: the bundled model)")
    parser.add_argument("--backend", help="litert, tflite-runtime or tensorflow")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    path = args.model or str(bundled_spec())
    model_path = load_spec(path).model_path if path.lower().endswith(".toml") else path
    info = Engine(model_path, backend=args.backend).describe()
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['model']}  {info['size_bytes']} bytes  sha256 {info['sha256']}")
    print(f"backend {info['backend']} {info['backend_version']}  "
          f"{info['operator_count']} operators: {', '.join(info['operators'])}")
    for role in ("inputs", "outputs"):
        for t in info[role]:
            quant = f"scale {t['scale']:.6g} zero_point {t['zero_point']}" if t["scale"] else "not quantized"
            print(f"  {role[:-1]:<6} {t['name']:<40} {t['dtype']:<7} {str(t['shape']):<14} {quant}")
    return 0
