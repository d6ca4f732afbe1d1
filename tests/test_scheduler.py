"""The deadline scheduler's logic, on a fake clock with fake slow engines (no timing is asserted).

A fake engine "takes" its duration by advancing the fake clock when an
invoke starts, and can be held on a gate to stay busy for as long as a test
needs; its output is the window's last row, so an answer says which window
it belongs to. Like the real Engine it writes every output into one buffer,
so an answer that aliases the engine's buffer shows as a wrong answer.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import pytest

from edge_infer.deadline.clock import FakeClock
from edge_infer.deadline.scheduler import InlineScheduler, ThreadedScheduler
from edge_infer.deadline.tail_estimate import PROBE_EVERY
from edge_infer.decide.reasons import Reason

MS = 1_000_000
BUDGET = 5 * MS
RESERVE = MS // 2
SAFETY_S = 30.0  # real seconds a test may wait for the worker thread; generous for a loaded machine


class FakeEngine:
    """Invoke ``i`` takes ``durations_ms[i]`` fake ms (the last one repeats), may wait on a gate or raise."""

    window, channels, output_size = 4, 2, 2

    def __init__(self, clock: FakeClock, durations_ms: Sequence[float],
                 gates: Optional[Dict[int, threading.Event]] = None, raises: Sequence[int] = ()):
        self.clock = clock
        self.durations_ms = list(durations_ms)
        self.gates = gates or {}
        self.raises = set(raises)
        self.inputs: List[float] = []
        self._out = np.zeros(self.output_size, dtype=np.float32)  # reused, as Engine.output() does

    def infer(self, window: np.ndarray) -> np.ndarray:
        call = len(self.inputs)
        self.inputs.append(float(window[-1, 0]))
        self.clock.advance(int(self.durations_ms[min(call, len(self.durations_ms) - 1)] * MS))
        gate = self.gates.get(call)
        if gate is not None:
            assert gate.wait(SAFETY_S), "the test never released the gate"
        if call in self.raises:
            raise RuntimeError("fake model failure")
        np.copyto(self._out, window[-1])
        return self._out


def window(k: float) -> np.ndarray:
    return np.full((FakeEngine.window, FakeEngine.channels), k, dtype=np.float32)


def wait_for(condition, what: str) -> None:
    """Wait in real time for the worker thread to get somewhere (not a timing assertion: a safety net)."""
    give_up = time.monotonic() + SAFETY_S
    while not condition():
        assert time.monotonic() < give_up, f"gave up waiting for {what}"
        time.sleep(0.001)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start_ns=10**12)


def make(clock: FakeClock, engine: FakeEngine, **policy) -> ThreadedScheduler:
    policy.setdefault("reserve_ns", RESERVE)
    return ThreadedScheduler(engine, clock, **policy)


def late_answer_collected(scheduler: ThreadedScheduler, clock: FakeClock, count: int):
    def collected() -> bool:
        scheduler.poll(clock.now_ns())
        return scheduler.late_results >= count
    return collected


def test_an_answer_in_time_is_the_models(clock):
    scheduler = make(clock, FakeEngine(clock, [1]))
    answer = scheduler.run(window(1), clock.now_ns() + BUDGET)
    assert answer.reason is None
    assert answer.output.tolist() == [1.0, 1.0]
    assert answer.invoke_ns == 1 * MS
    scheduler.close()


def test_the_deadline_is_decided_while_the_invoke_goes_on_and_its_late_answer_is_dropped(clock):
    gate = threading.Event()
    engine = FakeEngine(clock, [30, 1], gates={0: gate})
    scheduler = make(clock, engine)
    first = scheduler.run(window(1), clock.now_ns() + BUDGET)
    assert first.reason is Reason.DEADLINE and first.output is None
    assert engine.inputs == [1.0]  # the invoke is still running (held on its gate)
    gate.set()
    wait_for(late_answer_collected(scheduler, clock, 1), "the late answer")
    second = scheduler.run(window(2), clock.now_ns() + BUDGET)
    assert second.reason is None
    assert second.output.tolist() == [2.0, 2.0]  # window 2's answer, never window 1's
    counters = scheduler.counters()
    assert counters["late_results"] == 1
    assert counters["late_invoke_max_us"] == 30_000
    scheduler.close()


def test_an_answer_that_arrives_after_the_deadline_is_never_used(clock):
    # The worker reports at once in real time, but its invoke took 8 fake ms of a 5 ms budget.
    scheduler = make(clock, FakeEngine(clock, [8]))
    answer = scheduler.run(window(1), clock.now_ns() + BUDGET)
    assert answer.reason is Reason.DEADLINE and answer.output is None
    wait_for(late_answer_collected(scheduler, clock, 1), "the late answer")
    scheduler.close()


def test_busy_policy_decides_at_once_while_the_model_is_busy(clock):
    gate = threading.Event()
    engine = FakeEngine(clock, [30, 1], gates={0: gate})
    scheduler = make(clock, engine, overload="busy")
    assert scheduler.run(window(1), clock.now_ns() + BUDGET).reason is Reason.DEADLINE
    for k in (2, 3):
        assert scheduler.run(window(k), clock.now_ns() + BUDGET).reason is Reason.BUSY
    assert engine.inputs == [1.0]  # busy windows never reach the model
    assert scheduler.busy == 2
    gate.set()
    wait_for(late_answer_collected(scheduler, clock, 1), "the late answer")
    assert scheduler.run(window(4), clock.now_ns() + BUDGET).output.tolist() == [4.0, 4.0]
    scheduler.close()


def test_latest_policy_waits_for_the_worker_then_runs_the_newest_window(clock):
    gate = threading.Event()
    engine = FakeEngine(clock, [30, 1], gates={0: gate})
    scheduler = make(clock, engine, overload="latest")
    assert scheduler.run(window(1), clock.now_ns() + BUDGET).reason is Reason.DEADLINE
    releaser = threading.Timer(0.05, gate.set)  # the earlier invoke ends while window 2 waits
    releaser.start()
    answer = scheduler.run(window(2), clock.now_ns() + BUDGET)
    releaser.join()
    assert answer.reason is None and answer.output.tolist() == [2.0, 2.0]
    assert (scheduler.busy, scheduler.skipped, scheduler.late_results) == (0, 0, 1)
    scheduler.close()


def test_latest_policy_skips_a_window_whose_deadline_passes_while_it_waits(clock):
    gate = threading.Event()
    engine = FakeEngine(clock, [30, 1], gates={0: gate})
    scheduler = make(clock, engine, overload="latest")
    assert scheduler.run(window(1), clock.now_ns() + BUDGET).reason is Reason.DEADLINE
    timer = threading.Timer(0.05, clock.advance, args=(10 * MS,))  # time passes, the worker stays busy
    timer.start()
    answer = scheduler.run(window(2), clock.now_ns() + BUDGET)
    timer.join()
    assert answer.reason is Reason.DEADLINE
    assert scheduler.skipped == 1
    gate.set()
    wait_for(late_answer_collected(scheduler, clock, 1), "the late answer")
    assert scheduler.run(window(3), clock.now_ns() + BUDGET).output.tolist() == [3.0, 3.0]
    assert engine.inputs == [1.0, 3.0]  # window 2 never ran: its decision was already out
    scheduler.close()


def estimate_at_4ms(clock: FakeClock, scheduler: ThreadedScheduler) -> None:
    for k in range(10):
        assert scheduler.run(window(k), clock.now_ns() + BUDGET).reason is None
    assert scheduler.tail.value_ns == 4 * MS


def test_latest_policy_falls_back_busy_when_the_estimate_says_the_window_cannot_finish(clock):
    gate = threading.Event()
    engine = FakeEngine(clock, [4] * 10 + [8, 4], gates={10: gate})
    scheduler = make(clock, engine, overload="latest")
    estimate_at_4ms(clock, scheduler)
    assert scheduler.run(window(10), clock.now_ns() + BUDGET).reason is Reason.DEADLINE
    # 3 ms left: the worker may be free at once, but one more 4 ms invoke does not fit.
    assert scheduler.run(window(11), clock.now_ns() + 3 * MS).reason is Reason.BUSY
    assert scheduler.busy == 1 and len(engine.inputs) == 11
    gate.set()
    scheduler.close()


def test_admission_control_refuses_an_invoke_that_cannot_fit_and_probes_now_and_then(clock):
    engine = FakeEngine(clock, [4])
    scheduler = make(clock, engine, admission=True)
    estimate_at_4ms(clock, scheduler)
    for _ in range(PROBE_EVERY - 1):
        assert scheduler.run(window(99), clock.now_ns() + 3 * MS).reason is Reason.DEADLINE
    assert len(engine.inputs) == 10 and scheduler.admission_rejects == PROBE_EVERY - 1
    scheduler.run(window(99), clock.now_ns() + 3 * MS)  # the probe runs, to re-measure the model
    assert len(engine.inputs) == 11
    assert scheduler.run(window(5), clock.now_ns() + BUDGET).reason is None  # enough time: admitted
    scheduler.close()


def test_a_model_that_raises_is_a_model_error_fallback_and_the_next_window_runs(clock, caplog):
    scheduler = make(clock, FakeEngine(clock, [1], raises=[0]))
    with caplog.at_level(logging.ERROR):
        assert scheduler.run(window(1), clock.now_ns() + BUDGET).reason is Reason.MODEL_ERROR
    assert "model_error" in caplog.text
    assert scheduler.run(window(2), clock.now_ns() + BUDGET).output.tolist() == [2.0, 2.0]
    assert scheduler.counters()["model_errors"] == 1
    scheduler.close()


def test_a_hung_invoke_is_reported_once(clock, caplog):
    gate = threading.Event()
    scheduler = make(clock, FakeEngine(clock, [30], gates={0: gate}), hang_limit_ns=100 * MS)
    scheduler.run(window(1), clock.now_ns() + BUDGET)
    scheduler.poll(clock.now_ns())
    assert not scheduler.hung(clock.now_ns()) and scheduler.hangs == 0
    clock.advance(200 * MS)
    with caplog.at_level(logging.WARNING):
        scheduler.poll(clock.now_ns())
        scheduler.poll(clock.now_ns())
    assert scheduler.hung(clock.now_ns()) and scheduler.hangs == 1
    assert "hang limit" in caplog.text
    gate.set()
    wait_for(late_answer_collected(scheduler, clock, 1), "the late answer")
    assert not scheduler.hung(clock.now_ns())
    scheduler.close()


def test_inline_scheduler_discards_a_late_answer(clock):
    scheduler = InlineScheduler(FakeEngine(clock, [8]), clock)
    answer = scheduler.run(window(1), clock.now_ns() + BUDGET)
    assert answer.reason is Reason.DEADLINE and answer.invoke_ns == 8 * MS



@pytest.mark.parametrize("kind", ["inline", "thread"])
def test_every_answer_is_right_when_handed_out_and_only_inline_borrows_the_engine_buffer(clock, kind):
    """The engine reuses its output buffer (as the real one does). Every answer must be right when the
    scheduler hands it out; the thread scheduler's worker may overwrite that buffer at any time, so it hands
    out copies, while the inline scheduler lends the engine's buffer until its next run (ModelAnswer: no
    copy on the hot path; the runtime turns it into the record's own list at once, test_output_buffers.py)."""
    engine = FakeEngine(clock, [1])
    scheduler = InlineScheduler(engine, clock) if kind == "inline" else make(clock, engine)
    answers, seen = [], []
    for k in (1, 2, 3):
        answers.append(scheduler.run(window(k), clock.now_ns() + BUDGET))
        seen.append(answers[-1].output.tolist())
    assert seen == [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]
    if kind == "thread":
        assert [a.output.tolist() for a in answers] == seen
        assert not any(np.shares_memory(a.output, engine._out) for a in answers)
    else:
        assert all(np.shares_memory(a.output, engine._out) for a in answers)
    scheduler.close()
