#!/usr/bin/env python3
"""Decision latency measured by the device, not by the runtime: a virtual device over a pty.

The device (this script) opens a pty, answers the host's greeting with HELLO, and then writes one SENSOR
frame every 1/rate seconds, stamping each with ``time.perf_counter_ns`` (CLOCK_MONOTONIC, the same clock in
every process) as it writes it; a reader thread stamps each ACTION as it comes back. Device-side latency
is ACTION stamp minus the stamp of the SENSOR frame it answers (``answers_seq``). The runtime is
``python -m edge_infer run --source serial:PTY`` in a process of its own. The writer's own lateness against
its schedule (it sleeps until each frame is due) is this machine's sleep jitter, measured in the same run.

Scenarios (each ``--seconds`` long; hop 1, budget 50 ms by default):

* ``fast``: a model of a few microseconds;
* ``slow``: a model slower than the window period (built to about 2 periods);
* ``slow + busy thread``: the slow model, with a Python thread spinning in the runtime's process;
* ``slow + GIL hog``: the slow model, with a Python thread in the runtime's process that keeps the GIL for
  about 25 ms in one C call every 100 ms (``json.dumps`` of a large status object, as a telemetry thread might);
* ``slow + metrics scraped``: the slow model, with ``--metrics-http`` scraped as fast as it answers;
* ``slow + CPU hog``: the slow model while ``stress-ng --cpu N`` (one per CPU) runs;
* ``hiccup``: the fast model, except that every ``--hiccup-every``-th invoke hangs ``--hiccup-ms`` (default every
  50th, 100 ms: several window periods, and longer than the budget) before it runs;

each in the default mode (``inline``), and with ``--modes`` also ``thread``/``process``; ``--realtime`` runs the
runtime with ``--realtime``. The device's own threads run under SCHED_FIFO (priority 60) where permitted.

For each: windows sent, ACTIONs received (every window must get one), device latency p50/p99/max, how many
ACTIONs the device saw after the budget against the runtime's own ``late_decisions``, model decisions,
fallbacks by reason, whether the run kept up (the last ACTION's latency), and the sleep jitter.

With ``--trace DIR`` the runtime's process also stamps, from inside, where each late window's time went (when
the invoke started and ended, when the watchdog meant to act and did, the device write, the transport back to
the device): scripts/arrival_trace.py.

usage: python scripts/bench_arrival.py [--seconds S] [--rate HZ] [--budget-ms MS] [--modes inline,thread]
                                       [--scenarios fast,slow,...] [--slow-ms MS] [--realtime] [--trace DIR]
                                       [--hiccup-ms MS] [--hiccup-every N] [--backstop on,off] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tty
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arrival_trace import explain, launcher  # noqa: E402
from bench_loop import finish_report, start_report  # noqa: E402

from edge_infer.model.engine import Engine  # noqa: E402
from edge_infer.testing.tflite_builder import dense_model, slow_model, write_model  # noqa: E402
from firmware_bridge.protocol import Action, FrameEncoder, Hello, SampleType, Sensor, schema_hash  # noqa: E402
from firmware_bridge.stream import FrameDecoder  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHANNELS = [f"c{i}" for i in range(6)]
WINDOW = 32
SCENARIOS = ("fast", "slow", "slow+busy-thread", "slow+gil-hog", "slow+metrics-scraped", "slow+cpu-hog", "hiccup")
WARMUP = 20

def write_spec(directory: Path, name: str, model: Path, rate: float, budget_ms: float) -> Path:
    spec = directory / f"{name}.toml"
    spec.write_text(f"""[model]
file = "{model.name}"
name = "{name}"
[input]
channels = {json.dumps(CHANNELS)}
window = {WINDOW}
hop = 1
sample_rate_hz = {rate}
[output]
kind = "classes"
labels = ["a", "b", "c", "d"]
[deadline]
budget_ms = {budget_ms}
[fallback]
action = "idle"
""")
    return spec


def invoke_ms(path: Path) -> float:
    engine = Engine(path)
    window = np.zeros((engine.window, engine.channels), dtype=np.float32)
    for _ in range(3):
        engine.infer(window)
    times = []
    for _ in range(15):  # the fastest: what the model costs when it has a CPU (the machine's load varies)
        start = time.perf_counter()
        engine.infer(window)
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def build_models(directory: Path, rate: float, budget_ms: float, slow_ms: Optional[float] = None) -> Dict[str, Path]:
    """The fast model, and one of ``slow_ms`` (default two window periods) at its fastest (timed here)."""
    fast = write_model(directory / "fast.tflite", dense_model(WINDOW, len(CHANNELS), 4, seed=1))
    target = slow_ms or 2 * 1000.0 / rate
    rows = 64
    for _ in range(8):  # scale the row count until the model takes about the target
        slow = write_model(directory / "slow.tflite", slow_model(WINDOW, len(CHANNELS), 4, rows=rows))
        took = invoke_ms(slow)
        if 0.9 * target <= took <= 1.1 * target:
            break
        rows = max(1, round(rows * target / took))
    print(f"models: fast {invoke_ms(fast) * 1000:.0f} us per invoke; slow {took:.1f} ms per invoke "
          f"(window period {1000.0 / rate:.1f} ms, budget {budget_ms:g} ms)")
    return {"fast": write_spec(directory, "fast", fast, rate, budget_ms),
            "slow": write_spec(directory, "slow", slow, rate, budget_ms), "slow_invoke_ms": took}  # type: ignore


class VirtualDevice:
    """The device side: a pty, HELLO on the host's first word, SENSOR frames on a schedule, ACTIONs stamped."""

    def __init__(self, link: Path, rate: float):
        self.link, self.rate = link, rate
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.ttyname(self.slave), link)
        self.encoder = FrameEncoder(clock_us=lambda: int(time.perf_counter_ns() // 1000) & 0xFFFFFFFF)
        self.sent_ns: Dict[int, int] = {}
        self.actions: List[Any] = []  # (stamp ns, Action)
        self.lateness_ns: List[int] = []
        self.host_spoke = threading.Event()
        self.stopping = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        make_fifo()
        decoder = FrameDecoder()
        while not self.stopping:
            if not select.select([self.master], [], [], 0.05)[0]:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            now = time.perf_counter_ns()
            self.host_spoke.set()
            for frame in decoder.feed(data):
                if isinstance(frame, Action):
                    self.actions.append((now, frame))

    def stream(self, seconds: float) -> int:
        """Wait for the host, say HELLO, send SENSOR frames for ``seconds``; the number sent."""
        make_fifo()
        if not self.host_spoke.wait(120):
            raise SystemExit("the runtime never opened the port")
        hello = Hello(fw_version=(1, 0, 0), sample_type=SampleType.FLOAT32,
                      sample_rate_millihz=int(self.rate * 1000), schema_hash=schema_hash(CHANNELS, SampleType.FLOAT32),
                      scales=tuple([1.0] * len(CHANNELS)), safe_timeout_ms=1000, channels=tuple(CHANNELS))
        os.write(self.master, self.encoder.encode(hello))
        time.sleep(0.2)  # the host takes the HELLO before the first SENSOR frame
        rng = np.random.default_rng(0)
        period_ns = int(1e9 / self.rate)
        count = int(seconds * self.rate)
        start = time.perf_counter_ns() + period_ns
        for i in range(count):
            due = start + i * period_ns
            remaining = due - time.perf_counter_ns()
            if remaining > 0:
                time.sleep(remaining / 1e9)
            seq = self.encoder.next_seq
            wire = self.encoder.encode(Sensor(sample_type=SampleType.FLOAT32,
                                              values=tuple(float(v) for v in rng.normal(size=len(CHANNELS)))))
            now = time.perf_counter_ns()
            self.lateness_ns.append(now - due)
            self.sent_ns[seq] = now
            os.write(self.master, wire)
        return count

    def close(self) -> None:
        self.stopping = True
        self._reader.join(1.0)
        if os.path.lexists(self.link):
            os.unlink(self.link)
        os.close(self.master)
        os.close(self.slave)


#: The device's threads run under SCHED_FIFO above the runtime's 50 where permitted: a microcontroller does not
#: wait for the host's CPU, and the device's stamps should not either.
DEVICE_PRIORITY = 60


#: With ``--isolate``: the CPUs the device's threads (and the kernel's unbound work) keep to.
DEVICE_CPUS: Optional[set] = None
WORKQUEUE_CPUMASK = Path("/sys/devices/virtual/workqueue/cpumask")


def make_fifo() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(DEVICE_PRIORITY))
    except (OSError, AttributeError):
        pass
    if DEVICE_CPUS:
        os.sched_setaffinity(0, DEVICE_CPUS)


class Isolation:
    """``--isolate CPU``: the runtime on ``CPU`` (``--cpu-affinity``), the device and the kernel's unbound work
    queues (where the tty layer delivers what is written to a pty) on the others, undone at exit.

    Why: on a pty, every write is delivered to the other end by a kworker (``flush_to_ldisc``), which the
    scheduler tends to queue on the writer's CPU; there it waits behind any SCHED_FIFO thread of the runtime
    (an invoke: up to a model's run) although the runtime wrote on time. A real UART's transmit path has no such
    hop (the driver's interrupt sends from the write's buffer). This is the usual real-time layout on a board:
    the loop's CPUs kept free of the kernel's deferred work (docs/performance.md 5.7).
    """

    def __init__(self, cpu: int):
        global DEVICE_CPUS
        others = sorted(set(range(os.cpu_count() or 1)) - {cpu})
        if not others:
            raise SystemExit("--isolate needs at least 2 CPUs")
        DEVICE_CPUS = set(others)
        self.old_mask: Optional[str] = None
        try:
            self.old_mask = WORKQUEUE_CPUMASK.read_text().strip()
            WORKQUEUE_CPUMASK.write_text(format(sum(1 << c for c in others), "x"))
            self.applied = WORKQUEUE_CPUMASK.read_text().strip()
        except OSError as exc:
            self.old_mask = None
            self.applied = f"not set ({exc.strerror})"

    def restore(self) -> None:
        if self.old_mask is not None:
            WORKQUEUE_CPUMASK.write_text(self.old_mask)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


SCRAPER = """
import signal, sys, time, urllib.request
port, seconds = int(sys.argv[1]), float(sys.argv[2])
end = time.monotonic() + seconds
n = 0
def done(*_):
    print(n, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
while time.monotonic() < end:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            r.read()
        n += 1
    except Exception:  # a refused or cut connection (the run is ending): try again
        time.sleep(0.01)
done()
"""


def percentiles(values_us: np.ndarray) -> Dict[str, float]:
    if len(values_us) == 0:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {"p50": round(float(np.percentile(values_us, 50)), 1), "p99": round(float(np.percentile(values_us, 99)), 1),
            "max": round(float(values_us.max()), 1)}


def run_scenario(name: str, spec: Path, mode: str, seconds: float, rate: float, budget_ms: float,
                 work: Path, realtime: bool = False, trace: Optional[str] = None, backstop: bool = True,
                 hiccup: "tuple[float, int]" = (100.0, 50), isolate: Optional[int] = None) -> Dict[str, Any]:
    link = work / f"dev-{name}-{mode}-{'b' if backstop else 'nob'}"
    device = VirtualDevice(link, rate)
    args = ["run", "--source", f"serial:{link}", "--model", str(spec), "--mode", mode, "--json", "--show", "none",
            "--no-data-ms", "0", "--warmup", str(WARMUP)] + (["--realtime"] if realtime else []) \
        + (["--cpu-affinity", str(isolate)] if isolate is not None else [])
    trace_path = str(Path(trace) / f"trace-{name}-{mode}{'-rt' if realtime else ''}.json") if trace else None
    command = [sys.executable, "-c", launcher(trace_path, busy="busy-thread" in name, gil_hog="gil-hog" in name,
                                              hiccup=(*hiccup, WARMUP) if name == "hiccup" else None)]
    helpers: List[subprocess.Popen] = []
    port = None
    if "metrics" in name:
        port = free_port()
        args += ["--metrics-http", str(port)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), EDGE_INFER_BACKSTOP="on" if backstop else "off")
    runtime = subprocess.Popen(command + args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        if "cpu-hog" in name:
            helpers.append(subprocess.Popen(["stress-ng", "--cpu", str(os.cpu_count() or 1), "--timeout",
                                             f"{int(seconds) + 30}s", "--quiet"]))
        sent_at = time.monotonic()
        if port is not None:
            helpers.append(subprocess.Popen([sys.executable, "-c", SCRAPER, str(port), str(seconds + 5)],
                                            stdout=subprocess.PIPE, text=True))
        sent = device.stream(seconds)
        streamed_s = time.monotonic() - sent_at
        time.sleep(min(1.0, budget_ms / 100))  # the last ACTIONs
        runtime.send_signal(signal.SIGINT)
        out, err = runtime.communicate(timeout=60)
    finally:
        scrapes = None
        for helper in helpers:
            if helper.args[0] == sys.executable:
                helper.terminate()
                try:
                    text, _ = helper.communicate(timeout=10)
                    scrapes = int(text.strip() or 0) if text else None
                except (subprocess.TimeoutExpired, ValueError):
                    helper.kill()
            else:
                helper.terminate()
                helper.wait()
        if runtime.poll() is None:
            runtime.kill()
        device.close()
    if runtime.returncode != 0 or not out.strip():
        raise SystemExit(f"{name}/{mode}: the runtime failed ({runtime.returncode}):\n{err[-3000:]}")
    summary = json.loads(out)
    actions = [(stamp, a) for stamp, a in device.actions if a.reason != 13]  # not the shutdown ACTION
    latencies = np.array([(stamp - device.sent_ns[a.answers_seq]) / 1000 for stamp, a in actions
                          if a.answers_seq in device.sent_ns])
    answered = {a.answers_seq for _, a in actions}
    window_seqs = sorted(device.sent_ns)[WINDOW - 1:]
    missing = [seq for seq in window_seqs if seq not in answered]
    late_device = int((latencies > budget_ms * 1000).sum())
    reasons: Dict[str, int] = summary["fallback_reasons"]
    row = {
        "scenario": name, "mode": mode + (" --realtime" if realtime else "") + ("" if backstop else ", no backstop")
        + (f", isolated on CPU {isolate}" if isolate is not None else ""),
        "seconds": seconds, "sensor_frames": sent, "windows": len(window_seqs),
        "actions": len(actions), "windows_without_action": len(missing),
        "device_latency_us": percentiles(latencies),
        "device_late": late_device, "runtime_late_decisions": summary["late_decisions"],
        "model_decisions": summary["model_decisions"], "fallback_reasons": reasons,
        "last_action_latency_us": round(float(latencies[-1]), 1) if len(latencies) else None,
        "runtime_latency_us": summary["latency_us"], "sink_us": summary.get("sink_us"),
        "sleep_jitter_us": percentiles(np.array(device.lateness_ns) / 1000),
        "streamed_s": round(streamed_s, 2), "scrapes": scrapes,
        "scheduler": summary["scheduler"], "startup": summary.get("startup"),
        "backstop_decisions": summary.get("backstop_decisions"),
    }
    if trace_path:
        Path(trace_path.replace(".json", "-device.json")).write_text(json.dumps(
            {"sent_ns": device.sent_ns, "actions": [(stamp, a.answers_seq, a.reason) for stamp, a in actions]}))
        row["trace"] = explain(json.loads(Path(trace_path).read_text()), device.sent_ns, actions, budget_ms)
    return row


def print_table(rows: List[Dict[str, Any]], budget_ms: float) -> None:
    print(f"\n| scenario | mode | windows | ACTIONs | without ACTION | device p50 / p99 / max ms | late (device / "
          f"runtime) | model decisions | fallbacks | sleep jitter p50 / p99 / max ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lat, jit = r["device_latency_us"], r["sleep_jitter_us"]
        fallbacks = ", ".join(f"{k} {v}" for k, v in sorted(r["fallback_reasons"].items()) if k != "shutdown")
        extra = f" ({r['scrapes']} scrapes)" if r.get("scrapes") else ""
        print(f"| {r['scenario']}{extra} | {r['mode']} | {r['windows']} | {r['actions']} | "
              f"{r['windows_without_action']} | {lat['p50'] / 1000:.2f} / {lat['p99'] / 1000:.2f} / "
              f"{lat['max'] / 1000:.2f} | {r['device_late']} / {r['runtime_late_decisions']} | "
              f"{r['model_decisions']} | {fallbacks or '-'} | {jit['p50'] / 1000:.2f} / {jit['p99'] / 1000:.2f} / "
              f"{jit['max'] / 1000:.2f} |")
    print(f"\nbudget {budget_ms:g} ms; late = ACTION more than the budget after its SENSOR frame was written")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=100.0, help="SENSOR frames per second (hop 1)")
    parser.add_argument("--budget-ms", type=float, default=50.0)
    parser.add_argument("--modes", default="inline")
    parser.add_argument("--slow-ms", type=float,
                        help="the slow model's invoke time at its fastest (default: two window periods)")
    parser.add_argument("--realtime", action="store_true", help="run the runtime with --realtime (SCHED_FIFO)")
    parser.add_argument("--hiccup-ms", type=float, default=100.0, help="hiccup: how long the hanging invokes hang")
    parser.add_argument("--hiccup-every", type=int, default=50, help="hiccup: every how many invokes one hangs")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--trace", metavar="DIR",
                        help="stamp, inside the runtime, where each late window's time went (scripts/arrival_trace.py); "
                             "the raw records are kept in DIR")
    parser.add_argument("--backstop", default="on",
                        help="on, off, or on,off: run each scenario with and without the native backstop, side by side "
                             "(EDGE_INFER_BACKSTOP for the runtime, edge_infer/deadline/backstop.py)")
    parser.add_argument("--isolate", type=int, metavar="CPU",
                        help="pin the runtime to CPU, and the device and the kernel's unbound work queues (the pty's "
                             "delivery) to the other CPUs, for the run (needs root for the work queues)")
    parser.add_argument("--json")
    args = parser.parse_args()
    backstops = args.backstop.split(",")
    if set(backstops) - {"on", "off"}:
        parser.error("--backstop takes on, off or on,off")
    scenarios = args.scenarios.split(",")
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    if "slow+cpu-hog" in scenarios and shutil.which("stress-ng") is None:
        parser.error("the cpu-hog scenario needs stress-ng (apt-get install stress-ng)")
    if args.trace:
        Path(args.trace).mkdir(parents=True, exist_ok=True)
    report = start_report()
    isolation = Isolation(args.isolate) if args.isolate is not None else None
    if isolation is not None:
        report["isolation"] = {"runtime_cpu": args.isolate, "device_cpus": sorted(DEVICE_CPUS or ()),
                               "workqueue_cpumask": isolation.applied}
        print(f"isolation: {report['isolation']}", flush=True)
    try:
        rows = run_all(args, report)
    finally:
        if isolation is not None:
            isolation.restore()
    print_table(rows, args.budget_ms)
    report["rows"] = rows
    finish_report(report, args.json)
    return 0


def run_all(args: argparse.Namespace, report: Dict[str, Any]) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    scenarios, backstops = args.scenarios.split(","), args.backstop.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        specs = build_models(work, args.rate, args.budget_ms, args.slow_ms)
        report["slow_invoke_ms"] = specs.pop("slow_invoke_ms")
        for mode in args.modes.split(","):
            for name in scenarios:
                for backstop in backstops:
                    row = run_scenario(name, specs["fast" if name in ("fast", "hiccup") else "slow"], mode,
                                       args.seconds, args.rate, args.budget_ms, work, args.realtime, args.trace,
                                       backstop == "on", (args.hiccup_ms, args.hiccup_every), args.isolate)
                    rows.append(row)
                    print(f"{name}/{row['mode']}: {row['actions']}/{row['windows']} ACTIONs, device p99 "
                          f"{row['device_latency_us']['p99'] / 1000:.2f} ms, late {row['device_late']} (runtime "
                          f"{row['runtime_late_decisions']}), model {row['model_decisions']}, backstop decisions "
                          f"{row['backstop_decisions']}", flush=True)
                    if args.trace:
                        print(json.dumps(row["trace"], indent=None)[:6000], flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
