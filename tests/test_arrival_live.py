"""Honest deadlines with the real parts: a pty device sending faster than the model can decide, a busy Python
thread in the runtime's process, a model file swapped under the isolated mode, the forkserver's socket.

No timing is asserted (scripts/bench_arrival.py measures it from outside, docs/performance.md): these check
that every window gets exactly one ACTION in order, that the model only takes windows it can, that the
interpreter settings are in force, and what the child process runs.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from serial_helpers import ScriptedDevice, hello_for, wait_for

from edge_infer.deadline import isolated
from edge_infer.deadline.isolated import ProcessScheduler
from edge_infer.deadline.options import DEFAULT_SWITCH_INTERVAL_MS, DeadlineOptions
from edge_infer.decide.decision import Decision
from edge_infer.decide.reasons import Reason
from edge_infer.io import read_log
from edge_infer.model.loader import open_model
from edge_infer.runtime import Runtime
from edge_infer.sinks.base import Sink
from edge_infer.sinks.collect import CollectSink
from edge_infer.sinks.device import attach_device
from edge_infer.sources.log_replay import LogSource
from edge_infer.sources.serial_link import SerialSource
from edge_infer.testing.fault_engines import SEGFAULT_MARKER, faulty_engine
from edge_infer.testing.tflite_builder import dense_model, slow_model, write_model
from firmware_bridge.protocol import Action, Heartbeat

CHANNELS = ["ax", "ay", "az"]
SAFETY_S = 60.0


def write_spec(directory: Path, model_bytes: bytes, rate: float, window: int = 8, hop: int = 1,
               budget_ms: float = 5000) -> Path:
    model = write_model(directory / "m.tflite", model_bytes)
    spec = directory / "m.toml"
    spec.write_text(f"""[model]
file = "{model.name}"
[input]
channels = {json.dumps(CHANNELS)}
window = {window}
hop = {hop}
sample_rate_hz = {rate}
[output]
kind = "classes"
labels = ["rest", "walk", "run"]
[deadline]
budget_ms = {budget_ms}
no_data_ms = 0
[fallback]
action = "idle"
""")
    return spec


def test_a_device_faster_than_the_model_gets_one_action_per_window_and_the_model_takes_the_newest(tmp_path):
    # 1 kHz, hop 1: a window every millisecond, for a model of a few milliseconds. The device writes 300
    # frames at once: once the model has an estimate, it cannot catch up and takes only the newest windows.
    spec_path = write_spec(tmp_path, slow_model(8, len(CHANNELS), 3, rows=256), rate=1000.0)
    spec, engine = open_model(str(spec_path))
    device = ScriptedDevice(tmp_path / "dev")
    source = SerialSource(str(device.link), channels=CHANNELS)
    collect = CollectSink(frames=False)
    runtime = Runtime(spec, engine, source, [collect], options=DeadlineOptions(warmup=20, gc_control=False, no_data_ms=0))
    attach_device(runtime)
    stop = threading.Event()
    thread = threading.Thread(target=lambda: runtime.run(stop=stop), daemon=True)
    thread.start()
    try:
        wait_for(lambda: device.read(0.02) is not None and device.of_type(Heartbeat), "the host's heartbeat")
        device.send(hello_for(CHANNELS))
        frames = 300
        for i in range(frames):
            device.sensor([float(i % 7), 1.0, -1.0], 1000 * i)
            if i % 20 == 19:  # bursts that fit the pty's buffer (a full one would drop bytes)
                time.sleep(0.002)
        windows = frames - 8 + 1
        wait_for(lambda: device.read(0.02) is not None and len(device.of_type(Action)) >= windows,
                 f"{windows} ACTIONs", SAFETY_S)
    finally:
        stop.set()
        thread.join(SAFETY_S)
        device.close()
    summary = runtime.summary()
    decided = [seq for seq, reason in zip(collect.column("seq").tolist(), collect.reason_codes())
               if reason != "shutdown"]
    assert decided == list(range(7, frames))  # every window, once, in order
    actions = [a for a in device.of_type(Action) if a.reason != int(Reason.SHUTDOWN)]
    assert len(actions) == windows and [a.answers_seq for a in actions] == sorted(a.answers_seq for a in actions)
    reasons = summary["fallback_reasons"]
    assert set(reasons) <= {"overrun", "deadline", "shutdown"}
    assert reasons.get("overrun", 0) > 0 and summary["model_decisions"] > 0
    assert summary["source"]["arrival_queue_max"] > 1  # the frames did wait for the loop
    assert summary["startup"]["keeps_up"] is False


class SwitchIntervalProbe(Sink):
    def __init__(self) -> None:
        self.seen = set()

    def on_decision(self, decision: Decision) -> None:
        self.seen.add(sys.getswitchinterval())


def test_a_busy_python_thread_cannot_hold_the_gil_for_long_while_the_loop_runs(tmp_path):
    spec_path = write_spec(tmp_path, dense_model(8, len(CHANNELS), 3, seed=4), rate=100.0)
    spec, engine = open_model(str(spec_path))
    rows = np.random.default_rng(1).normal(size=(60, len(CHANNELS)))
    log_path = tmp_path / "log.csv"
    log_path.write_text("t,ax,ay,az\n" + "\n".join(f"{i / 100:.2f}," + ",".join(f"{v:.3f}" for v in row)
                                               for i, row in enumerate(rows)) + "\n")
    spinning = threading.Event()

    def spin() -> None:
        while not spinning.is_set():
            pass

    busy = threading.Thread(target=spin, daemon=True)
    busy.start()
    before = sys.getswitchinterval()
    probe = SwitchIntervalProbe()
    runtime = Runtime(spec, engine, LogSource(read_log(log_path), [0, 1, 2], CHANNELS, speed=4.0), [probe],
                      options=DeadlineOptions(warmup=5))
    try:
        summary = runtime.run()
    finally:
        spinning.set()
        busy.join(5)
    assert probe.seen == {DEFAULT_SWITCH_INTERVAL_MS / 1000}
    assert sys.getswitchinterval() == before
    assert summary["decisions"] == 60 - 8 + 1  # every window decided; lateness is measured by the benchmark


def test_the_child_runs_the_bytes_the_parent_verified_even_after_the_file_is_swapped(tmp_path):
    original = dense_model(8, len(CHANNELS), 3, seed=5)
    path = write_model(tmp_path / "m.tflite", original)
    _, engine = open_model(str(path))
    window = np.random.default_rng(2).normal(size=(8, len(CHANNELS))).astype(np.float32)
    expected = engine.infer(window).copy()
    scheduler = ProcessScheduler(engine, engine_factory=faulty_engine)
    try:
        address = isolated.forkserver_address()
        assert address is not None and not address.startswith("\0")  # a path, never an abstract socket
        assert stat.S_IMODE(os.stat(os.path.dirname(address)).st_mode) == 0o700
        path.write_bytes(dense_model(8, len(CHANNELS), 3, seed=99))  # the file is swapped under the service
        swapped = open_model(str(path))[1].infer(window).copy()
        assert not np.allclose(swapped, expected)
        crash = window.copy()
        crash[0, 0] = SEGFAULT_MARKER
        assert scheduler.run(crash, time.perf_counter_ns() + 10**10).reason is Reason.MODEL_ERROR
        give_up = time.monotonic() + SAFETY_S
        while not scheduler._available():  # the restarted child
            assert time.monotonic() < give_up, f"the model process did not come back: {scheduler.counters()}"
            scheduler.poll(time.perf_counter_ns())
            time.sleep(0.005)
        answer = scheduler.run(window, time.perf_counter_ns() + 10**10)
        assert answer.reason is None
        np.testing.assert_array_equal(answer.output, expected)  # the verified bytes, not the file's
        assert scheduler.restarts == 1
    finally:
        scheduler.close()


def test_a_restart_does_not_block_the_loop_on_the_exit_or_the_fork(tmp_path, monkeypatch):
    path = write_model(tmp_path / "m.tflite", dense_model(8, len(CHANNELS), 3, seed=6))
    _, engine = open_model(str(path))
    scheduler = ProcessScheduler(engine, engine_factory=faulty_engine)
    try:
        spawned = threading.Event()
        real_spawn = scheduler._spawn

        def slow_spawn():  # a forkserver that takes its time: the loop must not wait for it
            assert threading.current_thread().name == "edge-infer-model-restart"
            spawned.wait(SAFETY_S)
            return real_spawn()

        monkeypatch.setattr(scheduler, "_spawn", slow_spawn)
        crash = np.zeros((8, len(CHANNELS)), dtype=np.float32)
        crash[0, 0] = SEGFAULT_MARKER
        assert scheduler.run(crash, time.perf_counter_ns() + 10**10).reason is Reason.MODEL_ERROR
        for _ in range(5):  # the loop goes on deciding model_error while the helper thread is stuck
            answer = scheduler.run(np.ones((8, len(CHANNELS)), np.float32), time.perf_counter_ns() + 10**9)
            assert answer.reason is Reason.MODEL_ERROR
        spawned.set()
        give_up = time.monotonic() + SAFETY_S
        while not scheduler._available():
            assert time.monotonic() < give_up
            scheduler.poll(time.perf_counter_ns())
            time.sleep(0.005)
        assert scheduler.counters()["child_exits"][0].startswith("crashed, killed by SIGSEGV")
    finally:
        scheduler.close()
