"""Run statistics: a sink that counts what the loop did and renders the summary.

The same numbers serve ``replay --json`` (is this model fit to ship?), the
human summary at the end of ``run`` and, over weeks, the service's status
line: constant memory (histograms, counters), nothing kept per decision.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, Optional, Sequence

from ..checks.guard import format_input_checks
from ..deadline.edf import describe_shared
from ..deadline.scheduler import describe_counters
from ..decide.decision import Decision
from ..frame import Frame
from ..histogram import Histogram
from .base import Sink


class SinkTime:
    """Time spent in the sinks per decision: mean and max (two additions per decision, on the hot path)."""

    __slots__ = ("count", "total_ns", "max_ns")

    def __init__(self) -> None:
        self.count = 0
        self.total_ns = 0
        self.max_ns = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.total_ns += ns
        if ns > self.max_ns:
            self.max_ns = ns

    def summary(self) -> Dict[str, float]:
        return {"mean": round(self.total_ns / self.count / 1000.0, 1) if self.count else 0.0,
                "max": round(self.max_ns / 1000.0, 1)}


def decision_counts(stats: Any) -> Dict[str, Any]:
    """The counts every summary starts with, from anything that keeps them under these names (the loop's
    :class:`RunStats`, ``eval``'s per-log results), so that ``replay --json`` and ``eval --json`` agree."""
    return {
        "frames": stats.frames,
        "decisions": stats.decisions,
        "model_decisions": stats.model_decisions,
        "fallback_decisions": stats.fallback_decisions,
        "fallback_reasons": dict(sorted(stats.fallback_reasons.items())),
        "flagged_reasons": dict(sorted(stats.flagged_reasons.items())),
    }


class RunStats(Sink):
    """Counts frames, decisions by source and reason, late decisions, latencies and accuracy."""

    def __init__(self, budget_ms: float):
        self.budget_us = budget_ms * 1000.0
        self.frames = 0
        self.decisions = 0
        self.model_decisions = 0
        self.fallback_decisions = 0
        self.fallback_reasons: Counter = Counter()
        self.flagged_reasons: Counter = Counter()
        self.late_decisions = 0
        self.labelled = 0
        self.correct = 0
        self.latency_us = Histogram()
        self.invoke_us = Histogram()
        #: Time the loop spent in all sinks per decision (the runtime records it; the device sink is in it).
        self.sink_time = SinkTime()
        self.last_latency_us = 0.0  # for the service's status line
        self.last_reason: Optional[str] = None  # the last decision's reason code (status line of a stream)

    def on_frame(self, frame: Frame) -> None:
        self.frames += 1

    def on_decision(self, decision: Decision) -> None:
        self.decisions += 1
        reason, latency_us, invoke_us, label = decision.reason, decision.latency_us, decision.invoke_us, decision.label
        code = None if reason is None else reason.code
        if decision.source == "fallback":
            self.fallback_decisions += 1
            self.fallback_reasons[code or "unknown"] += 1
        else:
            self.model_decisions += 1
            if code is not None:
                self.flagged_reasons[code] += 1
        if latency_us > self.budget_us:
            self.late_decisions += 1
        self.latency_us.record(latency_us)
        self.last_latency_us = latency_us
        self.last_reason = code
        if invoke_us is not None:
            self.invoke_us.record(invoke_us)
        if label is not None and _comparable(decision.action, label):
            self.labelled += 1
            self.correct += str(decision.action) == label

    @classmethod
    def total(cls, parts: "Sequence[RunStats]", latencies: bool = True) -> "RunStats":
        """The counts of several streams added up (the summary's totals); the budget is the smallest one.

        ``latencies=False`` leaves the histograms empty: the status line, built on the loop's thread once a
        second, needs only the counts (merging 2 x N histograms costs milliseconds).
        """
        out = cls(min(p.budget_us for p in parts) / 1000.0 if parts else 0.0)
        for part in parts:
            for name in ("frames", "decisions", "model_decisions", "fallback_decisions", "late_decisions",
                         "labelled", "correct"):
                setattr(out, name, getattr(out, name) + getattr(part, name))
            out.fallback_reasons.update(part.fallback_reasons)
            out.flagged_reasons.update(part.flagged_reasons)
            out.sink_time.count += part.sink_time.count
            out.sink_time.total_ns += part.sink_time.total_ns
            out.sink_time.max_ns = max(out.sink_time.max_ns, part.sink_time.max_ns)
            if latencies:
                out.latency_us.merge(part.latency_us)
                out.invoke_us.merge(part.invoke_us)
        if parts:
            out.last_latency_us = max(p.last_latency_us for p in parts)
        return out

    @property
    def accuracy(self) -> Optional[float]:
        return self.correct / self.labelled if self.labelled else None

    def to_dict(self) -> Dict[str, Any]:
        """The counting part of the JSON summary (the runner adds backend, model, source counters)."""
        return {
            **decision_counts(self),
            "late_decisions": self.late_decisions,
            "budget_ms": self.budget_us / 1000.0,
            "latency_us": self.latency_us.summary((50, 99, 99.9)),
            "invoke_us": self.invoke_us.summary((50, 99, 99.9)),
            "sink_us": self.sink_time.summary(),
            "accuracy": None if self.accuracy is None else round(self.accuracy, 4),
            "labelled_windows": self.labelled,
        }


def format_summary(summary: Dict[str, Any]) -> str:
    """The short human summary printed at the end of a run."""
    lat, inv = summary["latency_us"], summary["invoke_us"]
    lines = [
        f"{summary['decisions']} decisions on {summary['frames']} frames in {summary.get('elapsed_s', 0):.2f} s "
        f"— model {summary.get('model', '?')} on {summary.get('backend', '?')}",
        f"  model: {summary['model_decisions']}  fallback: {summary['fallback_decisions']}"
        + (f" ({_counts(summary['fallback_reasons'])})" if summary["fallback_reasons"] else "")
        + f"  late: {summary['late_decisions']} (budget {summary['budget_ms']:g} ms)",
        f"  latency us p50 {lat['p50']}  p99 {lat['p99']}  max {lat['max']}"
        f"   invoke us p50 {inv['p50']}  p99 {inv['p99']}  max {inv['max']}",
    ]
    if summary["accuracy"] is not None:
        lines.append(f"  accuracy {summary['accuracy']:.3f} over {summary['labelled_windows']} labelled windows")
    if summary.get("flagged_reasons"):
        lines.append(f"  flagged model decisions: {_counts(summary['flagged_reasons'])}")
    if summary.get("input_checks"):
        lines.append(format_input_checks(summary["input_checks"]))
    scheduler = summary.get("scheduler")
    if isinstance(scheduler, list):  # several streams: one line per shared model
        lines.extend(describe_shared(counters) for counters in scheduler)
    elif scheduler:
        lines.append(describe_counters(scheduler))
    bad = summary.get("source", {}).get("bad_rows", 0)
    if bad:
        lines.append(f"  skipped {bad} bad log rows (first at line {summary['source'].get('first_bad_line')})")
    for stream in summary.get("streams", ()):
        lines.append(format_stream(stream))
    return "\n".join(lines)


def format_stream(stream: Dict[str, Any]) -> str:
    """One line per stream of a many-stream run: its state and what it decided."""
    reasons = f" ({_counts(stream['fallback_reasons'])})" if stream["fallback_reasons"] else ""
    return (f"  stream {stream['stream']} [{stream.get('state', '?')}]: {stream['decisions']} decisions, model "
            f"{stream['model_decisions']}, fallback {stream['fallback_decisions']}{reasons}, late "
            f"{stream['late_decisions']}, latency us p99 {stream['latency_us']['p99']}")


def _counts(counts: Dict[str, int]) -> str:
    """``deadline 3, busy 1``: reason counts for a person to read."""
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def _comparable(action: object, label: str) -> bool:
    """Whether an action and a label can be compared: a bare model's class index cannot be scored against a
    class name (its accuracy would read 0 instead of unknown); a name or a numeric label can."""
    return not isinstance(action, int) or label.lstrip("-").isdigit()
