#!/usr/bin/env python3
"""Per-window cost of edge-infer's decision loop against a hand-written LiteRT loop, side by side.

In one process and one run, on the same recorded log (repeated to get enough windows), for each model:

  (a) ``bare invoke``: ``interpreter.invoke()`` in a tight loop — the floor;
  (b) ``hand-written``: what a user writes around the interpreter — take each frame into a window
      array, every hop frames normalise, quantize, ``set_tensor``, ``invoke``, ``get_tensor``,
      dequantize, argmax (see :func:`hand_written_loop`);
  (c) edge-infer's loop (``Runtime`` on a ``LogSource`` at full speed, with its statistics sink) in
      each mode: ``inline`` (the default), ``thread``, ``process``, with the spec's input checks
      (``[checks]``, ``[ood]``) as shipped and without them; plus ``thread, gc on`` (the
      thread mode without the loop's garbage-collector control), ``thread, SCHED_FIFO``
      (``--realtime``) and ``thread, one CPU`` (``--cpu-affinity 0``), to measure that hygiene.

Per-window cost is the time from one decision to the next (reading ``hop`` frames and deciding a
window); for (a) it is one invoke. Variants run interleaved in rounds so that drift in the machine's
load spreads over all of them. The models: the bundled one, and the test builder's ~1 ms model
(``PRESET_1MS``, a bare model fed the same log with the same hop). A third part times the thread
hand-off primitives the thread mode could use (two locks, a Condition, two Events) around a bare
invoke. Results go to stdout as markdown tables (and ``--json FILE``); docs/performance.md holds them.

usage: python scripts/bench_loop.py [--windows N] [--windows-1ms N] [--rounds R] [--hop N]
                                   [--variants "NAME;NAME..."] [--json FILE]

``--hop 1 --windows 84000 --windows-1ms 0 --variants "(c) inline;(c) thread;..."`` is the long-log
comparison of docs/performance.md ("Honest deadlines"): every frame completes a window.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_infer.deadline.options import DeadlineOptions  # noqa: E402
from edge_infer.decide.decision import Decision  # noqa: E402
from edge_infer.io import RecordedLog, read_log  # noqa: E402
from edge_infer.model.backends import resolve_backend  # noqa: E402
from edge_infer.model.engine import Engine  # noqa: E402
from edge_infer.model.loader import bundled_log, bundled_spec, open_model  # noqa: E402
from edge_infer.model.spec import ModelSpec  # noqa: E402
from edge_infer.runtime import Runtime  # noqa: E402
from edge_infer.sinks.base import Sink  # noqa: E402
from edge_infer.sources.log_replay import LogSource, channel_columns  # noqa: E402

PERCENTILES = (50, 99, 99.9)


class Case:
    """One model on one log: what every variant of the benchmark runs."""

    def __init__(self, name: str, spec: ModelSpec, engine: Engine, log: RecordedLog, columns: List[int]):
        self.name = name
        self.spec = spec
        self.engine = engine
        self.log = log
        self.columns = columns

    def frames_for(self, windows: int) -> int:
        return self.spec.window + windows * self.spec.hop

    def tiled_log(self, windows: int) -> RecordedLog:
        """The log repeated (timestamps continuing) to ``windows + 1`` windows."""
        frames = self.frames_for(windows)
        reps = -(-frames // len(self.log))
        step = float(np.median(np.diff(self.log.t))) if len(self.log) > 1 else 0.1
        span = float(self.log.t[-1] - self.log.t[0]) + step
        t = np.concatenate([self.log.t + k * span for k in range(reps)])[:frames]
        labels = None if self.log.labels is None else (list(self.log.labels) * reps)[:frames]
        return RecordedLog(t=t, values=np.tile(self.log.values, (reps, 1))[:frames], channels=self.log.channels,
                           labels=labels)


class StampSink(Sink):
    """Records when each decision reaches the sinks, into a pre-allocated array."""

    def __init__(self, capacity: int):
        self.stamps = np.zeros(capacity, dtype=np.int64)
        self.count = 0
        self.fallbacks = 0

    def on_decision(self, decision: Decision) -> None:
        self.stamps[self.count] = time.perf_counter_ns()
        self.count += 1
        self.fallbacks += decision.source != "model"


def bare_invoke(case: Case, windows: int) -> np.ndarray:
    """(a): the interpreter alone, ``invoke()`` after ``invoke()``."""
    interpreter = make_interpreter(case)
    for _ in range(50):
        interpreter.invoke()
    out = np.zeros(windows, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(windows):
        start = clock()
        interpreter.invoke()
        out[i] = clock() - start
    return out


def make_interpreter(case: Case) -> Any:
    _, interpreter_class = resolve_backend(case.engine.backend.name)
    interpreter = interpreter_class(model_content=case.engine.model_bytes, num_threads=1)
    interpreter.allocate_tensors()
    return interpreter


def hand_written_loop(case: Case, windows: int) -> np.ndarray:
    """(b): a minimal loop a user writes around the interpreter, with its quantization done right."""
    interpreter = make_interpreter(case)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    quantized = inp["dtype"] != np.float32
    info = np.iinfo(inp["dtype"]) if quantized else None
    offset, scale = case.spec.offset, case.spec.scale
    labels = case.spec.labels
    size, hop = case.spec.window, case.spec.hop
    window = np.zeros((size, len(case.columns)), dtype=np.float32)
    frames = np.ascontiguousarray(case.tiled_log(windows).values[:, case.columns], dtype=np.float32)
    stamps = np.zeros(windows + 1, dtype=np.int64)
    decided = 0
    clock = time.perf_counter_ns
    for i, frame in enumerate(frames):
        window[:-1] = window[1:]  # newest frame last
        window[-1] = frame
        if i + 1 < size or (i + 1 - size) % hop:
            continue
        x = (window - offset) / scale
        if quantized:
            x = np.clip(np.round(x / in_scale) + in_zero, info.min, info.max)
        interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]).reshape(inp["shape"]))
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"]).reshape(-1).astype(np.float32)
        if out["dtype"] != np.float32:
            y = (y - out_zero) * out_scale
        index = int(np.argmax(y))
        _action = labels[index] if labels else index
        stamps[decided] = clock()
        decided += 1
    return np.diff(stamps[:decided])


class GcPauses:
    """Garbage collections of the loop process once deciding started: count and duration per generation."""

    def __init__(self) -> None:
        self.pauses: Dict[int, List[int]] = {0: [], 1: [], 2: []}
        self.deciding: Callable[[], bool] = lambda: False
        self._start = 0

    def __call__(self, phase: str, info: Dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter_ns()
        elif self.deciding():
            self.pauses[info["generation"]].append(time.perf_counter_ns() - self._start)


def edge_infer_loop(mode: str, gc_control: bool = True, realtime: bool = False,
                    cpus: Optional[List[int]] = None, checks: bool = True) -> Callable[[Case, int], np.ndarray]:
    """(c): the Runtime, fed by a LogSource at full speed, in ``mode``.

    The budget is set to 1 s: the hand-written loop has none, and a stall of the shared machine must
    not turn windows into (cheaper) fallbacks. ``checks=False`` drops the spec's ``[checks]`` and
    ``[ood]`` tables (input validation, which the hand-written loop does not do), leaving the loop alone.
    """
    pauses = GcPauses()

    def run(case: Case, windows: int) -> np.ndarray:
        log = case.tiled_log(windows)
        source = LogSource(log, case.columns, case.spec.channels, speed=None)
        sink = StampSink(windows + 1)
        extra = case.spec.extra if checks else {k: v for k, v in case.spec.extra.items() if k not in ("checks", "ood")}
        runtime = Runtime(replace(case.spec, budget_ms=1000.0, extra=extra), case.engine, source, [sink],
                          options=DeadlineOptions(mode=mode, gc_control=gc_control, realtime=realtime,
                                                  cpu_affinity=cpus))
        pauses.deciding = lambda: sink.count > 0
        gc.callbacks.append(pauses)
        try:
            runtime.run()
        finally:
            gc.callbacks.remove(pauses)
        if sink.fallbacks:
            print(f"  note: {case.name} {mode}: {sink.fallbacks} fallbacks", file=sys.stderr)
        return np.diff(sink.stamps[:sink.count])
    run.pauses = pauses  # type: ignore[attr-defined]
    return run


VARIANTS: Dict[str, Callable[[Case, int], np.ndarray]] = {
    "(a) bare invoke": bare_invoke,
    "(b) hand-written": hand_written_loop,
    "(c) inline": edge_infer_loop("inline"),
    "(c) thread": edge_infer_loop("thread"),
    "(c) process": edge_infer_loop("process"),
    "(c) inline, no input checks": edge_infer_loop("inline", checks=False),
    "(c) thread, no input checks": edge_infer_loop("thread", checks=False),
    "(c) process, no input checks": edge_infer_loop("process", checks=False),
    "(c) thread, gc on": edge_infer_loop("thread", gc_control=False),
    "(c) thread, SCHED_FIFO": edge_infer_loop("thread", realtime=True),
    "(c) thread, one CPU": edge_infer_loop("thread", cpus=[0]),
}
BASELINE = "(b) hand-written"


def measure(case: Case, windows: int, rounds: int) -> Dict[str, np.ndarray]:
    """Every variant, ``rounds`` times interleaved, ``windows / rounds`` windows each time."""
    per_round = max(1, windows // rounds)
    samples: Dict[str, List[np.ndarray]] = {name: [] for name in VARIANTS}
    for r in range(rounds):
        order = list(VARIANTS.items())
        if r % 2:  # every other round backwards: no variant always runs first (warm caches) or last
            order.reverse()
        for name, variant in order:
            samples[name].append(variant(case, per_round))
        print(f"  {case.name}: round {r + 1}/{rounds} done", file=sys.stderr)
    return {name: np.concatenate(parts) for name, parts in samples.items()}


def stats(ns: np.ndarray) -> Dict[str, float]:
    us = ns / 1000.0
    out = {f"p{p:g}": float(np.percentile(us, p)) for p in PERCENTILES}
    out.update(max=float(us.max()), mean=float(us.mean()), n=int(len(us)))
    return out


def gc_table(case_name: str, windows: int) -> str:
    """Collections while each (c) variant decided, and the longest pause, by generation (then reset)."""
    lines = [f"**garbage collections while deciding ({case_name}, {windows} windows per variant)**", "",
             "| variant | gen 0: n, max µs | gen 1: n, max µs | gen 2: n, max µs |", "|---|---|---|---|"]
    for name, variant in VARIANTS.items():
        pauses = getattr(variant, "pauses", None)
        if pauses is None:
            continue
        cells = [f"{len(p)}, {max(p) / 1000:.0f}" if p else "0" for p in pauses.pauses.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        pauses.pauses = {0: [], 1: [], 2: []}
    return "\n".join(lines)


def table(case_name: str, results: Dict[str, Dict[str, float]]) -> str:
    base = results[BASELINE]
    lines = [f"**{case_name}** — per-window cost in µs (ratios against {BASELINE})", "",
             "| variant | windows | p50 | p99 | p99.9 | max | mean | mean ratio | p50 ratio | p99 ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in results.items():
        lines.append(f"| {name} | {s['n']} | {s['p50']:.1f} | {s['p99']:.1f} | {s['p99.9']:.1f} | {s['max']:.0f} | "
                     f"{s['mean']:.1f} | {s['mean'] / base['mean']:.2f} | {s['p50'] / base['p50']:.2f} | "
                     f"{s['p99'] / base['p99']:.2f} |")
    lines.append("")
    for suffix in ("", ", no input checks"):
        if f"(c) process{suffix}" not in results or f"(c) thread{suffix}" not in results:
            continue
        process, thread = results[f"(c) process{suffix}"], results[f"(c) thread{suffix}"]
        lines.append(f"isolated (process) mode extra cost over the thread mode{suffix}: p50 "
                     f"{process['p50'] - thread['p50']:+.1f} µs, mean {process['mean'] - thread['mean']:+.1f} µs  ")
    return "\n".join(lines)


def full_collection_table(repeats: int = 5) -> "tuple[str, Dict[str, Any]]":
    """What one full garbage collection costs in this process (numpy, the backend, edge-infer loaded),
    before and after ``gc.freeze()`` — the pause the loop's GC control keeps out of the hot path."""
    def timed() -> float:
        start = time.perf_counter_ns()
        gc.collect()
        return (time.perf_counter_ns() - start) / 1000.0

    tracked = len(gc.get_objects())
    before = sorted(timed() for _ in range(repeats))
    gc.freeze()
    try:
        after = sorted(timed() for _ in range(repeats))
    finally:
        gc.unfreeze()
    results = {"tracked_objects": tracked, "full_collection_us": before, "after_freeze_us": after}
    text = "\n".join([
        f"**one full garbage collection in the benchmark process** ({tracked} tracked objects; "
        f"median of {repeats})", "", "| | µs |", "|---|---:|",
        f"| `gc.collect()` | {before[repeats // 2]:.0f} |",
        f"| `gc.collect()` after `gc.freeze()` | {after[repeats // 2]:.0f} |"])
    return text, results


# --- the thread hand-off primitives ---------------------------------------------------------------------------

def handoff(kind: str, interpreter: Any, n: int) -> np.ndarray:
    """Round trip: hand a request to a worker thread that invokes, wait for its answer."""
    out = np.zeros(n, dtype=np.int64)
    clock = time.perf_counter_ns
    stop = [False]
    if kind == "two locks":
        todo, done = threading.Lock(), threading.Lock()
        todo.acquire()
        done.acquire()

        def worker() -> None:
            while True:
                todo.acquire()
                if stop[0]:
                    return
                interpreter.invoke()
                done.release()

        def request() -> None:
            todo.release()
            done.acquire(True, 1.0)

        def finish() -> None:
            todo.release()
    elif kind == "Condition":
        cond = threading.Condition()
        state = {"asked": 0, "answered": 0}

        def worker() -> None:
            seen = 0
            while True:
                with cond:
                    while state["asked"] == seen:
                        cond.wait()
                    seen = state["asked"]
                if stop[0]:
                    return
                interpreter.invoke()
                with cond:
                    state["answered"] = seen
                    cond.notify_all()

        def request() -> None:
            with cond:
                state["asked"] += 1
                cond.notify_all()
                while state["answered"] != state["asked"]:
                    cond.wait(1.0)

        def finish() -> None:
            with cond:
                state["asked"] += 1
                cond.notify_all()
    else:
        ask, answer = threading.Event(), threading.Event()

        def worker() -> None:
            while True:
                ask.wait()
                ask.clear()
                if stop[0]:
                    return
                interpreter.invoke()
                answer.set()

        def request() -> None:
            ask.set()
            answer.wait(1.0)
            answer.clear()

        def finish() -> None:
            ask.set()
    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    for _ in range(100):
        request()
    for i in range(n):
        start = clock()
        request()
        out[i] = clock() - start
    stop[0] = True
    finish()
    thread.join(5.0)
    return out


def handoff_table(case: Case, n: int, rounds: int) -> "tuple[str, Dict[str, Any]]":
    interpreter = make_interpreter(case)
    kinds = ("bare invoke", "two locks", "Condition", "two Events")
    samples: Dict[str, List[np.ndarray]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for kind in kinds:
            if kind == "bare invoke":
                samples[kind].append(bare_invoke(case, n // rounds))
            else:
                samples[kind].append(handoff(kind, interpreter, n // rounds))
    results = {k: stats(np.concatenate(v)) for k, v in samples.items()}
    lines = [f"**thread hand-off around one invoke ({case.name})** — round trip in µs", "",
             "| primitive | p50 | p99 | p99.9 | max |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {s['p50']:.1f} | {s['p99']:.1f} | {s['p99.9']:.1f} | {s['max']:.0f} |"
              for k, s in results.items()]
    return "\n".join(lines), results


# --- setup --------------------------------------------------------------------------------------------------

def start_report() -> Dict[str, Any]:
    """Print what machine this is (a benchmark's numbers mean nothing without it) and start the JSON report."""
    info = machine()
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, kernel {info['kernel']}, Python {info['python']}, "
          f"{info['versions']}, load average {' '.join(info['loadavg'])}")
    return {"machine": info, "command": " ".join(sys.argv)}


def finish_report(report: Dict[str, Any], json_path: Optional[str]) -> None:
    """Note the load after the run (a busy machine explains odd numbers) and write the JSON report."""
    report["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
    print(f"\nload average after: {' '.join(report['loadavg_after'])}")
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1))


def machine() -> Dict[str, Any]:
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from importlib.metadata import version

    versions = {}
    for dist in ("ai-edge-litert", "tflite-runtime", "numpy"):
        try:
            versions[dist] = version(dist)
        except Exception:
            pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "python": platform.python_version(),
            "versions": versions, "loadavg": open("/proc/loadavg").read().split()[:3]}


def bundled_case(spec_path: Optional[str], log_path: Optional[str]) -> Case:
    log = read_log(log_path or bundled_log())
    spec, engine = open_model(spec_path or str(bundled_spec()), log.channels)
    columns = channel_columns(log, spec.channels if spec.spec_path else None, engine.channels, "log")
    return Case(spec.name or engine.path.stem, spec, engine, log, columns)


def one_ms_case(log_path: Optional[str], hop: int, workdir: Path) -> Case:
    from edge_infer.testing.tflite_builder import PRESET_1MS, slow_model, write_model

    log = read_log(log_path or bundled_log())
    path = write_model(workdir / "one_ms.tflite", slow_model(channels=len(log.channels), **PRESET_1MS))
    spec, engine = open_model(str(path), log.channels, hop=hop)
    return Case("builder PRESET_1MS", spec, engine, log, list(range(len(log.channels))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="spec of the first model (default: the bundled model)")
    parser.add_argument("--log", help="recorded log (default: the bundled log)")
    parser.add_argument("--windows", type=int, default=20000, help="windows per variant, bundled model")
    parser.add_argument("--windows-1ms", type=int, default=3000, help="windows per variant, 1 ms model")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--hop", type=int, help="frames between windows (default: the spec's)")
    parser.add_argument("--variants", help="variant names to run, separated by ; (default: all)")
    parser.add_argument("--no-handoff", action="store_true", help="skip the hand-off and GC tables")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.variants:
        wanted = [name.strip() for name in args.variants.split(";")]
        unknown = [name for name in wanted if name not in VARIANTS]
        if unknown:
            parser.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
        for name in list(VARIANTS):
            if name not in wanted and name != BASELINE:
                del VARIANTS[name]

    report: Dict[str, Any] = dict(start_report(), cases={})
    with tempfile.TemporaryDirectory() as tmp:
        first = bundled_case(args.model, args.log)
        if args.hop:
            first.spec = replace(first.spec, hop=args.hop)
        cases = [(first, args.windows)]
        if args.windows_1ms:
            cases.append((one_ms_case(args.log, first.spec.hop, Path(tmp)), args.windows_1ms))
        for case, windows in cases:
            results = {name: stats(ns) for name, ns in measure(case, windows, args.rounds).items()}
            report["cases"][case.name] = results
            print()
            print(table(case.name, results))
            print()
            print(gc_table(case.name, windows))
        if not args.no_handoff:
            text, results = handoff_table(first, args.windows, args.rounds)
            report["handoff"] = results
            print()
            print(text)
            text, report["full_collection"] = full_collection_table()
            print()
            print(text)
    finish_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
