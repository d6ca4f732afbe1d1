#!/usr/bin/env python3
"""What MCAP recording costs and how much a crash loses (results in docs/recording.md).

1. The decision loop's cost: each ``RecordingSink.on_frame`` (and ``on_decision``
   every ``--hop`` frames) is timed with the flush thread running, against
   the same calls on a sink that does nothing; percentiles side by side,
   paced at ``--hz`` (as in the field: the loop sleeps between frames, so
   caches are cold) and back to back (the code's own cost).
2. The once-a-second work: closing the chunk (zstd, write to the OS: in the
   loop, inside the call that found the second over) and the fsync (in the
   background thread).
3. Bytes per frame on disk (zstd chunks of about a second).
4. Loss on SIGKILL: ``edge-infer run --speed 1 --record`` on a generated log,
   killed after a few seconds, ``--kills`` times; the loss is the time from the
   last frame in the file to the kill (the frames received but not yet flushed).

usage: bench_recording.py [--frames N] [--hz HZ] [--channels C] [--kills K]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_infer.decide.decision import Decision  # noqa: E402
from edge_infer.frame import Frame  # noqa: E402
from edge_infer.io.mcap_log import read_mcap  # noqa: E402
from edge_infer.sinks.recorder import RecordingSink  # noqa: E402
from edge_infer.testing.tflite_builder import dense_model  # noqa: E402


def percentiles(values_ns: List[int]) -> Dict[str, float]:
    if not values_ns:
        return {}
    us = np.array(values_ns, dtype=np.float64) / 1000.0
    return {"p50": round(float(np.percentile(us, 50)), 1), "p99": round(float(np.percentile(us, 99)), 1),
            "p99.9": round(float(np.percentile(us, 99.9)), 1), "max": round(float(us.max()), 1)}


class _Nothing:
    def on_frame(self, frame: Frame) -> None:
        pass

    def on_decision(self, decision: Decision) -> None:
        pass


class _TimedSink(RecordingSink):
    """Times the once-a-second work: closing the chunk (in the loop) and the fsync (in the background thread)."""

    flushes_ns: List[int] = []
    syncs_ns: List[int] = []

    def _flush_locked(self):  # type: ignore[no-untyped-def]
        started = time.perf_counter_ns()
        fd = super()._flush_locked()
        if fd is not None:
            self.flushes_ns.append(time.perf_counter_ns() - started)
        return fd

    def _sync(self, fd):  # type: ignore[no-untyped-def]
        started = time.perf_counter_ns()
        super()._sync(fd)
        if fd is not None:
            self.syncs_ns.append(time.perf_counter_ns() - started)


def loop_cost(frames: int, hz: float, channels: int, hop: int, directory: Path) -> Dict[str, object]:
    """Feed frames paced at ``hz`` (``hz=0``: back to back), time each call."""
    rng = np.random.default_rng(0)
    values = rng.normal(size=(frames, channels)).astype(np.float32)
    output = [0.1, 0.2, 0.3, 0.4]
    timings: Dict[str, List[int]] = {"none": [], "record": []}
    path = directory / f"bench-{'paced' if hz else 'back-to-back'}.mcap"
    sinks = {"none": _Nothing(), "record": _TimedSink(path, [f"c{i}" for i in range(channels)], {})}
    _TimedSink.flushes_ns, _TimedSink.syncs_ns = [], []
    period_ns = int(1e9 / hz) if hz else 0
    start = time.perf_counter_ns()
    for i in range(frames):
        while time.perf_counter_ns() < start + i * period_ns:
            time.sleep(min(0.001, period_ns / 4e9))
        frame = Frame(seq=i, t=i / (hz or 100.0), recv_ns=time.perf_counter_ns(), values=values[i], label="walk", device_seq=i)
        decision = Decision(seq=i, t=i / (hz or 100.0), action="walk", source="model", reason=None, latency_us=80.0,
                            invoke_us=60.0, output=output, label="walk") if i % hop == hop - 1 else None
        for name in ("none", "record") if i % 2 else ("record", "none"):  # alternate the order
            began = time.perf_counter_ns()
            sinks[name].on_frame(frame)
            if decision is not None:
                sinks[name].on_decision(decision)
            timings[name].append(time.perf_counter_ns() - began)
    sinks["record"].close()
    size = path.stat().st_size
    return {"per_frame_us": {name: percentiles(t) for name, t in timings.items()},
            "chunk_flush_in_loop_us": percentiles(_TimedSink.flushes_ns),
            "fsync_in_thread_us": percentiles(_TimedSink.syncs_ns),
            "flushes": len(_TimedSink.flushes_ns), "bytes_per_frame": round(size / frames, 1),
            "frames": frames, "hz": hz, "channels": channels, "hop": hop}


def kill_loss(kills: int, directory: Path) -> Dict[str, object]:
    """Seconds between the last frame in a SIGKILLed recording and the kill."""
    hz = 50.0
    log = directory / "log.csv"
    rows = ["t,c0,c1,c2"] + [f"{i / hz:.3f},{np.sin(i / 9):.4f},{np.cos(i / 7):.4f},{i % 13 / 13:.4f}"
                             for i in range(6000)]
    log.write_text("\n".join(rows) + "\n")
    model = directory / "m.tflite"
    model.write_bytes(dense_model(16, 3, 4, seed=1))
    losses = []
    for k in range(kills):
        recording = directory / f"killed{k}.mcap"
        proc = subprocess.Popen([sys.executable, "-m", "edge_infer", "run", "--source", str(log), "--model", str(model),
                                 "--hop", "4", "--budget-ms", "1000", "--speed", "1", "--record", str(recording),
                                 "--show", "none"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not _has_frames(recording):  # start-up (imports, model load) takes its own time
            time.sleep(0.05)
        time.sleep(2.0 + 0.37 * k)  # kill at different phases of the flush period
        killed_ns = time.time_ns()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        result = read_mcap(recording)
        losses.append((killed_ns - int(result.frame_log_ns[-1])) / 1e9)
    return {"kills": kills, "loss_s": [round(x, 3) for x in losses], "max_loss_s": round(max(losses), 3)}


def _has_frames(path: Path) -> bool:
    try:
        return path.exists() and len(read_mcap(path).frames) > 0
    except Exception:  # the header is still being written
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--hz", type=float, default=100.0)
    parser.add_argument("--channels", type=int, default=6)
    parser.add_argument("--hop", type=int, default=4)
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {"machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
                  "python": platform.python_version(),
                  "loop_paced": loop_cost(args.frames, args.hz, args.channels, args.hop, Path(tmp)),
                  "loop_back_to_back": loop_cost(args.frames * 50, 0.0, args.channels, args.hop, Path(tmp)),
                  "sigkill": kill_loss(args.kills, Path(tmp))}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
