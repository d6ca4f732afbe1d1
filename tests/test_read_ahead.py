"""Reading a log ahead (the input checks' fast path and the model's input, a block of windows at once) decides
every window exactly as window by window, and stops as soon as a frame is not the log's next row.

The window-by-window runs are the same Runtime with reading ahead switched off before the first frame.
"""

from __future__ import annotations

from typing import List

import numpy as np
import pytest
from conftest import BUNDLED_LOG, BUNDLED_SPEC

from edge_infer.deadline.options import DeadlineOptions
from edge_infer.decide.decision import Decision
from edge_infer.decide.reasons import Reason
from edge_infer.frame import Frame
from edge_infer.io import read_log
from edge_infer.model.loader import open_model
from edge_infer.runtime import Runtime
from edge_infer.sinks.base import Sink
from edge_infer.sources.log_replay import LogSource, channel_columns

# NaN is what the checks look for; the guard silences numpy's warnings with a filter pytest replaces.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


class Keep(Sink):
    def __init__(self) -> None:
        self.decisions: List[Decision] = []

    def on_decision(self, decision: Decision) -> None:
        self.decisions.append(decision)


def bundled_runtime(hop: int, values: "np.ndarray | None" = None, ahead: bool = True) -> "tuple[Runtime, Keep]":
    log = read_log(BUNDLED_LOG)
    if values is not None:
        log.values = values
    spec, engine = open_model(str(BUNDLED_SPEC), log.channels, hop=hop, budget_ms=60_000.0)
    columns = channel_columns(log, spec.channels, engine.channels, "log")
    sink = Keep()
    runtime = Runtime(spec, engine, LogSource(log, columns, spec.channels), [sink],
                      options=DeadlineOptions(mode="inline", warmup=0, gc_control=False, switch_interval_ms=0))
    if not ahead:
        runtime._stop_reading_ahead()
    return runtime, sink


def record(decision: Decision) -> tuple:
    return decision.seq, decision.action, decision.source, decision.reason, decision.output


@pytest.mark.parametrize("hop", [1, 4])
@pytest.mark.parametrize("faults", [False, True])
def test_a_replay_read_ahead_decides_as_window_by_window(hop, faults):
    values = read_log(BUNDLED_LOG).values.copy()
    if faults:  # a NaN, a spike, a stuck stretch, an offset stretch: the blocks that hold them go window by window
        values[300, 0] = np.nan
        values[700, 2] = 1e6
        values[1200:1240, 1] = values[1200, 1]
        values[2000:2100] += 3.0
    decided = []
    for ahead in (True, False):
        runtime, sink = bundled_runtime(hop, values, ahead)
        runtime.run()
        decided.append(sink.decisions)
    assert [record(d) for d in decided[0]] == [record(d) for d in decided[1]]
    for ahead, each in zip(*decided):  # a score read ahead may differ in its last bits (edge_infer/checks/ahead.py)
        assert (ahead.ood_score is None) == (each.ood_score is None)
        if each.ood_score is not None:
            assert ahead.ood_score == pytest.approx(each.ood_score, rel=1e-9, abs=1e-9)
    reasons = {d.reason for d in decided[0]}
    assert (reasons - {None} != set()) == faults


def test_the_engine_takes_a_prepared_input_only_for_its_own_window():
    runtime, _ = bundled_runtime(1)
    engine = runtime.engine
    frames = runtime.source.rows(0, 40)
    window = frames[:32]
    expected = engine.infer(window.copy()).copy()
    other = frames[8:40].copy()
    converted = engine.convert_frames(frames)
    engine.prepare_input(window, converted[:32].reshape(engine.input_shape))
    np.testing.assert_array_equal(engine.infer(other), engine.infer(other.copy()))  # not the prepared array
    assert np.array_equal(engine.infer(window), expected)
    runtime.close()


def test_a_frame_that_is_not_the_logs_next_row_stops_reading_ahead():
    """on_frame called with a frame of one's own: its window is judged on its values, not the log's row."""
    runtime, sink = bundled_runtime(1)
    runtime.start()
    for _ in range(31):
        runtime.on_frame(runtime.source.recv(0.0))
    bad = np.full(6, np.nan, dtype=np.float32)
    runtime.on_frame(Frame(seq=31, t=3.1, recv_ns=runtime.clock.now_ns(), values=bad, label=None, device_seq=None))
    assert [d.reason for d in sink.decisions] == [Reason.NON_FINITE]
    assert runtime._log is None
    runtime.close()
