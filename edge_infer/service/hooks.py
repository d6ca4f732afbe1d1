"""Running as a service: what the decision loop tells systemd and the monitoring while it runs.

The loop calls three hooks (:class:`ServiceHooks`), and this module does the
rest, so the loop itself stays about deciding:

* ``on_ready(runtime)`` once the model is loaded and warmed up and the source
  is open: ``READY=1`` to systemd, the metrics endpoint starts;
* ``tick(now_ns)`` from the loop at least every 0.1 s, frames or not:
  ``WATCHDOG=1`` every half watchdog period (a loop that is stuck stops
  calling it, and systemd restarts the service), ``STATUS=`` with live
  counters at most once a second, the metrics textfile every few seconds;
* ``on_stop()`` when the loop leaves, before the safe action goes out and the
  sinks are flushed: ``STOPPING=1``.

Outside systemd (no ``$NOTIFY_SOCKET``) the notify part does nothing, and
without metrics options nothing is exported: ``edge-infer run`` in a terminal
behaves as before.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any, List, Optional

from ..settings.argtypes import seconds
from ..sinks.stats import RunStats
from .config import add_config_option
from .logs import DEFAULT_REPEAT_INTERVAL_S, LEVELS, setup_logging
from .metrics import DEFAULT_INTERVAL_S, HttpExporter, MetricFamily, TextfileExporter, collect, format_text
from .notify import Notifier

log = logging.getLogger(__name__)

#: ``STATUS=`` is sent at most this often (systemctl status shows the latest).
STATUS_INTERVAL_S = 1.0
#: The text the metrics HTTP endpoint serves is rendered this often, in the loop's slack (a tick).
HTTP_REFRESH_S = 1.0


def add_service_options(parser: argparse.ArgumentParser) -> None:
    """The ``run`` options for a service: config file, logging, metrics."""
    add_config_option(parser)
    group = parser.add_argument_group("service (logging, metrics; systemd notify is automatic under systemd)")
    group.add_argument("--log-level", choices=LEVELS, default="info", help="log to stderr from this level up")
    group.add_argument("--log-repeat-interval", type=seconds, default=DEFAULT_REPEAT_INTERVAL_S, metavar="S",
                       help="let a repeated warning through at most once per S seconds")
    group.add_argument("--metrics-textfile", metavar="FILE",
                       help="write Prometheus metrics to FILE (node-exporter textfile collector), atomically")
    group.add_argument("--metrics-http", metavar="[HOST:]PORT",
                       help="serve Prometheus metrics over HTTP (host 127.0.0.1 unless given), from a process of its own")
    group.add_argument("--metrics-interval", type=seconds, default=DEFAULT_INTERVAL_S, metavar="S",
                       help="rewrite the metrics textfile every S seconds")


class ServiceHooks:
    """systemd notify, metrics export and the status line, driven by the decision loop's hooks."""

    def __init__(self, notifier: Notifier, textfile: Optional[TextfileExporter] = None,
                 http: Optional[HttpExporter] = None, status_interval_s: float = STATUS_INTERVAL_S):
        self.notifier = notifier
        self.textfile = textfile
        self.http = http
        self.status_interval_ns = int(status_interval_s * 1e9)
        self.runtime: Any = None
        self.started_unix_s = 0.0
        self._next_status_ns = 0
        self._next_http_ns = 0
        self._last_status = ""
        self._withholding = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ServiceHooks":
        """Set up logging and the exporters the options ask for (a bad option fails here, before the model loads)."""
        setup_logging(args.log_level, repeat_interval_s=args.log_repeat_interval)
        config = getattr(args, "service_config", None)
        if config is not None:
            log.info("config %s: %s", config.path, config.describe())
        textfile = TextfileExporter(args.metrics_textfile, args.metrics_interval) if args.metrics_textfile else None
        http = HttpExporter(args.metrics_http) if args.metrics_http else None
        return cls(Notifier.from_environ(), textfile, http)

    def on_ready(self, runtime: Any) -> None:
        """The loop is about to take its first frame: tell systemd, start exporting."""
        self.runtime = runtime
        self.started_unix_s = time.time()
        if self.http is not None:
            self.http.start(self.render())
        if self.textfile is not None:
            self.textfile.write(self.render())
        text = _describe(runtime)
        now = runtime.clock.now_ns()
        self.notifier.ready(text, now)
        self._next_status_ns = now + self.status_interval_ns
        log.info("%s", text)

    def tick(self, now_ns: int) -> None:
        """Called by the loop at least every 0.1 s: feed the watchdog, refresh the status and the metrics file."""
        if self.runtime is None:
            return
        self._feed_watchdog(now_ns)
        if now_ns >= self._next_status_ns:
            self._next_status_ns = now_ns + self.status_interval_ns
            text = self.status_line()
            if text != self._last_status:
                self._last_status = text
                self.notifier.status(text)
        if self.textfile is not None:
            self.textfile.maybe_write(now_ns, self.render)
        if self.http is not None:
            if now_ns >= self._next_http_ns:
                self._next_http_ns = now_ns + int(HTTP_REFRESH_S * 1e9)
                self.http.update(self.render())
            else:
                self.http.flush()

    def _feed_watchdog(self, now_ns: int) -> None:
        """Feed systemd's watchdog, unless the model is hung in this process.

        A thread cannot be stopped: a model stuck in an in-process invoke leaves every later window to the
        fallback for good. Withholding the watchdog makes systemd restart the service (and reload the model)
        once the hang has lasted ``WatchdogSec``; an isolated model is killed and restarted by its scheduler.
        """
        runtime = self.runtime
        hung = runtime.hung(now_ns) if hasattr(runtime, "streams") else runtime.scheduler.hung(now_ns)
        if hung != self._withholding:
            self._withholding = hung
            if hung:
                log.warning("the model is hung in-process: no longer feeding systemd's watchdog, so systemd "
                            "restarts the service unless the model returns within WatchdogSec")
            else:
                log.info("the hung model returned: feeding systemd's watchdog again")
        if not hung:
            self.notifier.feed_watchdog(now_ns)

    def on_stop(self) -> None:
        """The loop is leaving (signal, end of source, duration, or an error): ``STOPPING=1``."""
        if self.runtime is not None:
            self.notifier.stopping(f"stopping after {self.status_line()}")
        else:
            self.notifier.stopping()

    def close(self) -> None:
        """After the sinks were flushed: the last metrics (they include the shutdown decision), then let go."""
        if self.runtime is not None and self.textfile is not None:
            self.textfile.write(self.render())
        if self.http is not None:
            self.http.close()
        self.notifier.close()

    def families(self) -> List[MetricFamily]:
        return collect(self.runtime, self.started_unix_s)

    def render(self) -> str:
        return format_text(self.families())

    def status_line(self) -> str:
        """What ``systemctl status`` shows: counts since start and the last decision's latency; with several
        streams, the totals and then each stream's state (docs/streams.md)."""
        runtime = self.runtime
        streams = getattr(runtime, "streams", None)
        if streams is None:
            return _counts_line(runtime.stats)
        line = _counts_line(RunStats.total([s.stats for s in streams], latencies=False))
        return f"{len(streams)} streams: {line}; " + "; ".join(
            _stream_state(stream, state) for stream, state in zip(streams, runtime.states))


def _counts_line(stats: Any) -> str:
    top = sorted(dict(stats.fallback_reasons).items(), key=lambda item: -item[1])[:3]
    reasons = ", ".join(f"{reason} {count}" for reason, count in top)
    fallbacks = f"{stats.fallback_decisions} fallbacks" + (f" ({reasons})" if reasons else "")
    return (f"{stats.decisions} decisions, {fallbacks}, last latency {stats.last_latency_us / 1000:.1f} ms, "
            f"{stats.frames} frames")


def _stream_state(stream: Any, state: str) -> str:
    """``motor1 ok 1200`` / ``motor2 no_data 1190`` / ``motor3 ended 900``: what the stream last did, decisions."""
    stats = stream.stats
    if state == "running":
        state = stats.last_reason or "ok"
    return f"{stream.name} {state} {stats.decisions}"


def _describe(runtime: Any) -> str:
    """The READY line: what is deciding on what."""
    streams = getattr(runtime, "streams", None)
    if streams is not None:
        models = sorted({s.spec.name or s.spec.model_path.name for s in streams})
        return (f"deciding: {len(streams)} streams, model {', '.join(models)} on {streams[0].engine.backend.name}, "
                f"sources {', '.join(s.name for s in streams[:4])}{', ...' if len(streams) > 4 else ''}")
    model = runtime.spec.name or runtime.spec.model_path.name
    source = getattr(runtime.source, "name", type(runtime.source).__name__)
    return f"deciding: model {model} on {runtime.engine.backend.name}, source {source}"
