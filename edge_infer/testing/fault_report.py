"""Score a replay of a corrupted log against the faults ``scripts/corrupt_log.py`` put into it.

    python -m edge_infer.testing.fault_report FAULTS.json DECISIONS.jsonl [--json]

For every fault type: the windows that hold at least ``min_overlap`` of the
fault's frames, and how many of them got the expected reason (as a fallback,
or flagged on a model decision, whichever the spec's policy says). Windows
that hold a fault's frames but fewer than ``min_overlap`` are not scored
(the fault is not visible in them yet); they are listed as ``partial``, with
how many got the reason anyway (``caught``). Windows that hold no
fault frame are clean: any fallback there is a false fallback. ``junk_line``
faults expect no reason: their windows count as clean.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..sinks.jsonl import read_decisions


@dataclass
class TypeScore:
    windows: int = 0
    detected: int = 0
    wrong: Dict[str, int] = field(default_factory=dict)  # reason given instead -> count
    partial: int = 0  # windows with fewer than min_overlap of the fault's frames
    partial_detected: int = 0  # ... that got the fault's reason anyway

    @property
    def rate(self) -> Optional[float]:
        return self.detected / self.windows if self.windows else None


@dataclass
class FaultScore:
    types: Dict[str, TypeScore]
    clean_windows: int
    false_fallbacks: int
    false_flags: int

    @property
    def false_fallback_rate(self) -> float:
        return self.false_fallbacks / self.clean_windows if self.clean_windows else 0.0

    def to_dict(self) -> Dict[str, Any]:
        return {
            "types": {kind: {"windows": s.windows, "detected": s.detected,
                             "rate": None if s.rate is None else round(s.rate, 4), "wrong": s.wrong,
                             "partial_windows": s.partial, "partial_detected": s.partial_detected}
                      for kind, s in self.types.items()},
            "clean_windows": self.clean_windows, "false_fallbacks": self.false_fallbacks,
            "false_fallback_rate": round(self.false_fallback_rate, 4), "false_flags": self.false_flags,
        }


def score(side: Dict[str, Any], records: List[Dict[str, Any]]) -> FaultScore:
    """Match window decisions (records with ``seq`` >= 0 that decided a window) against the listed faults."""
    window = side["window"]
    faults = side["faults"]
    types: Dict[str, TypeScore] = {}
    clean = false_fallbacks = false_flags = 0
    for record in records:
        if record["reason"] in ("no_data", "shutdown"):  # not a window decision
            continue
        first, last = record["seq"] - window + 1, record["seq"]
        touching = [(f, min(last, f["seqs"][1]) - max(first, f["seqs"][0]) + 1) for f in faults
                    if f["seqs"][0] <= last and f["seqs"][1] >= first and f["reason"] is not None]
        if not touching:
            clean += 1
            false_fallbacks += record["source"] == "fallback"
            false_flags += record["source"] == "model" and record["reason"] is not None
            continue
        fault, overlap = touching[0]
        kind = types.setdefault(fault["type"], TypeScore())
        if overlap < fault["min_overlap"]:
            kind.partial += 1
            kind.partial_detected += record["reason"] == fault["reason"]
            continue
        kind.windows += 1
        if record["reason"] == fault["reason"]:
            kind.detected += 1
        else:
            kind.wrong[str(record["reason"])] = kind.wrong.get(str(record["reason"]), 0) + 1
    return FaultScore(types=dict(sorted(types.items())), clean_windows=clean, false_fallbacks=false_fallbacks,
                      false_flags=false_flags)


def format_score(result: FaultScore) -> str:
    lines = [f"{'fault type':<16} {'windows':>7} {'detected':>8} {'rate':>7}  {'partial':>7} {'caught':>6}"
             "  other reasons"]
    for kind, s in result.types.items():
        rate = "-" if s.rate is None else f"{s.rate:.1%}"
        lines.append(f"{kind:<16} {s.windows:>7} {s.detected:>8} {rate:>7}  {s.partial:>7} {s.partial_detected:>6}"
                     f"  {s.wrong or ''}")
    lines.append(f"clean windows {result.clean_windows}: {result.false_fallbacks} fell back "
                 f"({result.false_fallback_rate:.2%}), {result.false_flags} flagged")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("faults", help="the side file written by scripts/corrupt_log.py --faults-out")
    parser.add_argument("decisions", help="the decision records of the replay (replay --decisions FILE)")
    parser.add_argument("--json", action="store_true", help="print the score as JSON")
    args = parser.parse_args(argv)
    side = json.loads(Path(args.faults).read_text())
    records = read_decisions(args.decisions)  # the last run in the file (decision logs are appended to)
    result = score(side, records)
    print(json.dumps(result.to_dict(), indent=1) if args.json else format_score(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
