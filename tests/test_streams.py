"""Many streams in one runtime (docs/streams.md): batching a real model, the EDF dispatcher on fake clocks and
fake slow engines, per-stream state and summaries, and faults that stay in their stream.

Nothing here asserts on time: the dispatcher's timing rules run on a FakeClock whose time only the fake
engines and the test move; the real runs compare what was decided, not how fast.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
from conftest import read_jsonl
from serial_helpers import CHANNELS, RuntimeProcess, hello_for, wait_for, write_spec  # puts fb_helpers on the path

from fb_helpers import start_sim, write_log  # noqa: E402  (isort: after serial_helpers)

from edge_infer.cli import main as cli_main
from edge_infer.deadline.baton import Baton
from edge_infer.deadline.clock import Clock, FakeClock
from edge_infer.deadline.edf import BatchCosts, SharedModel, Waiting, plan_batch
from edge_infer.deadline.options import DeadlineOptions
from edge_infer.deadline.scheduler import ModelAnswer
from edge_infer.deadline.watchdog import Watchdog
from edge_infer.decide.reasons import Reason
from edge_infer.frame import Frame
from edge_infer.io import read_log
from edge_infer.model.batch import BatchEngine, batchable_model_bytes
from edge_infer.model.loader import bundled_log, open_model, with_overrides
from edge_infer.runtime import Runtime, StreamSetup, StreamsRuntime
from edge_infer.sinks.collect import CollectSink
from edge_infer.sources.log_replay import LogSource, channel_columns
from edge_infer.testing.tflite_builder import dense_model

MS = 1_000_000


# --- batching a real model -------------------------------------------------------------------------------------

def test_bundled_model_batches_and_answers_as_alone():
    spec, engine = open_model(None)
    batch = BatchEngine(engine, max_batch=32)
    assert batch.sizes == (1, 2, 4, 8, 16, 32)
    rng = np.random.default_rng(5)
    staging = batch.staging()
    staging[:] = rng.normal(size=staging.shape).astype(np.float32) * spec.scale + spec.offset
    for k in (1, 3, 8, 20, 32):
        batched = batch.infer_batch(k).copy()
        assert batched.shape == (k, engine.output_size)
        alone = np.stack([engine.infer(staging[i]).copy() for i in range(k)])
        assert np.array_equal(batched, alone)


def test_a_model_without_reshape_batches_too():
    model = dense_model(16, 3, 4, seed=2)
    assert batchable_model_bytes(model) is not None


def test_a_model_whose_reshape_folds_the_batch_is_run_alone(tmp_path):
    data = bytearray(Path(open_model(None)[0].model_path).read_bytes())
    patched = batchable_model_bytes(bytes(data))
    assert patched is not None and patched != bytes(data)
    # a reshape target that does not start with the batch 1 (here 2) cannot be batched safely
    changed = bytearray(patched)
    start = bytes(patched).find(np.array([-1, 1, 32, 6], dtype="<i4").tobytes())
    changed[start:start + 4] = np.array([2], dtype="<i4").tobytes()
    assert batchable_model_bytes(bytes(changed)) is None


# --- the dispatcher on a fake clock ----------------------------------------------------------------------------

class FakeBatch:
    """A BatchEngine stand-in: a batch of k costs ``costs[size]`` ns of fake time; output i is (row's first value)."""

    def __init__(self, clock: FakeClock, costs: dict, hang: Optional[threading.Event] = None):
        self.clock = clock
        self.costs = costs
        self.sizes = tuple(sorted(costs))
        self.window_shape = (4, 1)
        self.output_size = 2
        self.hang = hang
        self.started = threading.Event()
        self.calls: List[int] = []
        self._staging = np.zeros((self.sizes[-1], 4, 1), dtype=np.float32)

    def staging(self) -> np.ndarray:
        return self._staging

    def size_for(self, k: int) -> int:
        return next(size for size in self.sizes if size >= k)

    def infer_batch(self, k: int) -> np.ndarray:
        self.calls.append(k)
        self.started.set()
        if self.hang is not None:
            self.hang.wait(30)
        if isinstance(self.clock, FakeClock):
            self.clock.advance(self.costs[self.size_for(k)])
        out = np.zeros((k, 2), dtype=np.float32)
        out[:, 0] = self._staging[:k, 0, 0]
        return out


def shared(clock, costs, streams=4, threaded=False, hang=None, reserve_ns=0, watchdog=None, baton=None,
           takeover_ns=10**9):
    answers: List["tuple[int, int, ModelAnswer]"] = []
    batch = FakeBatch(clock, costs, hang)
    model = SharedModel(batch, streams, lambda p, a: answers.append((p.stream, p.frame.seq, a)), clock,
                        reserve_ns=reserve_ns, threaded=threaded, costs=costs, watchdog=watchdog, baton=baton,
                        takeover_ns=takeover_ns)
    return model, batch, answers


def window(value: float) -> np.ndarray:
    return np.full((4, 1), value, dtype=np.float32)


def frame(seq: int, recv_ns: int = 0) -> Frame:
    return Frame(seq=seq, t=seq / 10.0, recv_ns=recv_ns, values=np.zeros(1, dtype=np.float32), label=None,
                 device_seq=None)


def test_windows_due_together_go_in_one_invoke_when_it_is_cheaper_and_in_time():
    clock = FakeClock()
    model, batch, answers = shared(clock, {1: 1 * MS, 2: 1200_000, 4: 1500_000})
    for stream in range(3):
        model.add(stream, frame(10 + stream), window(stream), 10 * MS)
    model.dispatch(clock.now_ns())
    assert batch.calls == [3]  # 3 windows on the size-4 interpreter: 1.5 ms instead of 3
    assert sorted((s, a.reason, float(a.output[0])) for s, _, a in answers) == [
        (0, None, 0.0), (1, None, 1.0), (2, None, 2.0)]
    assert model.counters()["largest_batch"] == 3


def test_no_batch_when_it_is_not_cheaper():
    clock = FakeClock()
    model, batch, answers = shared(clock, {1: 1 * MS, 2: 2 * MS})
    model.add(0, frame(1), window(0), 10 * MS)
    model.add(1, frame(2), window(1), 10 * MS)
    model.dispatch(clock.now_ns())
    assert batch.calls == [1, 1]
    assert [a.reason for _, _, a in answers] == [None, None]


def test_earliest_deadline_first_and_no_batch_that_would_make_the_earliest_late():
    clock = FakeClock()
    # a batch of 2 costs 3 ms: it would end after stream 1's deadline (2.5 ms), so stream 1 runs alone, first
    model, batch, answers = shared(clock, {1: 1 * MS, 2: 3 * MS})
    model.add(0, frame(1), window(0), 20 * MS)
    model.add(1, frame(2), window(1), int(2.5 * MS))
    model.dispatch(clock.now_ns())
    assert batch.calls == [1, 1]
    assert [(s, a.reason) for s, _, a in answers] == [(1, None), (0, None)]


def test_a_window_that_cannot_make_its_deadline_is_never_started():
    clock = FakeClock(start_ns=5 * MS)
    model, batch, answers = shared(clock, {1: 1 * MS}, reserve_ns=MS // 2)
    model.add(0, frame(1), window(0), 6 * MS)  # 1 ms left, but 1 ms invoke + 0.5 ms reserve
    model.add(1, frame(2), window(1), 9 * MS)
    model.dispatch(clock.now_ns())
    assert batch.calls == [1]
    assert [(s, a.reason) for s, _, a in answers] == [(0, Reason.DEADLINE), (1, None)]
    assert model.skipped == 1


def test_a_model_the_estimate_says_is_too_slow_is_still_tried_every_tenth_window():
    """The cost estimate is refreshed only by real invokes: a model once measured slower than the budget (a stall)
    must not be kept from every window for good. Every 10th window kept from the free model by the estimate alone
    is tried anyway (the single-stream admission rule, PROBE_EVERY)."""
    clock = FakeClock(start_ns=0)
    model, batch, answers = shared(clock, {1: 50 * MS}, reserve_ns=MS)  # every invoke takes 50 ms, budget 20 ms
    for i in range(12):
        model.add(0, frame(i), window(i), clock.now_ns() + 20 * MS)
        model.dispatch(clock.now_ns())
        clock.advance(20 * MS)
    assert batch.calls == [1]  # the 11th window was tried: the estimate gets a new sample
    assert [a.reason for _, _, a in answers] == [Reason.DEADLINE] * 12  # (the probe too: it came back late)
    assert model.skipped == 11 and model.late_results == 1


def test_a_newer_window_of_the_same_stream_takes_the_place_of_a_waiting_one():
    clock = FakeClock()
    model, batch, answers = shared(clock, {1: 1 * MS})
    model.add(0, frame(1), window(1), 10 * MS)
    model.supersede(0)
    model.add(0, frame(5), window(5), 12 * MS)
    model.dispatch(clock.now_ns())
    assert [(seq, a.reason) for _, seq, a in answers] == [(1, Reason.OVERRUN), (5, None)]
    assert float(answers[1][2].output[0]) == 5.0
    assert model.overruns == 1


def test_a_hung_model_falls_back_on_time_and_its_late_answer_is_dropped():
    clock = FakeClock()
    hang = threading.Event()
    model, batch, answers = shared(clock, {1: 1 * MS, 2: 1 * MS}, threaded=True, hang=hang, reserve_ns=MS)
    try:
        model.add(0, frame(1), window(0), 20 * MS)
        model.add(1, frame(2), window(1), 30 * MS)
        model.dispatch(clock.now_ns())
        assert batch.started.wait(10)
        clock.advance(18 * MS)
        model.dispatch(clock.now_ns())
        assert answers == []  # before stream 0's deadline minus the reserve: nothing decided yet
        clock.advance(1 * MS)
        model.dispatch(clock.now_ns())
        assert [(s, a.reason) for s, _, a in answers] == [(0, Reason.DEADLINE)]
        assert model.next_due_ns() == 29 * MS  # the loop wakes for stream 1's deadline
        model.add(0, frame(9), window(9), 100 * MS)  # stream 0's next window waits for the busy model
        clock.advance(10 * MS)
        model.dispatch(clock.now_ns())
        assert [(s, a.reason) for s, _, a in answers[1:]] == [(1, Reason.DEADLINE)]
        assert model.hung(clock.now_ns() + 2 * 10**9)
        hang.set()  # the model comes back: its answers are late and dropped, the waiting window runs
        wait_for(lambda: not model._done.locked(), "the worker to report")
        model.dispatch(clock.now_ns())
        wait_for(lambda: (model.dispatch(clock.now_ns()) or len(answers) == 3), "the next window's answer")
        assert model.late_results == 2
        assert answers[2][1] == 9 and answers[2][2].reason is None
    finally:
        hang.set()
        model.close()


def test_inline_a_deputy_runs_the_loop_while_a_batch_overruns_and_decides_its_windows_at_their_deadlines():
    """Inline: the batch runs on the caller's thread with the baton lent; once it has run for the takeover time,
    the watchdog calls a deputy whose turns (here: dispatch) fall back for each window at its deadline and queue
    the next window, and the invoking thread takes the baton back when the invoke returns."""
    clock = Clock()
    hang = threading.Event()
    turns = []

    def turn():
        turns.append(threading.get_ident())
        model.dispatch(clock.now_ns())
        time.sleep(0.001)
        return True

    baton = Baton(turn, lambda: None)
    watchdog = Watchdog(clock)
    model, batch, answers = shared(clock, {1: 2, 2: 3}, hang=hang, watchdog=watchdog, baton=baton,
                                   takeover_ns=5 * MS)  # one batch of two
    now = clock.now_ns()
    model.add(0, frame(1), window(0), now + 30 * MS)
    model.add(1, frame(2), window(1), now + 60 * MS)

    def loop():
        baton.hold()
        model.dispatch(now)

    invoker = threading.Thread(target=loop)
    invoker.start()
    try:
        wait_for(lambda: turns, "a deputy to take over the loop")
        model.add(2, frame(3), window(2), clock.now_ns() + 10 * MS)  # meanwhile another stream's window comes
        wait_for(lambda: len(answers) == 3, "the deputy to decide every window while the invoke hangs")
        assert invoker.is_alive()  # still inside the invoke
        assert sorted((s, a.reason) for s, _, a in answers) == [(0, Reason.DEADLINE), (1, Reason.DEADLINE),
                                                                (2, Reason.DEADLINE)]
        assert invoker.ident not in turns and baton.takeovers == 1
    finally:
        hang.set()
        invoker.join(30)
    assert batch.calls[0] == 2
    assert len(answers) == 3  # the late answers were dropped, not decided again
    assert model.late_results == 2 and watchdog.fired == 0  # a takeover decides no window itself
    assert not model.holds(0) and not model.holds(1)
    assert baton.wanted is False
    baton.close()  # the invoker holds it again: handed back at the end
    watchdog.close()


def test_the_baton_goes_back_to_the_invoker_and_only_one_thread_runs_a_turn():
    """Baton logic: while the first thread has lent the baton, a called deputy runs turns (never two at once);
    when the first thread asks for it back, the deputy ends its turn and hands it over."""
    inside = []
    overlaps = []
    turns = []
    deputy_turns = threading.Event()

    def turn():
        turns.append(1)
        inside.append(1)
        if len(inside) > 1:
            overlaps.append(1)
        deputy_turns.set()
        time.sleep(0.001)
        inside.pop()
        return True

    baton = Baton(turn, lambda: None)
    baton.hold()
    baton.lend()
    baton.call_deputy()
    assert deputy_turns.wait(10)
    baton.take_back()  # waits for the deputy's turn to end
    taken = len(turns)
    time.sleep(0.05)
    assert len(turns) == taken  # the deputy stopped running turns
    assert not overlaps and not inside
    baton.lend()
    baton.call_deputy()  # the same deputy, called again
    deputy_turns.clear()
    assert deputy_turns.wait(10)
    baton.take_back()
    assert baton.takeovers == 2 and len(baton._threads) == 1
    baton.finish()
    baton.call_deputy()  # the run is over: nobody takes over
    assert baton.takeovers == 2
    baton.close()
    assert not baton.lock.locked()


def test_windows_waiting_for_a_busy_model_expire_on_time():
    clock = FakeClock()
    hang = threading.Event()
    model, batch, answers = shared(clock, {1: 1 * MS}, threaded=True, hang=hang, reserve_ns=MS)
    try:
        model.add(0, frame(1), window(0), 50 * MS)
        model.dispatch(clock.now_ns())
        assert batch.started.wait(10)
        model.add(1, frame(2), window(1), 10 * MS)  # waits: the model is busy
        clock.advance(7 * MS)
        model.dispatch(clock.now_ns())
        assert answers == []
        assert model.next_due_ns() == 8 * MS  # its last chance to start: deadline - reserve - one invoke
        clock.advance(1 * MS)
        model.dispatch(clock.now_ns())
        assert [(s, a.reason) for s, _, a in answers] == [(1, Reason.DEADLINE)]
        assert model.skipped == 1 and batch.calls == [1]
    finally:
        hang.set()
        model.close()


def test_plan_batch_takes_the_largest_batch_in_time():
    costs = BatchCosts({1: 100, 2: 150, 4: 200, 8: 400})
    pending = [Waiting(i, frame(i), 1000 + i, window(0)) for i in range(6)]
    assert plan_batch(pending, 0, 0, costs, lambda k: next(s for s in costs.sizes if s >= k)) == 6
    assert plan_batch(pending, 700, 0, costs, lambda k: next(s for s in costs.sizes if s >= k)) == 4
    assert plan_batch(pending, 900, 0, costs, lambda k: next(s for s in costs.sizes if s >= k)) == 1


# --- whole runs -------------------------------------------------------------------------------------------------

def log_source(path: str, spec, engine, speed: Optional[float] = None, rows: Optional[int] = None) -> LogSource:
    log = read_log(path)
    if rows is not None:
        log.values, log.t = log.values[:rows], log.t[:rows]
        log.labels = None if log.labels is None else log.labels[:rows]
    return LogSource(log, channel_columns(log, spec.channels, engine.channels, path), spec.channels, speed=speed,
                     name=path)


def quiet(**changes) -> DeadlineOptions:
    return DeadlineOptions(**{"warmup": 0, "gc_control": False, **changes})


@pytest.mark.parametrize("mode", ["thread", "inline"])
def test_every_stream_decides_what_a_single_stream_replay_decides(mode):
    spec, engine = open_model(None)
    spec = with_overrides(spec, budget_ms=600_000.0)  # a decision, not a race: no deadline on a loaded machine
    path = str(bundled_log())
    single = CollectSink()
    Runtime(spec, engine, log_source(path, spec, engine), [single], options=quiet(mode="inline")).run()
    collects = [CollectSink() for _ in range(3)]
    setups = [StreamSetup(f"s{i}", spec, engine, log_source(path, spec, engine, rows=None if i else 2000),
                          [collects[i]], options=quiet(mode=mode)) for i in range(3)]
    runtime = StreamsRuntime(setups)
    summary = runtime.run()
    expected = dict(zip(single.seq, single.action_names()))
    for i, collect in enumerate(collects):
        got = dict(zip(collect.seq, collect.action_names()))
        assert len(got) == (len(expected) if i else 493)  # stream 0's log ends early; the others go on
        wrong = [(seq, got[seq], expected.get(seq)) for seq in got if got[seq] != expected.get(seq)]
        assert not wrong, f"stream s{i}: {len(wrong)} windows differ, first {wrong[:5]}"
        assert not any(collect.fallback)
    assert summary["decisions"] == sum(s["decisions"] for s in summary["streams"])
    assert [s["stream"] for s in summary["streams"]] == ["s0", "s1", "s2"]
    assert [s["state"] for s in summary["streams"]] == ["ended"] * 3
    single_keys = set(Runtime(spec, engine, log_source(path, spec, engine, rows=40), [],
                              options=quiet(mode="inline")).run())
    assert single_keys <= set(summary["streams"][0])


@pytest.mark.parametrize("mode", ["thread", "inline"])
def test_a_hung_model_holds_up_only_its_own_streams(tmp_path, mode):
    """Two models: model X hangs on its third window; its stream falls back while the stream on model Y goes on
    deciding every window with its model. Thread mode: X runs in a worker. Inline (the default): X hangs on the
    loop's own thread, and a deputy runs the loop meanwhile (deadline/baton.py); without one, Y's windows would
    wait for the hung invoke and all but the newest fall back ``overrun``."""
    spec_path = str(write_spec(tmp_path))
    spec_x, engine_x = open_model(spec_path)
    spec_y, engine_y = open_model(spec_path)
    spec_x = with_overrides(spec_x, budget_ms=300.0)
    spec_y = with_overrides(spec_y, budget_ms=600_000.0)
    hang = threading.Event()
    calls = []

    def hanging_infer(window, real=engine_x.infer):
        calls.append(1)
        if len(calls) > 2 + 20:  # after the warm-up's 20 and two real windows
            hang.wait(60)
        return real(window)

    log = str(write_log(tmp_path / "small.csv", 120))
    collects = [CollectSink(), CollectSink()]
    runtime = StreamsRuntime([
        StreamSetup("x", spec_x, engine_x, log_source(log, spec_x, engine_x, speed=10.0), [collects[0]],
                    options=quiet(mode=mode, warmup=20)),
        StreamSetup("y", spec_y, engine_y, log_source(log, spec_y, engine_y, speed=10.0), [collects[1]],
                    options=quiet(mode=mode, warmup=20)),
    ])
    engine_x.infer = hanging_infer  # after the batch interpreters were checked against the real model
    # inline, the run is over while X's invoke still hangs on this thread: let it return then
    release = threading.Thread(target=lambda: (wait_for(lambda: runtime.baton.over, "the run to end", timeout=60),
                                               hang.set()), daemon=True)
    release.start()
    try:
        summary = runtime.run()
    finally:
        hang.set()
    x, y = summary["streams"]
    # Y decides with its model while X hangs (without a deputy, inline, all but ~2 of Y's windows would wait and
    # fall back); on a loaded machine the odd Y window may still be taken over by a newer one (overrun)
    assert y["decisions"] == 27 and y["model_decisions"] >= 20 and set(y["fallback_reasons"]) <= {"overrun"}
    assert x["decisions"] == 27 and x["model_decisions"] <= 2
    # the window in the hung invoke falls back at its deadline; each later one waits for the model until a newer
    # one arrives (a window every 40 ms, budget 300 ms): overrun, the newest always waiting
    assert x["fallback_reasons"]["deadline"] >= 1 and set(x["fallback_reasons"]) <= {"deadline", "overrun"}
    assert [s["shared_by"] for s in summary["scheduler"]] == [1, 1]
    assert summary["deputy_takeovers"] >= (mode == "inline")


def test_after_an_overrun_the_baton_goes_back_and_every_model_keeps_deciding(tmp_path):
    """Inline, two models: X overruns once (1 s); a deputy runs the loop and invokes Y meanwhile. X's invoke
    returns while the deputy is inside Y's: the first thread takes the baton, and must hand it back to the deputy
    back from Y (then get it again), or Y's batch stays in flight and every later window of Y falls back (review
    finding: Y decided 27 windows with its model, then 170 fallbacks, while the first thread spun)."""
    spec_path = str(write_spec(tmp_path))
    spec_x, engine_x = open_model(spec_path)
    spec_y, engine_y = open_model(spec_path)
    spec_x, spec_y = with_overrides(spec_x, budget_ms=300.0), with_overrides(spec_y, budget_ms=600_000.0)
    calls = []

    def overrunning_x(window, real=engine_x.infer):
        calls.append(1)
        if len(calls) == 3 + 20:  # after the warm-up's 20 and two real windows
            time.sleep(1.0)
        return real(window)

    def slow_y(window, real=engine_y.infer):
        time.sleep(0.015)  # long enough that X's invoke comes back while a deputy is inside Y's
        return real(window)

    collects = [CollectSink(), CollectSink()]
    runtime = StreamsRuntime([
        StreamSetup("x", spec_x, engine_x, log_source(str(write_log(tmp_path / "x.csv", 100)), spec_x, engine_x,
                                                      speed=10.0), [collects[0]], options=quiet(warmup=20)),
        StreamSetup("y", spec_y, engine_y, log_source(str(write_log(tmp_path / "y.csv", 300)), spec_y, engine_y,
                                                      speed=10.0), [collects[1]], options=quiet(warmup=20)),
    ])
    engine_x.infer, engine_y.infer = overrunning_x, slow_y
    summary = runtime.run(duration_s=20.0)  # the logs last 3 s; the bound is for a loop that never ends
    x, y = summary["streams"]
    assert summary["deputy_takeovers"] >= 1
    # the bug gave 27 model decisions then only fallbacks; a loaded machine may let a newer window of Y take the
    # odd one over (overrun: Y's invoke is 15 ms, a window every 40 ms)
    assert y["model_decisions"] > 60 and set(y["fallback_reasons"]) <= {"overrun"}
    assert y["fallback_decisions"] <= y["model_decisions"] // 10
    assert not runtime.baton.lock.locked() and not runtime.baton.wanted


def test_cli_streams_share_one_decision_log_with_stream_names(tmp_path, capsys):
    log = write_log(tmp_path / "small.csv", 200)
    spec = write_spec(tmp_path)
    decisions = tmp_path / "d.jsonl"
    code = cli_main(["run", "--source", str(log), "--source", str(log), "--model", str(spec), "--json",
                     "--decisions", str(decisions), "--warmup", "0"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    records = read_jsonl(decisions)
    names = {r["stream"] for r in records}
    assert names == {str(log), f"{log}#2"}
    assert len(summary["streams"]) == 2 and summary["decisions"] == len(records)
    for name in names:
        assert [r["action"] for r in records if r["stream"] == name] == \
               [r["action"] for r in records if r["stream"] == str(log)]


def test_streams_from_the_service_config(tmp_path, capsys):
    log = write_log(tmp_path / "small.csv", 120)
    spec = write_spec(tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(f"""[model]
spec = "{spec}"
[sinks]
show = "none"
[[stream]]
name = "left"
source = "{log}"
decisions = "left.jsonl"
[[stream]]
name = "right"
source = "{log}"
budget_ms = 7000
fallback = "rest"
""")
    assert cli_main(["check-config", str(config)]) == 0
    assert "2 streams (left, right)" in capsys.readouterr().out
    assert cli_main(["run", "--config", str(config), "--json", "--warmup", "0"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [s["stream"] for s in summary["streams"]] == ["left", "right"]
    assert [s["budget_ms"] for s in summary["streams"]] == [5000.0, 7000.0]
    assert {r["stream"] for r in read_jsonl(tmp_path / "left.jsonl")} == {"left"}


def test_check_config_checks_every_streams_source_uri(tmp_path, capsys):
    config = tmp_path / "config.toml"
    config.write_text('[[stream]]\nsource = "serial:/dev/ttyUSB0"\n[[stream]]\nsource = "serial:/dev/ttyUSB1?baud=x"\n')
    assert cli_main(["check-config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "baud must be a positive integer" in err and "Traceback" not in err


def test_process_mode_is_refused_with_several_streams(tmp_path, capsys):
    log = write_log(tmp_path / "small.csv", 40)
    assert cli_main(["run", "--source", str(log), "--source", str(log), "--mode", "process"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-infer: error: --mode process") and "Traceback" not in err


def test_bad_stream_tables_are_one_line_each(tmp_path, capsys):
    config = tmp_path / "config.toml"
    config.write_text('[[stream]]\nname = "a"\n[[stream]]\nname = "a"\nsource = 5\n')
    assert cli_main(["check-config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "[[stream]] 1: source is required" in err
    assert "[[stream]] 2: source must be a non-empty string" in err
    assert "name must differ" in err and "Traceback" not in err


def test_status_and_metrics_name_each_stream(tmp_path):
    from edge_infer.service.hooks import ServiceHooks
    from edge_infer.service.metrics import format_text
    from edge_infer.service.notify import Notifier

    spec, engine = open_model(str(write_spec(tmp_path)))
    log = str(write_log(tmp_path / "small.csv", 60))
    setups = [StreamSetup(name, spec, engine, log_source(log, spec, engine, rows=rows), [], options=quiet())
              for name, rows in (("motor1", 60), ("motor2", 30))]
    runtime = StreamsRuntime(setups)
    hooks = ServiceHooks(Notifier.from_environ())
    runtime.run(hooks=hooks)
    status = hooks.status_line()
    assert status.startswith("2 streams: ") and "motor1 ended 12" in status and "motor2 ended 4" in status
    text = format_text(hooks.families())
    assert 'edge_infer_frames_total{stream="motor1"} 60' in text
    assert 'edge_infer_frames_total{stream="motor2"} 30' in text
    assert 'edge_infer_stream_state{stream="motor2",state="ended"} 1' in text


# --- faults stay in their stream: real devices on ptys ----------------------------------------------------------

def test_an_unplugged_device_decides_no_data_while_the_others_go_on(tmp_path):
    """Three virtual devices; one is unplugged for good after a while: it decides no_data, the others the model.

    Device 2 also sends noise bursts between its frames: its link resyncs, and nothing of it reaches the others.
    """
    log = write_log(tmp_path / "device.csv", 3000)
    spec = write_spec(tmp_path)
    links = [tmp_path / f"dev{i}" for i in range(3)]
    faults = {1: ["--unplug-after", "3", "--unplug-for", "600"], 2: ["--garbage", "0.2", "--seed", "7"]}
    sims = [start_sim(log, link, "--speed", "4", "--wait-host", *faults.get(i, [])) for i, link in enumerate(links)]
    decisions = tmp_path / "decisions.jsonl"
    run = RuntimeProcess(f"serial:{links[0]}", spec, decisions, "--source", f"serial:{links[1]}",
                         "--source", f"serial:{links[2]}", "--no-data-ms", "1500")
    try:
        def unplugged_and_others_on(records: List[dict]) -> bool:
            gone = [r for r in records if r["stream"] == f"serial:{links[1]}" and r["reason"] == "no_data"]
            if len(gone) < 5:
                return False
            after = {r["stream"] for r in records[records.index(gone[0]):] if r["source"] == "model"}
            return {f"serial:{links[0]}", f"serial:{links[2]}"} <= after and \
                sum(1 for r in records[records.index(gone[0]):] if r["source"] == "model") > 20
        run.wait_for(unplugged_and_others_on, "no_data on the unplugged stream while the others decide")
        summary = run.stop(signal.SIGINT)
        records = run.records()
    finally:
        run.kill()
        for sim in sims:
            sim.kill()
            sim.communicate()
    streams = {s["stream"]: s for s in summary["streams"]}
    assert streams[f"serial:{links[1]}"]["fallback_reasons"].get("no_data", 0) >= 5
    for i in (0, 2):
        mine = [r for r in records if r["stream"] == f"serial:{links[i]}"]
        first = next(n for n, r in enumerate(mine) if r["source"] == "model")
        assert streams[f"serial:{links[i]}"]["model_decisions"] > 0
        # (before its first frame a device is silent too: no_data then is right, whatever the others do)
        assert not [r for r in mine[first:] if r["reason"] == "no_data"]
    assert streams[f"serial:{links[2]}"]["source"]["resyncs"] > 0  # the noise was there, and stayed in its stream
    assert streams[f"serial:{links[0]}"]["source"]["resyncs"] == 0


def test_a_device_with_the_wrong_schema_fails_its_stream_only(tmp_path):
    """A device whose HELLO names other channels: its stream fails (no_data), the log stream beside it goes on."""
    from serial_helpers import ScriptedDevice

    spec, engine = open_model(str(write_spec(tmp_path)))
    link = tmp_path / "wrong"
    device = ScriptedDevice(link)
    from edge_infer.sources.serial_link import SerialSource

    source = SerialSource(str(link), channels=list(CHANNELS))
    log = str(write_log(tmp_path / "small.csv", 3000))
    collects = [CollectSink(), CollectSink()]
    runtime = StreamsRuntime([
        StreamSetup("device", spec, engine, source, [collects[0]], options=quiet(no_data_ms=200.0)),
        StreamSetup("log", spec, engine, log_source(log, spec, engine, speed=20.0), [collects[1]], options=quiet()),
    ])
    stop = threading.Event()
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(runtime.run(stop=stop)), daemon=True)
    thread.start()
    try:
        wait_for(lambda: device.read(0.05) is not None and device.of_type(type(hello_for())) == [] and
                 len(device.received) > 0, "the host to speak")
        device.send(hello_for(["a", "b", "c", "d", "e", "f"]))
        wait_for(lambda: runtime.states[0].startswith("failed") and sum(collects[0].fallback) >= 3
                 and len(collects[1].fallback) - sum(collects[1].fallback) > 20,
                 "the device stream to fail and the log stream to go on deciding with its model")
    finally:
        stop.set()
        thread.join(30)
        device.close()
    assert "schema" in runtime.states[0].lower() or "channel" in runtime.states[0].lower()
    assert result["streams"][0]["state"].startswith("failed")
    assert result["streams"][0]["fallback_reasons"].get("no_data", 0) >= 3
    assert result["streams"][1]["model_decisions"] > 20


@pytest.mark.parametrize("extra, message", [
    ('[deadline]\nmode = "process"\n', "--mode process runs one stream's model"),
    ('[deadline]\noverload = "latest"\n', "--overload ([deadline].overload) is a single-stream scheduling policy"),
    ('[deadline]\nadmission = false\n', "--admission ([deadline].admission) is a single-stream scheduling policy"),
    ('[source]\nlink_key = "lk"\n', "signs a serial link"),
    ('[sinks]\ndecisions = "left.jsonl"\n', "both the shared one and a stream's own"),
], ids=["process-mode", "overload", "admission", "link-key-for-logs", "decision-log-twice"])
def test_check_config_refuses_what_run_refuses_with_several_streams(tmp_path, capsys, extra, message):
    """A service config that check-config calls valid must not fail at start."""
    log = write_log(tmp_path / "small.csv", 120)
    (tmp_path / "lk").write_bytes(bytes(range(1, 33)))
    (tmp_path / "lk").chmod(0o600)
    config = tmp_path / "config.toml"
    config.write_text(f'[model]\nspec = "{write_spec(tmp_path)}"\n{extra}[[stream]]\nname = "left"\n'
                      f'source = "{log}"\ndecisions = "left.jsonl"\n[[stream]]\nname = "right"\nsource = "{log}"\n')
    assert cli_main(["check-config", str(config)]) == 2
    assert message in capsys.readouterr().err
    assert cli_main(["run", "--config", str(config), "--warmup", "0"]) == 2
    assert message in capsys.readouterr().err


def test_overload_and_admission_are_refused_with_several_streams_not_with_one(tmp_path, capsys):
    """EDF replaces the single-stream policies: set explicitly with several streams they would do nothing."""
    log = write_log(tmp_path / "small.csv", 40)
    spec = write_spec(tmp_path)
    for extra, named in ((["--overload", "latest"], "--overload"), (["--admission"], "--admission"),
                         (["--overload", "busy", "--admission"], "--overload ([deadline].overload) and --admission")):
        assert cli_main(["run", "--source", str(log), "--source", str(log), "--model", str(spec), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"edge-infer: error: {named}") and "earliest-deadline-first" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert cli_main(["run", "--source", str(log), "--model", str(spec), "--overload", "latest", "--admission",
                     "--warmup", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["scheduler"]["admission"] is True


def test_check_config_takes_a_fleet_table_with_several_streams(tmp_path, capsys):
    log = write_log(tmp_path / "small.csv", 120)
    config = tmp_path / "config.toml"
    config.write_text(f'[model]\nspec = "{write_spec(tmp_path)}"\n[fleet]\nmqtt = "mqtt://127.0.0.1:1"\n'
                      f'device_id = "gateway-1"\n[[stream]]\nname = "left"\nsource = "{log}"\n'
                      f'[[stream]]\nname = "right"\nsource = "{log}"\n')
    assert cli_main(["check-config", str(config)]) == 0
    assert "2 streams (left, right)" in capsys.readouterr().out


def test_one_serial_port_is_one_stream(tmp_path, capsys):
    code = cli_main(["run", "--source", "serial:/tmp/dev0", "--source", "serial:/tmp/dev0?baud=9600",
                     "--model", str(write_spec(tmp_path))])
    assert code == 2 and "named by two streams" in capsys.readouterr().err


def test_the_shared_decision_log_names_every_model_and_starts_only_when_every_stream_opened(tmp_path, capsys):
    log = write_log(tmp_path / "small.csv", 200)
    spec = write_spec(tmp_path)
    decisions = tmp_path / "d.jsonl"
    bad = ["run", "--source", str(log), "--source", str(tmp_path / "missing.csv"), "--model", str(spec),
           "--decisions", str(decisions)]
    assert cli_main(bad) == 2 and not decisions.exists()
    assert cli_main(["run", "--source", str(log), "--source", str(log), "--model", str(spec), "--decisions",
                     str(decisions), "--warmup", "0", "--json"]) == 0
    start = json.loads(decisions.read_text().splitlines()[0])
    assert start["event"] == "run_start" and len(start["models"]) == 1 and start["models"][0]["model_sha256"]
