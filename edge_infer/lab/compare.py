"""Compare a candidate model with the one in the field, window by window, on the same recorded log.

The check a team runs before pushing a model to devices: where do the two
disagree, which way (a matrix of candidate action by baseline action), and
how do accuracy, fallbacks and latency compare. Windows are matched by
``seq`` (the frame that completed them), so models with different windows
or hops are compared where both decided; the rest is counted, not hidden.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List

import numpy as np

from ..sinks.collect import CollectSink

#: How many disagreeing windows are listed by seq.
FIRST_DISAGREEMENTS = 10
#: Summary numbers shown side by side: (label, key, sub-key or None).
SIDE_BY_SIDE = (
    ("decisions", "decisions", None),
    ("accuracy", "accuracy", None),
    ("fallback decisions", "fallback_decisions", None),
    ("late decisions", "late_decisions", None),
    ("latency us p50", "latency_us", "p50"),
    ("latency us p99", "latency_us", "p99"),
    ("latency us max", "latency_us", "max"),
    ("invoke us p50", "invoke_us", "p50"),
    ("invoke us p99", "invoke_us", "p99"),
)


def compare_runs(new: CollectSink, old: CollectSink, old_summary: Dict[str, Any]) -> Dict[str, Any]:
    """The ``"baseline"`` object of ``replay --baseline --json`` (README: "Comparing with a baseline")."""
    common, new_at, old_at = np.intersect1d(new.column("seq"), old.column("seq"),
                                            return_indices=True)
    new_actions, old_actions = new.action_names(), old.action_names()
    pairs = [(new_actions[i], old_actions[j]) for i, j in zip(new_at, old_at)]
    differ = [seq for seq, (a, b) in zip(common.tolist(), pairs) if a != b]
    matrix: Dict[str, Dict[str, int]] = {}
    for (a, b), count in sorted(Counter(pairs).items()):
        matrix.setdefault(a, {})[b] = count
    return {
        "model": old_summary.get("model"),
        "summary": old_summary,
        "compared_windows": len(pairs),
        "only_new_windows": len(new) - len(pairs),
        "only_baseline_windows": len(old) - len(pairs),
        "disagreements": len(differ),
        "disagreement_rate": round(len(differ) / len(pairs), 4) if pairs else None,
        "first_disagreements": differ[:FIRST_DISAGREEMENTS],
        "matrix": matrix,
    }


def key_numbers(summary: Dict[str, Any]) -> List[List[str]]:
    """Rows of (what, value): the numbers that decide whether a model may ship."""
    return [[label, _pick(summary, key, sub)] for label, key, sub in SIDE_BY_SIDE]


def side_by_side(new_summary: Dict[str, Any], old_summary: Dict[str, Any]) -> List[List[str]]:
    """Rows of (what, candidate, baseline) for the human summary and the report."""
    return [[label, new, old] for (label, new), (_, old) in zip(key_numbers(new_summary), key_numbers(old_summary))]


def _pick(summary: Dict[str, Any], key: str, sub: Any) -> str:
    value = summary.get(key)
    if sub is not None and isinstance(value, dict):
        value = value.get(sub)
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def format_comparison(comparison: Dict[str, Any], new_summary: Dict[str, Any]) -> str:
    """The human block printed after the candidate's summary."""
    old = comparison["summary"]
    lines = [f"compared with baseline {comparison['model']} on {comparison['compared_windows']} windows: "
             f"{comparison['disagreements']} disagree"
             + (f" ({comparison['disagreement_rate']:.1%})" if comparison["disagreement_rate"] is not None else "")]
    if comparison["first_disagreements"]:
        lines.append(f"  first at seq {', '.join(map(str, comparison['first_disagreements']))}")
    if comparison["only_new_windows"] or comparison["only_baseline_windows"]:
        lines.append(f"  decided by one model only: {comparison['only_new_windows']} (candidate), "
                     f"{comparison['only_baseline_windows']} (baseline)")
    rows = [["", f"candidate {new_summary.get('model', '')}", f"baseline {comparison['model']}"]]
    rows += side_by_side(new_summary, old)
    lines += _table(rows)
    if comparison["disagreements"]:
        lines.append("  disagreements (candidate -> baseline: windows)")
        for new_action, row in comparison["matrix"].items():
            for old_action, count in row.items():
                if new_action != old_action:
                    lines.append(f"    {new_action} -> {old_action}: {count}")
    return "\n".join(lines)


def _table(rows: List[List[str]]) -> List[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def disagreement_matrix(comparison: Dict[str, Any]) -> "tuple[List[str], List[str], np.ndarray]":
    """The matrix as (candidate actions, baseline actions, counts) for plotting."""
    rows = sorted(comparison["matrix"])
    cols = sorted({b for row in comparison["matrix"].values() for b in row})
    counts = np.array([[comparison["matrix"][a].get(b, 0) for b in cols] for a in rows], dtype=np.int64)
    return rows, cols, counts
