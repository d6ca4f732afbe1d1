"""Write a corrupted copy of a clean CSV log, with known, labelled faults, and a side file saying where they are.

    python scripts/corrupt_log.py models/basic_motions/basic_motions_test.csv /tmp/corrupt.csv \\
        --faults-out /tmp/corrupt.faults.json --seed 1 [--spec SPEC] [--per-type 4]

Fault types, what a sensor or a logger does to cause them, and the reason code
the input checks should give a window that holds one:

=================  ==============================================================  ===================
type               what is written                                                 expected reason
=================  ==============================================================  ===================
nan_burst          1-5 rows with NaN or +-Inf in 1-3 channels                      non_finite
spike              one value far beyond the channel's range (a glitch)             out_of_range
saturated          one channel pinned at its range limit for 3-8 rows              saturated
stuck              one channel frozen (exactly, or within a fraction of its        stuck
                   stuck spread) for 1-3 windows
stale              every channel repeats one sample for 20-60 rows                 stale
                   (timestamps advance: a link re-sending its last sample)
dropped_rows       1-3 rows missing                                                gap
duplicate_row      one row written twice                                           gap
backwards_time     one row's timestamp earlier than the row before                 gap
unparseable_row    one row damaged in place (cut short, a word, a NUL)             gap (the CSV reader
                                                                                   skips it: its sample
                                                                                   is missing)
junk_line          a garbage line inserted between two good rows                   none: nothing is
                                                                                   missing
=================  ==============================================================  ===================

Faults are placed at random (seeded) with at least one window of clean rows
between any two, so every window overlaps at most one fault. The side file
(JSON) lists each fault with its type, the CSV line numbers, the frames it
covers (``seqs``: first and last 0-based frame index as the runtime numbers
the rows it can parse), the expected reason, and ``min_overlap``: how many of
those frames a window must hold for the fault to be visible in it at all (a
stuck channel is only stuck after ``stuck_frames`` frames; a saturated one
after ``saturated_min_samples``; a gap needs both frames around it).

The spec (default: the bundled model's) gives the range limits, the stuck
spread and the window; its ``[checks]`` must have range and stuck keys.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_infer.checks.config import ChecksConfig, parse_checks  # noqa: E402
from edge_infer.errors import EdgeInferError  # noqa: E402
from edge_infer.model.loader import bundled_spec  # noqa: E402
from edge_infer.model.spec import ModelSpec, load_spec  # noqa: E402

#: fault type -> the reason code a window holding it should get (None: it must stay a model decision)
EXPECTED = {
    "nan_burst": "non_finite", "spike": "out_of_range", "saturated": "saturated", "stuck": "stuck",
    "stale": "stale", "dropped_rows": "gap", "duplicate_row": "gap", "backwards_time": "gap",
    "unparseable_row": "gap", "junk_line": None,
}
DAMAGE = ("cut", "word", "nul", "timestamp")
#: Clean rows between two faults beyond one window: a fault may reach one row before its start
#: (the step into it) and one after its end (the step out), so no window can hold two faults.
SPACING = 3


@dataclass
class Row:
    """One CSV line to write; ``frame`` is False for a line the reader must skip."""

    fields: List[str]
    frame: bool = True
    raw: Optional[str] = None  # written as is instead of ``fields`` (a damaged line)
    seq: int = -1
    line: int = -1


@dataclass
class Fault:
    kind: str
    start: int  # index of the first clean row involved
    length: int
    details: Dict[str, Any] = field(default_factory=dict)
    rows: List[Row] = field(default_factory=list)  # the output rows whose frames the fault covers
    lines: List[int] = field(default_factory=list)


class Corrupter:
    """Applies faults to the rows of a clean log, in the spec's terms."""

    def __init__(self, header: List[str], rows: List[List[str]], spec: ModelSpec, checks: ChecksConfig,
                 rng: random.Random):
        self.header, self.spec, self.checks, self.rng = header, spec, checks, rng
        self.rows = [Row(list(r)) for r in rows]
        self.t_col = header.index("t")
        self.columns = [header.index(c) for c in spec.channels]
        self.period = 1.0 / spec.sample_rate_hz if spec.sample_rate_hz else 0.1
        self.inserted: Dict[int, List[Row]] = {}   # clean row index -> rows written after it
        self.removed: set = set()

    def value(self, row: int, channel: int) -> float:
        return float(self.rows[row].fields[self.columns[channel]])

    def put(self, row: int, channel: int, value: float) -> None:
        self.rows[row].fields[self.columns[channel]] = _fmt(value)

    def apply(self, fault: Fault) -> None:
        getattr(self, "_" + fault.kind)(fault)

    # --- value faults: the rows stay, their values change -----------------------------------------

    def _channels(self, most: int) -> List[int]:
        return self.rng.sample(range(len(self.columns)), self.rng.randint(1, most))

    def _nan_burst(self, fault: Fault) -> None:
        channels = self._channels(3)
        kind = self.rng.choice(["nan", "inf", "-inf"])
        for i in range(fault.start, fault.start + fault.length):
            for c in channels:
                self.rows[i].fields[self.columns[c]] = kind
        fault.details.update(channels=[self.spec.channels[c] for c in channels], value=kind)
        fault.rows = self.rows[fault.start:fault.start + fault.length]

    def _spike(self, fault: Fault) -> None:
        c = self.rng.randrange(len(self.columns))
        low, high = self.checks.range_min[c], self.checks.range_max[c]  # type: ignore[index]
        beyond = (high - low) * self.rng.uniform(0.2, 20.0)
        value = high + beyond if self.rng.random() < 0.5 else low - beyond
        self.put(fault.start, c, value)
        fault.details.update(channel=self.spec.channels[c], value=float(_fmt(value)))
        fault.rows = [self.rows[fault.start]]

    def _saturated(self, fault: Fault) -> None:
        c = self.rng.randrange(len(self.columns))
        limit = self.checks.range_max[c] if self.rng.random() < 0.5 else self.checks.range_min[c]  # type: ignore
        for i in range(fault.start, fault.start + fault.length):
            self.put(i, c, limit)
        fault.details.update(channel=self.spec.channels[c], value=float(limit))
        fault.rows = self.rows[fault.start:fault.start + fault.length]

    def _stuck(self, fault: Fault) -> None:
        c = self.rng.randrange(len(self.columns))
        held = self.value(fault.start, c)
        noise = 0.0
        if self.rng.random() < 0.5:  # a frozen reading with a little noise on it, below the stuck spread
            noise = 0.25 * float(self.checks.stuck_min_spread[c])  # type: ignore[index]
        for i in range(fault.start, fault.start + fault.length):
            self.put(i, c, held + self.rng.uniform(-noise, noise))
        fault.details.update(channel=self.spec.channels[c], value=held, noise=noise)
        fault.rows = self.rows[fault.start:fault.start + fault.length]

    def _stale(self, fault: Fault) -> None:
        first = self.rows[fault.start]
        for i in range(fault.start + 1, fault.start + fault.length):
            for col in self.columns:
                self.rows[i].fields[col] = first.fields[col]
        fault.rows = self.rows[fault.start + 1:fault.start + fault.length]  # the repeats

    def _backwards_time(self, fault: Fault) -> None:
        i = fault.start
        earlier = float(self.rows[i - 1].fields[self.t_col]) - self.period * self.rng.uniform(0.5, 3.0)
        self.rows[i].fields[self.t_col] = _fmt(earlier)
        fault.details.update(t=float(_fmt(earlier)))
        fault.rows = [self.rows[i - 1], self.rows[i]]

    # --- structural faults: rows go missing or appear -----------------------------------------------

    def _dropped_rows(self, fault: Fault) -> None:
        self.removed.update(range(fault.start, fault.start + fault.length))
        fault.rows = [self.rows[fault.start - 1], self.rows[fault.start + fault.length]]
        fault.details.update(dropped=fault.length)

    def _duplicate_row(self, fault: Fault) -> None:
        copy = Row(list(self.rows[fault.start].fields))
        self.inserted.setdefault(fault.start, []).append(copy)
        fault.rows = [self.rows[fault.start], copy]

    def _unparseable_row(self, fault: Fault) -> None:
        row = self.rows[fault.start]
        how = self.rng.choice(DAMAGE)
        text = ",".join(row.fields)
        if how == "cut":  # a write cut short by a power loss: fewer fields
            text = text[:self.rng.randint(1, text.rindex(",", 0, len(text) - 1))].rstrip(",")
        elif how == "word":
            fields = list(row.fields)
            fields[self.rng.choice(self.columns)] = self.rng.choice(["abc", "1.2.3", "", "--", "0x1F"])
            text = ",".join(fields)
        elif how == "nul":  # inside a number, where the reader must notice it
            fields = list(row.fields)
            col = self.rng.choice(self.columns)
            at = self.rng.randrange(0, len(fields[col]) + 1)
            fields[col] = fields[col][:at] + "\0" + fields[col][at:]
            text = ",".join(fields)
        else:
            fields = list(row.fields)
            fields[self.t_col] = "12:00:01"
            text = ",".join(fields)
        row.raw, row.frame = text, False
        fault.details.update(damage=how)
        fault.rows = [self.rows[fault.start - 1], self.rows[fault.start + 1]]

    def _junk_line(self, fault: Fault) -> None:
        junk = Row([], frame=False, raw=self.rng.choice(["### logger restarted ###", "ERR sensor timeout",
                                                          "\x1b[0m garbage %$&", "t,acc_x"]))
        self.inserted.setdefault(fault.start, []).append(junk)
        fault.rows = [self.rows[fault.start], self.rows[fault.start + 1]]

    # --- output ----------------------------------------------------------------------------------

    def output(self) -> List[Row]:
        """The rows in file order, with their frame index and line number filled in."""
        out: List[Row] = []
        for i, row in enumerate(self.rows):
            if i not in self.removed:
                out.append(row)
            out.extend(self.inserted.get(i, []))
        seq = 0
        for line, row in enumerate(out, start=2):  # line 1 is the header
            row.line = line
            if row.frame:
                row.seq = seq
                seq += 1
        return out


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.6g}"


def plan(n_rows: int, window: int, spec: ModelSpec, checks: ChecksConfig, per_type: int,
         rng: random.Random) -> List[Fault]:
    """Where each fault goes: random order, a random clean stretch of at least one window between two."""
    hop = spec.hop
    lengths = {
        "nan_burst": lambda: rng.randint(1, 5),
        "spike": lambda: 1,
        "saturated": lambda: rng.randint(max(3, checks.saturated_min_samples), 8),
        "stuck": lambda: rng.randint(checks.stuck_frames + hop, 3 * window),
        "stale": lambda: rng.randint(20, 60),
        "dropped_rows": lambda: rng.randint(1, 3),
        "duplicate_row": lambda: 1,
        "backwards_time": lambda: 1,
        "unparseable_row": lambda: 1,
        "junk_line": lambda: 1,
    }
    kinds = [kind for kind in EXPECTED for _ in range(per_type)]
    rng.shuffle(kinds)
    faults = [Fault(kind, 0, lengths[kind]()) for kind in kinds]
    spacing = window + SPACING
    room = n_rows - window - sum(f.length + spacing for f in faults) - 2
    if room < 0:
        raise ValueError(f"the log has {n_rows} rows: too few for {len(faults)} faults with a clean window "
                         f"between them; lower --per-type")
    cuts = sorted(rng.randint(0, room) for _ in faults)
    position, previous = window, 0
    for fault, cut in zip(faults, cuts):
        position += cut - previous
        previous = cut
        fault.start = position
        position += fault.length + spacing
    return faults


def corrupt(clean: Path, out: Path, faults_out: Path, spec_path: Path, seed: int, per_type: int) -> Dict[str, Any]:
    """Write the corrupted log and the side file; return the side file's content."""
    spec = load_spec(spec_path)
    checks = parse_checks(spec)
    if checks.range_min is None or checks.stuck_min_spread is None:
        raise EdgeInferError(f"spec {spec_path}: [checks] needs range_min/range_max and stuck_min_spread "
                             "to place range and stuck faults (run scripts/calibrate_checks.py)")
    with clean.open(newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    header, rows = [name.strip() for name in table[0]], [r for r in table[1:] if r]
    rng = random.Random(seed)
    corrupter = Corrupter(header, rows, spec, checks, rng)
    faults = plan(len(rows), spec.window, spec, checks, per_type, rng)
    for fault in faults:
        corrupter.apply(fault)
    written = corrupter.output()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in written:
        if row.raw is not None:
            buffer.write(row.raw + "\n")
        else:
            writer.writerow(row.fields)
    out.write_text(buffer.getvalue(), encoding="utf-8")
    side = {
        "clean": str(clean), "corrupted": str(out), "spec": str(spec_path), "seed": seed,
        "window": spec.window, "hop": spec.hop, "frames": sum(r.frame for r in written),
        "bad_lines": sorted(r.line for r in written if not r.frame),
        "faults": [_describe(f, checks, spec) for f in sorted(faults, key=lambda f: f.start)],
    }
    faults_out.write_text(json.dumps(side, indent=1) + "\n", encoding="utf-8")
    return side


def _describe(fault: Fault, checks: ChecksConfig, spec: ModelSpec) -> Dict[str, Any]:
    seqs = [r.seq for r in fault.rows]
    min_overlap = {"stuck": checks.stuck_frames, "saturated": checks.saturated_min_samples,
                   "stale": _stale_repeats(checks, spec.window)}.get(fault.kind, 1)
    if EXPECTED[fault.kind] == "gap" or fault.kind == "junk_line":
        min_overlap = 2  # both frames around the bad step
    lines = sorted({r.line for r in fault.rows})
    return {"type": fault.kind, "reason": EXPECTED[fault.kind], "seqs": [min(seqs), max(seqs)],
            "lines": [lines[0], lines[-1]], "min_overlap": min_overlap, **fault.details}


def _stale_repeats(checks: ChecksConfig, window: int) -> int:
    """Repeated frames a window must hold to be stale: one more than ``min_fresh_fraction`` allows."""
    fresh = checks.min_fresh_fraction or 0.0
    return window - math.ceil(fresh * window - 1e-9) + 1


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clean", help="the clean CSV log")
    parser.add_argument("out", help="the corrupted CSV log to write")
    parser.add_argument("--faults-out", required=True, metavar="FILE.json", help="where to list the faults")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--spec", help="model spec with calibrated [checks] (default: the bundled model's)")
    parser.add_argument("--per-type", type=int, default=4, help="faults of each type (default 4)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        side = corrupt(Path(args.clean), Path(args.out), Path(args.faults_out),
                       Path(args.spec) if args.spec else bundled_spec(), args.seed, args.per_type)
    except (EdgeInferError, ValueError, OSError) as exc:
        print(f"corrupt_log: {exc}", file=sys.stderr)
        return 2
    counts: Dict[str, int] = {}
    for fault in side["faults"]:
        counts[fault["type"]] = counts.get(fault["type"], 0) + 1
    print(f"wrote {args.out}: {side['frames']} frames, {len(side['bad_lines'])} unparseable lines, "
          f"{len(side['faults'])} faults {counts}; listed in {args.faults_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
