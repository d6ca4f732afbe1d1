#!/usr/bin/env python3
"""Cost of the input checks per window, next to the model's, in one run on the same windows.

For every window of the recorded log (tiled to ``--windows``), interleaved so that the shared
machine's load drifts over all of them alike:

  (a) ``checks``: what the input guard adds to one window in the decision loop — ``on_frame`` for
      each of the ``hop`` new frames, ``check_window`` on the window view and ``review`` of the
      decision (edge_infer/checks/guard.py), with the spec's ``[checks]`` and ``[ood]``;
  (b) ``checks, none configured``: the same with a spec without those tables (the non-finite check only);
  (c) ``model``: ``Engine.infer`` — normalise and quantize, ``invoke``, dequantize;
  (d) ``invoke``: the interpreter's ``invoke()`` alone.

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
from typing import Any, Callable, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_loop import machine  # noqa: E402  (scripts/: the same machine description as the loop benchmark)

from edge_infer.checks.guard import InputGuard, build_guard  # noqa: E402
from edge_infer.decision import Decision, DecisionRule  # noqa: E402
from edge_infer.engine import Engine  # noqa: E402
from edge_infer.frame import Frame  # noqa: E402
from edge_infer.io import read_log  # noqa: E402
from edge_infer.loader import bundled_log, bundled_spec, open_model  # noqa: E402
from edge_infer.sources.log_replay import channel_columns  # noqa: E402
from edge_infer.spec import ModelSpec  # noqa: E402
from edge_infer.window import WindowBuffer  # noqa: E402

PERCENTILES = (50, 90, 99)


class Replay:
    """A log's frames, pushed through a window buffer as the runtime does, one window at a time."""

    def __init__(self, spec: ModelSpec, log_path: str, windows: int):
        log = read_log(log_path)
        columns = channel_columns(log, spec.channels, len(spec.channels), log_path)
        values = np.ascontiguousarray(log.values[:, columns], dtype=np.float32)
        needed = spec.window + windows * spec.hop
        reps = -(-needed // len(values))
        self.values = np.concatenate([values] * reps)[:needed]
        period = 1.0 / spec.sample_rate_hz if spec.sample_rate_hz else 0.1
        times = np.concatenate([log.t + k * (log.t[-1] - log.t[0] + period) for k in range(reps)])[:needed]
        self.frames = [Frame(seq=i, t=float(times[i]), recv_ns=0, values=self.values[i], label=None, device_seq=None)
                       for i in range(needed)]
        self.spec = spec

    def windows(self) -> "list[tuple[List[Frame], np.ndarray]]":
        """(the frames of each hop, a copy of the window they complete)."""
        buffer = WindowBuffer(self.spec.window, len(self.spec.channels), self.spec.hop)
        out, pending = [], []
        for frame in self.frames:
            pending.append(frame)
            if buffer.push(frame.values):
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

    spec, engine = open_model(args.model or str(bundled_spec()))
    bare = replace(spec, extra={})  # the same model without [checks] and [ood]
    clean = Replay(spec, args.log or str(bundled_log()), args.windows).windows()
    decision = Decision(seq=0, t=0.0, action="x", source="model", reason=None, latency_us=0.0, invoke_us=None,
                        output=[0.9, 0.1], label=None)

    def checks_run(model_spec: ModelSpec, windows: "list[tuple[List[Frame], np.ndarray]]") -> Callable[[], np.ndarray]:
        return lambda: time_checks(build_guard(model_spec, DecisionRule(model_spec)), windows, decision)

    info = machine()
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, kernel {info['kernel']}, Python {info['python']}, "
          f"{info['versions']}, load average {' '.join(info['loadavg'])}")
    print(f"model {spec.name}: window {spec.window}, hop {spec.hop}, {len(spec.channels)} channels, "
          f"backend {engine.backend.name} {engine.backend_version}; {args.windows} windows x {args.rounds} rounds\n")
    results = measure({
        "checks": checks_run(spec, clean),
        "checks, none configured": checks_run(bare, clean),
        "model (quantize + invoke + dequantize)": lambda: time_model(engine, clean),
        "invoke": lambda: time_invoke(engine, clean),
        "clock read (included in each)": lambda: time_clock(clean),
    }, args.rounds)
    report: Dict[str, Any] = {"machine": info, "command": " ".join(sys.argv), "clean": results}
    print(table("Clean log", results, "invoke"))
    if args.corrupted:
        corrupted = Replay(spec, args.corrupted, args.windows).windows()
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
