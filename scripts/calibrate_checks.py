"""(Re)calibrate a model spec's input checks and OOD score on clean training data, without retraining.

    python scripts/calibrate_checks.py models/basic_motions/basic_motions.toml \\
        --train-data /path/to/BasicMotions        # folder or .ts file; default: the aeon wheel on PyPI
    python scripts/calibrate_checks.py SPEC --train-data clean.csv   # any recorded log edge-infer reads

Writes the ``[checks]``, ``[checks.policy]`` and ``[ood]`` tables into SPEC and
nothing else: the model file is not touched and the rest of the spec is kept
byte for byte, so ``[model].sha256`` still matches. How each limit is derived
(and the held-out false-alarm rate of the OOD threshold) is in
``edge_infer/checks/calibrate.py`` and docs/robustness.md.

Only training data is read. For BasicMotions that is the TRAIN split, parsed
by ``scripts/train_model.py``'s own loader (TensorFlow is not needed for
that); the TEST split is the recorded log the result is checked on. A
recorded log is cut into series where its label changes (or its timestamps
jump), each series one clean recording.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_infer.checks.calibrate import (  # noqa: E402
    DEFAULT_FALSE_ALARM_RATE,
    calibrate_spec,
    describe,
    render_tables,
    spec_without_checks,
)
from edge_infer.errors import EdgeInferError  # noqa: E402
from edge_infer.io import read_log  # noqa: E402
from edge_infer.sources.log_replay import channel_columns  # noqa: E402

LOG_SUFFIXES = (".csv", ".mcap")
#: A log cut into fewer series (by labels or time jumps) is cut into about this many pieces, so that the
#: folds can hold some out.
MIN_SERIES = 20


def load_basic_motions_train(path: Optional[str]) -> Tuple[List[np.ndarray], List[str]]:
    """The BasicMotions TRAIN series and labels, via train_model.py's parser (its folder, .ts file or PyPI)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import train_model  # its loader needs numpy only; TensorFlow is imported lazily there

    if path is None:
        train, _ = train_model.load_data(None)
    else:
        ts = Path(path)
        if ts.is_dir():
            ts = ts / train_model.TRAIN_FILE
        train = train_model.parse_ts(ts.read_text())
    return list(train.x), list(train.y)


def load_log_series(path: str, spec_path: str) -> Tuple[List[np.ndarray], Optional[List[str]]]:
    """A recorded log's frames in the spec's channel order, cut into series at label changes or time jumps."""
    spec = spec_without_checks(spec_path)
    log = read_log(path)
    if log.bad_rows:
        print(f"warning: {len(log.bad_rows)} bad rows skipped (first at line {log.bad_rows[0][0]}); "
              "is this log really clean?", file=sys.stderr)
    values = log.values[:, channel_columns(log, spec.channels, len(spec.channels), path)].astype(np.float64)
    period = 1.0 / spec.sample_rate_hz if spec.sample_rate_hz else None
    cuts = np.zeros(len(values), dtype=bool)
    if log.labels is not None:
        cuts[1:] |= np.array(log.labels[1:]) != np.array(log.labels[:-1])
    if period is not None:
        cuts[1:] |= np.diff(log.t) > 1.5 * period
    if cuts.sum() + 1 < MIN_SERIES:  # too few recordings to hold some out: cut them into pieces
        piece = max(2 * spec.window, len(values) // MIN_SERIES)
        cuts[np.arange(piece, len(values) - piece + 1, piece)] = True
    starts = [0, *np.flatnonzero(cuts)]
    ends = [*starts[1:], len(values)]
    kept = [(a, b) for a, b in zip(starts, ends) if b - a >= spec.window]
    series = [values[a:b] for a, b in kept]
    labels = None if log.labels is None else [log.labels[a] for a, _ in kept]
    return series, labels


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="the model spec (.toml) to write the tables into")
    parser.add_argument("--train-data", metavar="PATH",
                        help="clean training data: a recorded log (.csv/.mcap), or the BasicMotions folder or "
                             "TRAIN .ts file (default: BasicMotions TRAIN from the aeon wheel on PyPI)")
    parser.add_argument("--false-alarm-rate", type=float, default=DEFAULT_FALSE_ALARM_RATE,
                        help=f"share of held-out clean windows the OOD threshold may reject "
                             f"(default {DEFAULT_FALSE_ALARM_RATE})")
    parser.add_argument("--stuck-frames", type=int, help="frames a channel must not move to be stuck "
                                                         "(default: half the window)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the folds and series orders (default 0)")
    parser.add_argument("--dry-run", action="store_true", help="print the tables instead of writing them")
    parser.add_argument("--json", action="store_true", help="print what the limits were derived from as JSON")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        if args.train_data and Path(args.train_data).suffix.lower() in LOG_SUFFIXES:
            series, labels = load_log_series(args.train_data, args.spec)
            source = f"{Path(args.train_data).name}"
        else:
            series, labels = load_basic_motions_train(args.train_data)
            source = "the BasicMotions TRAIN split"
        result = calibrate_spec(args.spec, series, labels, source=source, write=not args.dry_run,
                                false_alarm_rate=args.false_alarm_rate, stuck_frames=args.stuck_frames,
                                seed=args.seed)
    except (EdgeInferError, ValueError, OSError) as exc:
        print(f"calibrate_checks: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.report, indent=2))
    elif args.dry_run:
        print(render_tables(result, describe(result, source)), end="")
    else:
        print(describe(result, source))
        print(f"wrote [checks], [checks.policy] and [ood] into {args.spec}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
