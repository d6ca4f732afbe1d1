"""The isolated mode with real child processes: a segfault or a hang in the model costs fallbacks, not the loop.

The faults are real — an invalid memory read through ctypes, a native ``pause()`` — raised by a test
double that runs *in the child* (``edge_infer.testing.fault_engines``, passed as the engine factory), on
windows that carry a marker value. Waits for a restart are polls with a generous safety limit, not
timing assertions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest

from edge_infer.deadline.isolated import ProcessScheduler
from edge_infer.deadline.options import DeadlineOptions
from edge_infer.decide.decision import Decision
from edge_infer.decide.reasons import Reason
from edge_infer.errors import ModelError
from edge_infer.io import read_log
from edge_infer.model.loader import open_model, with_overrides
from edge_infer.runtime import Runtime
from edge_infer.sinks.base import Sink
from edge_infer.sources.base import Source
from edge_infer.sources.log_replay import LogSource
from edge_infer.testing.fault_engines import HANG_MARKER, RAISE_MARKER, SEGFAULT_MARKER, failing_engine, faulty_engine
from edge_infer.testing.tflite_builder import dense_model, write_model

WINDOW, CHANNELS = 8, 3
SAFETY_S = 60.0  # real seconds to wait for a restart before the test fails; generous for a loaded machine


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("iso") / "m.tflite", dense_model(WINDOW, CHANNELS, 4, seed=2))


def now() -> int:
    return time.perf_counter_ns()


def window(marker: Optional[float] = None) -> np.ndarray:
    values = np.random.default_rng(0).normal(size=(WINDOW, CHANNELS)).astype(np.float32)
    if marker is not None:
        values[3, 1] = marker
    return values


def scheduler_for(model: Path, **kwargs) -> ProcessScheduler:
    _, engine = open_model(str(model))
    return ProcessScheduler(engine, engine_factory=faulty_engine, **kwargs)


def wait_until_ready(scheduler: ProcessScheduler) -> None:
    give_up = time.monotonic() + SAFETY_S
    while not scheduler._available():
        assert time.monotonic() < give_up, f"the model process did not come back: {scheduler.counters()}"
        scheduler.poll(now())
        time.sleep(0.002)


def test_a_segfault_is_a_model_error_and_the_model_comes_back(model):
    scheduler = scheduler_for(model)
    try:
        first = scheduler.run(window(), now() + 10**9)
        assert first.reason is None
        assert scheduler.run(window(SEGFAULT_MARKER), now() + 10**9).reason is Reason.MODEL_ERROR
        wait_until_ready(scheduler)
        again = scheduler.run(window(), now() + 10**9)
        assert again.reason is None and np.array_equal(again.output, first.output)
        counters = scheduler.counters()
        assert counters["restarts"] == 1
        assert counters["child_exits"] == ["crashed, killed by SIGSEGV"]
    finally:
        scheduler.close()


def test_a_hang_past_the_limit_gets_the_child_killed_and_restarted(model):
    scheduler = scheduler_for(model, hang_limit_ns=1_000_000_000)  # the second run must come within the limit
    try:
        assert scheduler.run(window(HANG_MARKER), now() + 50_000_000).reason is Reason.DEADLINE
        assert scheduler.run(window(), now() + 10**9).reason is Reason.BUSY  # still hung, not yet past the limit
        give_up = time.monotonic() + SAFETY_S
        while scheduler.hangs == 0:
            assert time.monotonic() < give_up, "the hang was never detected"
            scheduler.poll(now())
            time.sleep(0.01)
        wait_until_ready(scheduler)
        assert scheduler.run(window(), now() + 10**9).reason is None
        counters = scheduler.counters()
        assert (counters["hangs"], counters["restarts"], counters["busy"]) == (1, 1, 1)
        assert counters["child_exits"] == ["hung, killed by SIGKILL"]
    finally:
        scheduler.close()


def test_a_model_that_raises_in_the_child_does_not_cost_a_restart(model):
    scheduler = scheduler_for(model)
    try:
        assert scheduler.run(window(RAISE_MARKER), now() + 10**9).reason is Reason.MODEL_ERROR
        assert scheduler.run(window(), now() + 10**9).reason is None
        assert scheduler.counters()["restarts"] == 0 and scheduler.model_errors == 1
    finally:
        scheduler.close()


def test_a_child_that_cannot_load_the_model_fails_at_start_with_one_clear_error(model):
    _, engine = open_model(str(model))
    with pytest.raises(ModelError, match="isolated model process could not start"):
        ProcessScheduler(engine, engine_factory=failing_engine)


class ListSink(Sink):
    def __init__(self) -> None:
        self.decisions: List[Decision] = []

    def on_decision(self, decision: Decision) -> None:
        self.decisions.append(decision)


class HoldUntilModelReady(Source):
    """The log's frames, except that the first frame of each window in ``hold`` waits for a ready model process.

    The test then waits for the restarts it needs (after the segfault, after the hang), not for an amount of
    real time that a loaded machine may not honour. While holding it drives the scheduler as the loop's tick
    would (collect reports, detect the hang, restart the child). Every wait is bounded as a safety net.
    A held replay resumes its pace from the release, as a device that waited would: otherwise the held window
    arrived (its frames' due times) before a slow restart ended, and fell back ``overrun`` (CI under load).
    """

    def __init__(self, inner: LogSource, scheduler: ProcessScheduler, hold_windows: List[int]) -> None:
        self.inner, self.scheduler, self.channels = inner, scheduler, inner.channels
        self.hold = {w * WINDOW for w in hold_windows}
        self.sent = 0

    def recv(self, timeout: Optional[float] = None):
        if self.sent in self.hold:
            give_up = time.monotonic() + 60.0
            while not self.scheduler._available():
                assert time.monotonic() < give_up, "the model process did not come back within 60 s"
                self.scheduler.poll(time.perf_counter_ns())
                time.sleep(0.005)
            self.hold.discard(self.sent)
            self.inner.start_pacing(time.perf_counter_ns() - self.inner.start_pacing(0))  # the next frame: due now
        frame = self.inner.recv(timeout)
        if frame is not None:
            self.sent += 1
        return frame


def test_the_loop_keeps_deciding_through_a_segfault_and_a_hang(model, tmp_path):
    # 24 windows of 8 frames, paced at 100 frames/s: a window every 80 ms. Window 2 segfaults, window 8 hangs;
    # window 8 and the last three windows wait for the restarted model process (HoldUntilModelReady).
    windows, segfault_at, hang_at = 24, 2, 8
    values = np.random.default_rng(1).normal(size=(windows * WINDOW, CHANNELS))
    values[segfault_at * WINDOW + 3, 0] = SEGFAULT_MARKER
    values[hang_at * WINDOW + 3, 0] = HANG_MARKER
    rows = [f"{i / 100:.2f}," + ",".join(f"{v:.4f}" for v in row) for i, row in enumerate(values)]
    log_path = tmp_path / "log.csv"
    log_path.write_text("t,c0,c1,c2\n" + "\n".join(rows) + "\n")
    log = read_log(log_path)
    spec, engine = open_model(str(model), log.channels)
    # the budget, longer than the default 50 ms and shorter than the hang limit, leaves a loaded machine time to
    # see the crash as the crash (model_error) and the model's answers after it; the hang still ends in a deadline
    spec = with_overrides(spec, budget_ms=150.0)
    scheduler = ProcessScheduler(engine, engine_factory=faulty_engine, hang_limit_ns=200_000_000)
    sink = ListSink()
    source = HoldUntilModelReady(LogSource(log, [0, 1, 2], log.channels, speed=1.0), scheduler,
                                 [hang_at, windows - 3])
    runtime = Runtime(spec, engine, source, [sink], scheduler=scheduler, options=DeadlineOptions(warmup=0, no_data_ms=0))
    summary = runtime.run()
    decisions = sink.decisions
    assert len(decisions) == windows  # every window decided, none lost to the crash or the hang
    assert decisions[segfault_at].reason is Reason.MODEL_ERROR
    assert decisions[hang_at].reason is Reason.DEADLINE  # decided at its deadline while the child hung
    assert all(d.source == "model" for d in decisions[-3:])  # the model came back after both
    assert summary["scheduler"]["restarts"] == 2 and summary["scheduler"]["hangs"] == 1
    assert summary["scheduler"]["child_exits"] == ["crashed, killed by SIGSEGV", "hung, killed by SIGKILL"]
    assert set(summary["fallback_reasons"]) <= {"model_error", "deadline", "busy"}
