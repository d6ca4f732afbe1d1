"""One stream, inline: while an invoke hangs, a deputy runs the loop (edge_infer/deadline/baton.py), so the windows
that arrive meanwhile are decided on time instead of when the invoke returns (issue 10).

The source is a paced replay (frames come in real time, as from a device); the model is the real one, made to
hang on one window until the test lets it go. Nothing here asserts on time: the tests look at what was decided
while the invoke was still hung, by which thread, and in which order.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pytest
from serial_helpers import wait_for

from edge_infer.deadline.options import DeadlineOptions
from edge_infer.decide.decision import Decision
from edge_infer.io import read_log
from edge_infer.model.loader import open_model
from edge_infer.runtime import Runtime
from edge_infer.sinks.base import Sink
from edge_infer.sources.log_replay import LogSource
from edge_infer.testing.tflite_builder import dense_model, write_model

HUNG_CALL = 30  # the invoke that hangs: the 30th (no warm-up)
FRAMES = 400  # 4 s at 100 Hz


def write_spec(tmp_path: Path) -> Path:
    write_model(tmp_path / "m.tflite", dense_model(8, 2, 3, seed=1))
    spec = tmp_path / "m.toml"
    spec.write_text("""
[model]
file = "m.tflite"
[input]
channels = ["a", "b"]
sample_rate_hz = 100
window = 8
hop = 1
[output]
kind = "classes"
labels = ["x", "y", "z"]
[deadline]
budget_ms = 300
[fallback]
action = "safe"
""")
    return spec


def paced_log(tmp_path: Path, spec, frames: int = FRAMES, speed: Optional[float] = 1.0) -> LogSource:
    rng = np.random.default_rng(0)
    rows = [f"{i / 100:.2f},{a:.3f},{b:.3f}" for i, (a, b) in enumerate(rng.normal(size=(frames, 2)))]
    path = tmp_path / "log.csv"
    path.write_text("t,a,b\n" + "\n".join(rows) + "\n")
    return LogSource(read_log(path), [0, 1], spec.channels, speed=speed)


class OneAtATime(Sink):
    """Records each decision with the thread that emitted it; counts two threads inside at once."""

    def __init__(self, raise_on_deputy: bool = False) -> None:
        self.decisions: List[Tuple[Decision, str]] = []
        self.overlaps = 0
        self._inside = threading.Lock()
        self._raise_on_deputy = raise_on_deputy

    def on_decision(self, decision: Decision) -> None:
        if not self._inside.acquire(blocking=False):
            self.overlaps += 1
            return
        try:
            thread = threading.current_thread().name
            self.decisions.append((decision, thread))
            if self._raise_on_deputy and thread.startswith("edge-infer-deputy"):
                raise RuntimeError("a sink failed on the deputy's thread")
            time.sleep(0.0002)  # widen the window in which a second thread would meet this one
        finally:
            self._inside.release()

    def after(self, seq: int) -> List[Tuple[Decision, str]]:
        return [(d, t) for d, t in self.decisions if d.seq > seq and d.reason is not None and d.reason.name != "SHUTDOWN"]


def hanging_runtime(tmp_path: Path, sink: Sink) -> "tuple[Runtime, threading.Event, List[int]]":
    """A runtime whose model hangs on its HUNG_CALL-th invoke until the returned event is set; ``hung_seq`` gets
    the seq of the window it hangs on."""
    spec, engine = open_model(str(write_spec(tmp_path)))
    release = threading.Event()
    calls: List[int] = []

    def infer(window, real=engine.infer):
        calls.append(1)
        if len(calls) == HUNG_CALL:
            release.wait(60)
        return real(window)

    engine.infer = infer
    runtime = Runtime(spec, engine, paced_log(tmp_path, spec), [sink],
                      options=DeadlineOptions(warmup=0, gc_control=False, no_data_ms=0))
    return runtime, release, calls


def run_in_thread(runtime: Runtime) -> "tuple[threading.Thread, dict]":
    out: dict = {}

    def target() -> None:
        try:
            out["summary"] = runtime.run(duration_s=30.0)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=target, name="first-thread", daemon=True)
    thread.start()
    return thread, out


def hung_window(sink: OneAtATime, after: int) -> Optional[int]:
    """The seq of the first window after ``after`` that the watchdog decided, if there is one yet."""
    return next((d.seq for d, t in list(sink.decisions) if t == "edge-infer-watchdog" and d.seq > after), None)


def test_windows_that_arrive_while_the_invoke_hangs_are_decided_without_waiting_for_it(tmp_path):
    """The hung window falls back ``deadline`` (the watchdog); the windows after it are decided ``overrun`` by a
    deputy while the invoke still hangs, in order, after it; never two threads in the sinks; once the invoke
    returns, the model decides again. Without the deputy (main before issue 10's fix) nothing after the hung
    window is decided until the invoke returns: the first wait below times out."""
    sink = OneAtATime()
    runtime, release, calls = hanging_runtime(tmp_path, sink)
    thread, out = run_in_thread(runtime)
    try:
        wait_for(lambda: len(calls) >= HUNG_CALL, "the invoke that hangs", timeout=30)
        last_model = [d for d, _ in sink.decisions if d.source == "model"][-1].seq  # decided before the hang
        # the hung window is the watchdog's first after it (on a loaded machine not always last_model + 1: a
        # window in between may have been taken over, overrun)
        wait_for(lambda: hung_window(sink, last_model) is not None, "the hung window's fallback", timeout=30)
        hung = hung_window(sink, last_model)
        wait_for(lambda: len(sink.after(hung)) >= 20, "20 windows after the hung one decided while it hangs",
                 timeout=30)
        assert not release.is_set() and len(calls) == HUNG_CALL  # still inside the hung invoke
    finally:
        release.set()
    thread.join(60)
    assert not thread.is_alive() and "error" not in out, out.get("error")
    summary = out["summary"]
    decided = {d.seq: (d, t) for d, t in sink.decisions if d.reason is None or d.reason.name != "SHUTDOWN"}
    window, by = decided[hung]
    assert window.reason.name == "DEADLINE" and by == "edge-infer-watchdog"
    during = sink.after(hung)[:20]
    assert all(d.reason.name == "OVERRUN" and t.startswith("edge-infer-deputy") for d, t in during)
    seqs = [d.seq for d, _ in sink.decisions if d.reason is None or d.reason.name != "SHUTDOWN"]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))  # every window once, in order
    assert sink.overlaps == 0
    later = [d for d, t in sink.decisions if d.seq > during[-1][0].seq and d.source == "model"]
    assert later and all(t == "first-thread" for d, t in sink.decisions if d in later)  # the model decides again
    assert summary["deputy_takeovers"] >= 1
    assert summary["scheduler"]["busy_overruns"] >= 1


def test_an_error_in_a_deputy_is_raised_on_the_first_thread(tmp_path):
    sink = OneAtATime(raise_on_deputy=True)
    runtime, release, calls = hanging_runtime(tmp_path, sink)
    thread, out = run_in_thread(runtime)
    try:
        wait_for(lambda: runtime.baton.error is not None, "the deputy's turn to fail", timeout=30)
    finally:
        release.set()
    thread.join(60)
    assert not thread.is_alive()
    assert isinstance(out.get("error"), RuntimeError) and "deputy's thread" in str(out["error"])


@pytest.mark.parametrize("speed", [1.0, None])
def test_on_time_no_deputy_is_started_and_a_full_speed_replay_lends_nothing(tmp_path, speed):
    """Paced: the baton is lent around every invoke, and nothing else happens. At full speed (nothing could be
    decided meanwhile: a frame arrives when it is read) it is not even lent."""
    spec, engine = open_model(str(write_spec(tmp_path)))
    sink = OneAtATime()
    runtime = Runtime(spec, engine, paced_log(tmp_path, spec, frames=60, speed=speed), [sink],
                      options=DeadlineOptions(warmup=0, gc_control=False, no_data_ms=0))
    summary = runtime.run()
    assert summary["model_decisions"] == 60 - 8 + 1
    assert summary["deputy_takeovers"] == 0 and runtime.baton._threads == []
    assert (runtime.baton._lends > 0) == (speed is not None)
    assert not runtime.baton.lock.locked()


def test_a_stop_during_a_hung_invoke_ends_the_loop_and_the_run_closes_once_the_invoke_returns(tmp_path):
    """The deputy sees the stop and ends the loop; the first thread, still inside the invoke, finishes the run
    (the shutdown decision, the sinks closed) only when it returns, as in the many-stream loop."""
    sink = OneAtATime()
    runtime, release, calls = hanging_runtime(tmp_path, sink)
    stop = threading.Event()
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("summary", runtime.run(stop=stop)), daemon=True)
    thread.start()
    try:
        wait_for(lambda: runtime.baton.takeovers >= 1, "a deputy to take over", timeout=30)
        stop.set()
        wait_for(lambda: runtime.baton.over, "the deputy to end the loop", timeout=30)
        assert thread.is_alive() and "summary" not in out  # the first thread is still in the invoke
    finally:
        release.set()
    thread.join(60)
    assert out["summary"]["deputy_takeovers"] == 1
    assert sink.decisions[-1][0].reason.name == "SHUTDOWN" and sink.decisions[-1][1] == thread.name


def test_a_takeover_is_not_counted_as_a_window_the_watchdog_decided(tmp_path):
    sink = OneAtATime()
    runtime, release, calls = hanging_runtime(tmp_path, sink)
    thread, out = run_in_thread(runtime)
    try:
        wait_for(lambda: runtime.baton.takeovers >= 1, "a deputy to take over", timeout=30)
    finally:
        release.set()
    thread.join(60)
    scheduler = out["summary"]["scheduler"]
    assert scheduler["watchdog_fallbacks"] == 1 and out["summary"]["deputy_takeovers"] == 1


def test_a_deputy_serves_only_the_lending_it_was_called_for():
    """A deputy called while an invoke overran, but slow to start: by the time it gets the lock, the invoke's
    thread took the baton back and lent it again for the next invoke, which nobody asked a deputy for. It hands
    the baton straight back (running a turn then would decide windows before the watchdog decided that
    invoke's window: out of order, and beside the watchdog in the sinks)."""
    from edge_infer.deadline.baton import Baton

    turns: List[int] = []
    baton = Baton(lambda: turns.append(1) or True, lambda: None)
    baton.hold()
    baton.lend()  # invoke 1 overruns...
    baton.take_back()  # ...and returns before the deputy the watchdog calls now gets the lock
    baton.call_deputy()
    baton.lend()  # invoke 2
    wait_for(lambda: len(baton._idle) == 1, "the deputy to hand the baton back", timeout=30)
    baton.take_back()
    assert turns == [] and baton.takeovers == 0
    baton.close()


def test_under_realtime_the_deputy_runs_under_sched_fifo_at_the_loops_priority(tmp_path):
    from test_deadline_runtime import fifo_permitted

    if not fifo_permitted():
        pytest.skip("SCHED_FIFO is not permitted here")
    sink = OneAtATime()
    runtime, release, calls = hanging_runtime(tmp_path, sink)
    runtime.options = DeadlineOptions(warmup=0, gc_control=False, no_data_ms=0, realtime=True)
    thread, out = run_in_thread(runtime)
    try:
        wait_for(lambda: runtime.baton.takeovers >= 1, "a deputy to take over", timeout=30)
        deputy = runtime.baton._threads[0].native_id
        policy, priority = os.sched_getscheduler(deputy), os.sched_getparam(deputy).sched_priority
        loop_priority = os.sched_getparam(thread.native_id).sched_priority
    finally:
        release.set()
    thread.join(60)
    assert policy & ~getattr(os, "SCHED_RESET_ON_FORK", 0) == os.SCHED_FIFO and priority == loop_priority > 0
