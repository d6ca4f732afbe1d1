#!/usr/bin/env python3
"""Does ``--mqtt`` slow a runtime with many streams? 32 paced streams, with and without the fleet sink, side by side.

The many-stream runtime hands every decision of every stream to one MQTT sink (one client, one spool:
docs/fleet.md, "Several streams on one board"); its worker thread turns them into JSON, spools and publishes
them, sharing the interpreter (and the GIL) with the decision loop. At 32 streams x 100 windows/s that is 3200
records a second. Variants, interleaved in rounds:

* ``no mqtt``;
* ``mqtt, broker down``: ``--mqtt`` to a port where nothing listens (everything is spooled to disk);
* ``mqtt, broker up``: a local Mosquitto (started here) and a subscriber in this process taking everything.

Measured from outside exactly as ``scripts/bench_streams.py`` does (its ``Child``, ``Jitter`` and ``judge``):
every decision is a JSON line on the child's stdout, stamped on arrival; late = more than the 20 ms budget after
its window was due. The log is the bundled log repeated ``--repeat`` times (10 s of run per repeat at
``--speed 40``, so the worker's share shows); "same actions" compares with a single-stream replay of that log.

Last, what building and encoding the summary of that many streams costs the worker (in this process).

usage: python scripts/bench_fleet_streams.py [--streams 32] [--rounds 2] [--speed 40] [--repeat 3] [--summary-only]
                                             [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_loop import finish_report, start_report  # noqa: E402
from bench_mqtt import free_port  # noqa: E402
from bench_streams import Child, Jitter, _row, edge_infer, judge  # noqa: E402

from edge_infer.io import read_log  # noqa: E402
from edge_infer.model.loader import bundled_log  # noqa: E402

VARIANTS = ("no mqtt", "mqtt, broker down", "mqtt, broker up")


def long_log(path: Path, repeat: int) -> float:
    """The bundled log ``repeat`` times end to end (time shifted); returns its length in seconds."""
    lines = Path(bundled_log()).read_text().splitlines()
    header, rows = lines[0], lines[1:]
    log = read_log(str(bundled_log()))
    step = float(log.t[1] - log.t[0])
    span = float(log.t[-1] - log.t[0]) + step
    out = [header]
    for k in range(repeat):
        for row in rows:
            t, rest = row.split(",", 1)
            out.append(f"{float(t) + k * span:.4f},{rest}")
    path.write_text("\n".join(out) + "\n")
    return span * repeat


def reference(log: Path) -> Dict[int, Any]:
    out = subprocess.run(edge_infer("--source", str(log), "--show", "none", "--decisions", "/dev/stdout", "--json"),
                         cwd=ROOT, capture_output=True, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    records = [json.loads(line) for line in out.stdout.splitlines()]
    return {r["seq"]: r["action"] for r in records if "seq" in r and r["source"] == "model"}


class Subscriber:
    """Takes everything the board publishes (as a dashboard would), counting decision records."""

    def __init__(self, port: int):
        from paho.mqtt import client as mqtt

        self.records = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:6]}")
        self.client.on_connect = lambda c, *_: c.subscribe("edge-infer/#", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if message.topic.endswith("/decisions"):
            self.records += len(json.loads(message.payload)["records"])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def one_run(variant: str, n: int, log: Path, speed: float, url: str, spool: Path) -> Dict[str, Any]:
    argv = edge_infer(*[a for _ in range(n) for a in ("--source", str(log))], "--speed", str(speed), "--show", "none",
                      "--decisions", "/dev/stdout", "--json")
    if variant != "no mqtt":
        shutil.rmtree(spool, ignore_errors=True)
        argv += ["--mqtt", url, "--device-id", "bench", "--spool", str(spool), "--mqtt-drain-timeout", "10"]
    jitter = Jitter()
    jitter.start()
    child = Child(argv)
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            child.sample_rss()
            sampling.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cost = child.wait()
    sampling.set()
    jitter.stop.set()
    jitter.join()
    decisions: Dict[str, List[Any]] = {}
    for stamp, raw in child.lines:
        record = json.loads(raw)
        if "seq" in record:
            decisions.setdefault(f"0:{record['stream']}", []).append(
                (stamp, record["seq"], record["t"], record["action"], record["source"], record["reason"]))
    return {"decisions": decisions, "cpu_s": cost["cpu_s"], "rss_mb": cost["rss_mb"], "processes": 1,
            "jitter_us": jitter.late_us}


def summary_cost(n: int, calls: int = 50) -> Dict[str, Any]:
    """What the sink's worker does every --mqtt-summary-interval and at each state change: build and encode the
    summary of ``n`` streams (after an unpaced ``n``-stream run of the bundled log, in this process)."""
    from edge_infer.deadline.options import DeadlineOptions
    from edge_infer.model.loader import open_model
    from edge_infer.runtime import StreamSetup, StreamsRuntime
    from edge_infer.sources.log_replay import LogSource, channel_columns

    spec, engine = open_model(None)
    log = read_log(str(bundled_log()))
    columns = channel_columns(log, spec.channels, engine.channels, "bundled")
    runtime = StreamsRuntime([StreamSetup(f"s{i}", spec, engine, LogSource(log, columns, spec.channels, speed=None),
                                          [], options=DeadlineOptions(gc_control=False)) for i in range(n)])
    runtime.run()
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        text = json.dumps(runtime.summary(), separators=(",", ":"), default=str)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return {"streams": n, "bytes": len(text), "median_ms": round(float(np.median(times)), 2),
            "max_ms": round(float(np.max(times)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--speed", type=float, default=40.0)
    parser.add_argument("--repeat", type=int, default=3, help="the bundled log this many times (run length)")
    parser.add_argument("--summary-only", action="store_true", help="only the summary's cost")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    report = start_report()
    if args.summary_only:
        show_summary_cost(report, args.streams)
        finish_report(report, args.json)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        log_s = long_log(work / "long.csv", args.repeat)
        expected = reference(work / "long.csv")
        port = free_port()
        conf = work / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                        + ("user root\n" if os.geteuid() == 0 else ""))
        broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        subscriber = Subscriber(port)
        dead = free_port()
        rows: List[Dict[str, Any]] = []
        header = ("| kind | N | decisions | fallbacks | late (>20 ms) | p50 ms | p99 ms | max ms | same actions | "
                  "CPU s | CPU ms/stream/s | RSS MB | procs | sleep jitter p99/max ms | records at the broker |")
        print(f"\n## {args.streams} streams, {log_s / args.speed:.0f} s at speed {args.speed:g}, "
              f"with and without --mqtt ({args.rounds} rounds)\n")
        print(header)
        print("|---" * (header.count("|") - 1) + "|")
        try:
            for round_ in range(args.rounds):
                for variant in VARIANTS:
                    url = f"mqtt://127.0.0.1:{dead if variant == 'mqtt, broker down' else port}"
                    before = subscriber.records
                    row = judge(one_run(variant, args.streams, work / "long.csv", args.speed, url, work / "spool"),
                                args.streams, args.speed, expected, variant, log_s / args.speed)
                    time.sleep(1.0)  # the last acknowledged messages reach the subscriber
                    row["round"], row["at_broker"] = round_, subscriber.records - before
                    rows.append(row)
                    print(_row(row) + f" {row['at_broker']} |", flush=True)
        finally:
            subscriber.close()
            broker.terminate()
            broker.wait(10)
    report["rows"] = rows
    show_summary_cost(report, args.streams)
    finish_report(report, args.json)


def show_summary_cost(report: Dict[str, Any], n: int) -> None:
    cost = report["summary_cost"] = summary_cost(n)
    print(f"\nsummary of {cost['streams']} streams: {cost['bytes']} bytes, built and encoded in {cost['median_ms']} ms "
          f"(median of 50; max {cost['max_ms']} ms)")


if __name__ == "__main__":
    main()
