#!/usr/bin/env python3
"""Cost of the input checks per window, next to the model's, in one run on the same windows.

For every window of the recorded log (tiled to ``--windows``), interleaved so that the shared
machine's load drifts over all of them alike:

  (a) ``checks``: what the input guard adds to one window in the decision loop — ``on_frame`` for
      each of the ``hop`` new frames, ``check_window`` on the window view and ``review`` of the
      decision (edge_infer/checks/guard.py), with the spec's ``[checks]`` and ``[ood]``;
  (b) ``checks, none configured``: the same with a spec without those tables (the non-finite check only);
  (c) ``model``: ``Engine.infer`` — normalise and quantize, ``invoke``, dequantize;
  (d) ``invoke``: the interpreter's ``invoke()`` alone;
  (e) the whole decision loop per window (``Runtime``, inline mode, from scripts/bench_loop.py), with the
      spec as it is and without its ``[checks]`` and ``[ood]`` tables: what the checks add in context.

A second part times (a) on a corrupted copy of the log (``scripts/corrupt_log.py``): the windows
that fail a check take the slow path, which finds every reason that applies.

usage: python scripts/bench_checks.py [--model SPEC] [--log LOG] [--corrupted LOG] [--windows N]
                                      [--rounds R] [--json FILE]
Results: markdown tables on stdout, docs/robustness.md holds them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_loop import Case, bundled_case, edge_infer_loop, machine  # noqa: E402  (scripts/: the loop benchmark)

from edge_infer.checks.guard import InputGuard, build_guard  # noqa: E402
from edge_infer.decide.decision import Decision, DecisionRule  # noqa: E402
from edge_infer.frame import Frame  # noqa: E402
from edge_infer.model.engine import Engine  # noqa: E402
from edge_infer.model.spec import ModelSpec  # noqa: E402
from edge_infer.window import WindowBuffer  # noqa: E402

PERCENTILES = (50, 90, 99)


def windows_of(case: Case, count: int) -> "list[tuple[List[Frame], np.ndarray]]":
    """(the frames of each hop, a copy of the window they complete), over the case's log tiled to ``count``."""
    log = case.tiled_log(count)
    values = np.ascontiguousarray(log.values[:, case.columns], dtype=np.float32)
    spec = case.spec
    buffer = WindowBuffer(spec.window, len(spec.channels), spec.hop)
    out, pending = [], []
    for i, row in enumerate(values):
        pending.append(Frame(seq=i, t=float(log.t[i]), recv_ns=0, values=row, label=None, device_seq=None))
        if buffer.push(row):
            out.append((pending, buffer.view().copy()))
            pending = []
    return out


def time_checks(guard: InputGuard, windows: "list[tuple[List[Frame], np.ndarray]]", decision: Decision) -> np.ndarray:
    clock = time.perf_counter_ns
    out = np.empty(len(windows), dtype=np.int64)
    for i, (frames, view) in enumerate(windows):
        start = clock()
        for frame in frames:
            guard.on_frame(frame)
        guard.check_window(view)
        guard.review(decision)
        out[i] = clock() - start
        decision.reason = None
    return out


def time_model(engine: Engine, windows: "list[tuple[List[Frame], np.ndarray]]") -> np.ndarray:
    clock = time.perf_counter_ns
    out = np.empty(len(windows), dtype=np.int64)
    for i, (_, view) in enumerate(windows):
        start = clock()
        engine.infer(view)
        out[i] = clock() - start
    return out


def time_invoke(engine: Engine, windows: "list[tuple[List[Frame], np.ndarray]]") -> np.ndarray:
    clock = time.perf_counter_ns
    out = np.empty(len(windows), dtype=np.int64)
    for i, (_, view) in enumerate(windows):
        engine.set_input(view)
        start = clock()
        engine.invoke()
        out[i] = clock() - start
    return out


def time_clock(windows: "list[tuple[List[Frame], np.ndarray]]") -> np.ndarray:
    """Two clock reads with nothing between: what every measurement above includes."""
    clock = time.perf_counter_ns
    out = np.empty(len(windows), dtype=np.int64)
    for i in range(len(windows)):
        start = clock()
        out[i] = clock() - start
    return out


def stats(ns: np.ndarray) -> Dict[str, float]:
    us = ns / 1000.0
    return {**{f"p{p}": round(float(np.percentile(us, p)), 2) for p in PERCENTILES},
            "mean": round(float(us.mean()), 2), "n": int(len(us))}


def measure(variants: Dict[str, Callable[[], np.ndarray]], rounds: int) -> Dict[str, Dict[str, float]]:
    """Run every variant once per round, interleaved; pool the rounds (the first round warms up)."""
    pooled: Dict[str, List[np.ndarray]] = {name: [] for name in variants}
    for r in range(rounds + 1):
        for name, run in variants.items():
            result = run()
            if r:
                pooled[name].append(result)
    return {name: stats(np.concatenate(parts)) for name, parts in pooled.items()}


def table(title: str, results: Dict[str, Dict[str, float]], reference: str) -> str:
    ref = results[reference]["p50"]
    lines = [f"### {title}", "", "| per window | " + " | ".join(f"p{p} us" for p in PERCENTILES)
             + f" | mean us | p50 / {reference} p50 |", "|---|" + "---:|" * (len(PERCENTILES) + 2)]
    for name, s in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{s[f'p{p}']:.2f}" for p in PERCENTILES)
                     + f" | {s['mean']:.2f} | {s['p50'] / ref:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model spec (default: the bundled model)")
    parser.add_argument("--log", help="clean recorded log (default: the bundled log)")
    parser.add_argument("--corrupted", help="a corrupted copy of the log (scripts/corrupt_log.py) for the slow path")
    parser.add_argument("--windows", type=int, default=5000, help="windows per round (default 5000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds after a warm-up round (default 5)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()

    case = bundled_case(args.model, args.log)
    spec, engine = case.spec, case.engine
    bare = Case(case.name + " without checks", replace(spec, extra={}), engine, case.log, case.columns)
    clean = windows_of(case, args.windows)
    decision = Decision(seq=0, t=0.0, action="x", source="model", reason=None, latency_us=0.0, invoke_us=None,
                        output=[0.9, 0.1], label=None)

    def checks_run(model_spec: ModelSpec, windows: "list[tuple[List[Frame], np.ndarray]]") -> Callable[[], np.ndarray]:
        return lambda: time_checks(build_guard(model_spec, DecisionRule(model_spec)), windows, decision)

    loop = edge_infer_loop("inline")
    info = machine()
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, kernel {info['kernel']}, Python {info['python']}, "
          f"{info['versions']}, load average {' '.join(info['loadavg'])}")
    print(f"model {spec.name}: window {spec.window}, hop {spec.hop}, {len(spec.channels)} channels, "
          f"backend {engine.backend.name} {engine.backend_version}; {args.windows} windows x {args.rounds} rounds\n")
    results = measure({
        "checks": checks_run(spec, clean),
        "checks, none configured": checks_run(bare.spec, clean),
        "model (quantize + invoke + dequantize)": lambda: time_model(engine, clean),
        "invoke": lambda: time_invoke(engine, clean),
        "clock read (included in each)": lambda: time_clock(clean),
        "decision loop, inline, with the checks": lambda: loop(case, args.windows),
        "decision loop, inline, without [checks] and [ood]": lambda: loop(bare, args.windows),
    }, args.rounds)
    report: Dict[str, Any] = {"machine": info, "command": " ".join(sys.argv), "clean": results}
    print(table("Clean log", results, "invoke"))
    if args.corrupted:
        corrupted_case = bundled_case(args.model, args.corrupted)
        corrupted = windows_of(corrupted_case, args.windows)
        guard = build_guard(spec)
        time_checks(guard, corrupted, decision)
        failing = sum(guard.failed.values())
        slow = measure({"checks": checks_run(spec, corrupted),
                        "invoke": lambda: time_invoke(engine, corrupted)}, args.rounds)
        report["corrupted"] = {"results": slow, "failed_checks": {r.code: n for r, n in guard.failed.items()},
                               "windows": len(corrupted)}
        print()
        print(table(f"Corrupted log ({failing} failed checks in {len(corrupted)} windows)", slow, "invoke"))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
