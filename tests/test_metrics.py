"""Prometheus metrics: the exposition text parses, the counters match the run summary, both exporters work."""

import json
import os
import re
import socket
import stat
import time
import urllib.request

import pytest
from conftest import run_cli
from prometheus_client.parser import text_string_to_metric_families
from service_model import make_service_model

from edge_infer.errors import ConfigError, EdgeInferError
from edge_infer.io import read_log
from edge_infer.model.loader import open_model
from edge_infer.runtime import Runtime
from edge_infer.service.metrics import (
    HttpExporter,
    MetricFamily,
    TextfileExporter,
    collect,
    format_text,
    parse_listen,
    write_textfile,
)
from edge_infer.sources.log_replay import LogSource, channel_columns

# One line of the text format 0.0.4: a comment, or name{labels} value (no timestamps written).
_LINE = re.compile(r'^(# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .*'
                   r'|[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? '
                   r'(-?[0-9.e+-]+|\+Inf|-Inf|NaN))$')


def parse(text):
    """name -> list of (labels, value), after checking every line strictly and with prometheus-client's parser."""
    for line in text.splitlines():
        assert _LINE.match(line), line
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(metrics, name, **labels):
    matches = [v for lab, v in metrics[name] if all(lab.get(k) == w for k, w in labels.items())]
    assert len(matches) == 1, (name, labels, metrics.get(name))
    return matches[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_service_model(tmp_path_factory.mktemp("svc"))


def test_format_escapes_label_values_and_names_counters_with_total():
    family = MetricFamily("edge_infer_x", "counter", "help with a \\ backslash")
    family.add(3, {"reason": 'quote " backslash \\ newline \n end'})
    text = format_text([family, MetricFamily("edge_infer_g", "gauge", "g").add(0.25)])
    assert "# TYPE edge_infer_x_total counter" in text
    metrics = parse(text)
    assert metrics["edge_infer_x_total"] == [({"reason": 'quote " backslash \\ newline \n end'}, 3.0)]
    assert metrics["edge_infer_g"] == [({}, 0.25)]


def test_textfile_is_replaced_atomically_and_readable_by_node_exporter(tmp_path):
    target = tmp_path / "edge_infer.prom"
    target.write_text("old\n")
    old_umask = os.umask(0o077)  # the service's UMask
    try:
        write_textfile(target, "edge_infer_up 1\n")
    finally:
        os.umask(old_umask)
    assert target.read_text() == "edge_infer_up 1\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["edge_infer.prom"]  # no temporary file left behind


def test_textfile_exporter_writes_at_most_once_per_interval_and_needs_its_directory(tmp_path):
    exporter = TextfileExporter(tmp_path / "m.prom", interval_s=10)
    renders = []

    def render():
        renders.append(1)
        return f"edge_infer_renders {len(renders)}\n"

    second = 1_000_000_000
    written = [exporter.maybe_write(t * second, render) for t in (0, 1, 9, 10, 11, 25)]
    assert written == [True, False, False, True, False, True]
    assert (tmp_path / "m.prom").read_text() == "edge_infer_renders 3\n"
    with pytest.raises(EdgeInferError, match="directory .* does not exist"):
        TextfileExporter(tmp_path / "missing" / "m.prom")


@pytest.mark.parametrize("budget", ["50", "0.001"])  # all model decisions; all deadline fallbacks
def test_textfile_counters_match_the_run_summary(model, tmp_path, budget):
    spec, log = model
    prom = tmp_path / "edge_infer.prom"
    proc = run_cli("run", "--model", str(spec), "--source", str(log), "--budget-ms", budget,
                   "--metrics-textfile", str(prom), "--json", check=True)
    summary = json.loads(proc.stdout)
    metrics = parse(prom.read_text())
    assert value(metrics, "edge_infer_frames_total") == summary["frames"] == 400
    decisions = metrics["edge_infer_decisions_total"]
    assert sum(v for _, v in decisions) == summary["decisions"]
    assert sum(v for lab, v in decisions if lab["source"] == "model") == summary["model_decisions"]
    for reason, count in summary["fallback_reasons"].items():
        assert value(metrics, "edge_infer_decisions_total", source="fallback", reason=reason) == count
    assert value(metrics, "edge_infer_deadline_misses_total") == summary["fallback_reasons"].get("deadline", 0)
    assert value(metrics, "edge_infer_late_decisions_total") == summary["late_decisions"]
    assert value(metrics, "edge_infer_decision_latency_seconds_count") == summary["decisions"]
    latency, invoke = summary["latency_us"], summary["invoke_us"]
    assert value(metrics, "edge_infer_decision_latency_seconds_max") == pytest.approx(latency["max"] / 1e6)
    assert value(metrics, "edge_infer_decision_latency_seconds", quantile="0.99") == \
        pytest.approx(latency["p99"] / 1e6)
    assert value(metrics, "edge_infer_invoke_seconds", quantile="0.5") == pytest.approx(invoke["p50"] / 1e6)
    assert value(metrics, "edge_infer_source_events_total", counter="rows") == summary["source"]["rows"]
    for event in ("admission_rejects", "late_results", "busy_overruns"):  # inline's scheduler counts these
        assert value(metrics, "edge_infer_scheduler_events_total", event=event) == summary["scheduler"][event]
    assert value(metrics, "edge_infer_budget_seconds") == pytest.approx(float(budget) / 1000)
    assert value(metrics, "edge_infer_info", model="svc-test", model_version="1") == 1
    if budget == "0.001":
        assert summary["fallback_reasons"] and summary["model_decisions"] == 0


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_http_endpoint_serves_the_same_numbers_on_localhost(model):
    spec_path, log_path = model
    log = read_log(log_path)
    spec, engine = open_model(str(spec_path))
    source = LogSource(log, channel_columns(log, spec.channels, engine.channels, str(log_path)), spec.channels)
    runtime = Runtime(spec, engine, source)
    summary = runtime.run()
    exporter = HttpExporter(str(free_port()))
    assert exporter.host == "127.0.0.1"
    exporter.start(format_text(collect(runtime, 1234.5)))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=30) as response:
            served = parse(response.read().decode())
        exporter.update("# a newer text\n")  # served as sent, once the server process has read it
        give_up = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=30) as response:
                if response.read() == b"# a newer text\n":
                    break
            assert time.monotonic() < give_up, "the server never served the new text"
            time.sleep(0.01)
    finally:
        exporter.close()
    assert exporter._process is None
    written = parse(format_text(collect(runtime, 1234.5)))
    assert served == written
    assert value(served, "edge_infer_decision_latency_seconds_count") == summary["decisions"]
    assert value(served, "edge_infer_start_time_seconds") == 1234.5


def test_a_port_in_use_is_one_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        exporter = HttpExporter(str(taken.getsockname()[1]))
        with pytest.raises(EdgeInferError, match=r"cannot serve metrics on 127.0.0.1:\d+: "):
            exporter.start("")


@pytest.mark.parametrize("text,expected", [
    ("9464", ("127.0.0.1", 9464)),
    ("0.0.0.0:9464", ("0.0.0.0", 9464)),
    ("[::1]:9464", ("::1", 9464)),
])
def test_listen_address(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["http", "localhost:", "127.0.0.1:70000", "0"])
def test_bad_listen_address(text):
    with pytest.raises(ConfigError):
        parse_listen(text)
