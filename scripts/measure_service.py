#!/usr/bin/env python3
"""Measure what running as a service costs and how it behaves in time (results: docs/operations.md).

Two parts, in one run:

1. systemd's side, played for real: a datagram socket in NOTIFY_SOCKET and
   WATCHDOG_USEC=1 s around ``edge-infer run --speed 1`` (the bundled model and
   log unless --model/--source), ``--runs`` times: time to READY=1, the gaps
   between WATCHDOG=1 pings, STATUS messages, SIGTERM to STOPPING=1 and to exit,
   the exit code and the process's peak RSS.
2. In process, on a finished replay: the cost of one ``ServiceHooks.tick`` when
   nothing is due (what every loop iteration pays), of rendering the metrics
   text, and of writing the textfile atomically.

    python scripts/measure_service.py [--runs 3] [--seconds 10] [--model SPEC] [--source LOG]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_infer.histogram import Histogram  # noqa: E402
from edge_infer.io import read_log  # noqa: E402
from edge_infer.model.loader import bundled_log, open_model  # noqa: E402
from edge_infer.runtime import Runtime  # noqa: E402
from edge_infer.service.hooks import ServiceHooks  # noqa: E402
from edge_infer.service.metrics import TextfileExporter, write_textfile  # noqa: E402
from edge_infer.service.notify import Notifier  # noqa: E402
from edge_infer.sources.log_replay import LogSource, channel_columns  # noqa: E402

WATCHDOG_USEC = 1_000_000


def percentiles(values: List[float]) -> str:
    ordered = sorted(values)
    if not ordered:
        return "-"
    pick = lambda p: ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]  # noqa: E731
    return f"p50 {pick(50):.3f}  max {ordered[-1]:.3f}"


def one_service_run(seconds: float, extra: List[str]) -> Dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(0.02)
        env = dict(os.environ, PYTHONPATH=str(ROOT), NOTIFY_SOCKET=path, WATCHDOG_USEC=str(WATCHDOG_USEC))
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "edge_infer", "run", "--speed", "1",
                                 "--show", "none", "--decisions", os.path.join(tmp, "d.jsonl"),
                                 "--metrics-textfile", os.path.join(tmp, "m.prom"), *extra],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        messages = []
        term_at = None
        while True:
            try:
                messages.append((time.monotonic(), sock.recv(4096).decode()))
            except socket.timeout:
                pass
            ready = [t for t, m in messages if m.startswith("READY=1")]
            if term_at is None and ready and time.monotonic() - ready[0] >= seconds:
                proc.send_signal(signal.SIGTERM)
                term_at = time.monotonic()
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaped here, for its resource usage
            if pid:
                break
        exited_at = time.monotonic()
        returncode = os.waitstatus_to_exitcode(status)
        proc.returncode = returncode
        sock.close()
    ready_at = next(t for t, m in messages if m.startswith("READY=1"))
    pings = [ready_at] + [t for t, m in messages if m == "WATCHDOG=1" and (term_at is None or t < term_at)]
    stopping = [t for t, m in messages if m.startswith("STOPPING=1")]
    return {
        "ready_s": ready_at - started,
        "gaps_s": [b - a for a, b in zip(pings, pings[1:])],
        "statuses": sum(m.startswith("STATUS=") for _, m in messages),
        "stopping_s": stopping[0] - term_at if stopping and term_at else float("nan"),
        "exit_s": exited_at - term_at if term_at else float("nan"),
        "rc": returncode,
        "maxrss_mb": usage.ru_maxrss / 1024,
    }


def in_process_costs(model: str, source: str, textfile_dir: str) -> Dict[str, str]:
    log = read_log(source)
    spec, engine = open_model(model or None, log.channels)
    names = spec.channels if spec.spec_path is not None else log.channels
    runtime = Runtime(spec, engine, LogSource(log, channel_columns(log, names, engine.channels, source), names))
    runtime.run()
    with tempfile.TemporaryDirectory(dir=textfile_dir) as tmp:
        hooks = ServiceHooks(Notifier(None), TextfileExporter(Path(tmp) / "m.prom"))
        hooks.on_ready(runtime)
        tick, render, write = Histogram(), Histogram(), Histogram()
        now = runtime.clock.now_ns()
        for _ in range(20000):
            start = time.perf_counter_ns()
            hooks.tick(now)  # nothing due: what every loop iteration pays
            tick.record(time.perf_counter_ns() - start)
        for _ in range(300):
            start = time.perf_counter_ns()
            text = hooks.render()
            render.record((time.perf_counter_ns() - start) / 1000)
            start = time.perf_counter_ns()
            write_textfile(Path(tmp) / "m.prom", text)
            write.record((time.perf_counter_ns() - start) / 1000)
    out = {"tick, nothing due": f"p50 {tick.percentile(50)} ns  p99 {tick.percentile(99)} ns  max {tick.max} ns"}
    for name, h in (("render metrics", render), ("write textfile", write)):
        out[name] = f"p50 {h.percentile(50)} us  p99 {h.percentile(99)} us  max {h.max} us"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each run is watched before SIGTERM")
    parser.add_argument("--model", default="", help="model spec or .tflite (default: the bundled model)")
    parser.add_argument("--source", default="", help="recorded log (default: the bundled log)")
    parser.add_argument("--textfile-dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                        help="where the textfile timing writes (default /dev/shm: tmpfs, like the service's /run)")
    args = parser.parse_args()
    extra = (["--model", args.model] if args.model else []) + (["--source", args.source] if args.source else [])
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
          f"Python {platform.python_version()}")
    print(f"service runs: {args.runs} x {args.seconds:g} s at --speed 1, WATCHDOG_USEC={WATCHDOG_USEC}")
    runs = [one_service_run(args.seconds, extra) for _ in range(args.runs)]
    gaps = [g for r in runs for g in r["gaps_s"]]
    print(f"  time to READY=1 (s):        {percentiles([r['ready_s'] for r in runs])}")
    print(f"  WATCHDOG=1 gaps (s):         {percentiles(gaps)}  ({len(gaps)} gaps; limit 1.000)")
    print(f"  STATUS messages per run:     {[r['statuses'] for r in runs]}")
    print(f"  SIGTERM -> STOPPING=1 (s):   {percentiles([r['stopping_s'] for r in runs])}")
    print(f"  SIGTERM -> exit (s):         {percentiles([r['exit_s'] for r in runs])}")
    print(f"  exit codes:                  {[r['rc'] for r in runs]}")
    print(f"  peak RSS (MB):               {percentiles([r['maxrss_mb'] for r in runs])}")
    print("in-process costs:")
    print(f"  (textfile written in {args.textfile_dir or tempfile.gettempdir()})")
    for name, text in in_process_costs(args.model, args.source or str(bundled_log()), args.textfile_dir).items():
        print(f"  {name + ':':<28} {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
