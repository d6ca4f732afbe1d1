#!/usr/bin/env python3
"""Does the MQTT sink slow the decision loop? Measured from outside, with and without it, side by side.

A virtual device on a real pty (this script) sends SENSOR frames at a fixed rate to ``edge-infer run
--source serial:PTY`` and stamps, on the machine's monotonic clock, when each frame left and when the
ACTION answering it came back: the round trip is what the device on the other end of the cable sees.
Variants, interleaved in rounds so that drift in the machine's load spreads over all of them:

* ``no mqtt``: the run as shipped;
* ``mqtt, broker down``: ``--mqtt`` to a port where nothing listens (connects fail and are retried;
  everything is spooled to disk);
* ``mqtt, broker up``: ``--mqtt`` to a local Mosquitto (started here on a free port), everything sent.

A last part times one ``on_decision`` call in process, per sink (no-op, JSON lines file, MQTT with
the broker down while its worker spools), call by call.

The same run's own decision latency (``latency_us`` in the decision log: frame received to decision handed
to the sinks) is reported too, and the device's own pacing lateness (how late its sleeps woke up, the
machine's jitter in the same run). The first ``--skip`` seconds of each run (model load, warm-up,
connecting) are left out.

usage: python scripts/bench_mqtt.py [--rounds 3] [--seconds 15] [--rate-hz 100] [--calls N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_loop import finish_report, start_report  # noqa: E402

from edge_infer.testing.tflite_builder import dense_model, write_model  # noqa: E402
from firmware_bridge.protocol import Action, FrameEncoder, Hello, SampleType, Sensor, schema_hash  # noqa: E402
from firmware_bridge.stream import FrameDecoder  # noqa: E402

CHANNELS = ("acc_x", "acc_y", "acc_z")
WINDOW, HOP = 16, 4
VARIANTS = ("no mqtt", "mqtt, broker down", "mqtt, broker up")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_spec(directory: Path, rate_hz: float) -> Path:
    model = write_model(directory / "bench.tflite", dense_model(WINDOW, len(CHANNELS), 3, seed=3))
    spec = directory / "bench.toml"
    spec.write_text(f"""[model]
file = "{model.name}"
name = "bench-mqtt"
[input]
channels = {json.dumps(list(CHANNELS))}
window = {WINDOW}
hop = {HOP}
sample_rate_hz = {rate_hz:g}
[output]
kind = "classes"
labels = ["a", "b", "c"]
[deadline]
budget_ms = 20
[fallback]
action = "idle"
""")
    return spec


class Device:
    """The device end of a pty: HELLO once the host speaks, then SENSOR frames every 1/rate s, stamped."""

    def __init__(self, link: Path, rate_hz: float):
        self.link, self.period_ns = link, int(1e9 / rate_hz)
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.ttyname(self.slave), link)
        self.sent_ns: Dict[int, int] = {}
        self.round_trip_ns: List[int] = []
        self.answered_at: List[int] = []
        self.lateness_ns: List[int] = []
        self.stop = threading.Event()
        self._enc = FrameEncoder(clock_us=lambda: time.monotonic_ns() // 1000)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._writer = threading.Thread(target=self._write, daemon=True)
        self._host_spoke = threading.Event()
        self._reader.start()
        self._writer.start()

    def _read(self) -> None:
        decoder = FrameDecoder()
        while not self.stop.is_set():
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            now = time.monotonic_ns()
            self._host_spoke.set()
            for frame in decoder.feed(data):
                if isinstance(frame, Action) and frame.answers_seq in self.sent_ns:
                    self.round_trip_ns.append(now - self.sent_ns[frame.answers_seq])
                    self.answered_at.append(now)

    def _write(self) -> None:
        self._host_spoke.wait()
        os.write(self.master, self._enc.encode(Hello(
            fw_version=(1, 0, 0), sample_type=SampleType.FLOAT32, sample_rate_millihz=int(1e12 / self.period_ns),
            schema_hash=schema_hash(CHANNELS, SampleType.FLOAT32), scales=(1.0,) * len(CHANNELS),
            channels=CHANNELS)))
        rng = np.random.default_rng(0)
        due = time.monotonic_ns()
        while not self.stop.is_set():
            due += self.period_ns
            wait = due - time.monotonic_ns()
            if wait > 0:
                time.sleep(wait / 1e9)
            woke = time.monotonic_ns()
            self.lateness_ns.append(max(0, woke - due))
            seq = self._enc.next_seq
            self.sent_ns[seq] = time.monotonic_ns()
            os.write(self.master, self._enc.encode(Sensor(sample_type=SampleType.FLOAT32,
                                                          values=tuple(rng.normal(size=len(CHANNELS))))))

    def close(self) -> None:
        self.stop.set()
        self._writer.join(2)
        os.close(self.master)
        os.close(self.slave)
        if os.path.lexists(self.link):
            os.unlink(self.link)


def one_run(variant: str, spec: Path, work: Path, seconds: float, skip: float, rate_hz: float,
            broker_port: int, dead_port: int) -> Dict[str, np.ndarray]:
    link = work / "dev"
    device = Device(link, rate_hz)
    decisions = work / f"decisions-{time.monotonic_ns()}.jsonl"
    args = [sys.executable, "-m", "edge_infer", "run", "--source", f"serial:{link}", "--model", str(spec),
            "--duration", str(seconds), "--decisions", str(decisions), "--show", "none", "--json"]
    if variant != "no mqtt":
        port = dead_port if variant == "mqtt, broker down" else broker_port
        spool = work / f"spool-{time.monotonic_ns()}"
        args += ["--mqtt", f"mqtt://127.0.0.1:{port}", "--device-id", "bench", "--spool", str(spool),
                 "--mqtt-drain-timeout", "1"]
    started = time.monotonic_ns()
    proc = subprocess.run(args, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=seconds + 120)
    device.close()
    if proc.returncode != 0:
        raise SystemExit(f"{variant}: edge-infer exited {proc.returncode}: {proc.stderr}")
    keep_from = started + int(skip * 1e9)
    rtt = np.array([r for r, at in zip(device.round_trip_ns, device.answered_at) if at >= keep_from]) / 1000.0
    records = [json.loads(line) for line in decisions.read_text().splitlines()]
    latency = np.array([r["latency_us"] for r in records[int(len(records) * skip / seconds):]
                        if r["source"] == "model"])
    return {"round_trip_us": rtt, "latency_us": latency, "lateness_us": np.array(device.lateness_ns) / 1000.0}


def handoff_costs(work: Path, dead_port: int, calls: int) -> Dict[str, Dict[str, float]]:
    """In process: what one ``on_decision`` costs the loop, per sink (the MQTT one with the broker down, its
    worker spooling meanwhile), timed call by call; interleaved in blocks of 1000 calls."""
    from edge_infer.decide.decision import Decision
    from edge_infer.fleet.broker import parse_broker_url
    from edge_infer.sinks.base import Sink
    from edge_infer.sinks.jsonl import JsonLinesSink
    from edge_infer.sinks.mqtt import MqttOptions, MqttSink

    class Nothing(Sink):
        def on_decision(self, decision: Decision) -> None:
            pass

    sinks = {
        "no-op sink": Nothing(),
        "JSON lines file": JsonLinesSink(work / "handoff.jsonl"),
        "MQTT, broker down": MqttSink(MqttOptions(parse_broker_url(f"mqtt://127.0.0.1:{dead_port}"), "bench",
                                                  work / "handoff-spool", spool_max_bytes=1 << 30),
                                      lambda: {}, {"name": "bench"}),
    }
    decision = Decision(seq=1, t=0.1, action="a", source="model", reason=None, latency_us=350.0, invoke_us=40.0,
                        output=[0.9, 0.05, 0.05], label=None)
    times: Dict[str, List[int]] = {name: [] for name in sinks}
    clock = time.perf_counter_ns
    for _ in range(calls // 1000):
        for name, sink in sinks.items():
            out, call = times[name], sink.on_decision
            for _ in range(1000):
                start = clock()
                call(decision)
                out.append(clock() - start)
    for sink in sinks.values():
        sink.close()
    return {name: stats(np.array(values, dtype=float)) for name, values in times.items()}


def stats(values: np.ndarray) -> Dict[str, float]:
    if len(values) == 0:
        return {"n": 0}
    return {"n": int(len(values)), "p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
            "p99.9": float(np.percentile(values, 99.9)), "max": float(values.max())}


def table(results: Dict[str, Dict[str, List[np.ndarray]]], args: argparse.Namespace, report: Dict) -> None:
    """The round-trip table: every variant, with its p99 next to the no-mqtt run's."""
    print(f"\n{args.rounds} rounds x {args.seconds:g} s per variant, {args.rate_hz:g} frames/s, hop {HOP} "
          f"({args.rate_hz / HOP:g} decisions/s); first {args.skip:g} s of each run left out\n")
    print("| variant | what | n | p50 us | p99 us | p99.9 us | max us | p99 vs no mqtt | median of the rounds' p99 |")
    print("|---|---|---|---|---|---|---|---|---|")
    report["results"] = {}
    base: Dict[str, Dict[str, float]] = {}
    for variant in VARIANTS:
        report["results"][variant] = {}
        for key, label in (("round_trip_us", "device round trip"), ("latency_us", "decision latency (log)"),
                           ("lateness_us", "device sleep lateness")):
            s = stats(np.concatenate(results[variant][key]))
            report["results"][variant][key] = s
            if variant == "no mqtt":
                base[key] = s
            ratio = s["p99"] / base[key]["p99"] if base.get(key, {}).get("p99") else float("nan")
            # one stalled round (the machine is shared) moves the pooled p99; the median of the rounds' does not
            s["median_round_p99"] = float(np.median([np.percentile(v, 99) for v in results[variant][key] if len(v)]))
            print(f"| {variant} | {label} | {s['n']} | {s['p50']:.0f} | {s['p99']:.0f} | {s['p99.9']:.0f} | "
                  f"{s['max']:.0f} | {ratio:.2f} | {s['median_round_p99']:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each run")
    parser.add_argument("--skip", type=float, default=3.0, help="seconds at the start of each run left out")
    parser.add_argument("--rate-hz", type=float, default=100.0, help="SENSOR frames per second")
    parser.add_argument("--calls", type=int, default=200_000, help="on_decision calls per sink (in process)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    report = start_report()
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    results: Dict[str, Dict[str, List[np.ndarray]]] = {v: {} for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        spec = write_spec(work, args.rate_hz)
        broker_port, dead_port = free_port(), free_port()
        conf = work / "mosquitto.conf"
        conf.write_text(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\n"
                        + ("user root\n" if os.geteuid() == 0 else ""))  # root: do not drop to "mosquitto"
        broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sink = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, str(broker_port)], stdout=subprocess.DEVNULL)
        try:
            time.sleep(1.0)
            for round_ in range(args.rounds):
                for variant in VARIANTS:
                    out = one_run(variant, spec, work, args.seconds, args.skip, args.rate_hz, broker_port, dead_port)
                    for key, values in out.items():
                        results[variant].setdefault(key, []).append(values)
                    print(f"round {round_ + 1} {variant}: round trip p50 {np.percentile(out['round_trip_us'], 50):.0f} "
                          f"us, p99 {np.percentile(out['round_trip_us'], 99):.0f} us ({len(out['round_trip_us'])})",
                          flush=True)
        finally:
            sink.terminate()
            broker.terminate()
    if args.rounds:
        table(results, args, report)
    print(f"\nOne on_decision call, in process, {args.calls} calls per sink (ns):\n")
    print("| sink | p50 ns | p99 ns | p99.9 ns | max ns |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        report["handoff_ns"] = handoff_costs(Path(tmp), free_port(), args.calls)
    for name, s in report["handoff_ns"].items():
        print(f"| {name} | {s['p50']:.0f} | {s['p99']:.0f} | {s['p99.9']:.0f} | {s['max']:.0f} |")
    finish_report(report, args.json)
    return 0


#: A subscriber that takes everything the broker gets (so "broker up" costs what a real fleet costs).
SUBSCRIBER = """
import sys
from paho.mqtt import client as m
c = m.Client(m.CallbackAPIVersion.VERSION2)
c.on_connect = lambda c, u, f, rc, p: c.subscribe("edge-infer/#", qos=1)
c.connect_async("127.0.0.1", int(sys.argv[1]))
c.loop_forever(retry_first_connection=True)
"""

if __name__ == "__main__":
    sys.exit(main())
