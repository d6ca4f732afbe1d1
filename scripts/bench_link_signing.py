#!/usr/bin/env python3
"""What signing the serial link costs the host, per frame, next to the unsigned link, in one run.

Interleaved rounds (so that the shared machine's load drifts over all cases alike), each timing a
batch of frames through the host's real code paths:

  (a) ``decode SENSOR``: ``FrameDecoder.feed`` of a 6-channel float32 SENSOR frame, unsigned;
  (b) ``decode SENSOR, signed``: the same frame signed, at a decoder with the key and the session
      (HMAC-SHA256 check, the replay floor);
  (c) ``encode ACTION``: ``FrameEncoder.action`` with a 4-byte name, unsigned;
  (d) ``encode ACTION, signed``: the same, signed;
and, as the machine's own noise floor in the same run, (e) ``sleep(0)``.

usage: python scripts/bench_link_signing.py [--frames N] [--rounds R] [--json FILE]
Results: a markdown table on stdout (per-frame microseconds, p50/p90 over rounds, and the ratio
signed/unsigned of the medians); docs/link-security.md holds them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_loop import machine  # noqa: E402  (scripts/: the machine description the benchmarks share)

from firmware_bridge.auth import LinkAuth, Side  # noqa: E402
from firmware_bridge.protocol import ActionSource, FrameEncoder, SampleType, Sensor  # noqa: E402
from firmware_bridge.stream import FrameDecoder  # noqa: E402


def cases(frames: int) -> Dict[str, Callable[[], None]]:
    key, session = os.urandom(32), os.urandom(16)
    device, host = LinkAuth(key, Side.DEVICE), LinkAuth(key, Side.HOST)
    device.session = host.session = session
    sensor = Sensor(sample_type=SampleType.FLOAT32, values=(0.1, -0.2, 9.8, 0.01, 0.02, -0.03))
    plain_wire = b"".join(FrameEncoder().encode(sensor) for _ in range(frames))
    signed_enc = FrameEncoder(auth=device)
    signed_wires: List[bytes] = []

    def refill() -> None:  # fresh ts for every round: the decoder takes each frame once
        signed_wires.append(b"".join(signed_enc.encode(sensor) for _ in range(frames)))

    def decode_plain() -> None:
        FrameDecoder().feed(plain_wire)

    def decode_signed() -> None:
        dec = FrameDecoder(auth=host)
        got = dec.feed(signed_wires.pop())
        assert len(got) == frames, dec.counters

    plain_host, signed_host = FrameEncoder(), FrameEncoder(auth=host)

    def encode_plain() -> None:
        for i in range(frames):
            plain_host.action(1, source=ActionSource.MODEL, answers_seq=i, name="walk")

    def encode_signed() -> None:
        for i in range(frames):
            signed_host.action(1, source=ActionSource.MODEL, answers_seq=i, name="walk")

    def sleep0() -> None:
        for _ in range(frames):
            time.sleep(0)

    return {"refill": refill, "decode SENSOR": decode_plain, "decode SENSOR, signed": decode_signed,
            "encode ACTION": encode_plain, "encode ACTION, signed": encode_signed, "sleep(0) (noise floor)": sleep0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=200, help="frames per timed batch (default 200)")
    p.add_argument("--rounds", type=int, default=200, help="interleaved rounds (default 200)")
    p.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = p.parse_args()
    run = cases(args.frames)
    refill = run.pop("refill")
    per_frame: Dict[str, List[float]] = {name: [] for name in run}
    for _ in range(args.rounds):
        refill()
        for name, fn in run.items():
            t0 = time.perf_counter_ns()
            fn()
            per_frame[name].append((time.perf_counter_ns() - t0) / 1000 / args.frames)

    def pct(values: List[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    info = machine()
    print(f"{args.rounds} interleaved rounds of {args.frames} frames; {info['cpu']}, {info['nproc']} CPUs, "
          f"load {' '.join(info['loadavg'])} (a shared machine); Python {info['python']}\n")
    print("| case | µs/frame p50 | p90 | signed / unsigned (p50) |")
    print("|---|---|---|---|")
    for name, values in per_frame.items():
        base = name.replace(", signed", "")
        ratio = f"{pct(values, 50) / pct(per_frame[base], 50):.2f}" if name.endswith("signed") else ""
        print(f"| {name} | {pct(values, 50):.2f} | {pct(values, 90):.2f} | {ratio} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "frames": args.frames, "per_frame_us": per_frame}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
