"""The decision loop driving the service hooks, in fake time: watchdog and status schedule, stop order, hangs.

The real loop runs a real model on a log paced by a FakeClock (a 40 s log
takes milliseconds), and systemd is a real datagram socket.
"""

import socket
import threading

import pytest
from conftest import read_jsonl
from service_model import make_service_model

from edge_infer.deadline.clock import FakeClock
from edge_infer.deadline.scheduler import InlineScheduler
from edge_infer.io import read_log
from edge_infer.model.loader import open_model
from edge_infer.runtime import Runtime
from edge_infer.service.hooks import ServiceHooks
from edge_infer.service.metrics import TextfileExporter
from edge_infer.service.notify import Notifier
from edge_infer.sinks.base import Sink
from edge_infer.sinks.jsonl import JsonLinesSink
from edge_infer.sources.log_replay import LogSource, channel_columns

SECOND = 1_000_000_000


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_service_model(tmp_path_factory.mktemp("svc"))


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET, read at once by a thread as systemd does.

    (A datagram socket holds only a few unread messages, /proc/sys/net/unix/max_dgram_qlen; the
    notifier drops what does not fit rather than block the loop, so the test must read as it goes.)
    """

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.messages = []
        self.received = 0  # datagrams read since the start, across take()
        self._cond = threading.Condition()
        self._running = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while self._running:
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            with self._cond:
                self.messages.append(data)
                self.received += 1
                self._cond.notify_all()

    def wait_for(self, text, timeout=30.0):
        """True once a message starting with ``text`` has arrived (within ``timeout``)."""
        with self._cond:
            return self._cond.wait_for(lambda: any(m.startswith(text) for m in self.messages), timeout)

    def caught_up(self, sent, timeout=30.0):
        """Wait until the reader has read ``sent`` datagrams (``timeout`` only bounds a test that would hang)."""
        with self._cond:
            assert self._cond.wait_for(lambda: self.received >= sent, timeout), \
                f"systemd got {self.received} of the notifier's {sent} messages in {timeout} s"

    def take(self, sent, timeout=30.0):
        """The messages received since the last take, once all ``sent`` (the notifier's count) have arrived.

        Waiting for the count, not for a moment, is what makes the result complete: the reader thread may be
        descheduled for long on a loaded machine. ``timeout`` only bounds a test that would otherwise hang.
        """
        self.caught_up(sent, timeout)
        with self._cond:
            out, self.messages = self.messages, []
            return out

    def close(self):
        self._running = False
        self._thread.join()
        self.sock.close()


@pytest.fixture
def systemd(tmp_path):
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.close()


def paced_runtime(model, clock, sinks=()):
    spec_path, log_path = model
    log = read_log(log_path)
    spec, engine = open_model(str(spec_path))
    source = LogSource(log, channel_columns(log, spec.channels, engine.channels, str(log_path)), spec.channels,
                       speed=1.0, clock=clock)
    return Runtime(spec, engine, source, sinks, clock=clock)


class SystemdCatchesUp(Sink):
    """Lets systemd's reader thread catch up with ``notifier`` before each frame: fake time runs far faster than
    any reader, and a datagram that finds the socket's queue full (10 here) is dropped by the notifier. Waiting
    for the count, not for a real millisecond, holds on a loaded machine too."""

    def __init__(self, systemd: "FakeSystemd", notifier: Notifier):
        self.systemd, self.notifier = systemd, notifier

    def on_frame(self, frame):
        self.systemd.caught_up(self.notifier.sent)

    def on_decision(self, decision):
        pass


class StopAfter(Sink):
    """Asks the loop to stop after ``count`` decisions, and notes whether systemd heard STOPPING=1 by the shutdown."""

    def __init__(self, count, systemd):
        self.count, self.systemd, self.stop = count, systemd, threading.Event()
        self.stopping_before_shutdown = None

    def on_decision(self, decision):
        if decision.reason is not None and decision.reason.code == "shutdown":
            self.stopping_before_shutdown = self.systemd.wait_for("STOPPING=1", timeout=10)
        self.count -= 1
        if self.count == 0:
            self.stop.set()


def test_the_loop_feeds_the_watchdog_every_half_period_and_reports_status_once_a_second(model, systemd, tmp_path):
    clock = FakeClock(start_ns=5 * SECOND)
    notifier = Notifier(systemd.path, watchdog_ns=SECOND // 2)
    runtime = paced_runtime(model, clock, [SystemdCatchesUp(systemd, notifier)])
    hooks = ServiceHooks(notifier, TextfileExporter(tmp_path / "m.prom", 10))
    summary = runtime.run(hooks=hooks)
    hooks.close()
    messages = systemd.take(hooks.notifier.sent)
    assert hooks.notifier.failed == 0
    assert messages[0].startswith("READY=1\nSTATUS=deciding: model svc-test")
    assert messages[-1].startswith("STOPPING=1\nSTATUS=stopping after")
    # 400 frames at 10 Hz: 39.9 s of fake time, a ping due every 0.5 s after READY.
    assert messages.count("WATCHDOG=1") == 79
    statuses = [m for m in messages if m.startswith("STATUS=")]
    assert 30 <= len(statuses) <= 40  # at most once a fake second, and only when the text changed
    assert messages[-1] == f"STOPPING=1\nSTATUS=stopping after {summary['decisions']} decisions, 0 fallbacks, " \
                           f"last latency {runtime.stats.last_latency_us / 1000:.1f} ms, 400 frames"
    assert "edge_infer_frames_total 400" in (tmp_path / "m.prom").read_text()  # the last write, after the flush
    assert "shutdown" not in summary["fallback_reasons"]  # the log ended: nobody to tell


def test_a_stop_request_says_stopping_then_hands_out_the_safe_action_then_flushes(model, systemd, tmp_path):
    clock = FakeClock()
    stopper = StopAfter(5, systemd)
    notifier = Notifier(systemd.path, watchdog_ns=SECOND // 2)
    runtime = paced_runtime(model, clock, [JsonLinesSink(tmp_path / "d.jsonl"), stopper,
                                           SystemdCatchesUp(systemd, notifier)])
    hooks = ServiceHooks(notifier)
    summary = runtime.run(stop=stopper.stop, hooks=hooks)
    hooks.close()
    assert stopper.stopping_before_shutdown
    records = read_jsonl(tmp_path / "d.jsonl")
    assert len(records) == 6 == summary["decisions"]
    last = records[-1]
    assert (last["reason"], last["source"], last["action"]) == ("shutdown", "fallback", "idle")
    assert last["seq"] == records[-2]["seq"]  # it answers the last frame seen
    messages = systemd.take(hooks.notifier.sent)
    assert messages[-1].startswith("STOPPING=1") and hooks.notifier.failed == 0  # nothing after STOPPING=1


def test_no_shutdown_decision_before_any_frame(model):
    assert paced_runtime(model, FakeClock()).shutdown() is None


class HangSwitch(InlineScheduler):
    """The inline scheduler, with its hung state set by the test (a model stuck in an in-process invoke)."""

    stuck = False

    def hung(self, now_ns):
        return self.stuck


def test_a_model_hung_in_process_stops_the_watchdog_until_it_returns(model, systemd, caplog):
    clock = FakeClock()
    runtime = paced_runtime(model, clock)
    runtime.scheduler = HangSwitch(runtime.engine, clock)
    hooks = ServiceHooks(Notifier(systemd.path, watchdog_ns=SECOND // 2))
    hooks.on_ready(runtime)
    systemd.take(hooks.notifier.sent)

    def pings(steps, stuck):  # ticks every 0.1 s of fake time
        runtime.scheduler.stuck = stuck
        for step in steps:
            hooks.tick(step * SECOND // 10)
        return systemd.take(hooks.notifier.sent).count("WATCHDOG=1")

    assert pings(range(1, 10), stuck=False) == 1  # at 0.5 s
    assert pings(range(10, 40), stuck=True) == 0  # 3 s hung: systemd (WatchdogSec=1 s here) would restart it
    assert pings(range(40, 61), stuck=False) == 5  # at once when it returns, then every 0.5 s
    assert "no longer feeding systemd's watchdog" in caplog.text
    hooks.close()
