"""The replay report: a standalone HTML file whose plots are real PNGs, and its numbers; the progress bar."""

import base64
import io
import json
import os
import struct
from html.parser import HTMLParser

import numpy as np
import pytest
from conftest import ROOT, read_jsonl, run_cli
from replay_helpers import write_log, write_model, write_spec

from edge_infer.decide.decision import Decision
from edge_infer.decide.reasons import Reason
from edge_infer.frame import Frame
from edge_infer.lab.report import confusion_counts, render_report
from edge_infer.sinks.collect import CollectSink
from edge_infer.sinks.progress import ProgressBar, wanted

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ReportParser(HTMLParser):
    """Collects what a standalone report may and may not contain."""

    def __init__(self):
        super().__init__()
        self.images, self.headings, self.cells, self.external = [], [], [], []
        self._in = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("h2", "td"):
            self._in = tag
        if tag in ("link", "script", "iframe") or (tag != "img" and ("src" in attrs or "href" in attrs)):
            self.external.append((tag, attrs))

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "h2":
            self.headings.append(data)
        elif self._in == "td":
            self.cells.append(data)


def png_size(data):
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


def parse_report(path):
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A labelled log, a candidate whose low confidence makes it fall back, and a baseline that differs."""
    root = tmp_path_factory.mktemp("lab")
    write_log(root / "log.csv", 1500)
    candidate = write_spec(root / "new.toml", write_model(root / "new.tflite", seed=3), min_confidence=0.9)
    baseline = write_spec(root / "old.toml", write_model(root / "old.tflite", seed=11))
    return root, candidate, baseline


def test_the_report_is_standalone_html_with_real_png_plots(lab, tmp_path):
    root, candidate, _ = lab
    report = tmp_path / "report.html"
    proc = run_cli("replay", str(root / "log.csv"), "--model", str(candidate), "--report", str(report), "--json",
                   check=True)
    summary = json.loads(proc.stdout)
    assert 0 < summary["fallback_reasons"]["low_confidence"] < summary["decisions"]  # the plots have both kinds
    parsed = parse_report(report)
    assert parsed.external == []
    assert parsed.headings == ["Summary", "Timeline", "Latency", "Fallback reasons over time", "Confusion matrix",
                               "All summary numbers"]
    assert len(parsed.images) == 4
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        width, height = png_size(base64.b64decode(src.split(",", 1)[1], validate=True))
        assert width >= 300 and height >= 100
    cells = dict(zip(parsed.cells[::2], parsed.cells[1::2]))  # the summary table: name, value
    assert cells["decisions"] == str(summary["decisions"])
    assert cells["fallback_reasons.low_confidence"] == str(summary["fallback_reasons"]["low_confidence"])
    assert cells["accuracy"] == str(summary["accuracy"])


def test_a_report_with_a_baseline_shows_the_comparison(lab, tmp_path):
    root, candidate, baseline = lab
    report = tmp_path / "report.html"
    proc = run_cli("replay", str(root / "log.csv"), "--model", str(candidate), "--baseline", str(baseline),
                   "--report", str(report), "--json", check=True)
    comparison = json.loads(proc.stdout)["baseline"]
    parsed = parse_report(report)
    assert parsed.headings == ["Summary", "Baseline", "Timeline", "Latency", "Fallback reasons over time",
                               "Confusion matrix", "Candidate against baseline", "All summary numbers"]
    assert len(parsed.images) == 5
    assert f"{comparison['disagreements']} of {comparison['compared_windows']} windows disagree" in \
        report.read_text(encoding="utf-8")


def _decision(seq, action, label, fallback=False):
    return Decision(seq=seq, t=seq / 10, action=action, source="fallback" if fallback else "model",
                    reason=Reason.LOW_CONFIDENCE if fallback else None, latency_us=50.0 + seq,
                    invoke_us=None if fallback else 20.0, output=None, label=label)


def test_confusion_counts_put_labels_on_the_diagonal_and_fallbacks_aside():
    run = CollectSink()
    for seq, (action, label, fallback) in enumerate([("a", "a", False), ("b", "a", False), ("idle", "b", True),
                                                     ("b", "b", False), ("a", None, False), ("b", "b", False)]):
        run.on_decision(_decision(seq, action, label, fallback))
    rows, cols, counts = confusion_counts(run)
    assert rows == ["a", "b"] and cols == ["a", "b", "idle"]
    assert counts.tolist() == [[1, 1, 0], [0, 2, 1]]


def test_a_report_without_labels_or_fallbacks_has_no_confusion_matrix():
    run = CollectSink(frames=True)
    summary = {"budget_ms": 1.0, "model": "m", "decisions": 3, "frames": 3, "accuracy": None}
    for seq in range(3):
        run.on_frame(Frame(seq=seq, t=seq / 10, recv_ns=0, values=np.array([1.0, 2.0], dtype=np.float32), label=None,
                           device_seq=None))
        run.on_decision(_decision(seq, "a", None))
    text = render_report(summary, run, ["x", "y"], "log.csv")
    parsed = ReportParser()
    parsed.feed(text)
    assert parsed.headings == ["Summary", "Timeline", "Latency", "Fallback reasons over time", "All summary numbers"]
    assert len(parsed.images) == 3


def test_without_matplotlib_the_report_fails_before_the_replay(lab, tmp_path):
    root, candidate, _ = lab
    blocker = tmp_path / "blocker" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib is not installed')\n")
    proc = run_cli("replay", str(root / "log.csv"), "--model", str(candidate), "--report", str(tmp_path / "r.html"),
                   "--decisions", str(tmp_path / "d.jsonl"),
                   env={"PYTHONPATH": f"{tmp_path / 'blocker'}{os.pathsep}{ROOT}"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == "edge-infer: error: --report needs matplotlib: pip install matplotlib (the 'report' extra)"
    assert not (tmp_path / "d.jsonl").exists() and not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("option,value,message", [("--report", "r.png", "name it with .html"),
                                                  ("--baseline", "missing.toml", "no such file")])
def test_bad_analysis_options_fail_before_the_replay(lab, tmp_path, option, value, message):
    root, candidate, _ = lab
    proc = run_cli("replay", str(root / "log.csv"), "--model", str(candidate), option, str(tmp_path / value),
                   "--decisions", str(tmp_path / "d.jsonl"))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "d.jsonl").exists()


def test_the_progress_bar_draws_in_place_and_ends_its_line():
    now = [0.0]
    stream = io.StringIO()
    bar = ProgressBar(1000, "replay", stream=stream, clock=lambda: now[0])
    for _ in range(400):
        bar.on_frame(None)
    assert stream.getvalue() == ""  # not before the first redraw interval
    now[0] = 1.0
    bar.on_frame(None)
    assert stream.getvalue().startswith("\rreplay [") and " 40%  401/1000 frames  401 frames/s  ~1 s left" in \
        stream.getvalue()
    bar.close()
    assert stream.getvalue().endswith("\n") and stream.getvalue().count("\r") == 2


def test_progress_only_on_a_terminal_unless_asked(lab, tmp_path):
    assert wanted(None, io.StringIO()) is False and wanted(True, io.StringIO()) is True
    root, candidate, _ = lab
    quiet = run_cli("replay", str(root / "log.csv"), "--model", str(candidate), "--json", check=True)
    assert "frames/s" not in quiet.stderr  # stderr is a pipe here
    forced = run_cli("replay", str(root / "log.csv"), "--model", str(candidate), "--json", "--progress",
                     "--baseline", str(root / "old.toml"), check=True)
    # (run_cli reads text: the bar's carriage returns arrive as newlines)
    assert "candidate [" in forced.stderr and "baseline [" in forced.stderr
    assert forced.stderr.count("100%  1500/1500 frames") == 2


def test_the_decisions_file_is_the_candidates_not_the_baselines(lab, tmp_path):
    root, candidate, baseline = lab
    run_cli("replay", str(root / "log.csv"), "--model", str(candidate), "--baseline", str(baseline),
            "--decisions", str(tmp_path / "d.jsonl"), "--json", check=True)
    run_cli("replay", str(root / "log.csv"), "--model", str(candidate), "--decisions", str(tmp_path / "alone.jsonl"),
            "--json", check=True)
    assert [r["action"] for r in read_jsonl(tmp_path / "d.jsonl")] == \
        [r["action"] for r in read_jsonl(tmp_path / "alone.jsonl")]
