#!/usr/bin/env python3
"""Deadline proof: is every window decided by its deadline, and how late is the worst one?

Three parts, each a markdown table on stdout (and ``--json FILE``):

1. **Slow model, short budget.** The test builder's ~30 ms model (``PRESET_SLOW``) with a 5 ms budget,
   replayed in real time with a window every 40 ms (so each window finds the model free and must be
   decided by the deadline while the invoke goes on), and with a window every 10 ms (the model is
   still busy: the overload policy decides). Per mode (``inline`` — the loop invokes, its watchdog decides
   at the deadline —
   ``thread``, ``process``), with and without ``--realtime`` (SCHED_FIFO for the loop thread).
2. **Bundled model under a CPU hog.** The bundled model on its log, replayed at 20x real time,
   while busy-looping processes (one per CPU) compete for the CPUs; with and without ``--realtime``.
3. **Isolated mode restarts.** How long the model is unavailable after a segfault in the child
   (killed, restarted, model loaded and warmed up again), with the forkserver the mode uses and,
   for comparison, with ``spawn``.

"On time" means the decision reached the sinks no later than the budget after its window's last
frame was received; lateness is the decision latency minus the budget.

usage: python scripts/bench_deadline.py [--seconds S] [--json FILE]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_loop import finish_report, start_report  # noqa: E402

from edge_infer.deadline import isolated  # noqa: E402
from edge_infer.deadline.options import DeadlineOptions  # noqa: E402
from edge_infer.decide.decision import Decision  # noqa: E402
from edge_infer.io import RecordedLog, read_log  # noqa: E402
from edge_infer.model.loader import bundled_log, bundled_spec, open_model  # noqa: E402
from edge_infer.runtime import Runtime  # noqa: E402
from edge_infer.sinks.base import Sink  # noqa: E402
from edge_infer.sources.log_replay import LogSource, channel_columns  # noqa: E402
from edge_infer.testing.fault_engines import SEGFAULT_MARKER, faulty_engine  # noqa: E402
from edge_infer.testing.tflite_builder import PRESET_SLOW, slow_model, write_model  # noqa: E402


class LatencySink(Sink):
    """Every decision's latency and reason."""

    def __init__(self) -> None:
        self.latency_us: List[float] = []
        self.reasons: Dict[str, int] = {}

    def on_decision(self, decision: Decision) -> None:
        self.latency_us.append(decision.latency_us)
        key = decision.reason.code if decision.reason is not None else decision.source
        self.reasons[key] = self.reasons.get(key, 0) + 1


def replay(spec: Any, engine: Any, log: RecordedLog, columns: List[int], speed: float, mode: str,
           realtime: bool, budget_ms: float) -> Dict[str, Any]:
    sink = LatencySink()
    source = LogSource(log, columns, spec.channels, speed=speed)
    runtime = Runtime(spec, engine, source, [sink], options=DeadlineOptions(mode=mode, realtime=realtime,
                                                                            no_data_ms=0))
    runtime.run()
    latency = np.array(sink.latency_us)
    budget_us = budget_ms * 1000.0
    return {
        "windows": len(latency),
        "on_time": float(np.mean(latency <= budget_us)),
        "p50_us": float(np.percentile(latency, 50)),
        "p99_us": float(np.percentile(latency, 99)),
        "max_us": float(latency.max()),
        "worst_lateness_us": float(latency.max() - budget_us),
        "decided_by": dict(sorted(sink.reasons.items())),
    }


def synthetic_log(frames: int, channels: int, rate_hz: float) -> RecordedLog:
    values = np.random.default_rng(0).normal(size=(frames, channels)).astype(np.float32)
    return RecordedLog(t=np.arange(frames) / rate_hz, values=values, channels=[f"c{i}" for i in range(channels)],
                       labels=None)


def part_slow(workdir: Path, seconds: float) -> "tuple[str, List[Dict[str, Any]]]":
    model = write_model(workdir / "slow.tflite", slow_model(**PRESET_SLOW))
    budget_ms, hop = 5.0, 4
    rows: List[Dict[str, Any]] = []
    for period_ms in (40, 10):
        rate_hz = hop / (period_ms / 1000.0)
        windows = int(seconds * 1000 / period_ms)
        log = synthetic_log(32 + windows * hop, 6, rate_hz)
        for mode in ("inline", "thread", "process"):
            for realtime in (False, True):
                spec, engine = open_model(str(model), log.channels, budget_ms=budget_ms, hop=hop)
                result = replay(spec, engine, log, list(range(6)), 1.0, mode, realtime, budget_ms)
                result.update(case=f"slow model, a window every {period_ms} ms", mode=mode, realtime=realtime)
                rows.append(result)
                print(f"  {result['case']}, {mode}{' realtime' if realtime else ''}: done", file=sys.stderr)
    return table("slow model (~30 ms per invoke), 5 ms budget, replayed in real time", rows), rows


def hog(until: float) -> None:
    """Burn a CPU until ``until`` (monotonic seconds), even if the benchmark that started it hangs."""
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))  # compete as an ordinary process would
    while time.monotonic() < until:
        for _ in range(100_000):
            pass


def part_hog(seconds: float, spec_path: Optional[str], log_path: Optional[str]) -> "tuple[str, List[Dict[str, Any]]]":
    log = read_log(log_path or bundled_log())
    speed = 20.0
    needed = int(seconds * speed / float(np.median(np.diff(log.t))))
    reps = -(-needed // len(log))
    step = float(np.median(np.diff(log.t)))
    span = float(log.t[-1] - log.t[0]) + step
    log = RecordedLog(t=np.concatenate([log.t + k * span for k in range(reps)])[:needed],
                      values=np.tile(log.values, (reps, 1))[:needed], channels=log.channels, labels=None)
    rows: List[Dict[str, Any]] = []
    until = time.monotonic() + 4 * (seconds + 10)  # the four replays below, with room for start-up
    hogs = [multiprocessing.Process(target=hog, args=(until,), daemon=True) for _ in range(os.cpu_count() or 1)]
    for process in hogs:
        process.start()
    try:
        for mode in ("thread", "process"):
            for realtime in (False, True):
                spec, engine = open_model(spec_path or str(bundled_spec()), log.channels)
                columns = channel_columns(log, spec.channels if spec.spec_path else None, engine.channels, "log")
                result = replay(spec, engine, log, columns, speed, mode, realtime, spec.budget_ms)
                result.update(case=f"{spec.name or 'model'}, {len(hogs)} CPU hogs, budget {spec.budget_ms:g} ms",
                              mode=mode, realtime=realtime)
                rows.append(result)
                print(f"  hog, {mode}{' realtime' if realtime else ''}: done", file=sys.stderr)
    finally:
        for process in hogs:
            process.kill()
            process.join()
    return table("bundled model with busy-looping processes on every CPU, replayed at 20x real time", rows), rows


def table(title: str, rows: List[Dict[str, Any]]) -> str:
    lines = [f"**{title}**", "",
             "| case | mode | SCHED_FIFO | windows | on time | latency p50 µs | p99 µs | max µs | worst lateness µs "
             "| decided by |", "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        decided = ", ".join(f"{k} {v}" for k, v in r["decided_by"].items())
        lines.append(f"| {r['case']} | {r['mode']} | {'yes' if r['realtime'] else 'no'} | {r['windows']} | "
                     f"{100 * r['on_time']:.1f}% | {r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['max_us']:.0f} | "
                     f"{r['worst_lateness_us']:+.0f} | {decided} |")
    return "\n".join(lines)


def part_restart(spec_path: Optional[str], restarts: int) -> "tuple[str, Dict[str, Any]]":
    spec, engine = open_model(spec_path or str(bundled_spec()))
    crash = np.zeros((spec.window, len(spec.channels)), dtype=np.float32)
    crash[0, 0] = SEGFAULT_MARKER
    normal = np.zeros_like(crash)
    results: Dict[str, Any] = {}
    for method in ("forkserver", "spawn"):
        isolated.START_METHOD = method
        start = time.perf_counter()
        scheduler = isolated.ProcessScheduler(engine, engine_factory=faulty_engine)
        first_start_ms = (time.perf_counter() - start) * 1000
        down_ms = []
        for _ in range(restarts):
            scheduler.run(normal, time.perf_counter_ns() + 10**9)
            crashed = time.perf_counter_ns()
            scheduler.run(crash, crashed + 10**9)
            while not scheduler._available():
                scheduler.poll(time.perf_counter_ns())
                time.sleep(0.0005)
            down_ms.append((time.perf_counter_ns() - crashed) / 1e6)
        scheduler.close()
        results[method] = {"first_start_ms": first_start_ms, "restarts": restarts,
                           "down_p50_ms": float(np.median(down_ms)), "down_max_ms": float(np.max(down_ms))}
        print(f"  restarts with {method}: done", file=sys.stderr)
    isolated.START_METHOD = "forkserver"
    lines = ["**isolated mode: time without a model after a segfault** (kill, restart, load, warm up "
             f"{isolated.CHILD_WARMUP} invokes)", "",
             "| start method | first start ms | restarts | unavailable p50 ms | max ms |", "|---|---:|---:|---:|---:|"]
    for method, r in results.items():
        lines.append(f"| {method} | {r['first_start_ms']:.0f} | {r['restarts']} | {r['down_p50_ms']:.1f} | "
                     f"{r['down_max_ms']:.1f} |")
    return "\n".join(lines), results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="spec of the model for parts 2 and 3 (default: the bundled model)")
    parser.add_argument("--log", help="log for part 2 (default: the bundled log)")
    parser.add_argument("--seconds", type=float, default=10.0, help="real-time length of each replay")
    parser.add_argument("--restarts", type=int, default=10, help="segfaults per start method in part 3")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    report: Dict[str, Any] = start_report()
    with tempfile.TemporaryDirectory() as tmp:
        text, report["slow"] = part_slow(Path(tmp), args.seconds)
        print("\n" + text)
    text, report["hog"] = part_hog(args.seconds, args.model, args.log)
    print("\n" + text)
    text, report["restart"] = part_restart(args.model, args.restarts)
    print("\n" + text)
    finish_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
