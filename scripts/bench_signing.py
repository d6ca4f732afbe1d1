#!/usr/bin/env python3
"""What a signed bundle costs at start: loading a model with and without ``--trusted-key``, side by side.

For the bundled model (10 KB) and a builder model of about 4 MB, the same bundle is opened (spec parsed,
model read, interpreter created) in alternating rounds: once as an unsigned spec, once verified against a
trusted key (signature, sha256 of spec and model, then loaded from the verified bytes). Reported: median and
p90 in ms of each, and their ratio. Verification happens once per start (and once per process-mode restart
after the deadlines work hands the child the parent's bytes), never in the decision loop.

usage: python scripts/bench_signing.py [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_loop import finish_report, start_report  # noqa: E402

from edge_infer.model.loader import bundled_spec, open_model  # noqa: E402
from edge_infer.model.signing import generate_keypair, load_trusted_key, sign_bundle  # noqa: E402
from edge_infer.testing.tflite_builder import dense_model  # noqa: E402

BIG_SPEC = """[model]
name = "big"
file = "big.tflite"
[input]
channels = [{channels}]
window = 128
hop = 128
[output]
kind = "classes"
labels = ["a", "b", "c", "d"]
[fallback]
action = "a"
"""


def bundles(workdir: Path) -> Dict[str, Path]:
    """The bundled model and a ~4 MB one, copied into ``workdir`` and signed there."""
    small = workdir / "small"
    small.mkdir()
    spec = bundled_spec()
    shutil.copy(spec, small / spec.name)
    shutil.copy(spec.with_suffix(".tflite"), small / spec.with_suffix(".tflite").name)
    big = workdir / "big"
    big.mkdir()
    (big / "big.tflite").write_bytes(dense_model(128, 32, 4, hidden=1000, seed=1))
    (big / "big.toml").write_text(BIG_SPEC.format(channels=", ".join(f'"c{i}"' for i in range(32))))
    return {"bundled (10 KB)": small / spec.name, "dense (4 MB)": big / "big.toml"}


def measure(spec: Path, key: Any, rounds: int) -> Dict[str, np.ndarray]:
    times: Dict[str, List[float]] = {"unsigned": [], "signed": []}
    for i in range(rounds * 2):
        signed = i % 2 == 1  # interleaved: the machine's load falls on both alike
        started = time.perf_counter()
        open_model(str(spec), trusted_keys=[key] if signed else ())
        times["signed" if signed else "unsigned"].append((time.perf_counter() - started) * 1e3)
    return {kind: np.array(values) for kind, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    report = start_report()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        generate_keypair(workdir / "release")
        key = load_trusted_key(workdir / "release.pub")
        print("\n| model | unsigned median / p90 ms | signed median / p90 ms | signed / unsigned (median) |")
        print("|---|---|---|---|")
        for name, spec in bundles(workdir).items():
            sign_bundle(spec, workdir / "release.key", 1)
            result = measure(spec, key, args.rounds)
            row = {kind: (float(np.median(v)), float(np.percentile(v, 90))) for kind, v in result.items()}
            ratio = row["signed"][0] / row["unsigned"][0]
            print(f"| {name} | {row['unsigned'][0]:.1f} / {row['unsigned'][1]:.1f} | "
                  f"{row['signed'][0]:.1f} / {row['signed'][1]:.1f} | {ratio:.2f} |")
            report[name] = {"unsigned_ms": row["unsigned"], "signed_ms": row["signed"], "ratio": ratio}
    finish_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
