"""Honest deadlines, rule by rule, on fake clocks with fake slow engines (no timing is asserted).

* arrival time: a paced log stamps each frame with its due time; a live source's reader thread queues
  frames in order, with restarts in between;
* never behind: windows a newer window has overtaken fall back ``overrun`` at once, the model takes the
  newest, a window whose deadline has passed is never started, and the run keeps up;
* the inline mode's watchdog decides an overrunning window at its deadline, exactly once, and the late
  answer is dropped;
* the start-up check compares the p99 with the window period;
* the reserve is learned from how late the watchdog runs and how long its fallbacks take to leave the
  sinks, and the loop never starts a window whose recent p99 invoke would not end before the watchdog acts
  when a newer window will be there first.

Real-time behaviour (a pty device faster than the model, a busy thread, a CPU hog) is measured from outside
by scripts/bench_arrival.py (docs/performance.md); tests/test_arrival_live.py runs it on real ptys.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import threading
import time
from functools import partial
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest

from edge_infer.deadline.clock import Clock, FakeClock
from edge_infer.deadline.hygiene import Demotion
from edge_infer.deadline.options import DeadlineOptions
from edge_infer.deadline.scheduler import InlineScheduler
from edge_infer.deadline.startup import BudgetError, StartupReport, check_budget
from edge_infer.deadline.watchdog import Pending, Watchdog
from edge_infer.decide.decision import Decision
from edge_infer.decide.reasons import Reason
from edge_infer.frame import Frame
from edge_infer.io import read_log
from edge_infer.model.loader import open_model
from edge_infer.runtime import Runtime
from edge_infer.sinks.base import Sink
from edge_infer.sources.arrival import ArrivalReader
from edge_infer.sources.base import EndOfStream, Source
from edge_infer.sources.log_replay import LogSource
from edge_infer.testing.tflite_builder import dense_model, write_model
from edge_infer.window import WindowBuffer

MS = 1_000_000
SAFETY_S = 30.0


class ListSink(Sink):
    def __init__(self) -> None:
        self.decisions: List[Decision] = []
        self.threads: List[str] = []

    def on_decision(self, decision: Decision) -> None:
        self.decisions.append(decision)
        self.threads.append(threading.current_thread().name)


class SlowEngine:
    """A fake model of the spec's shape: each invoke advances the fake clock by ``ms`` (and may wait on a gate)."""

    def __init__(self, clock: FakeClock, ms: float, window: int = 8, channels: int = 2, outputs: int = 3,
                 gate: Optional[threading.Event] = None):
        self.clock, self.ns, self.gate = clock, int(ms * MS), gate
        self.window, self.channels, self.output_size = window, channels, outputs
        self.inputs: List[float] = []
        self._out = np.array([0.1, 0.8, 0.1], dtype=np.float32)

    def infer(self, window: np.ndarray) -> np.ndarray:
        self.inputs.append(float(window[-1, 0]))
        self.clock.advance(self.ns)
        if self.gate is not None:
            assert self.gate.wait(SAFETY_S), "the test never released the gate"
        return self._out


def write_spec(tmp_path: Path, hop: int = 1, rate: int = 100, budget_ms: float = 50) -> Path:
    write_model(tmp_path / "m.tflite", dense_model(8, 2, 3, seed=1))
    spec = tmp_path / "m.toml"
    spec.write_text(f"""
[model]
file = "m.tflite"
[input]
channels = ["a", "b"]
sample_rate_hz = {rate}
window = 8
hop = {hop}
[output]
kind = "classes"
labels = ["x", "y", "z"]
[deadline]
budget_ms = {budget_ms}
no_data_ms = 0
[fallback]
action = "safe"
""")
    return spec


def write_log(path: Path, frames: int, rate: int = 100) -> Path:
    rng = np.random.default_rng(0)
    rows = [f"{i / rate:.4f},{a:.3f},{b:.3f}" for i, (a, b) in enumerate(rng.normal(size=(frames, 2)))]
    path.write_text("t,a,b\n" + "\n".join(rows) + "\n")
    return path


def runtime_with(tmp_path: Path, engine_ms: float, frames: int, clock: FakeClock, warmup: int = 20,
                 gate: Optional[threading.Event] = None, speed: Optional[float] = 1.0, **spec_args):
    spec, real = open_model(str(write_spec(tmp_path, **spec_args)))
    log = read_log(write_log(tmp_path / "log.csv", frames))
    source = LogSource(log, [0, 1], spec.channels, speed=speed, clock=clock)
    options = DeadlineOptions(mode="inline", warmup=warmup, gc_control=False, switch_interval_ms=0)
    engine = SlowEngine(clock, engine_ms, gate=gate)
    scheduler = InlineScheduler(engine, clock, reserve_ns=options.reserve_ns(spec.budget_ns))
    sink = ListSink()
    runtime = Runtime(spec, real, source, [sink], scheduler=scheduler, clock=clock, options=options)
    return runtime, sink, engine


# --- arrival time ---------------------------------------------------------------------------------------


def test_a_paced_log_stamps_each_frame_with_its_due_time_however_late_it_is_read(tmp_path):
    clock = FakeClock(start_ns=10**12)
    log = read_log(write_log(tmp_path / "log.csv", 50))
    source = LogSource(log, [0, 1], ["a", "b"], speed=2.0, clock=clock)
    first = source.recv(0)
    assert first.recv_ns == 10**12
    clock.advance(100 * MS)  # the reader was busy for 100 ms: frames 1..20 are due (every 5 ms at speed 2)
    assert source.backlog() == 20
    frames = [source.recv(0) for _ in range(20)]
    assert [f.recv_ns - first.recv_ns for f in frames] == [5 * MS * (i + 1) for i in range(20)]
    assert source.backlog() == 0 and source.recv(0) is None  # frame 21 is not due yet


class ScriptedSource(Source):
    """Hands out prepared frames (stamped when made), with a stream restart after ``restart_after`` frames."""

    live = True
    channels = ["a", "b"]

    def __init__(self, count: int, restart_after: int, fail: Optional[BaseException] = None):
        self.count, self.restart_after, self.fail = count, restart_after, fail
        self.sent = 0
        self.restart_listeners: list = []

    def recv(self, timeout: Optional[float] = None) -> Optional[Frame]:
        if self.sent == self.count:
            if self.fail is not None:
                raise self.fail
            raise EndOfStream
        if self.sent == self.restart_after:
            for listener in self.restart_listeners:
                listener()
        self.sent += 1
        return Frame(seq=self.sent - 1, t=0.0, recv_ns=time.perf_counter_ns(), values=np.zeros(2, np.float32),
                     label=None, device_seq=None)


def test_the_reader_queues_frames_in_order_and_restarts_between_them_on_the_loops_thread():
    source = ScriptedSource(10, restart_after=4)
    reader = ArrivalReader(source)
    source.restart_listeners.append(reader.mark_restart)
    seen: list = []
    reader.restart_listeners.append(lambda: seen.append(("restart", threading.current_thread().name)))
    reader.start()
    while True:
        try:
            frame = reader.recv(SAFETY_S)
        except EndOfStream:
            break
        assert frame is not None
        seen.append(frame.seq)
    me = threading.current_thread().name
    assert seen == [0, 1, 2, 3, ("restart", me), 4, 5, 6, 7, 8, 9]
    with pytest.raises(EndOfStream):  # the end stays the end
        reader.recv(0)
    assert reader.counters()["unread_frames"] == 0
    reader.close()


def test_a_fatal_source_error_on_the_reader_thread_ends_the_run_on_the_loops_thread():
    reader = ArrivalReader(ScriptedSource(3, restart_after=-1, fail=ValueError("schema mismatch")))
    reader.start()
    got = [reader.recv(SAFETY_S) for _ in range(3)]
    assert [f.seq for f in got] == [0, 1, 2]
    with pytest.raises(ValueError, match="schema mismatch"):
        reader.recv(SAFETY_S)
    reader.close()


def test_until_due_counts_the_frames_to_the_next_window():
    window = WindowBuffer(4, 1, 3)
    assert window.until_due() == 4
    pushed = [window.push(np.zeros(1, np.float32)) for _ in range(6)]
    assert pushed == [False, False, False, True, False, False]
    assert window.until_due() == 1


# --- never behind ---------------------------------------------------------------------------------------


def test_a_model_slower_than_the_windows_takes_the_newest_and_the_rest_fall_back_overrun_on_time(tmp_path):
    clock = FakeClock(start_ns=10**12)
    # 100 Hz, hop 1: a window every 10 ms; the model takes 25 ms; budget 50 ms
    runtime, sink, engine = runtime_with(tmp_path, engine_ms=25, frames=300, clock=clock)
    summary = runtime.run()
    decisions = [d for d in sink.decisions if d.reason is not Reason.NO_DATA]
    # the log ends: the loop, one invoke behind the last frame, may find it silent once, never before
    assert [d.seq for d in sink.decisions if d.reason is Reason.NO_DATA] in ([], [299])
    assert [d.seq for d in decisions] == list(range(7, 300))  # every window, once, in order
    model = [d for d in decisions if d.source == "model"]
    overrun = [d for d in decisions if d.reason is Reason.OVERRUN]
    assert len(model) + len(overrun) == len(decisions)
    assert 0.3 * len(decisions) <= len(model) <= 0.45 * len(decisions)  # about one window in 2.5
    assert summary["late_decisions"] == 0
    assert max(d.latency_us for d in decisions) <= 50_000
    # the model took the newest window each time: its answer is at most one window period + one invoke old
    assert max(d.latency_us for d in model) <= 10_000 + 25_000
    # the overrun ones were decided at once, not after waiting for anything
    assert max(d.latency_us for d in overrun) <= 25_000
    assert summary["startup"]["keeps_up"] is False


def test_a_burst_a_fast_model_can_clear_costs_no_model_decision(tmp_path):
    clock = FakeClock(start_ns=10**12)
    runtime, sink, engine = runtime_with(tmp_path, engine_ms=0.1, frames=60, clock=clock)
    runtime.start()
    frames = [runtime.source.recv(None) for _ in range(7)]
    for frame in frames:
        runtime.on_frame(frame)
    clock.advance(40 * MS)  # the loop was away: 4 frames (4 windows at hop 1) arrived meanwhile
    while True:
        frame = runtime.source.recv(0)
        if frame is None:
            break
        runtime.on_frame(frame)
    assert [d.source for d in sink.decisions] == ["model"] * 4  # 4 x 0.1 ms fits in a 10 ms window period
    runtime.close()


def test_a_window_whose_deadline_has_passed_is_never_started(tmp_path):
    clock = FakeClock(start_ns=10**12)
    runtime, sink, engine = runtime_with(tmp_path, engine_ms=1, frames=20, clock=clock, warmup=0, speed=None)
    runtime.start()
    old = 10**12 - 60 * MS  # arrived 60 ms ago: its 50 ms deadline is gone
    for i in range(8):
        runtime.on_frame(Frame(seq=i, t=i / 100, recv_ns=old, values=np.zeros(2, np.float32), label=None,
                               device_seq=None))
    assert engine.inputs == []
    assert [(d.seq, d.reason) for d in sink.decisions] == [(7, Reason.OVERRUN)]
    runtime.close()


# --- the watchdog ---------------------------------------------------------------------------------------


def test_the_watchdog_decides_an_overrunning_invoke_at_its_deadline_and_the_late_answer_is_dropped(tmp_path):
    clock = FakeClock(start_ns=10**12)
    gate = threading.Event()
    runtime, sink, engine = runtime_with(tmp_path, engine_ms=80, frames=20, clock=clock, warmup=0, speed=None,
                                         gate=gate)
    runtime.start()
    frames = [runtime.source.recv(0) for _ in range(8)]
    for frame in frames[:7]:
        runtime.on_frame(frame)
    result: list = []
    loop = threading.Thread(target=lambda: result.append(runtime.on_frame(frames[7])), name="loop")
    loop.start()
    give_up = time.monotonic() + SAFETY_S
    while not sink.decisions:  # the invoke is still held on its gate: only the watchdog can decide
        assert time.monotonic() < give_up, "the watchdog never decided"
        time.sleep(0.001)
    gate.set()
    loop.join(SAFETY_S)
    assert result == [None]  # the loop did not decide it again
    (decision,) = sink.decisions
    assert (decision.seq, decision.reason, decision.source) == (7, Reason.DEADLINE, "fallback")
    assert sink.threads == ["edge-infer-watchdog"]
    counters = runtime.scheduler.counters()
    assert counters["watchdog_fallbacks"] == 1 and counters["late_results"] == 1
    runtime.close()


def test_the_loop_and_the_watchdog_never_both_decide_a_window():
    """Invokes that end right around their fire time, many times over: each window is decided exactly once."""
    clock = Clock()
    watchdog = Watchdog(clock)
    decided = collections.Counter()
    by_watchdog = []

    def late(pending: Pending, now_ns: int) -> None:
        decided[pending.frame] += 1
        by_watchdog.append(pending.frame)

    rng = random.Random(7)
    for i in range(400):
        now = clock.now_ns()
        pending = Pending(now + rng.randrange(0, 400_000), now + 10**9, i, late)
        watchdog.arm(pending)
        time.sleep(rng.randrange(0, 400) / 1e6)  # the "invoke"
        if watchdog.settle(pending):
            decided[i] += 1
    watchdog.close()
    assert all(decided[i] == 1 for i in range(400))
    assert watchdog.fired == len(by_watchdog)
    assert 0 < len(by_watchdog) < 400  # both sides won some (the race was exercised)


def test_the_watchdog_fires_what_each_owner_armed_at_its_own_time():
    """Two shared models' invokes overrunning at once: arming the second does not unwatch the first's."""
    clock = FakeClock(start_ns=0)
    watchdog = Watchdog(clock)
    fired: list = []
    pendings = [Pending(fire, fire, name, lambda p, now: fired.append((p.frame, now)))
                for name, fire in (("late", 20 * MS), ("early", 5 * MS))]
    watchdog.arm_for("model A", pendings[0])
    watchdog.arm_for("model B", pendings[1])
    clock.advance(6 * MS)
    give_up = time.monotonic() + SAFETY_S
    while not fired:
        assert time.monotonic() < give_up
        time.sleep(0.001)
    assert [name for name, _ in fired] == ["early"] and pendings[0].open
    clock.advance(20 * MS)
    while len(fired) < 2:
        assert time.monotonic() < give_up
        time.sleep(0.001)
    assert [name for name, _ in fired] == ["early", "late"]
    watchdog.close()


# --- the learned reserve and the start rule ---------------------------------------------------------------


def wait_for(condition, what: str) -> None:
    give_up = time.monotonic() + SAFETY_S
    while not condition():
        assert time.monotonic() < give_up, what
        time.sleep(0.0005)


def test_the_reserve_is_learned_from_how_late_the_watchdog_wakes_and_how_long_its_fallbacks_take():
    """A watchdog that runs 3 ms after its timer (the GIL, a CPU) and whose fallbacks spend 2 ms in the sinks
    fires 5 ms before the deadline, not the configured 1 ms; never below the floor, never above budget / 4."""
    from edge_infer.deadline.reserve import Reserve

    clock = FakeClock(start_ns=0)
    reserve = Reserve(1 * MS, cap_ns=50 * MS // 4)
    decided: list = []

    def slow_sink(pending: Pending, now_ns: int) -> None:
        clock.advance(2 * MS)  # the fallback spends 2 ms in the sinks
        decided.append(pending.frame)

    watchdog = Watchdog(clock, reserve=reserve)
    assert reserve.ns == 1 * MS  # nothing measured yet: the floor
    for i in range(12):
        fire_at = clock.now_ns() + 20 * MS  # 20 ms of fake time = 20 ms of real sleep for the watchdog
        watchdog.arm(Pending(fire_at, fire_at + 1 * MS, i, slow_sink))
        wait_for(lambda: watchdog._sleeping_until == fire_at, "the watchdog never went to sleep for it")
        clock.advance(23 * MS)  # its timer fires 20 ms from now, but it only gets to run 3 ms after that
        wait_for(lambda: len(decided) == i + 1, "the watchdog never fired")
    watchdog.close()
    assert reserve.ns == 5 * MS  # p99 wake-up lateness 3 ms + p99 time in the sinks 2 ms
    quiet = Reserve(1 * MS, cap_ns=50 * MS // 4)
    for _ in range(20):
        quiet.woke(100_000)
    assert quiet.ns == 1 * MS  # a quiet machine keeps the configured floor
    for _ in range(20):
        quiet.woke(30 * MS)
    assert quiet.ns == 50 * MS // 4  # a stalled one never eats more than a quarter of the budget


def push_window(runtime: Runtime, clock: FakeClock, seq: int, age_ms: float) -> None:
    """A whole window (8 frames) for ``runtime``, its last frame arrived ``age_ms`` ago by ``clock``."""
    arrived = clock.now_ns() - int(age_ms * MS)
    for i in range(8):
        runtime.on_frame(Frame(seq=seq * 8 + i, t=0.0, recv_ns=arrived,
                               values=np.full(2, seq, np.float32), label=None, device_seq=None))
    runtime.window.reset()


def test_a_window_the_models_p99_cannot_finish_in_time_falls_back_overrun_when_a_newer_one_comes_first(tmp_path):
    clock = FakeClock(start_ns=10**12)
    # 100 Hz, hop 1, budget 50 ms, the model 25 ms (warm-up measures it: p99 25 ms), reserve 1 ms
    runtime, sink, engine = runtime_with(tmp_path, engine_ms=25, frames=40, clock=clock, warmup=20, speed=None)
    runtime.start()
    warm = len(engine.inputs)

    window = partial(push_window, runtime, clock)

    window(1, 30)  # 30 + 25 > 49: the model would end after the watchdog acted, and a newer window comes in 10
    assert len(engine.inputs) == warm  # never started
    assert (sink.decisions[-1].seq, sink.decisions[-1].reason) == (15, Reason.OVERRUN)
    window(2, 20)  # 20 + 25 < 49: fits, the model takes it
    assert len(engine.inputs) == warm + 1 and sink.decisions[-1].source == "model"
    # a loop that only ever sees old windows (it reads them late) does not stop the model for good: every
    # tenth window refused since the estimate was refreshed runs anyway, to measure the model again
    for seq in range(3, 13):
        window(seq, 30)
    assert len(engine.inputs) == warm + 2
    assert [d.reason for d in sink.decisions[-10:]].count(Reason.OVERRUN) == 9
    runtime.close()
    # ... but a window is still run when no newer one would come first, or when none could fit
    clock = FakeClock(start_ns=10**12)
    # hop 8 at 100 Hz: the next window is 80 ms away, longer than an invoke: running this one costs nobody
    runtime, sink, engine = runtime_with(tmp_path, engine_ms=25, frames=40, clock=clock, speed=None, hop=8)
    runtime.start()
    warm, now = len(engine.inputs), clock.now_ns()
    for i in range(8):
        runtime.on_frame(Frame(seq=i, t=0.0, recv_ns=now - 30 * MS, values=np.zeros(2, np.float32), label=None,
                               device_seq=None))
    assert len(engine.inputs) == warm + 1  # run: it may make it, and the watchdog keeps the deadline
    runtime.close()
    # a model slower than the budget (55 ms against 50): no window could fit, so refusing would only ever
    # stop the model; it runs, and the watchdog keeps the deadline
    clock = FakeClock(start_ns=10**12)
    runtime, sink, engine = runtime_with(tmp_path, engine_ms=55, frames=40, clock=clock, speed=None)
    runtime.start()
    warm, now = len(engine.inputs), clock.now_ns()
    for i in range(8):
        runtime.on_frame(Frame(seq=i, t=0.0, recv_ns=now, values=np.zeros(2, np.float32), label=None,
                               device_seq=None))
    assert len(engine.inputs) == warm + 1
    runtime.close()


def test_a_window_that_arrived_while_the_model_was_free_is_run_however_late_the_loop_sees_it(tmp_path):
    """The refusal above bets that the next window is seen fresh. A window that arrived after the model's last
    invoke ended was late for a reason outside the loop (a reader that got the frame late: a busy Python thread
    held the GIL); the next one will be as late, so it is run, and a model faster than its p99 decides it (a
    busy thread in bench_arrival.py: 136 model decisions in 969 windows with the bet, the rest refused in turn)."""
    clock = FakeClock(start_ns=10**12)
    runtime, sink, engine = runtime_with(tmp_path, engine_ms=25, frames=40, clock=clock, warmup=20, speed=None)
    runtime.start()
    warm = len(engine.inputs)
    window = partial(push_window, runtime, clock)
    engine.ns = 15 * MS  # from now on the model takes 15 ms; its p99 stays the warm-up's 25 ms

    window(1, 10)  # the model takes it (10 + 25 < 49); its invoke ends now
    assert len(engine.inputs) == warm + 1
    for seq in range(2, 6):
        clock.advance(40 * MS)  # each arrived 10 ms after the model was free, and the loop sees it 30 ms old
        window(seq, 30)  # 30 + p99 25 > 49, but the next would be as late: run, and decided in 30 + 15 ms
        assert len(engine.inputs) == warm + seq, seq
        assert (sink.decisions[-1].source, sink.decisions[-1].reason) == ("model", None), seq
    engine.ns = 25 * MS
    window(6, 10)  # an invoke from now to now + 25 ms
    window(7, 24.5)  # arrived 0.5 ms into that invoke: the loop's own lag, the next comes fresh; refused
    assert len(engine.inputs) == warm + 6
    assert (sink.decisions[-1].seq, sink.decisions[-1].reason) == (63, Reason.OVERRUN)
    runtime.close()


def test_the_learned_reserve_moves_the_last_moment_a_window_may_start(tmp_path):
    clock = FakeClock(start_ns=10**12)
    runtime, sink, engine = runtime_with(tmp_path, engine_ms=25, frames=40, clock=clock, warmup=20, speed=None)
    runtime.start()
    reserve = runtime.scheduler.reserve
    for _ in range(10):
        reserve.woke(6 * MS)  # this machine's watchdog runs 6 ms late: it fires 6 ms before the deadline
    assert reserve.ns == 6 * MS
    warm, now = len(engine.inputs), clock.now_ns()
    for i in range(8):  # 21 ms old: 21 + 25 fits the configured 1 ms reserve (49), not the learned 6 ms (44)
        runtime.on_frame(Frame(seq=i, t=0.0, recv_ns=now - 21 * MS, values=np.zeros(2, np.float32), label=None,
                               device_seq=None))
    assert len(engine.inputs) == warm
    assert (sink.decisions[-1].seq, sink.decisions[-1].reason) == (7, Reason.OVERRUN)
    assert runtime.summary()["scheduler"]["reserve_ms"] == 6.0
    runtime.close()


def test_a_realtime_loop_that_goes_from_invoke_to_invoke_leaves_its_cpu_now_and_then():
    """Under SCHED_FIFO the loop sleeps briefly before an invoke once it has computed 5 ms without a pause, so
    that the kernel's work on its CPU (the tty layer's) runs; a loop that pauses between invokes never does."""
    clock = FakeClock(start_ns=10**12)
    scheduler = InlineScheduler(SlowEngine(clock, 25), clock, reserve_ns=MS)
    window = np.zeros((8, 2), np.float32)
    for _ in range(2):
        scheduler.run(window, clock.now_ns() + 50 * MS)
    assert scheduler.counters()["breaths"] is None  # not --realtime: the normal scheduler shares the CPU
    scheduler.on_fifo()
    for _ in range(3):  # back to back: each invoke starts as the last one ends
        scheduler.run(window, clock.now_ns() + 50 * MS)
    assert scheduler.counters()["breaths"] == 2  # not before the first: it followed a pause
    clock.advance(10 * MS)  # the loop waited for a frame
    scheduler.run(window, clock.now_ns() + 50 * MS)
    assert scheduler.counters()["breaths"] == 2
    scheduler.close()
    fast = InlineScheduler(SlowEngine(clock, 0.1), clock, reserve_ns=MS)
    fast.on_fifo()
    for _ in range(40):  # 4 ms of back-to-back invokes (a burst being caught up): not yet worth a pause
        fast.run(window, clock.now_ns() + 50 * MS)
    assert fast.counters()["breaths"] == 0
    fast.close()


class SchedulerCalls:
    """Stands in for ``os.sched_setscheduler``: records each policy the loop thread is given (or refuses one)."""

    def __init__(self, refuse_fifo: bool = False):
        self.policies: List[int] = []
        self.refuse_fifo = refuse_fifo

    def __call__(self, pid: int, policy: int, param: object) -> None:
        assert pid == 0  # the calling thread: the loop, inside run()
        if self.refuse_fifo and policy & 0xFF == FIFO:
            raise PermissionError(1, "Operation not permitted")
        self.policies.append(policy & 0xFF)


FIFO, OTHER = 1, 0


def test_a_realtime_loop_runs_long_invokes_under_the_normal_scheduler_and_short_ones_under_its_own():
    """Under SCHED_FIFO an invoke whose recent p99 is 1 ms or more runs under the normal scheduler (the kernel's
    work on the CPU and its real-time budget are not held up by the model; the watchdog and the backstop keep the
    deadline) and the loop takes SCHED_FIFO back as it returns, also when the model raised. A short model never
    pays the two system calls, and a demoted invoke needs no breath."""
    clock = FakeClock(start_ns=10**12)
    calls = SchedulerCalls()
    scheduler = InlineScheduler(SlowEngine(clock, 25), clock, reserve_ns=MS)
    scheduler.on_fifo()  # this test's thread is not SCHED_FIFO: nothing to demote
    assert scheduler.demotion is None and scheduler.counters()["demoted_invokes"] is None
    scheduler.demotion = Demotion(calls, (FIFO, 50))
    window = np.zeros((8, 2), np.float32)
    for _ in range(10):  # until the estimate exists, no invoke is demoted
        scheduler.run(window, clock.now_ns() + 50 * MS)
    assert calls.policies == []
    for _ in range(3):
        scheduler.run(window, clock.now_ns() + 50 * MS)
    assert calls.policies == [OTHER, FIFO] * 3
    assert scheduler.counters()["demoted_invokes"] == 3
    assert scheduler.counters()["breaths"] == 9  # the first ten breathed (back to back, after the first); no more

    def fails(window: np.ndarray) -> np.ndarray:
        clock.advance(25 * MS)
        raise RuntimeError("the delegate failed")
    scheduler.engine.infer = fails  # type: ignore[method-assign]
    assert scheduler.run(window, clock.now_ns() + 50 * MS).reason == Reason.MODEL_ERROR
    assert calls.policies[-2:] == [OTHER, FIFO]
    scheduler.close()

    fast_calls = SchedulerCalls()
    fast = InlineScheduler(SlowEngine(clock, 0.1), clock, reserve_ns=MS)
    fast.on_fifo()
    fast.demotion = Demotion(fast_calls, (FIFO, 50))
    for _ in range(30):
        fast.run(window, clock.now_ns() + 50 * MS)
    assert fast_calls.policies == [] and fast.counters()["demoted_invokes"] == 0
    fast.close()

    other_calls = SchedulerCalls()  # the loop's windows decided from another thread: its scheduling is not ours
    elsewhere = InlineScheduler(SlowEngine(clock, 25), clock, reserve_ns=MS)
    elsewhere.demotion = Demotion(other_calls, (FIFO, 50), thread_id=threading.get_native_id() + 1)
    for _ in range(13):
        elsewhere.run(window, clock.now_ns() + 50 * MS)
    assert other_calls.policies == [] and elsewhere.counters()["demoted_invokes"] == 0
    elsewhere.close()


def test_a_loop_that_cannot_take_sched_fifo_back_says_so_once_and_demotes_no_more(caplog):
    clock = FakeClock(start_ns=10**12)
    calls = SchedulerCalls(refuse_fifo=True)
    scheduler = InlineScheduler(SlowEngine(clock, 25), clock, reserve_ns=MS)
    scheduler.on_fifo()
    scheduler.demotion = Demotion(calls, (FIFO, 50))
    window = np.zeros((8, 2), np.float32)
    with caplog.at_level(logging.WARNING):
        for _ in range(14):
            answer = scheduler.run(window, clock.now_ns() + 50 * MS)
            assert answer.reason is None  # the model's answer still counts
    assert calls.policies == [OTHER]  # demoted once; the way back refused; never again
    assert scheduler.counters()["demoted_invokes"] == 1
    assert [r.message for r in caplog.records].count(
        "--realtime: the loop cannot take SCHED_FIFO back after an invoke (Operation not permitted); it runs under "
        "the normal scheduler from now on") == 1
    scheduler.close()


def test_demotion_moves_a_real_sched_fifo_thread_to_the_normal_scheduler_and_back():
    """With the kernel's own calls, on a thread of its own (skipped where SCHED_FIFO is not permitted)."""
    seen: dict = {}

    def loop_thread() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(7))
        except PermissionError:
            seen["skip"] = True
            return
        demotion = Demotion.of_this_thread()
        assert demotion is not None
        demotion.down()
        seen["down"] = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        demotion.up()
        seen["up"] = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        seen["other"] = Demotion.of_this_thread()

    thread = threading.Thread(target=loop_thread)
    thread.start()
    thread.join(SAFETY_S)
    if seen.get("skip"):
        pytest.skip("SCHED_FIFO is not permitted here")
    assert seen["down"][0] == os.SCHED_OTHER | os.SCHED_RESET_ON_FORK
    assert seen["down"][1] in (-20, -10, 0)  # nice -20 where permitted, else -10, else it stays (one warning)
    assert seen["up"] == (os.SCHED_FIFO, 7)
    assert seen["other"] is None  # a loop that is not SCHED_FIFO has nothing to demote


@pytest.mark.parametrize("lowest, expected, warned", [(-20, [-20], False), (-10, [-20, -10], False),
                                                       (0, [-20, -10], True)])
def test_a_demoted_invoke_gets_the_lowest_nice_the_limit_allows(monkeypatch, caplog, lowest, expected, warned):
    """nice -20, or -10 where RLIMIT_NICE stops there (a systemd unit without LimitNICE=-20), or none, with
    one warning line; never an error."""
    tried: List[int] = []

    def setpriority(which: int, who: int, nice: int) -> None:
        tried.append(nice)
        if nice < lowest:
            raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_getscheduler", lambda pid: os.SCHED_FIFO)
    monkeypatch.setattr(os, "setpriority", setpriority)
    with caplog.at_level(logging.WARNING):
        assert Demotion.of_this_thread() is not None
    assert tried == expected
    assert ("without nice -20" in caplog.text) is warned


# --- the start-up check ---------------------------------------------------------------------------------


def report(p99_us: int) -> StartupReport:
    return StartupReport(windows=20, measured=18, p50_us=p99_us, p99_us=p99_us, max_us=p99_us, failed=0,
                         budget_ms=50.0, wait_ms=49.0)


def test_the_start_up_check_compares_the_p99_with_the_window_period_too(caplog):
    with caplog.at_level(logging.WARNING):
        check_budget(report(19_000), "inline", strict=False, window_period_ms=10.0)
    (line,) = [r.getMessage() for r in caplog.records if "start-up check" in r.getMessage()]
    assert "19.00 ms" in line and "10.00 ms between windows" in line and "overrun" in line
    with pytest.raises(BudgetError, match="between windows"):
        check_budget(report(19_000), "inline", strict=True, window_period_ms=10.0)
    check_budget(report(9_000), "inline", strict=True, window_period_ms=10.0)  # keeps up: silent
    unknown = report(19_000)
    check_budget(unknown, "inline", strict=True, window_period_ms=None)  # no sample rate: only the budget
    assert unknown.keeps_up is None


def test_a_frame_read_late_is_dated_by_the_device_clock_mapped_onto_the_host():
    from edge_infer.sources.arrival import DeviceClock

    clock = DeviceClock()
    host0 = 5 * 10**12
    # frames every 10 ms of device time, each normally read 200 us after it was sent
    assert clock.arrival_ns(0, host0 + 200_000) == host0 + 200_000
    assert clock.arrival_ns(10 * MS, host0 + 10 * MS + 300_000) == host0 + 10 * MS + 200_000  # read late: no creep
    # the reader was starved for 40 ms: the frame is dated when it came, not when it was read
    assert clock.arrival_ns(20 * MS, host0 + 60 * MS) == host0 + 20 * MS + 200_000
    # a faster frame lowers the offset at once
    assert clock.arrival_ns(30 * MS, host0 + 30 * MS + 100_000) == host0 + 30 * MS + 100_000
    # a device clock that goes back (rebooted, broken) starts the mapping again, and never dates a frame
    # more than MAX_LAG_NS before it was read, nor after
    assert clock.arrival_ns(0, host0 + 40 * MS) == host0 + 40 * MS
    clock.reset()
    assert clock.arrival_ns(10**15, host0 + 50 * MS) == host0 + 50 * MS
    assert clock.arrival_ns(10**15 + 1, host0 + 50 * MS + 5 * 10**9) >= host0 + 50 * MS + 5 * 10**9 - DeviceClock.MAX_LAG_NS


def _stream_through(clock, seconds: float, drift_ppm: float, late_from_s: float, late_until_s: float,
                    seed: int = 1) -> List[int]:
    """Frames every 10 ms from a device whose clock runs ``drift_ppm`` fast (negative: slow); each takes 50 us to
    come, and the reader reads most of them late (0.3-3 ms), all of them between ``late_from_s`` and
    ``late_until_s`` (a busy Python thread). Returns each mapped arrival's error against the true arrival (ns)."""
    rng = random.Random(seed)
    host0, errors = 7 * 10**12, []
    for i in range(int(seconds * 100)):
        true_ns = i * 10 * MS
        arrived = host0 + true_ns + 50_000
        device_ns = round(true_ns * (1 + drift_ppm / 1e6))
        busy = late_from_s * 1e9 <= true_ns < late_until_s * 1e9
        read = arrived + (rng.randint(300_000, 3 * MS) if busy or rng.random() < 0.7 else rng.randint(0, 20_000))
        errors.append(clock.arrival_ns(device_ns, read) - arrived)
    return errors


def test_a_reader_late_for_seconds_on_end_does_not_move_the_device_clock_mapping():
    """The same clock on both sides (the bench's virtual device): twenty seconds in which the reader is late for
    every frame leave the mapping where the quiet seconds before put it (the earlier estimator rose 500 ppm
    meanwhile: 0.5 ms a second)."""
    from edge_infer.sources.arrival import DeviceClock

    errors = _stream_through(DeviceClock(), seconds=60, drift_ppm=0, late_from_s=40, late_until_s=60)
    assert max(errors[100:]) <= 20_000  # within the fastest frames' own spread, from the first second on
    assert max(errors[4000:]) <= 2_000 and min(errors) >= -2_000  # the busy twenty seconds


@pytest.mark.parametrize("drift_ppm", [-200, 200])
def test_a_device_clock_that_drifts_is_followed_through_a_busy_stretch(drift_ppm: float):
    """Until the skew is known (16 s) a slow device clock makes frames look older, never younger; after it, the
    mapping holds through 25 s of a reader late for every frame (200 ppm over them would be 5 ms)."""
    from edge_infer.sources.arrival import DeviceClock

    errors = _stream_through(DeviceClock(), seconds=150, drift_ppm=drift_ppm, late_from_s=100, late_until_s=125)
    assert max(errors[100:1600]) <= 60_000  # early or within the fastest frames' spread, never late by more
    settled = errors[2000:]
    assert max(settled) <= 40_000 and min(settled) >= -40_000


def test_a_device_clock_that_jumps_ahead_starts_the_mapping_again():
    """A forward step is not drift: without a restart the skew would take it for 500 ppm of drift for half a
    minute (frames dated up to 20 ms early after a 50 ms step)."""
    from edge_infer.sources.arrival import DeviceClock

    clock, host0 = DeviceClock(), 9 * 10**12
    worst = 0
    for i in range(10_000):  # 100 s, frames every 10 ms, read 50 us after they were sent; the clock jumps at 60 s
        true_ns = i * 10 * MS
        device_ns = true_ns + (50 * MS if i >= 6000 else 0)
        mapped = clock.arrival_ns(device_ns, host0 + true_ns + 50_000)
        if i > 6001:
            worst = max(worst, abs(mapped - (host0 + true_ns + 50_000)))
    assert worst <= 1_000
