"""The replay report: one standalone HTML file with the plots a person needs to judge a model on a log.

What the summary's numbers cannot show: *where* in the log the model fell
back or was wrong, what the sensors did there, how the latency spreads
against the budget, which classes it confuses, and -- with a baseline --
where a candidate model departs from the one in the field. Every plot is a
PNG embedded as base64, so the file can be mailed or attached to a review
and opened anywhere without the data or edge-infer.

matplotlib is an optional extra (``pip install matplotlib (the 'report' extra)``),
imported only here and only when a report is asked for; the figures are
drawn with the object API on the Agg canvas (no display, no pyplot state).
"""

from __future__ import annotations

import base64
import datetime
import html
import io
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .._version import __version__
from ..decide.reasons import Reason
from ..errors import EdgeInferError
from ..io.files import replace_atomically
from ..sinks.collect import CollectSink
from .compare import disagreement_matrix, key_numbers, side_by_side

#: Points per channel drawn in the timeline; longer logs are thinned by a stride (min/max would hide nothing
#: more at this width: the figure is ~1200 px wide).
MAX_TIMELINE_POINTS = 20_000
FIGURE_WIDTH_IN = 12.0
DPI = 100
MODEL_COLOUR = "#2ca02c"
FALLBACK_COLOUR = "#d62728"


def require_matplotlib() -> Any:
    """Fail early, before a long replay, if the report cannot be drawn."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise EdgeInferError("--report needs matplotlib: pip install matplotlib (the 'report' extra)") from None
    return Figure


class Baseline:
    """What the report needs of a baseline run: its decisions and the comparison."""

    def __init__(self, run: CollectSink, comparison: Dict[str, Any]):
        self.run = run
        self.comparison = comparison


def write_report(path: str, summary: Dict[str, Any], run: CollectSink, channels: Sequence[str], log_name: str,
                 baseline: Optional[Baseline] = None) -> None:
    """Draw the figures and write the HTML file to ``path``."""
    html_text = render_report(summary, run, channels, log_name, baseline)
    replace_atomically(path, html_text.encode("utf-8"), "report")  # a view of the replay: made again, whole


def render_report(summary: Dict[str, Any], run: CollectSink, channels: Sequence[str], log_name: str,
                  baseline: Optional[Baseline] = None) -> str:
    """The report as HTML text."""
    figure = require_matplotlib()
    colours = _Palette(_ordered(run.actions.values, run.labels.values,
                                baseline.run.actions.values if baseline else ()))
    matrices = []
    if (run.column("label") >= 0).any():
        matrices.append(("Confusion matrix", "Decisions against the label of each window's last frame.",
                         _png(_confusion(figure, run, summary.get("accuracy")))))
    if baseline is not None:
        matrices.append(("Candidate against baseline", "Windows both models decided, candidate action by "
                                                       "baseline action; off the diagonal they disagree.",
                         _png(_disagreements(figure, baseline.comparison))))
    rows = [
        [("Timeline", "Sensor channels, and each decision over the frames it decided: the action (colour), "
                      "model or fallback, the label and wrong decisions where the log has labels.",
          _png(_timeline(figure, run, channels, colours, baseline)))],
        [("Latency", "From the receipt of a window's last frame to the decision, against the budget.",
          _png(_latency(figure, run, summary["budget_ms"])))],
        [("Fallback reasons over time", "When the runtime did not use the model's answer, and why.",
          _png(_reasons(figure, run)))],
        matrices,
    ]
    return _html(summary, log_name, [row for row in rows if row], baseline)


# --- figures -----------------------------------------------------------------------------------------------------

class _Palette:
    """One colour per action or label name, the same in every figure, none of them the model/fallback colours."""

    def __init__(self, names: Sequence[str]):
        from matplotlib import colormaps
        tab10, tab20b = colormaps["tab10"], colormaps["tab20b"]
        colours = [tab10(i) for i in (0, 1, 4, 5, 6, 7, 8, 9)] + [tab20b(i) for i in range(tab20b.N)]
        self.colours = {name: colours[i % len(colours)] for i, name in enumerate(sorted(names))}

    def __getitem__(self, name: str) -> Any:
        return self.colours[name]


def _ordered(*groups: Iterable[Any]) -> List[str]:
    names: List[str] = []
    for group in groups:
        for value in group:
            if str(value) not in names:
                names.append(str(value))
    return names


def _spans(run: CollectSink) -> Tuple[np.ndarray, np.ndarray]:
    """Each decision drawn over the frames since the previous one: (start, width) in seconds."""
    t = run.column("t")
    if len(t) == 0:
        return t, t
    step = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
    start = np.concatenate(([t[0] - step], t[:-1]))
    return start, np.maximum(t - start, 1e-9)


def _timeline(figure: Any, run: CollectSink, channels: Sequence[str], colours: _Palette,
              baseline: Optional[Baseline]) -> Any:
    fig = figure(figsize=(FIGURE_WIDTH_IN, 5.5), dpi=DPI, layout="constrained")
    sensors, strips = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    frame_t, values = run.column("frame_t"), run.frame_matrix()
    stride = max(1, len(frame_t) // MAX_TIMELINE_POINTS)
    for i, name in enumerate(channels[:values.shape[1]]):
        sensors.plot(frame_t[::stride], values[::stride, i], linewidth=0.7, label=name)
    sensors.set_ylabel("sensor value")
    sensors.legend(loc="upper right", ncol=min(len(channels), 6), fontsize="small")
    if stride > 1:
        sensors.set_title(f"every {stride}th frame shown", fontsize="small", loc="left")
    rows = _strip_rows(run, colours, baseline)
    start, width = _spans(run)
    for y, (name, kinds) in enumerate(rows):
        for kind, mask, colour, hatch in kinds:
            ranges = list(zip(start[mask], width[mask]))
            if ranges:
                strips.broken_barh(ranges, (y - 0.4, 0.8), facecolors=colour, hatch=hatch, linewidth=0,
                                   edgecolor="white" if hatch else "none", label=kind)
    strips.set_yticks(range(len(rows)), [name for name, _ in rows])
    strips.set_xlabel("t (s)")
    handles = [_patch(colours[name], name) for name in colours.colours]
    handles += [_patch(MODEL_COLOUR, "source: model"), _patch(FALLBACK_COLOUR, "source: fallback"),
                _patch("white", "decision: fallback", hatch="////")]
    strips.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    return fig


def _strip_rows(run: CollectSink, colours: _Palette,
                baseline: Optional[Baseline]) -> List[Tuple[str, List[Tuple[str, Any, Any, Any]]]]:
    """Bottom-up rows of the decision strip: (row name, [(legend, mask, colour, hatch)])."""
    actions = np.array(run.action_names(), dtype=object)
    fallback = run.column("fallback").astype(bool)
    rows = [("source", [("model", ~fallback, MODEL_COLOUR, None), ("fallback", fallback, FALLBACK_COLOUR, None)]),
            ("decision", [(a, (actions == a) & (fallback == is_fallback), colours[a], "////" if is_fallback else None)
                          for a in _ordered(actions) for is_fallback in (False, True)])]
    labels = np.array(run.label_names(run.label), dtype=object)
    has_label = labels != None  # noqa: E711 - elementwise on an object array
    if has_label.any():
        rows.append(("wrong", [("wrong", has_label & (labels != actions), "black", None)]))
        rows.append(("label", [(a, labels == a, colours[a], None) for a in _ordered(labels[has_label])]))
    if baseline is not None:
        old = dict(zip(baseline.run.column("seq").tolist(), baseline.run.action_names()))
        old_actions = np.array([old.get(s) for s in run.column("seq").tolist()], dtype=object)
        rows.append(("disagree", [("disagree", (old_actions != None) & (old_actions != actions),  # noqa: E711
                                   "black", None)]))
        rows.append(("baseline", [(a, old_actions == a, colours[a], None) for a in _ordered(old_actions)
                                  if a is not None]))
    return rows


def _patch(colour: Any, label: str, hatch: Optional[str] = None) -> Any:
    from matplotlib.patches import Patch
    return Patch(facecolor=colour, label=label, hatch=hatch, edgecolor="grey" if hatch else None)


def _latency(figure: Any, run: CollectSink, budget_ms: float) -> Any:
    fig = figure(figsize=(FIGURE_WIDTH_IN, 3.0), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    latency, invoke = run.column("latency_us"), run.column("invoke_us")
    invoke = invoke[np.isfinite(invoke)]
    budget_us = budget_ms * 1000.0
    # log-spaced bins on a log axis: a 50 us median and a 20 ms budget both stay readable
    low = max(1.0, float(min(latency.min(), invoke.min() if len(invoke) else np.inf)) if len(latency) else 1.0)
    high = max(float(latency.max()) if len(latency) else 1.0, budget_us)
    bins = np.geomspace(low / 1.1, high * 1.1, 80)
    latency = np.maximum(latency, low)
    ax.hist(latency, bins=bins, color="#1f77b4", alpha=0.75, label=f"decision latency ({len(latency)})")
    if len(invoke):
        ax.hist(invoke, bins=bins, color="#ff7f0e", alpha=0.6, label=f"model invoke ({len(invoke)})")
    ax.axvline(budget_us, color=FALLBACK_COLOUR, linewidth=2, label=f"budget {budget_ms:g} ms")
    late = int((latency > budget_us).sum())
    ax.set_title(f"{late} of {len(latency)} decisions over the budget", loc="left", fontsize="medium")
    ax.set_xscale("log")
    ax.set_xlabel("microseconds (log scale)")
    ax.set_ylabel("decisions")
    ax.set_yscale("log")
    ax.legend(loc="upper right")
    return fig


def _reasons(figure: Any, run: CollectSink) -> Any:
    codes = run.column("reason")
    fallback = run.column("fallback").astype(bool)
    present = [r for r in Reason if r is not Reason.NONE and (fallback & (codes == int(r))).any()]
    fig = figure(figsize=(FIGURE_WIDTH_IN, 1.2 + 0.45 * max(len(present), 1)), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    t = run.column("t")
    if not present:
        ax.text(0.5, 0.5, "no fallback decisions", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    for y, reason in enumerate(present):
        at = t[fallback & (codes == int(reason))]
        ax.eventplot(at, lineoffsets=y, linelengths=0.8, colors=FALLBACK_COLOUR)
    ax.set_yticks(range(len(present)), [f"{r.code} ({int((fallback & (codes == int(r))).sum())})" for r in present])
    if len(t):
        ax.set_xlim(float(t[0]), float(t[-1]) + 1e-9)
    ax.set_xlabel("t (s)")
    return fig


def _heatmap(figure: Any, rows: Sequence[str], cols: Sequence[str], counts: np.ndarray, ylabel: str, xlabel: str,
             title: str) -> Any:
    size = max(3.0, 0.45 * max(len(rows), len(cols)) + 1.5)
    fig = figure(figsize=(size + 1.0, size), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    high = counts.max() if counts.size else 0
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > high / 2 else "black")
    return fig


def confusion_counts(run: CollectSink) -> Tuple[List[str], List[str], np.ndarray]:
    """(labels, actions, counts[label, action]) over the labelled windows."""
    labels = run.label_names(run.label)
    actions = run.action_names()
    pairs = [(label, action) for label, action in zip(labels, actions) if label is not None]
    rows = sorted({label for label, _ in pairs})
    cols = rows + sorted({action for _, action in pairs} - set(rows))  # the diagonal is "right"
    counts = np.zeros((len(rows), len(cols)), dtype=np.int64)
    for label, action in pairs:
        counts[rows.index(label), cols.index(action)] += 1
    return rows, cols, counts


def _confusion(figure: Any, run: CollectSink, accuracy: Optional[float]) -> Any:
    rows, cols, counts = confusion_counts(run)
    title = f"accuracy {accuracy:.3f}" if accuracy is not None else ""
    return _heatmap(figure, rows, cols, counts, "label", "decision", title)


def _disagreements(figure: Any, comparison: Dict[str, Any]) -> Any:
    rows, cols, counts = disagreement_matrix(comparison)
    return _heatmap(figure, rows, cols, counts, "candidate", "baseline",
                    f"{comparison['disagreements']} of {comparison['compared_windows']} windows disagree")


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# --- HTML ----------------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1240px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { padding: 2px 12px; text-align: left; }
tr:nth-child(even) { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } p.note { color: #555; }
div.row { display: flex; gap: 3em; align-items: flex-start; } div.row > section { flex: 0 1 auto; min-width: 0; }
"""


def _rows(summary: Dict[str, Any], prefix: str = "") -> List[Tuple[str, Any]]:
    rows: List[Tuple[str, Any]] = []
    for key, value in summary.items():
        if key == "baseline":
            continue
        if isinstance(value, dict) and value:
            rows += _rows(value, f"{prefix}{key}.")
        elif not isinstance(value, dict):
            rows.append((prefix + key, value))
    return rows


def _table(rows: Iterable[Sequence[Any]], header: Optional[Sequence[str]] = None) -> str:
    def cell(value: Any) -> str:
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ('<td class="num">' if numeric else "<td>") + html.escape("-" if value is None else str(value)) + "</td>"

    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if header else ""
    return "<table>" + head + "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows) + "</table>"


def _html(summary: Dict[str, Any], log_name: str, rows: List[List[Tuple[str, str, str]]],
          baseline: Optional[Baseline]) -> str:
    """Key numbers (and the baseline's beside them) first, then the plots, a row at a time; every number last."""
    model = summary.get("model", "?")
    title = f"edge-infer replay report: {model} on {log_name}"
    reasons = ", ".join(f"{k} {v}" for k, v in summary.get("fallback_reasons", {}).items()) or "none"
    heads = [_section("Summary", _table(key_numbers(summary) + [["fallback reasons", reasons]]))]
    if baseline is not None:
        comparison = baseline.comparison
        first = ", ".join(map(str, comparison["first_disagreements"])) or "-"
        heads.append(_section("Baseline", f"<p>{comparison['disagreements']} of {comparison['compared_windows']} "
                                          f"windows disagree; first at seq {html.escape(first)}</p>"
                              + _table(side_by_side(summary, comparison["summary"]),
                                       header=["", f"candidate {model}", f"baseline {comparison['model']}"])))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class=\"note\">{html.escape(str(summary.get('decisions')))} decisions on "
        f"{html.escape(str(summary.get('frames')))} frames; backend {html.escape(str(summary.get('backend')))} "
        f"{html.escape(str(summary.get('backend_version')))}; written "
        f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')} by edge-infer {__version__}</p>",
        _row(heads),
    ]
    for row in rows:
        parts.append(_row([_section(heading, f"<p class=\"note\">{html.escape(note)}</p>"
                                             f'<img alt="{html.escape(heading)}" src="data:image/png;base64,{png}">')
                           for heading, note, png in row]))
    parts += [_section("All summary numbers", _table(_rows(summary))), "</body></html>"]
    return "\n".join(parts)


def _section(heading: str, body: str) -> str:
    return f"<section><h2>{html.escape(heading)}</h2>{body}</section>"


def _row(sections: List[str]) -> str:
    return sections[0] if len(sections) == 1 else '<div class="row">' + "".join(sections) + "</div>"


# --- a corpus (edge-infer eval) ---------------------------------------------------------------------------------

def write_corpus_report(path: str, summary: Dict[str, Any]) -> None:
    """The replay report for a corpus (``eval --report``): the corpus numbers, one row per log, and the
    figures that compare logs (where is the model wrong, where does it fall back, which logs look unlike the
    training data), from the ``eval --json`` summary alone."""
    html_text = render_corpus_report(summary)
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(html_text)
    except OSError as exc:
        raise EdgeInferError(f"cannot write report {path}: {exc.strerror or exc}") from None


def render_corpus_report(summary: Dict[str, Any]) -> str:
    figure = require_matplotlib()
    logs = [log for log in summary["per_log"] if "error" not in log]
    rows: List[List[Tuple[str, str, str]]] = []
    if logs:
        rows.append([("Per log", "Accuracy (where labelled) and the share of windows that fell back, log by log.",
                      _png(_per_log(figure, logs)))])
        rows.append([("Reasons per log", "Fallback and flagged windows per log, by reason.",
                      _png(_reasons_per_log(figure, logs)))])
        if any(log["ood"].get("scored_windows") for log in logs):
            rows.append([("OOD score per log", "Median, 99th percentile and maximum of each log's OOD score; "
                                               "logs far right look least like the training data.",
                          _png(_ood_per_log(figure, logs, summary["input_checks"])))])
    matrices = []
    if summary.get("confusion"):
        labels = sorted(summary["confusion"])
        actions = labels + sorted({a for row in summary["confusion"].values() for a in row} - set(labels))
        counts = np.array([[summary["confusion"][lb].get(a, 0) for a in actions] for lb in labels], dtype=np.int64)
        title = f"accuracy {summary['accuracy']:.3f}" if summary.get("accuracy") is not None else ""
        matrices.append(("Confusion matrix", "All logs: decisions against the label of each window's last frame.",
                         _png(_heatmap(figure, labels, actions, counts, "label", "decision", title))))
    if summary.get("baseline") and summary["baseline"]["matrix"]:
        matrices.append(("Candidate against baseline", "All logs: windows both models decided.",
                         _png(_disagreements(figure, summary["baseline"]))))
    if matrices:
        rows.append(matrices)
    return _corpus_html(summary, rows)


def _per_log(figure: Any, logs: List[Dict[str, Any]]) -> Any:
    names = [log["name"] for log in logs]
    fig = figure(figsize=(FIGURE_WIDTH_IN, 1.5 + 0.28 * len(names)), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(names))
    accuracy = [log["accuracy"] if log["accuracy"] is not None else np.nan for log in logs]
    fallback = [log["fallback_decisions"] / log["decisions"] if log["decisions"] else 0.0 for log in logs]
    ax.barh(y - 0.2, accuracy, height=0.4, color=MODEL_COLOUR, label="accuracy")
    ax.barh(y + 0.2, fallback, height=0.4, color=FALLBACK_COLOUR, label="fallback share")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right")
    return fig


def _reasons_per_log(figure: Any, logs: List[Dict[str, Any]]) -> Any:
    names = [log["name"] for log in logs]
    kinds = sorted({(kind, reason) for log in logs for kind in ("fallback_reasons", "flagged_reasons")
                    for reason in log[kind]})
    fig = figure(figsize=(FIGURE_WIDTH_IN, 1.5 + 0.28 * len(names)), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(names))
    left = np.zeros(len(names))
    from matplotlib import colormaps
    palette = colormaps["tab20"]
    for i, (kind, reason) in enumerate(kinds):
        counts = np.array([log[kind].get(reason, 0) for log in logs], dtype=float)
        label = f"{reason} ({'fallback' if kind == 'fallback_reasons' else 'flag'})"
        ax.barh(y, counts, left=left, color=palette(i % 20), label=label,
                hatch=None if kind == "fallback_reasons" else "//")
        left += counts
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("windows")
    if kinds:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    else:
        ax.set_title("no fallback or flagged windows", loc="left", fontsize="medium")
    return fig


def _ood_per_log(figure: Any, logs: List[Dict[str, Any]], checks: Dict[str, Any]) -> Any:
    scored = [log for log in logs if log["ood"].get("scored_windows")]
    names = [log["name"] for log in scored]
    fig = figure(figsize=(FIGURE_WIDTH_IN, 1.5 + 0.28 * len(names)), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(names))
    for key, marker in (("p50", "o"), ("p99", "s"), ("max", "^")):
        ax.scatter([log["ood"][key] for log in scored], y, marker=marker, label=key)
    threshold = next((log["input_checks"].get("ood", {}).get("threshold") for log in scored), None)
    if threshold is not None:
        ax.axvline(threshold, color=FALLBACK_COLOUR, label=f"threshold {threshold:g}")
    ax.set_xscale("log")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("OOD score (log scale)")
    ax.legend(loc="lower right")
    return fig


def _corpus_html(summary: Dict[str, Any], rows: List[List[Tuple[str, str, str]]]) -> str:
    title = f"edge-infer eval report: {summary.get('model', '?')} on {summary['logs']} logs"
    inv, ood = summary["invoke_us"], summary["ood"]
    key = [["logs (failed)", f"{summary['logs']} ({summary['failed_logs']})"],
           ["frames", summary["frames"]], ["decisions", summary["decisions"]],
           ["accuracy", summary["accuracy"]], ["fallback decisions", summary["fallback_decisions"]],
           ["fallback reasons", ", ".join(f"{k} {v}" for k, v in summary["fallback_reasons"].items()) or "none"],
           ["flagged reasons", ", ".join(f"{k} {v}" for k, v in summary["flagged_reasons"].items()) or "none"],
           ["OOD p50 / p99 / over threshold", f"{ood.get('p50', '-')} / {ood.get('p99', '-')} / "
                                              f"{ood['over_threshold']}"],
           ["single invoke us p50 / p99 / max", f"{inv['p50']} / {inv['p99']} / {inv['max']}"],
           [f"invokes over the {summary['budget_ms']:g} ms budget",
            f"{inv['over_budget']} of {inv['samples']} sampled"]]
    if summary.get("baseline"):
        b = summary["baseline"]
        key.append([f"agreement with {b['model']}", f"{b['agreement']} ({b['disagreements']} windows differ)"])
    if summary.get("golden"):
        key.append(["golden: changed logs", ", ".join(summary["golden"]["changed_logs"]) or "none"])
    per_log = [[log["name"], log.get("decisions"), log.get("accuracy"), log.get("fallback_decisions"),
                ", ".join(f"{k} {v}" for k, v in log.get("fallback_reasons", {}).items()) or "-",
                log.get("ood", {}).get("p99"),
                "-" if "golden" not in log else ("same" if log["golden"]["same"] else
                                                 f"{log['golden']['changed_windows']} changed"),
                log.get("error", "")] for log in summary["per_log"]]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class=\"note\">backend {html.escape(str(summary.get('backend')))} "
        f"{html.escape(str(summary.get('backend_version')))}, batch {summary.get('batch')}, engine "
        f"{html.escape(str(summary.get('engine')))} with {summary.get('workers')} worker(s), "
        f"{summary.get('elapsed_s')} s; timing reasons are not evaluated offline; written "
        f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')} by edge-infer {__version__}</p>",
        _section("Summary", _table(key)),
        _section("Logs", _table(per_log, header=["log", "decisions", "accuracy", "fallbacks", "fallback reasons",
                                                 "OOD p99", "golden", "error"])),
    ]
    for row in rows:
        parts.append(_row([_section(heading, f"<p class=\"note\">{html.escape(note)}</p>"
                                             f'<img alt="{html.escape(heading)}" src="data:image/png;base64,{png}">')
                           for heading, note, png in row]))
    corpus = {k: v for k, v in summary.items() if k not in ("per_log", "confusion", "per_class")}
    parts += [_section("All corpus numbers", _table(_rows(corpus))), "</body></html>"]
    return "\n".join(parts)
