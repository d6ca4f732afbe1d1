#!/usr/bin/env python3
"""Many streams on one board: how many paced streams of the bundled model stay on time, and at what cost.

Three ways to decide for N copies of the bundled log, each paced at ``--speed`` (40: 400 frames/s per
stream, a window every 10 ms, budget 20 ms), run side by side in rounds (interleaved):

* ``streams``  -- one ``edge-infer run --source LOG`` x N: one runtime, one shared model (docs/streams.md);
* ``processes`` -- N separate ``edge-infer run --source LOG`` processes;
* ``threads``  -- one process with a thread per stream, each a single-stream Runtime with its own interpreter.

Measured from outside: every decision is written as a JSON line to the child's stdout and stamped by this
process (CLOCK_MONOTONIC) when the line arrives. A window's due time is the pacing start plus its last
frame's log time over the speed; the pacing start is not taken from the runtime: it is the latest start
consistent with every stamp (no decision can come before its window), so the latency reported here is a
lower bound short by the run's fastest decision (the runtime's own minimum latency is printed beside it).
Also this machine's own sleep jitter (1 ms sleeps in a thread of this process during each run), CPU time
(user+sys, from wait4) and peak RSS of the children, whether the run kept up with real time (the last
decision's stamp against the log's length), and whether every stream decided exactly what a single-stream
replay of the same log decides.

First, the bundled model's invoke cost per batch size on the resized interpreters (``--batch-costs-only``).

``--neighbour-ms MS`` adds ``streams-inline+slow`` and ``streams-thread+slow``: the same N streams in one runtime
plus one more stream, ``slow``, on a model that takes about MS per invoke (budget 3 x MS), from a ``[[stream]]``
service config. The table is about the N bundled streams only (the slow stream's own decisions are counted
beside it): a slow or hung model on one stream must not make another stream late (issue 13; inline, a deputy
runs the loop while the slow invoke holds the loop's thread: edge_infer/deadline/baton.py).

usage: python scripts/bench_streams.py [--streams 32] [--sweep 32,48,64,96,128] [--rounds 2] [--speed 40] [--realtime]
                                       [--duration S] [--neighbour-ms MS] [--kinds K,K] [--json FILE]
       (--threads-child N: internal, the thread-per-stream process)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_loop import finish_report, start_report  # noqa: E402

from edge_infer.io import read_log  # noqa: E402
from edge_infer.model.loader import bundled_log  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUDGET_MS = 20.0  # the bundled spec's


def edge_infer(*args: str) -> List[str]:
    return [sys.executable, "-m", "edge_infer", "run", *args]


class Child:
    """A child process whose stdout lines are stamped on arrival by a reader thread."""

    def __init__(self, argv: List[str]):
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.lines: List["tuple[int, bytes]"] = []
        self.stderr = b""
        self.hwm_kb = 0  # VmHWM, sampled: wait4's ru_maxrss would count the pages of this (big) parent before exec
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._err.start()

    def _read(self) -> None:
        now, append = time.perf_counter_ns, self.lines.append
        for line in self.proc.stdout:  # type: ignore[union-attr]
            append((now(), line))

    def _read_err(self) -> None:
        self.stderr = self.proc.stderr.read()  # type: ignore[union-attr]

    def sample_rss(self) -> None:
        try:
            with open(f"/proc/{self.proc.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        self.hwm_kb = max(self.hwm_kb, int(line.split()[1]))
        except (OSError, ValueError):
            pass

    def wait(self) -> Dict[str, float]:
        """Wait for the child; its CPU seconds (wait4) and peak RSS in MB (VmHWM, sampled until it exits)."""
        while not _exited(self.proc.pid):
            time.sleep(0.05)
        self.sample_rss()  # exited, not reaped: /proc still has it
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self._reader.join(30)
        self._err.join(30)
        if self.proc.returncode != 0:
            raise SystemExit(f"child failed ({self.proc.returncode}): {self.stderr.decode()[-2000:]}")
        return {"cpu_s": usage.ru_utime + usage.ru_stime, "rss_mb": self.hwm_kb / 1024.0}


def _exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (wait4 must get its rusage)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


class Jitter(threading.Thread):
    """This machine's own timer jitter while a run goes on: how late 1 ms sleeps wake up."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.late_us: List[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            start = time.perf_counter_ns()
            time.sleep(0.001)
            self.late_us.append((time.perf_counter_ns() - start - 1_000_000) / 1000.0)


def run_config(kind: str, n: int, speed: float, duration: Optional[float], realtime: bool,
               neighbour: Optional[Path] = None) -> Dict[str, Any]:
    """One run of ``kind`` with ``n`` streams; returns the stamped decisions and the children's costs.

    ``neighbour`` (kinds ending ``+slow``): the slow model's spec, for one more stream beside the ``n``."""
    log = str(bundled_log())
    common = ["--speed", str(speed), "--show", "none", "--decisions", "/dev/stdout", "--json"]
    if duration:
        common += ["--duration", str(duration)]
    if realtime:
        common.append("--realtime")
    if kind.endswith("+slow"):
        config = neighbour_config(n, neighbour)  # type: ignore[arg-type]
        children = [Child(edge_infer("--config", str(config), *common, "--mode", kind.split("-")[1][:-5]))]
    elif kind.startswith("streams"):
        sources = [arg for _ in range(n) for arg in ("--source", log)]
        children = [Child(edge_infer(*sources, *common, "--mode", kind.split("-")[1]))]
    elif kind == "processes":
        children = [Child(edge_infer("--source", log, *common)) for _ in range(n)]
    else:
        argv = [sys.executable, __file__, "--threads-child", str(n), "--speed", str(speed)] + \
            (["--realtime"] if realtime else [])
        children = [Child(argv + (["--duration", str(duration)] if duration else []))]
    jitter = Jitter()
    jitter.start()
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            for child in children:
                child.sample_rss()
            sampling.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    costs = [child.wait() for child in children]
    sampling.set()
    sampler.join()
    jitter.stop.set()
    jitter.join()
    decisions: Dict[str, List["tuple[int, int, float, Any, str]"]] = {}
    own_min_us = []
    neighbour_sources: Dict[str, int] = {}
    for c, child in enumerate(children):
        for stamp, raw in child.lines:
            record = json.loads(raw)
            if record.get("event") == "run_start":  # the decision log's first line (docs/recording.md)
                continue
            if "seq" not in record:
                own_min_us.append(record["latency_us"]["p50"])
                continue
            if record.get("stream") == "slow":  # the slow neighbour: counted, not judged
                outcome = record["reason"] or "model"
                neighbour_sources[outcome] = neighbour_sources.get(outcome, 0) + 1
                continue
            name = f"{c}:{record['stream']}"
            decisions.setdefault(name, []).append((stamp, record["seq"], record["t"], record["action"],
                                                   record["source"], record["reason"]))
    return {"decisions": decisions, "cpu_s": sum(c["cpu_s"] for c in costs),
            "rss_mb": sum(c["rss_mb"] for c in costs), "processes": len(children),
            "jitter_us": jitter.late_us, "runtime_p50_us": own_min_us, "neighbour": neighbour_sources}


def judge(result: Dict[str, Any], n: int, speed: float, reference: Dict[int, Any], kind: str,
          run_s: float) -> Dict[str, Any]:
    """Latency from outside, per process anchored at the latest pacing start consistent with its stamps.

    The shutdown decision of a run stopped by --duration answers no window and is left out. A run that
    fell behind real time shows it here: its last decisions are as late as it fell behind.
    """
    by_process: Dict[str, List[Any]] = {}
    for name, rows in result["decisions"].items():
        by_process.setdefault(name.split(":", 1)[0], []).extend(r for r in rows if r[5] != "shutdown")
    latencies = []
    for rows in by_process.values():
        offsets = np.array([r[2] / speed * 1e9 for r in rows])  # the log starts at t = 0
        stamps = np.array([r[0] for r in rows], dtype=np.float64)
        start = np.min(stamps - offsets)
        latencies.append((stamps - offsets - start) / 1000.0)
    lat = np.concatenate(latencies) if latencies else np.zeros(1)
    same = 0
    streams_with_all_model = 0
    for rows in result["decisions"].values():
        model_rows = [r for r in rows if r[4] == "model"]
        streams_with_all_model += len(model_rows) == len([r for r in rows if r[1] in reference])
        same += all(reference.get(r[1]) == r[3] for r in model_rows)
    jitter = np.array(result["jitter_us"] or [0.0])
    decided = sum(len(rows) for rows in result["decisions"].values())
    return {
        "kind": kind, "n": n, "decisions": decided,
        "fallbacks": sum(1 for rows in result["decisions"].values() for r in rows if r[4] != "model" and r[5] != "shutdown"),
        "late": int(np.sum(lat > BUDGET_MS * 1000.0)),
        "p50_ms": round(float(np.percentile(lat, 50)) / 1000, 2), "p99_ms": round(float(np.percentile(lat, 99)) / 1000, 2),
        "max_ms": round(float(np.max(lat)) / 1000, 2),
        "same_actions": f"{same}/{len(result['decisions'])}",
        "cpu_s": round(result["cpu_s"], 2), "rss_mb": round(result["rss_mb"], 1),
        "cpu_ms_per_stream_s": round(result["cpu_s"] * 1000.0 / n / run_s, 1),
        "processes": result["processes"],
        "jitter_p99_ms": round(float(np.percentile(jitter, 99)) / 1000, 2),
        "jitter_max_ms": round(float(np.max(jitter)) / 1000, 2),
        "neighbour": result["neighbour"],
    }


def batch_costs(rounds: int = 7, invokes: int = 300) -> List[Dict[str, Any]]:
    """The bundled model's invoke (input conversion, set_tensor, invoke, output) per batch size, interleaved:
    p50 over ``rounds`` rounds of ``invokes`` invokes of every size in turn."""
    from edge_infer.model.batch import BatchEngine
    from edge_infer.model.loader import open_model

    spec, engine = open_model(None)
    batch = BatchEngine(engine, max_batch=32)
    batch.staging()[:] = np.random.default_rng(0).normal(size=batch.staging().shape) * spec.scale + spec.offset
    times: Dict[int, List[float]] = {size: [] for size in batch.sizes}
    for _ in range(rounds):
        for size in batch.sizes:
            start = time.perf_counter_ns()
            for _ in range(invokes):
                batch.infer_batch(size)
            times[size].append((time.perf_counter_ns() - start) / invokes / 1000.0)
    return [{"batch": size, "us_per_invoke": round(float(np.median(t)), 1),
             "us_per_window": round(float(np.median(t)) / size, 2)} for size, t in times.items()]


def reference_actions() -> Dict[int, Any]:
    """A single-stream replay of the bundled log as fast as possible: seq -> action."""
    out = subprocess.run(edge_infer("--show", "none", "--decisions", "/dev/stdout", "--json"), cwd=ROOT,
                         capture_output=True, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    records = [json.loads(line) for line in out.stdout.splitlines()]
    return {r["seq"]: r["action"] for r in records if "seq" in r and r["source"] == "model"}


def slow_neighbour(directory: Path, target_ms: float) -> Path:
    """A spec for the bundled log's channels, window and hop on a model of about ``target_ms`` per invoke
    (timed here, as scripts/bench_arrival.py does), with a budget of three invokes."""
    from bench_arrival import invoke_ms

    from edge_infer.model.loader import bundled_spec, open_model
    from edge_infer.testing.tflite_builder import slow_model, write_model

    spec, _ = open_model(None)
    rows = 64
    for _ in range(6):  # scale the row count until the model takes about the target
        model = write_model(directory / "slow.tflite", slow_model(spec.window, len(spec.channels), 4, rows=rows))
        took = invoke_ms(model)
        if 0.8 * target_ms <= took <= 1.25 * target_ms:
            break
        rows = max(1, round(rows * target_ms / took))
    text = Path(bundled_spec()).read_text()
    text = text.replace('file = "basic_motions.tflite"', 'file = "slow.tflite"').replace('name = "basic-motions-cnn"',
                                                                                          'name = "slow"')
    text = "\n".join(line for line in text.splitlines() if not line.startswith("sha256"))
    path = directory / "slow.toml"
    path.write_text(text.replace("budget_ms = 20.0", f"budget_ms = {3 * target_ms:g}"))
    print(f"slow neighbour: {took:.1f} ms per invoke, budget {3 * target_ms:g} ms")
    return path


def neighbour_config(n: int, neighbour: Path) -> Path:
    """A service config: ``n`` streams of the bundled log on the bundled model, and one on the slow model."""
    from edge_infer.model.loader import bundled_spec

    log = bundled_log()
    # the slow model is slower than the windows come, on purpose: a service config would refuse to start with it
    lines = [f'[model]\nspec = "{bundled_spec()}"\n[deadline]\nstrict_budget = false']
    lines += [f'[[stream]]\nname = "s{k}"\nsource = "{log}"' for k in range(n)]
    lines.append(f'[[stream]]\nname = "slow"\nsource = "{log}"\nspec = "{neighbour}"')
    path = neighbour.parent / f"streams-{n}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def threads_child(n: int, speed: float, duration: Optional[float], realtime: bool) -> None:
    """The thread-per-stream comparison: N single-stream runtimes, each with its own interpreter, one thread each."""
    from edge_infer.cli.common import read_usable_log
    from dataclasses import replace

    from edge_infer.deadline.options import options_for_spec
    from edge_infer.decide.decision import Decision
    from edge_infer.model.loader import open_model
    from edge_infer.runtime import Runtime
    from edge_infer.sinks.base import Sink
    from edge_infer.sources.log_replay import LogSource, channel_columns

    lock = threading.Lock()
    out = sys.stdout

    class Lines(Sink):
        def on_decision(self, decision: Decision) -> None:
            line = json.dumps(decision.to_record(), separators=(",", ":")) + "\n"
            with lock:
                out.write(line)
                out.flush()

    path = str(bundled_log())
    log = read_usable_log(path, False)
    runtimes = []
    for k in range(n):
        spec, engine = open_model(None)
        source = LogSource(log, channel_columns(log, spec.channels, engine.channels, path), spec.channels,
                           speed=speed, name=f"{path}#{k}")
        options = replace(options_for_spec(spec), realtime=realtime)  # each runtime's own loop thread, as alone
        runtimes.append(Runtime(spec, engine, source, [Lines()], options=options, name=f"t{k}"))
    threads = [threading.Thread(target=r.run, kwargs={"duration_s": duration}) for r in runtimes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=32, help="streams in the side-by-side comparison")
    parser.add_argument("--sweep", default="32,48,64,96,128",
                        help="stream counts for the largest-N search of one runtime (inline mode)")
    parser.add_argument("--sweep-others", default="8,16,32", help="stream counts for processes and threads")
    parser.add_argument("--skip-sweep", action="store_true", help="only the side-by-side comparison")
    parser.add_argument("--batch-costs-only", action="store_true", help="only the invoke cost per batch size")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--speed", type=float, default=40.0)
    parser.add_argument("--duration", type=float, help="stop each run after S seconds (default: the whole log)")
    parser.add_argument("--realtime", action="store_true",
                        help="every runtime's loop thread under SCHED_FIFO (run --realtime), in every kind")
    parser.add_argument("--neighbour-ms", type=float, metavar="MS",
                        help="also run the streams beside one more stream on a model of about MS per invoke")
    parser.add_argument("--kinds", help="only these kinds of the side-by-side comparison (comma-separated)")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--threads-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads_child:
        threads_child(args.threads_child, args.speed, args.duration, args.realtime)
        return
    report = start_report()
    print("\n## The bundled model's invoke per batch size (BatchEngine, interleaved, median of 7 rounds)\n")
    print("| batch | µs per invoke | µs per window |\n|---|---|---|")
    report["batch_costs"] = batch_costs()
    for row in report["batch_costs"]:
        print(f"| {row['batch']} | {row['us_per_invoke']} | {row['us_per_window']} |", flush=True)
    if args.batch_costs_only:
        finish_report(report, args.json)
        return
    reference = reference_actions()
    log_s = float(read_log(str(bundled_log())).t[-1])
    run_s = min(args.duration or math.inf, log_s / args.speed)
    rows: List[Dict[str, Any]] = []
    print(f"\n## {args.streams} streams, side by side ({args.rounds} rounds, speed {args.speed:g})\n")
    header = ("| kind | N | decisions | fallbacks | late (>20 ms) | p50 ms | p99 ms | max ms | same actions | "
              "CPU s | CPU ms/stream/s | RSS MB | procs | sleep jitter p99/max ms |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    kinds = ["streams-inline", "streams-thread", "processes", "threads"]
    neighbour = None
    if args.neighbour_ms:
        workdir = Path(tempfile.mkdtemp(prefix="bench-streams-"))
        neighbour = slow_neighbour(workdir, args.neighbour_ms)
        kinds += ["streams-inline+slow", "streams-thread+slow"]
    if args.kinds:
        kinds = [k for k in kinds if k in args.kinds.split(",")]
    for round_ in range(args.rounds):
        for kind in kinds:
            row = judge(run_config(kind, args.streams, args.speed, args.duration, args.realtime, neighbour),
                        args.streams, args.speed, reference, kind, run_s)
            row["round"] = round_
            rows.append(row)
            print(_row(row), flush=True)
    report["side_by_side"] = rows
    if args.skip_sweep:
        finish_report(report, args.json)
        return
    print("\n## Largest N on time (every decision within 20 ms of its window, measured from outside)\n")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    sweep = []
    for kind, counts in (("streams-inline", args.sweep), ("processes", args.sweep_others),
                         ("threads", args.sweep_others)):
        for n in [int(x) for x in counts.split(",") if x]:
            row = judge(run_config(kind, n, args.speed, args.duration, args.realtime), n, args.speed, reference,
                        kind, run_s)
            sweep.append(row)
            print(_row(row), flush=True)
    report["sweep"] = sweep
    finish_report(report, args.json)


def _row(row: Dict[str, Any]) -> str:
    kind = row["kind"]
    if row.get("neighbour"):
        kind += " (slow stream: " + ", ".join(f"{k} {v}" for k, v in sorted(row["neighbour"].items())) + ")"
    return (f"| {kind} | {row['n']} | {row['decisions']} | {row['fallbacks']} | {row['late']} | {row['p50_ms']} | "
            f"{row['p99_ms']} | {row['max_ms']} | {row['same_actions']} | {row['cpu_s']} | {row['cpu_ms_per_stream_s']} | "
            f"{row['rss_mb']} | "
            f"{row['processes']} | {row['jitter_p99_ms']}/{row['jitter_max_ms']} |")


if __name__ == "__main__":
    main()
