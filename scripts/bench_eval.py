"""Benchmark ``edge-infer eval``: speed against a hand-written loop and batched bare invoke, memory against log length,
speed-up over workers. Results and commands: docs/performance.md ("Evaluating a corpus").

    python scripts/bench_eval.py [--rounds 3] [--json eval.json] [--skip-speed] [--skip-memory] [--skip-workers]
                                 [--worker-rows 50000]

1. **Speed**, in one process, interleaved rounds, on a log of 84,480 windows (hop 1) of a 9-channel float32
   model (the test builder's dense model, window 32): (a) ``eval``'s per-log work (read the CSV in chunks,
   input checks, batched invokes, decisions, counts), (b) the hand-written loop of ``scripts/bench_loop.py``
   (one invoke per window; the log already in memory), (b') the same plus reading the CSV with ``numpy.loadtxt``,
   (c) batched bare invoke: the interpreter resized to 256 windows, set + invoke + get, windows already in
   memory (the floor), (d) the real-time loop (``Runtime``, inline, at full speed: what ``replay`` does).
2. **Memory**: peak RSS (VmHWM) of ``edge-infer eval`` and ``edge-infer replay`` processes on logs of 1x, 3x
   and 9x 28,160 windows.
3. **Workers**: ``edge-infer eval --workers 1`` and ``--workers 2`` on 24 logs, interleaved: wall time of the
   whole command, eval's own ``elapsed_s`` (without Python's start-up) and the CPU time of all its processes;
   with the machine's load average, since the machine is shared. Once as the command line runs, once with each
   worker in a session of its own (see ``OWN_SESSIONS``: the kernel's autogroup scheduler shares one slice of
   CPU among a session's processes, so on a busy shared machine two workers of one session cannot be faster).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_loop import Case, edge_infer_loop, finish_report, hand_written_loop, start_report  # noqa: E402

from edge_infer.io import read_log  # noqa: E402
from edge_infer.lab.eval.model import EvalOptions, load_model  # noqa: E402
from edge_infer.lab.eval.paths import LogPath  # noqa: E402
from edge_infer.lab.eval.run import evaluate_log  # noqa: E402
from edge_infer.model.backends import resolve_backend  # noqa: E402
from edge_infer.model.loader import open_model  # noqa: E402
from edge_infer.testing.tflite_builder import dense_model  # noqa: E402

WINDOW, CHANNELS, WINDOWS = 32, 9, 84_480
#: ``edge-infer ARGS``, as the command line runs it
PLAIN = "import sys; from edge_infer.cli import main; sys.exit(main(sys.argv[1:]))"
#: The same, with each pool worker in a session of its own. With the kernel's autogroup scheduling
#: (/proc/sys/kernel/sched_autogroup_enabled) a session's processes share one slice of the CPU: on a machine
#: busy with other sessions two workers of one session get no more CPU than one. Started in a session of its
#: own, each worker gets its own slice, as each would get a CPU of its own on a machine eval does not share.
OWN_SESSIONS = ("import os, sys; import edge_infer.lab.eval.engines as engines; start = engines._start_worker\n"
                "def own_session(job):\n    os.setsid()\n    start(job)\n"
                "engines._start_worker = own_session\n" + PLAIN)


def write_log(path: Path, rows: int, seed: int = 0) -> Path:
    """A labelled 9-channel CSV log at 100 Hz (numeric labels 0..3 in runs of 500 rows)."""
    rng = np.random.default_rng(seed)
    table = np.empty((rows, CHANNELS + 2))
    table[:, 0] = np.arange(rows) / 100.0
    table[:, 1:-1] = rng.normal(size=(rows, CHANNELS)) + np.sin(np.arange(rows) / 50.0)[:, None]
    table[:, -1] = (np.arange(rows) // 500) % 4
    with path.open("w") as handle:
        handle.write("t," + ",".join(f"c{i}" for i in range(CHANNELS)) + ",label\n")
        np.savetxt(handle, table, fmt=["%.2f"] + ["%.5f"] * CHANNELS + ["%d"], delimiter=",")
    return path


def batched_bare_invoke(model: Path, log: Path, batch: int = 256) -> Callable[[], int]:
    interpreter_class = resolve_backend(None)[1]
    interpreter = interpreter_class(model_path=str(model), num_threads=1)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, [batch, WINDOW, CHANNELS])
    interpreter.allocate_tensors()
    out = interpreter.get_output_details()[0]["index"]
    values = read_log(log).values
    windows = np.lib.stride_tricks.sliding_window_view(values, (WINDOW, CHANNELS))[:, 0]

    def run() -> int:
        for s in range(0, len(windows) - batch + 1, batch):
            interpreter.set_tensor(index, np.ascontiguousarray(windows[s:s + batch]))
            interpreter.invoke()
            interpreter.get_tensor(out)
        return len(windows) // batch * batch

    return run


def speed(work: Path, rounds: int) -> Dict[str, Any]:
    model = work / "f9.tflite"
    log = write_log(work / "long.csv", WINDOWS + WINDOW - 1)
    loaded = load_model(EvalOptions(model=str(model), hop=1))
    recorded = read_log(log)
    spec, engine = open_model(str(model), recorded.channels, hop=1)
    case = Case("f9", spec, engine, recorded, list(range(CHANNELS)))
    bare = batched_bare_invoke(model, log)
    loop = edge_infer_loop("inline")

    def eval_once() -> None:
        result = evaluate_log(LogPath(str(log), log.name), loaded)
        assert result.error is None and result.tally.decisions == WINDOWS, result.error

    def hand_with_read() -> None:
        read_log(log)
        hand_written_loop(case, WINDOWS - 1)

    variants: Dict[str, Callable[[], Any]] = {
        "(a) eval, per log": eval_once,
        "(b) hand-written loop": lambda: hand_written_loop(case, WINDOWS - 1),
        "(b') hand-written loop + reading the CSV": hand_with_read,
        "(c) batched bare invoke (256)": bare,
        "(d) real-time loop (Runtime inline)": lambda: loop(case, WINDOWS - 1),
    }
    times: Dict[str, List[float]] = {name: [] for name in variants}
    cpu: Dict[str, List[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            started, used = time.perf_counter(), time.process_time()
            run()
            times[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - used)
    hand = times["(b) hand-written loop"]
    print(f"\n1. speed: {WINDOWS} windows, hop 1, {CHANNELS}-channel float32 model (window {WINDOW}), "
          f"eval batch {loaded.batch}, {rounds} interleaved rounds")
    print("| variant | seconds (rounds) | best | us per window (best) | ratio to (b), per round | best / best (b) "
          "| CPU seconds, best (ratio to (b)) |\n|---|---|---|---|---|---|---|")
    rows = {}
    for name, values in times.items():
        ratios = [v / h for v, h in zip(values, hand)]
        rows[name] = {"seconds": values, "ratios_to_hand_written": ratios, "best_ratio": min(values) / min(hand)}
        rows[name]["cpu_seconds"] = cpu[name]
        print(f"| {name} | {' / '.join(f'{v:.2f}' for v in values)} | {min(values):.2f} | "
              f"{min(values) / WINDOWS * 1e6:.1f} | {' / '.join(f'{r:.2f}' for r in ratios)} "
              f"(median {statistics.median(ratios):.2f}) | {min(values) / min(hand):.2f} | "
              f"{min(cpu[name]):.2f} ({min(cpu[name]) / min(cpu['(b) hand-written loop']):.2f}) |")
    return {"batch": loaded.batch, "windows": WINDOWS, "variants": rows}


def peak_rss_kb(args: List[str]) -> int:
    code = ("import sys; from edge_infer.cli import main; import contextlib, io\n"
            "with contextlib.redirect_stdout(io.StringIO()): main(sys.argv[1:])\n"
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                          cwd=HERE.parent)
    return int(proc.stdout.strip().splitlines()[-1])


def memory(work: Path) -> Dict[str, Any]:
    model = work / "f9.tflite"
    base = 28_160
    out: Dict[str, Any] = {}
    print("\n2. peak RSS (VmHWM, MB) against log length, hop 1")
    print("| windows | log MB | eval | replay |\n|---|---|---|---|")
    for factor in (1, 3, 9):
        log = write_log(work / f"mem{factor}.csv", base * factor + WINDOW - 1, seed=factor)
        ev = peak_rss_kb(["eval", str(log), "--model", str(model), "--hop", "1", "--json"])
        rp = peak_rss_kb(["replay", str(log), "--model", str(model), "--hop", "1", "--json", "--budget-ms", "1000"]) \
            if factor < 9 else None
        out[str(base * factor)] = {"eval_kb": ev, "replay_kb": rp}
        print(f"| {base * factor} | {log.stat().st_size / 1e6:.1f} | {ev / 1024:.1f} | "
              f"{'-' if rp is None else f'{rp / 1024:.1f}'} |")
    return out


def workers(work: Path, rounds: int, rows: int) -> Dict[str, Any]:
    model = work / "f9.tflite"
    corpus = work / "corpus"
    corpus.mkdir(exist_ok=True)
    for i in range(24):
        write_log(corpus / f"unit{i:02d}.csv", rows, seed=100 + i)
    names = ("1", "2", "1 (own session)", "2 (own sessions)")
    times: Dict[str, List[float]] = {n: [] for n in names}
    inside: Dict[str, List[float]] = {n: [] for n in names}  # the JSON's elapsed_s: without Python's start-up
    cpu: Dict[str, List[float]] = {n: [] for n in names}
    load = []
    for _ in range(rounds):
        for n in names:
            load.append(open("/proc/loadavg").read().split()[0])
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            args = ["eval", str(corpus), "--model", str(model), "--hop", "1", "--workers", n[0], "--batch", "256",
                    "--json"]
            proc = subprocess.run([sys.executable, "-c", OWN_SESSIONS if "session" in n else PLAIN, *args],
                                  check=True, capture_output=True, cwd=HERE.parent, start_new_session="session" in n)
            times[n].append(time.perf_counter() - started)
            inside[n].append(json.loads(proc.stdout)["elapsed_s"])
            now = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[n].append(now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime)
    speedups = [a / b for a, b in zip(times["1"], times["2"])]
    inner = [a / b for a, b in zip(inside["1"], inside["2"])]
    own = [a / b for a, b in zip(inside["1 (own session)"], inside["2 (own sessions)"])]
    print(f"\n3. workers: 24 logs x {rows:,} rows (hop 1, {24 * (rows - WINDOW + 1):,} windows), "
          f"{rounds} interleaved rounds; load average (1 min) before each run: {' '.join(load)}")
    print("| workers | command wall s (rounds) | eval's elapsed_s (rounds) | CPU s, all processes (rounds) |"
          "\n|---|---|---|---|")
    for n, values in times.items():
        print(f"| {n} | {' / '.join(f'{v:.2f}' for v in values)} | {' / '.join(f'{v:.2f}' for v in inside[n])} | "
              f"{' / '.join(f'{c:.2f}' for c in cpu[n])} |")
    print(f"speed-up per round, whole command: {' / '.join(f'{s:.2f}' for s in speedups)} (median "
          f"{statistics.median(speedups):.2f}, best/best {min(times['1']) / min(times['2']):.2f}); elapsed_s: "
          f"{' / '.join(f'{s:.2f}' for s in inner)} (median {statistics.median(inner):.2f}, best/best "
          f"{min(inside['1']) / min(inside['2']):.2f}); own sessions, elapsed_s: "
          f"{' / '.join(f'{s:.2f}' for s in own)} (median {statistics.median(own):.2f}, best/best "
          f"{min(inside['1 (own session)']) / min(inside['2 (own sessions)']):.2f})")
    return {"seconds": times, "elapsed_s": inside, "cpu_seconds": cpu, "speedups": speedups,
            "elapsed_speedups": inner, "own_session_speedups": own, "loadavg_before_runs": load}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-workers", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--worker-rows", type=int, default=50_000, help="rows per log of the workers' corpus")
    args = parser.parse_args()
    report = start_report()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "f9.tflite").write_bytes(dense_model(WINDOW, CHANNELS, 4, dtype="float32", seed=0, hidden=32))
        if not args.skip_speed:
            report["speed"] = speed(work, args.rounds)
        if not args.skip_memory:
            report["memory"] = memory(work)
        if not args.skip_workers:
            report["workers"] = workers(work, args.rounds, args.worker_rows)
    finish_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
