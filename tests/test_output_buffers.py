"""The engine writes every answer into one reused output buffer: nothing after it may keep that buffer.

``Engine.infer`` returns the same array each time (no allocation on the hot path), so a scheduler, the
decision or a sink that held on to it would see an earlier window's answer change under it. These tests run
the real engine through every scheduler mode and compare each decision kept by a sink with that window's
answer computed alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import pytest

from edge_infer.deadline.options import DeadlineOptions
from edge_infer.decide.decision import Decision
from edge_infer.io import read_log
from edge_infer.model.loader import open_model
from edge_infer.runtime import Runtime
from edge_infer.sinks.base import Sink
from edge_infer.sources.log_replay import LogSource
from edge_infer.testing.tflite_builder import dense_model, write_model

WINDOW, HOP, ROWS = 8, 4, 40


class KeepEverything(Sink):
    """A sink that keeps every decision it is given (as a recorder or a report would)."""

    def __init__(self) -> None:
        self.decisions: List[Decision] = []

    def on_decision(self, decision: Decision) -> None:
        self.decisions.append(decision)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("buffers")
    write_model(root / "m.tflite", dense_model(WINDOW, 2, 3, seed=5))
    spec = root / "m.toml"
    spec.write_text(f"""
[model]
file = "m.tflite"
[input]
channels = ["a", "b"]
window = {WINDOW}
hop = {HOP}
[output]
kind = "classes"
labels = ["x", "y", "z"]
[deadline]
budget_ms = 30000
[fallback]
action = "safe"
""")
    values = np.random.default_rng(7).normal(scale=2.0, size=(ROWS, 2)).astype(np.float32)
    log = root / "log.csv"
    log.write_text("t,a,b\n" + "".join(f"{i / 10:.1f},{a:.4f},{b:.4f}\n" for i, (a, b) in enumerate(values)))
    return spec, log, values


def test_the_engine_reuses_its_output_buffer(setup):
    """The contract the fakes in the other tests copy: the same array back, overwritten by the next invoke."""
    spec, _, values = setup
    _, engine = open_model(str(spec))
    first = engine.infer(values[:WINDOW])
    kept = first.copy()
    second = engine.infer(values[HOP:HOP + WINDOW])
    assert second is first and not np.array_equal(first, kept)


@pytest.mark.parametrize("mode", ["inline", "thread", "process"])
def test_every_kept_decision_holds_its_own_windows_output(setup, mode):
    spec_path, log_path, values = setup
    spec, engine = open_model(str(spec_path))
    sink = KeepEverything()
    runtime = Runtime(spec, engine, LogSource(read_log(log_path), [0, 1], spec.channels), [sink],
                      options=DeadlineOptions(mode=mode, warmup=0))
    runtime.run()
    _, alone = open_model(str(spec_path))
    expected = [alone.infer(values[end - WINDOW:end]).copy() for end in range(WINDOW, ROWS + 1, HOP)]
    assert len({tuple(e) for e in expected}) == len(expected)  # distinct answers, so aliasing would show
    assert [d.source for d in sink.decisions] == ["model"] * len(expected)
    for decision, want in zip(sink.decisions, expected):
        np.testing.assert_allclose(decision.output, want, rtol=0, atol=1e-6)
