"""What one log, and a corpus of them, add up to: counts that merge, and the JSON and text made of them.

Everything here is a count or a histogram, never a list per window: a log's
result is the same size for a minute as for a week, travels cheaply from a
worker process or a Ray actor, and the corpus is the sum of its logs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...decide.reasons import Reason
from ...histogram import Histogram
from ...model.spec import Action
from ...sinks.stats import decision_counts
from .batch import Decisions

#: OOD scores are kept in a histogram of thousandths (the precision of a decision record's ood_score).
OOD_UNITS = 1000.0
#: Disagreeing windows listed by seq, per log.
FIRST_DISAGREEMENTS = 10


def comparable(action: Action, label: str) -> bool:
    """Whether an action can be scored against a label (as the run statistics judge it): a bare model's class
    index only against a numeric label."""
    return not isinstance(action, int) or label.lstrip("-").isdigit()


@dataclass
class Tally:
    """Decisions counted: by source and reason, against labels, and the OOD scores."""

    frames: int = 0
    decisions: int = 0
    model_decisions: int = 0
    fallback_decisions: int = 0
    fallback_reasons: Counter = field(default_factory=Counter)
    flagged_reasons: Counter = field(default_factory=Counter)
    confusion: Counter = field(default_factory=Counter)  #: (label, action name) -> windows, comparable pairs only
    ood: Histogram = field(default_factory=Histogram)
    ood_over: int = 0

    def add(self, d: Decisions, actions: Sequence[Action], ood_threshold: Optional[float]) -> None:
        n = len(d)
        self.decisions += n
        fallbacks = int(d.fallback.sum())
        self.fallback_decisions += fallbacks
        self.model_decisions += n - fallbacks
        for is_fallback, counter in ((True, self.fallback_reasons), (False, self.flagged_reasons)):
            codes, counts = np.unique(d.reason[(d.fallback == is_fallback) & (d.reason != 0)], return_counts=True)
            for code, count in zip(codes, counts):
                counter[Reason(int(code)).code] += int(count)
        self._labels(d, actions)
        scored = d.ood[np.isfinite(d.ood)]
        self.ood.record_many(np.round(scored * OOD_UNITS))
        if ood_threshold is not None:
            self.ood_over += int((scored > ood_threshold).sum())

    def _labels(self, d: Decisions, actions: Sequence[Action]) -> None:
        if d.label is None or not len(d):
            return
        names, label_codes = np.unique(d.label, return_inverse=True)
        pairs, counts = np.unique(label_codes * len(actions) + d.action, return_counts=True)
        for pair, count in zip(pairs.tolist(), counts.tolist()):
            label, action = str(names[pair // len(actions)]), actions[pair % len(actions)]
            if comparable(action, label):
                self.confusion[(label, str(action))] += count

    def merge(self, other: "Tally") -> None:
        for name in ("frames", "decisions", "model_decisions", "fallback_decisions", "ood_over"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("fallback_reasons", "flagged_reasons", "confusion"):
            getattr(self, name).update(getattr(other, name))
        self.ood.merge(other.ood)

    @property
    def labelled(self) -> int:
        return sum(self.confusion.values())

    @property
    def accuracy(self) -> Optional[float]:
        correct = sum(n for (label, action), n in self.confusion.items() if label == action)
        return round(correct / self.labelled, 4) if self.labelled else None

    def per_class(self) -> Dict[str, Dict[str, Any]]:
        """Precision and recall per label: of the windows decided as it, of the windows labelled it."""
        labels = sorted({label for label, _ in self.confusion})
        out = {}
        for name in labels:
            hit = self.confusion.get((name, name), 0)
            as_label = sum(n for (label, _), n in self.confusion.items() if label == name)
            as_action = sum(n for (_, action), n in self.confusion.items() if action == name)
            out[name] = {"windows": as_label, "precision": round(hit / as_action, 4) if as_action else None,
                         "recall": round(hit / as_label, 4) if as_label else None}
        return out

    def confusion_matrix(self) -> Dict[str, Dict[str, int]]:
        """``{label: {action: windows}}``."""
        matrix: Dict[str, Dict[str, int]] = {}
        for (label, action), n in sorted(self.confusion.items()):
            matrix.setdefault(label, {})[action] = n
        return matrix

    def ood_summary(self) -> Dict[str, Any]:
        h = self.ood
        out: Dict[str, Any] = {"scored_windows": h.total}
        if h.total:
            out.update({p: h.percentile(q) / OOD_UNITS for p, q in (("p50", 50), ("p90", 90), ("p99", 99))})
            out["max"] = h.max / OOD_UNITS
        out["over_threshold"] = self.ood_over
        return out

    def to_dict(self) -> Dict[str, Any]:
        return {
            **decision_counts(self),
            "accuracy": self.accuracy,
            "labelled_windows": self.labelled,
        }


@dataclass
class Agreement:
    """A candidate against a baseline on the same windows (matched by seq)."""

    baseline: Tally = field(default_factory=Tally)
    compared: int = 0
    disagreements: int = 0
    first: List[int] = field(default_factory=list)
    matrix: Counter = field(default_factory=Counter)  #: (candidate action, baseline action) -> windows

    def add(self, new: Decisions, old: Decisions, new_actions: Sequence[Action],
            old_actions: Sequence[Action]) -> None:
        common, i, j = np.intersect1d(new.seq, old.seq, return_indices=True)
        a = [str(new_actions[k]) for k in new.action[i].tolist()]
        b = [str(old_actions[k]) for k in old.action[j].tolist()]
        self.compared += len(common)
        self.matrix.update(zip(a, b))
        for seq, x, y in zip(common.tolist(), a, b):
            if x != y:
                self.disagreements += 1
                if len(self.first) < FIRST_DISAGREEMENTS:
                    self.first.append(seq)

    def merge(self, other: "Agreement") -> None:
        self.baseline.merge(other.baseline)
        self.compared += other.compared
        self.disagreements += other.disagreements
        self.matrix.update(other.matrix)

    def to_dict(self, model: Optional[str] = None) -> Dict[str, Any]:
        matrix: Dict[str, Dict[str, int]] = {}
        for (a, b), n in sorted(self.matrix.items()):
            matrix.setdefault(a, {})[b] = n
        return {
            "model": model,
            "compared_windows": self.compared,
            "disagreements": self.disagreements,
            "agreement": round(1.0 - self.disagreements / self.compared, 4) if self.compared else None,
            "first_disagreements": self.first,
            "matrix": matrix,
            "summary": self.baseline.to_dict(),
        }


@dataclass
class LogResult:
    """One log's result; ``error`` set (and nothing else trusted) if it could not be read or evaluated."""

    path: str
    name: str
    error: Optional[str] = None
    tally: Tally = field(default_factory=Tally)
    input_checks: Dict[str, Any] = field(default_factory=dict)
    invoke_us: Histogram = field(default_factory=Histogram)
    batch_s: float = 0.0
    rechecked: int = 0
    bad_rows: int = 0
    first_bad_line: Optional[int] = None
    elapsed_s: float = 0.0
    agreement: Optional[Agreement] = None
    golden: Optional[Dict[str, Any]] = None
    decisions_file: Optional[str] = None

    def to_dict(self, budget_ms: float, baseline_model: Optional[str] = None) -> Dict[str, Any]:
        out: Dict[str, Any] = {"path": self.path, "name": self.name}
        if self.error is not None:
            out["error"] = self.error
            return out
        out.update(self.tally.to_dict())
        out.update({
            "bad_rows": self.bad_rows,
            "first_bad_line": self.first_bad_line,
            "input_checks": self.input_checks,
            "ood": self.tally.ood_summary(),
            "invoke_us": invoke_summary(self.invoke_us, budget_ms),
            "elapsed_s": round(self.elapsed_s, 3),
        })
        if self.decisions_file:
            out["decisions_file"] = self.decisions_file
        if self.agreement is not None:
            out["baseline"] = self.agreement.to_dict(baseline_model)
        if self.golden is not None:
            out["golden"] = self.golden
        return out


def invoke_summary(histogram: Histogram, budget_ms: float) -> Dict[str, Any]:
    """Single-window invoke times (sampled) against the budget: how a device like this one would fare."""
    out: Dict[str, Any] = {"samples": histogram.total}
    out.update(histogram.summary((50, 99, 99.9)))
    budget_us = budget_ms * 1000.0
    over = sum(c for i, c in enumerate(histogram.counts) if c and _lower_edge(i) > budget_us)
    out["over_budget"] = over
    return out


def _lower_edge(index: int) -> int:
    """The smallest value a histogram bucket holds (a bucket's values are all over the budget from there)."""
    sub, half = 128, 64
    if index < sub:
        return index
    shift, offset = divmod(index - sub, half)
    return (offset + half) << (shift + 1)


def corpus_summary(results: Sequence[LogResult], model: Dict[str, Any], baseline_model: Optional[str],
                   engine: str, workers: int, elapsed_s: float) -> Dict[str, Any]:
    """The ``--json`` object: the corpus first, then ``per_log``."""
    tally, invoke, agreement = Tally(), Histogram(), None
    checks: Counter = Counter()
    windows = 0
    golden_changed: List[str] = []
    for result in results:
        if result.error is not None:
            continue
        tally.merge(result.tally)
        invoke.merge(result.invoke_us)
        checks.update(result.input_checks.get("failed", {}))
        windows += result.input_checks.get("windows", 0)
        if result.agreement is not None:
            agreement = agreement or Agreement()
            agreement.merge(result.agreement)
        if result.golden is not None and not result.golden["same"]:
            golden_changed.append(result.name)
    failed = [r for r in results if r.error is not None]
    out: Dict[str, Any] = {"logs": len(results), "failed_logs": len(failed)}
    out.update(tally.to_dict())
    out.update({
        "confusion": tally.confusion_matrix(),
        "per_class": tally.per_class(),
        "input_checks": {"windows": windows, "failed": dict(sorted(checks.items()))},
        "ood": tally.ood_summary(),
        "invoke_us": invoke_summary(invoke, model["budget_ms"]),
        "timing_reasons": "not evaluated: offline every window gets the model's answer; invoke_us is the "
                          "single-window invoke time on this machine, over_budget counts samples beyond budget_ms",
        **model,
        "engine": engine,
        "workers": workers,
        "elapsed_s": round(elapsed_s, 3),
        "batch_invoke_s": round(sum(r.batch_s for r in results), 3),
    })
    if agreement is not None:
        out["baseline"] = agreement.to_dict(baseline_model)
        out["baseline"].pop("first_disagreements")
    if any(r.golden is not None for r in results):
        out["golden"] = {"changed_logs": golden_changed,
                         "changed_windows": sum(r.golden["changed_windows"] for r in results if r.golden)}
    out["per_log"] = [r.to_dict(model["budget_ms"], baseline_model) for r in results]
    return out


def format_corpus(summary: Dict[str, Any]) -> str:
    """The human summary: the corpus, then one line per log."""
    inv, ood = summary["invoke_us"], summary["ood"]
    lines = [
        f"{summary['decisions']} decisions on {summary['frames']} frames of {summary['logs']} logs in "
        f"{summary['elapsed_s']:.2f} s — model {summary['model']} on {summary['backend']}, batch {summary['batch']}, "
        f"{summary['workers']} worker(s), engine {summary['engine']}",
        f"  model: {summary['model_decisions']}  fallback: {summary['fallback_decisions']}"
        + (f" ({_counts(summary['fallback_reasons'])})" if summary["fallback_reasons"] else ""),
    ]
    if summary["flagged_reasons"]:
        lines.append(f"  flagged model decisions: {_counts(summary['flagged_reasons'])}")
    if summary["accuracy"] is not None:
        lines.append(f"  accuracy {summary['accuracy']:.3f} over {summary['labelled_windows']} labelled windows")
        lines.append("  per class (precision/recall): " + ", ".join(
            f"{name} {_pct(v['precision'])}/{_pct(v['recall'])}" for name, v in summary["per_class"].items()))
    if ood.get("scored_windows"):
        lines.append(f"  ood score p50 {ood['p50']:g}  p99 {ood['p99']:g}  max {ood['max']:g}; "
                     f"{ood['over_threshold']} windows over the threshold")
    lines.append(f"  single invoke us p50 {inv['p50']}  p99 {inv['p99']}  max {inv['max']} ({inv['samples']} sampled; "
                 f"{inv['over_budget']} over the {summary['budget_ms']:g} ms budget; timing reasons not evaluated)")
    if "baseline" in summary:
        b = summary["baseline"]
        lines.append(f"  baseline {b['model']}: agreement {_pct(b['agreement'])} over {b['compared_windows']} "
                     f"windows ({b['disagreements']} disagree); its accuracy {b['summary']['accuracy']}")
    if "golden" in summary:
        g = summary["golden"]
        lines.append(f"  golden: {g['changed_windows']} windows changed in {len(g['changed_logs'])} logs"
                     + (f" ({', '.join(g['changed_logs'][:5])})" if g["changed_logs"] else ""))
    for log in summary["per_log"]:
        if "error" in log:
            lines.append(f"  {log['name']}: ERROR {log['error']}")
            continue
        acc = "-" if log["accuracy"] is None else f"{log['accuracy']:.3f}"
        reasons = _counts(log["fallback_reasons"]) or "none"
        lines.append(f"  {log['name']}: {log['decisions']} decisions, accuracy {acc}, fallbacks {reasons}")
    return "\n".join(lines)


def _counts(counts: Dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


def golden_lines(changes: Sequence[Tuple[str, Dict[str, Any]]]) -> List[str]:
    """One line per changed log for stderr: the log and its first changed windows."""
    lines = []
    for name, golden in changes:
        first = ", ".join(f"seq {c['seq']} ({', '.join(c['fields'])})" for c in golden["first_changes"][:5])
        extra = f"; {golden['problem']}" if golden.get("problem") else ""
        lines.append(f"golden decisions changed in {name}: {golden['changed_windows']} windows"
                     + (f", first {first}" if first else "") + extra)
    return lines
