"""``edge-infer eval PATH...``: a model over a corpus of recorded logs, in bulk, with the loop's decisions.

"May this model ship?", asked of every log the fleet recorded: per log and
for the corpus, decisions, accuracy, confusion, fallback and flag reasons,
OOD scores, agreement with a baseline, and changes against golden decisions
(docs/eval.md). Exit status: 0, or 1 when a log could not be evaluated or a
golden decision changed (each named on one stderr line), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import List

from ..errors import EdgeInferError
from ..lab.eval.engines import ENGINES, Job, run_local, run_ray
from ..lab.eval.model import EvalOptions, load_model
from ..lab.eval.paths import LogPath, expand
from ..lab.eval.records import COMPARED_FIELDS, record_file_name
from ..lab.eval.run import Outputs
from ..lab.eval.results import LogResult, corpus_summary, format_corpus, golden_lines
from ..lab.report import write_corpus_report
from ..sinks.progress import ProgressBar, wanted
from ..settings import argtypes
from .analysis import add_analysis_options, check_analysis_options
from .common import add_model_options, add_trust_options


def add_parser(sub: "argparse._SubParsersAction") -> None:
    parser = sub.add_parser("eval", help="evaluate a model on many recorded logs, in bulk and in parallel",
                            description="Evaluate a model on a corpus of recorded logs (files, directories, globs of "
                                        ".csv and .mcap): the same decisions as replay, computed in batches, per log "
                                        "and for the corpus; optionally in parallel, on Ray, against golden decisions.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="log files, directories (searched recursively) "
                                                                 "or quoted globs")
    add_model_options(parser)
    add_trust_options(parser)
    parser.add_argument("--strict", action="store_true", help="a bad log row fails its log instead of being skipped")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_analysis_options(parser)
    parser.add_argument("--decisions-dir", metavar="DIR",
                        help="write each log's decision records to DIR/<log name>.jsonl (never overwritten)")
    parser.add_argument("--golden", metavar="DIR", help="compare every log's decisions with DIR/<log name>.jsonl; "
                                                        "exit 1 naming the logs and windows that changed")
    parser.add_argument("--update-golden", action="store_true", help="write the golden decisions to --golden DIR")
    parser.add_argument("--tolerance", type=argtypes.positive_float, metavar="X",
                        help="largest output difference that is no change against --golden "
                             "(default: one quantization step of the output)")
    parser.add_argument("--ignore-fields", metavar="A,B", default="",
                        help=f"record fields --golden does not compare (of: {', '.join(COMPARED_FIELDS)})")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes or Ray actors "
                                                                           "(default 1)")
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local: this machine (default); ray: a Ray cluster (pip install 'edge-infer[cluster]')")
    parser.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to join (ray://HOST:10001 or HOST:6379; "
                                                              "default: start a local Ray)")
    parser.add_argument("--batch", type=int, metavar="N", help="windows per invoke (default: the fastest measured)")
    parser.add_argument("--chunk-rows", type=int, default=EvalOptions.chunk_rows, metavar="N",
                        help=f"log rows read at a time: memory per worker (default {EvalOptions.chunk_rows})")
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    check_analysis_options(args)
    _check_options(args)
    logs = expand(args.paths)
    outputs_dirs(args, logs)
    options = EvalOptions(model=args.model, backend=args.backend, hop=args.hop, budget_ms=args.budget_ms,
                          fallback=args.fallback, strict=args.strict, batch=args.batch, chunk_rows=args.chunk_rows,
                          trusted_keys=tuple(args.trusted_key or ()))
    model = load_model(options)
    baseline = None
    if args.baseline:
        baseline = replace(options, model=args.baseline, batch=None)
        # a broken baseline fails now, with exit 2, not once per log; its batch size is measured once
        baseline = replace(baseline, batch=load_model(baseline).batch)
    outputs = Outputs(decisions_dir=args.decisions_dir, golden_dir=args.golden, update_golden=args.update_golden,
                      tolerance=args.tolerance, ignore_fields=_fields(args.ignore_fields))
    job = Job(options=replace(options, batch=model.batch), baseline=baseline, outputs=outputs)
    bar = ProgressBar(len(logs), "eval", unit="logs") if wanted(args.progress, sys.stderr) else None
    progress = (lambda _result: bar.advance(1)) if bar is not None else None
    started = time.perf_counter()
    try:
        if args.engine == "ray":
            results = run_ray(logs, job, max(args.workers, 1), args.ray_address, progress)
        else:
            results = run_local(logs, job, args.workers, progress, model=model)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - started
    summary = corpus_summary(results, model.describe(), args.baseline, args.engine, max(args.workers, 1), elapsed)
    if args.report:
        write_corpus_report(args.report, summary)
    print(json.dumps(summary) if args.json else format_corpus(summary))
    return _verdict(results, args)


def _check_options(args: argparse.Namespace) -> None:
    if args.workers < 1:
        raise EdgeInferError(f"--workers must be at least 1, not {args.workers}")
    if args.batch is not None and args.batch < 1:
        raise EdgeInferError(f"--batch must be at least 1, not {args.batch}")
    if args.chunk_rows < 1:
        raise EdgeInferError(f"--chunk-rows must be at least 1, not {args.chunk_rows}")
    if args.update_golden and not args.golden:
        raise EdgeInferError("--update-golden needs --golden DIR (where to write them)")
    if args.ray_address and args.engine != "ray":
        raise EdgeInferError("--ray-address needs --engine ray")
    unknown = [f for f in _fields(args.ignore_fields) if f not in COMPARED_FIELDS]
    if unknown:
        raise EdgeInferError(f"--ignore-fields: unknown field {unknown[0]!r} (known: {', '.join(COMPARED_FIELDS)})")


def _fields(text: str) -> List[str]:
    return [f.strip() for f in text.split(",") if f.strip()]


def outputs_dirs(args: argparse.Namespace, logs: List[LogPath]) -> None:
    """Create the output folders; refuse before any work if a decision file would be overwritten."""
    if args.decisions_dir:
        _make_dir(args.decisions_dir, "--decisions-dir")
        existing = [name for name in (record_file_name(log.name) for log in logs)
                    if os.path.exists(os.path.join(args.decisions_dir, name))]
        if existing:
            raise EdgeInferError(f"--decisions-dir {args.decisions_dir} already holds {existing[0]}"
                                 + (f" and {len(existing) - 1} more" if len(existing) > 1 else "")
                                 + "; eval never overwrites decisions (choose an empty folder)")
    if args.golden:
        if args.update_golden:
            _make_dir(args.golden, "--golden")
        elif not os.path.isdir(args.golden):
            raise EdgeInferError(f"--golden {args.golden}: no such directory (write one with --update-golden)")


def _make_dir(path: str, option: str) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgeInferError(f"{option} {path}: cannot create it: {exc.strerror or exc}") from None


def _verdict(results: List[LogResult], args: argparse.Namespace) -> int:
    """One stderr line per failed log and per changed golden log; 1 if there was any."""
    failed = [r for r in results if r.error is not None]
    for result in failed:
        named = result.error if result.path in (result.error or "") else f"log {result.path}: {result.error}"
        print(f"edge-infer: error: {named}", file=sys.stderr)
    changed = [(r.name, r.golden) for r in results if r.golden is not None and not r.golden["same"]]
    for line in golden_lines(changed):
        print(f"edge-infer: {line}", file=sys.stderr)
    if failed or changed:
        print(f"edge-infer: {len(failed)} of {len(results)} logs failed, {len(changed)} changed against golden",
              file=sys.stderr)
        return 1
    return 0
