"""What ``replay`` can do beyond the summary: ``--report`` (HTML), ``--baseline`` (compare two models), progress.

The replay is the lab's "may this model ship?" check. ``--baseline OLD``
replays the model in the field on the same log with the same options and
says where the candidate disagrees; ``--report`` draws it all into one HTML
file. Both need every decision, so a :class:`CollectSink` is attached only
when one of them is asked for; the progress bar only on a terminal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import EdgeInferError
from ..lab.compare import compare_runs, format_comparison
from ..lab.report import Baseline, require_matplotlib, write_report
from ..model.loader import verify_model_bundle
from ..sinks.collect import CollectSink
from ..sinks.progress import ProgressBar, wanted
from .common import log_runtime, run_until_stopped


def add_analysis_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report", metavar="FILE.html",
                        help="write an HTML report with plots (needs matplotlib: pip install matplotlib (the 'report' extra))")
    parser.add_argument("--baseline", metavar="SPEC_OR_TFLITE",
                        help="also replay this model (the one in the field) with the same options and report "
                             "where --model disagrees with it; the exit code stays 0")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="a progress bar on stderr (default: only when stderr is a terminal)")


def check_analysis_options(args: argparse.Namespace) -> None:
    """Fail before a long replay, not after it."""
    if args.report:
        if not args.report.lower().endswith((".html", ".htm")):
            raise EdgeInferError(f"--report {args.report}: the report is an HTML file; name it with .html")
        require_matplotlib()
    if args.baseline and not Path(args.baseline).is_file():
        raise EdgeInferError(f"--baseline {args.baseline}: no such file (a model spec .toml or a .tflite)")
    if args.baseline and _is_spec(args.model) != _is_spec(args.baseline):
        spec, bare = (args.model or "the bundled model", args.baseline) if _is_spec(args.model) \
            else (args.baseline, args.model)
        raise EdgeInferError(f"--baseline: {bare} is a bare model (actions are class indices) but {spec} has a "
                             "spec (actions are labels), so every window would disagree; compare spec with spec "
                             "(write a .toml for the bare model) or bare with bare")
    if args.baseline and getattr(args, "trusted_key", None):
        verify_model_bundle(args.baseline, args.trusted_key)  # the baseline runs too: refuse it now, not later


def _is_spec(model: Optional[str]) -> bool:
    """True for a spec (.toml; no --model is the bundled spec), False for a bare .tflite."""
    return model is None or Path(model).suffix.lower() == ".toml"


class Analysis:
    """Collects what ``--report``/``--baseline`` need from a replay and produces them after it."""

    def __init__(self, args: argparse.Namespace, runtime: Any):
        self.args = args
        self.runtime = runtime
        self.comparison: Optional[Dict[str, Any]] = None
        self.run = self._watch(runtime, "candidate" if args.baseline else "replay", frames=bool(args.report))

    def _watch(self, runtime: Any, label: str, frames: bool) -> Optional[CollectSink]:
        rows = runtime.source.counters().get("rows")
        if rows and wanted(self.args.progress, sys.stderr):
            runtime.sinks.append(ProgressBar(rows, label))
        if not (self.args.report or self.args.baseline):
            return None
        collector = CollectSink(frames=frames)
        runtime.sinks.append(collector)
        return collector

    def finish(self, summary: Dict[str, Any]) -> None:
        """After the candidate's replay: replay the baseline, compare, write the report."""
        baseline = None
        if self.args.baseline:
            baseline = self._replay_baseline(summary)
            summary["baseline"] = self.comparison = baseline.comparison
        if self.args.report:
            write_report(self.args.report, summary, self.run, self.runtime.source.channels, self.args.log, baseline)

    def _replay_baseline(self, summary: Dict[str, Any]) -> Baseline:
        options = argparse.Namespace(**{**vars(self.args), "model": self.args.baseline, "decisions": None,
                                        "show": "none", "record": None, "json": True})
        runtime = log_runtime(options, self.args.log)
        collector = self._watch(runtime, "baseline", frames=False)
        old_summary = run_until_stopped(runtime, self.args.duration)
        return Baseline(collector, compare_runs(self.run, collector, old_summary))

    def text(self, summary: Dict[str, Any]) -> Optional[str]:
        """The human comparison block (None without a baseline)."""
        return None if self.comparison is None else format_comparison(self.comparison, summary)
