"""Metrics for an operator's dashboard, in the Prometheus text exposition format.

A fleet of Pis is watched by Prometheus, usually through node-exporter,
which already runs on each board. Two ways out, both from the same numbers:

* the **textfile collector** (default, no dependency, no network): the runtime
  rewrites ``edge_infer.prom`` every few seconds, atomically (a temporary file
  in the same directory, then ``rename``), and node-exporter's
  ``--collector.textfile.directory`` serves it with the node's own metrics;
* an **HTTP endpoint** bound to 127.0.0.1 by default, served by a small
  process of its own (:mod:`.metrics_server`) from text the loop renders in
  its slack time, so that scraping never competes with the loop for the GIL.

Every number is read from what the loop already keeps (the run statistics,
the source's link counters, the scheduler's restart count): nothing grows
with uptime, so memory stays constant over weeks. Latency percentiles come
from the constant-memory histogram and cover the whole run; for "the last
five minutes", use ``rate()`` of ``_sum`` over ``rate()`` of ``_count``.
"""

from __future__ import annotations

import logging
import math
import os
import select
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from .._version import __version__
from ..decide.reasons import Reason
from ..errors import ConfigError, EdgeInferError
from ..histogram import Histogram
from ..io.files import replace_atomically

log = logging.getLogger(__name__)

PREFIX = "edge_infer"
#: The quantiles exported for latency summaries (the same as the JSON summary's p50/p99/p99.9).
QUANTILES = (0.5, 0.99, 0.999)
#: Source counters that are not counts of events (a line number), left out of the link counters.
_NOT_COUNTERS = frozenset({"first_bad_line"})
#: The keys of ``Scheduler.counters()`` that count events (the others are settings and maxima).
_SCHEDULER_EVENTS = ("busy", "skipped", "admission_rejects", "busy_overruns", "late_results")
DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_INTERVAL_S = 10.0

Labels = Dict[str, str]


@dataclass
class MetricFamily:
    """One metric with its samples. Counter names are given without ``_total``; the formatter adds it."""

    name: str
    kind: str  # "counter", "gauge" or "summary"
    help: str
    samples: List[Tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, value: float, labels: Optional[Labels] = None, suffix: str = "") -> "MetricFamily":
        if self.kind == "counter" and not suffix:
            suffix = "_total"
        self.samples.append((self.name + suffix, labels or {}, value))
        return self


def _summary(name: str, help_text: str, histogram: Histogram) -> List[MetricFamily]:
    """A Prometheus summary (quantiles, _sum, _count) in seconds, plus the exact maximum as a gauge."""
    family = MetricFamily(name, "summary", help_text)
    for q in QUANTILES:
        family.add(histogram.percentile(q * 100) / 1e6, {"quantile": f"{q:g}"})
    family.add(histogram.sum / 1e6, suffix="_sum")
    family.add(histogram.total, suffix="_count")
    maximum = MetricFamily(name + "_max", "gauge", f"largest value seen of {name}").add(histogram.max / 1e6)
    return [family, maximum]


def collect(runtime: Any, started_unix_s: float) -> List[MetricFamily]:
    """The metric families for a runtime's current state; with several streams every sample carries a
    ``stream`` label, and ``edge_infer_stream_state`` says which streams run, ended or failed."""
    streams = getattr(runtime, "streams", None)
    if streams is None:
        return _collect_stream(runtime, started_unix_s)
    merged: Dict[str, MetricFamily] = {}
    for stream in streams:
        for family in _collect_stream(stream, started_unix_s):
            family.samples = [(name, {"stream": stream.name, **labels}, value) for name, labels, value in family.samples]
            if family.name in merged:
                merged[family.name].samples.extend(family.samples)
            else:
                merged[family.name] = family
    state = MetricFamily(f"{PREFIX}_stream_state", "gauge",
                         "1 for each stream's state: running, ended (its log is over), no data, failed")
    for stream, text in zip(streams, runtime.states):
        state.add(1, {"stream": stream.name, "state": text.split(":")[0]})
    return [*merged.values(), state]


def _collect_stream(runtime: Any, started_unix_s: float) -> List[MetricFamily]:
    """The metric families of one stream (a :class:`~edge_infer.runtime.Runtime`)."""
    stats = runtime.stats
    spec = runtime.spec
    info = MetricFamily(f"{PREFIX}_info", "gauge", "what is running: model, backend, versions (value 1)")
    info.add(1, {"model": spec.name or spec.model_path.name, "model_version": spec.version,
                 "backend": runtime.engine.backend.name, "backend_version": str(runtime.engine.backend_version),
                 "version": __version__})
    decisions = MetricFamily(f"{PREFIX}_decisions", "counter",
                             "decisions by source (model, fallback) and reason (none for a plain model decision)")
    decisions.add(stats.model_decisions - sum(stats.flagged_reasons.values()), {"source": "model", "reason": "none"})
    for source, reasons in (("model", stats.flagged_reasons), ("fallback", stats.fallback_reasons)):
        for reason, count in sorted(dict(reasons).items()):
            decisions.add(count, {"source": source, "reason": reason})
    families = [
        info,
        MetricFamily(f"{PREFIX}_start_time_seconds", "gauge", "when the decision loop started (unix time)")
        .add(started_unix_s),
        MetricFamily(f"{PREFIX}_budget_seconds", "gauge", "time budget per decision").add(stats.budget_us / 1e6),
        MetricFamily(f"{PREFIX}_frames", "counter", "sensor frames received").add(stats.frames),
        decisions,
        MetricFamily(f"{PREFIX}_deadline_misses", "counter",
                     "windows whose model answer did not come within the budget (fallback reason deadline)")
        .add(dict(stats.fallback_reasons).get(Reason.DEADLINE.code, 0)),
        MetricFamily(f"{PREFIX}_late_decisions", "counter",
                     "decisions handed to the sinks after their deadline (the loop itself was late)")
        .add(stats.late_decisions),
        *_summary(f"{PREFIX}_decision_latency_seconds",
                  "from the receipt of a window's last frame to the hand-off of its decision", stats.latency_us),
        *_summary(f"{PREFIX}_invoke_seconds", "time inside the model per inference", stats.invoke_us),
    ]
    scheduler = runtime.scheduler.counters()
    families.append(MetricFamily(f"{PREFIX}_model_restarts", "counter",
                                 "times the isolated model process was restarted after a crash or hang")
                    .add(scheduler.get("restarts", 0)))
    families.append(MetricFamily(f"{PREFIX}_model_hangs", "counter", "invokes that ran past the hang limit")
                    .add(scheduler.get("hangs", 0)))
    events = MetricFamily(f"{PREFIX}_scheduler_events", "counter",
                          "windows the scheduler did not give the model: busy, skipped, refused by admission "
                          "control, completed while the model was still busy with an earlier one (busy_overruns); "
                          "and model answers that came too late")
    for name in _SCHEDULER_EVENTS:
        if name in scheduler:
            events.add(scheduler[name], {"event": name})
    if events.samples:
        families.append(events)
    link = MetricFamily(f"{PREFIX}_source_events", "counter",
                        "the source's counters: log rows and bad rows, or link errors, resyncs and reconnects")
    for name, value in sorted(runtime.source.counters().items()):
        if name not in _NOT_COUNTERS and isinstance(value, int) and not isinstance(value, bool):
            link.add(value, {"counter": name})
    families.append(link)
    return families


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 2**53):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def format_text(families: Iterable[MetricFamily]) -> str:
    """The Prometheus text exposition format, version 0.0.4 (what node-exporter's textfile collector reads)."""
    lines: List[str] = []
    for family in families:
        name = family.name + ("_total" if family.kind == "counter" else "")
        lines.append(f"# HELP {name} {family.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        lines.append(f"# TYPE {name} {family.kind}")
        for sample_name, labels, value in family.samples:
            label_text = ",".join(f'{key}="{_escape_label(str(val))}"' for key, val in labels.items())
            lines.append(f"{sample_name}{{{label_text}}} {_number(value)}" if label_text
                         else f"{sample_name} {_number(value)}")
    return "\n".join(lines) + "\n"


def write_textfile(path: "str | Path", text: str) -> None:
    """Replace ``path`` with ``text`` atomically: a reader sees the old file or the new one, never half of one.

    The temporary file does not end in ``.prom``, so node-exporter never reads it. The file is made
    world-readable (the service's umask is 0077) so that node-exporter, another user, can read it.
    """
    replace_atomically(path, text.encode("utf-8"), "metrics textfile", 0o644)


class TextfileExporter:
    """Rewrites the textfile every ``interval_s`` when :meth:`maybe_write` is called from the loop."""

    def __init__(self, path: "str | Path", interval_s: float = DEFAULT_INTERVAL_S):
        self.path = Path(path)
        self.interval_ns = int(interval_s * 1e9)
        self._next_ns: Optional[int] = None
        if not self.path.parent.is_dir():
            raise EdgeInferError(f"metrics textfile directory {self.path.parent} does not exist; create it or "
                                 "point [metrics].textfile somewhere writable")

    def maybe_write(self, now_ns: int, render: Callable[[], str]) -> bool:
        """Write if the interval has passed since the last write (the first call writes); True if written."""
        if self._next_ns is not None and now_ns < self._next_ns:
            return False
        self._next_ns = now_ns + self.interval_ns
        self.write(render())
        return True

    def write(self, text: str) -> None:
        try:
            write_textfile(self.path, text)
        except EdgeInferError as exc:  # a full disk must not stop the decision loop
            log.warning("%s", exc)


def parse_listen(text: str) -> Tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6HOST]:PORT`` -> (host, port); the host defaults to 127.0.0.1."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host = DEFAULT_HTTP_HOST
    host = host.strip("[]") or DEFAULT_HTTP_HOST
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"metrics address {text!r} must be PORT or HOST:PORT") from None
    if not 0 < port < 65536:
        raise ConfigError(f"metrics port {port} must be between 1 and 65535")
    return host, port


class HttpExporter:
    """Serves the metrics over HTTP from a child process (:mod:`.metrics_server`), as cached bytes.

    The loop renders the text in its slack time (:meth:`update`, from the service hooks' tick) and
    hands it to the server process down a non-blocking pipe; the server answers every scrape with
    the last text it got. No request is parsed in the service's process, so scraping never takes
    the GIL from the decision loop (docs/deadlines.md, "Nothing pushes a decision late").
    """

    #: How long the server process may take to start listening.
    START_TIMEOUT_S = 10.0

    def __init__(self, listen: str):
        self.host, self.port = parse_listen(listen)
        self._process: Optional[subprocess.Popen] = None
        self._out = bytearray()  # a text not yet fully written to the server (the pipe was full)
        self.updates_skipped = 0

    def start(self, text: str) -> None:
        """Start the server process with ``text`` to serve; one clear error if it cannot listen."""
        process = subprocess.Popen([sys.executable, "-m", "edge_infer.service.metrics_server", self.host,
                                    str(self.port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert process.stdout is not None and process.stdin is not None
        ready = select.select([process.stdout], [], [], self.START_TIMEOUT_S)[0]
        line = process.stdout.readline().decode(errors="replace").strip() if ready else ""
        if line != "ok":
            process.kill()
            process.wait()
            raise EdgeInferError(line or f"the metrics server did not start within {self.START_TIMEOUT_S:g} s")
        os.set_blocking(process.stdin.fileno(), False)
        self._process = process
        self.update(text)
        log.info("serving metrics on http://%s:%d/metrics", self.host, self.port)

    def update(self, text: str) -> None:
        """Send the server a new text; skipped (counted) while the previous one is still going out."""
        if self._process is None:
            return
        if self._out:
            self.updates_skipped += 1
            self.flush()
            return
        body = text.encode()
        self._out += struct.pack(">I", len(body)) + body
        self.flush()

    def flush(self) -> None:
        """Write what the pipe takes now, never waiting."""
        process = self._process
        if process is None or not self._out:
            return
        try:
            written = os.write(process.stdin.fileno(), self._out)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError as exc:  # the server process died: the metrics stop, the decisions do not
            log.warning("the metrics server process is gone (%s); metrics over HTTP stop", exc.strerror or exc)
            self._process = None
            return
        del self._out[:written]

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.stdin.close()  # type: ignore[union-attr]  # its end of input: it exits
            try:
                process.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()  # type: ignore[union-attr]
