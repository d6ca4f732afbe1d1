"""The native backstop (edge_infer/deadline/backstop.py, _backstop.c): the device's fallback at the deadline
without the GIL.

With the real parts: the native thread writing to a real pty and pipe, a signed link's numbering checked by
the device's own decoder, and a runtime whose model holds the GIL far past the deadline (a C call through
``ctypes.PyDLL``, which keeps the GIL, as a Python thread preempted while holding it would). No timing is
asserted: what is checked is who sent what, and in which order (scripts/bench_arrival.py measures the time).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import threading
import time
import tty

import numpy as np
import pytest
from serial_helpers import ScriptedDevice, hello_for, wait_for

from edge_infer.deadline import backstop
from edge_infer.deadline.options import DeadlineOptions
from edge_infer.decide.reasons import Reason
from edge_infer.model.loader import open_model
from edge_infer.runtime import Runtime
from edge_infer.sinks.collect import CollectSink
from edge_infer.sinks.device import attach_device
from edge_infer.sources.link_backstop import ArmedAction, LinkBackstop
from edge_infer.sources.serial_link import SerialSource
from edge_infer.testing.tflite_builder import dense_model
from firmware_bridge.auth import LinkAuth, Side
from firmware_bridge.protocol import Action, ActionSource, FrameEncoder, Heartbeat, Session
from firmware_bridge.stream import FrameDecoder

from test_arrival_live import CHANNELS, write_spec

Native = backstop.native_type()
needs_native = pytest.mark.skipif(Native is None, reason="the native backstop is not built (no C compiler at install)")
SAFETY_S = 30.0


def test_the_backstop_is_built_where_a_compiler_is():
    # CI has gcc: a build that silently fell back to the pure-Python watchdog would skip every test below
    if shutil.which("gcc") or shutil.which("cc"):
        assert Native is not None, "setup.py should have built edge_infer/deadline/_backstop.c (pip install -e .)"


@needs_native
def test_the_native_thread_writes_its_frame_at_the_fire_time_unless_disarmed_first():
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    os.set_blocking(slave, False)
    guard = Native(slave)
    try:
        assert guard.native_id > 0
        guard.arm(1, time.perf_counter_ns() + 10**10, b"never\x00")
        assert guard.disarm() is None  # disarmed in time: nothing written
        guard.arm(2, time.perf_counter_ns(), b"fallback\x00")
        wait_for(lambda: guard.fired == 1, "the backstop's write")
        with pytest.raises(RuntimeError):  # what it wrote must be collected before anything else is armed
            guard.arm(3, time.perf_counter_ns(), b"x")
        tag, sent_ns, written, errno = guard.disarm()
        assert (tag, written, errno) == (2, len(b"fallback\x00"), 0) and sent_ns > 0
        assert os.read(master, 100) == b"fallback\x00"
        assert guard.disarm() is None  # collected once
        with pytest.raises(ValueError):
            guard.arm(4, 0, bytes(513))
        guard.set_fd(-1)  # a lost port: the frame goes nowhere, and says so
        guard.arm(5, 0, b"lost")
        wait_for(lambda: guard.fired == 2, "the second write")
        assert guard.disarm()[2:] == (0, 9)  # written 0, EBADF
    finally:
        guard.close()
        os.close(master)
        os.close(slave)
    with pytest.raises(ValueError):
        guard.arm(6, 0, b"closed")


class Host:
    """One side of a signed link in memory (as firmware_bridge's tests), with a session agreed."""

    def __init__(self, side: Side, key: bytes = bytes(range(1, 33))):
        self.auth = LinkAuth(key, side)
        self.enc = FrameEncoder(auth=self.auth)
        self.dec = FrameDecoder(auth=self.auth)


@needs_native
def test_a_signed_links_numbering_stays_whole_whether_the_backstop_writes_or_not():
    host, device = Host(Side.HOST), Host(Side.DEVICE)
    device.dec.feed(host.enc.encode(Session(host_nonce=host.auth.offer())))
    host.dec.feed(device.enc.encode(Session(host_nonce=device.auth.session[:8], device_nonce=device.auth.session[8:])))
    assert host.auth.established
    read_end, write_end = os.pipe()
    link = LinkBackstop(Native(write_end), host.enc, host.auth)
    wire = []  # what went out, in order

    def other_frame() -> None:  # what the link does around the armed fallback (SerialSource._send)
        link.off()
        os.write(write_end, host.enc.heartbeat())
        link.rearm(delimiter=False)

    try:
        far = time.perf_counter_ns() + 10**10
        link.arm(ArmedAction(tag=1, fire_at_ns=far, action=0, reason=int(Reason.DEADLINE), answers=10, name="idle"),
                 delimiter=False)
        other_frame()  # a heartbeat while armed: the fallback is encoded again after it
        assert link.off() is None  # answered on time: the fallback never went out and took no numbers
        link.arm(ArmedAction(2, time.perf_counter_ns(), 0, int(Reason.DEADLINE), 11, "idle"), delimiter=False)
        wait_for(lambda: link.native.fired == 1, "the backstop's write")
        other_frame()  # after the backstop wrote: the heartbeat takes the numbers after the fallback's
        fired = link.off()
        assert fired is None or fired.tag == 2
        os.write(write_end, host.enc.action(3, source=ActionSource.MODEL, answers_seq=12))
        link.native.close()
        os.close(write_end)
        data = b""
        while chunk := os.read(read_end, 4096):
            data += chunk
        wire = device.dec.feed(data)
    finally:
        os.close(read_end)
    assert [type(f).__name__ for f in wire] == ["Heartbeat", "Action", "Heartbeat", "Action"]
    fallback = wire[1]
    assert (fallback.source, fallback.reason, fallback.answers_seq) == (ActionSource.FALLBACK, Reason.DEADLINE, 11)
    counters = device.dec.counters
    assert (counters.seq_gaps, counters.replayed, counters.bad_signature) == (0, 0, 0)  # every frame accepted


def hold_the_gil(seconds: float) -> None:
    """Block in C *with* the GIL held (PyDLL calls keep it), as a preempted Python thread holding it would."""
    ctypes.PyDLL(None).usleep(int(seconds * 1e6))


@needs_native
@pytest.mark.parametrize("mode", ["inline", "thread"])
def test_a_model_holding_the_gil_past_the_deadline_still_gets_the_device_its_fallback_before_the_gil_is_free(
        tmp_path, mode):
    hold_s, budget_ms = 1.0, 100
    spec_path = write_spec(tmp_path, dense_model(8, len(CHANNELS), 3, seed=5), rate=10.0, window=8, hop=4,
                           budget_ms=budget_ms)
    spec, engine = open_model(str(spec_path))
    real_infer = engine.infer
    held = []  # (seq of the window's last frame, when the GIL was free again)

    def infer(window: np.ndarray) -> np.ndarray:
        if window[-1, 0] == 42.0:
            hold_the_gil(hold_s)
            held.append(time.perf_counter_ns())
        return real_infer(window)

    engine.infer = infer
    device = ScriptedDevice(tmp_path / "dev")
    source = SerialSource(str(device.link), channels=CHANNELS)
    collect = CollectSink(frames=False)
    runtime = Runtime(spec, engine, source, [collect],
                      options=DeadlineOptions(mode=mode, warmup=3, gc_control=False, no_data_ms=0, strict_budget=False))
    attach_device(runtime)
    assert runtime.backstop is not None
    stop = threading.Event()
    thread = threading.Thread(target=lambda: runtime.run(stop=stop), daemon=True)
    thread.start()
    try:
        wait_for(lambda: device.read(0.02) is not None and device.of_type(Heartbeat), "the host's heartbeat")
        device.send(hello_for(CHANNELS))
        frame_of = {}  # the device's seq -> the runtime's frame seq
        for i in range(24):  # windows end at frames 7, 11, 15, 19, 23; the one ending at 15 holds the GIL
            frame_of[device.sensor([42.0 if i == 15 else float(i % 5), 1.0, -1.0], 100_000 * i)] = i
            time.sleep(0.01)
        wait_for(lambda: device.read(0.02) is not None and len(device.of_type(Action)) >= 5, "5 ACTIONs", SAFETY_S)
    finally:
        stop.set()
        thread.join(SAFETY_S)
        device.close()
    summary = runtime.summary()
    assert held, "the GIL-holding window was never invoked"
    actions = {frame_of[a.answers_seq]: a for a in device.of_type(Action) if a.reason != int(Reason.SHUTDOWN)}
    assert len(actions) == 5  # one ACTION per window: the model's late answer was not sent as well
    decisions = {seq: (reason, latency) for seq, reason, latency
                 in zip(collect.column("seq").tolist(), collect.reason_codes(), collect.column("latency_us"))
                 if reason != "shutdown"}
    assert decisions[15][0] == "deadline"  # the log says what the device got
    assert actions[15].source == ActionSource.FALLBACK and actions[15].reason == int(Reason.DEADLINE)
    assert summary["backstop_decisions"] == 1 and summary["source"]["backstop_actions"] == 1
    # it went out while the GIL was still held (latency from the frame's arrival, which came before the invoke)
    assert decisions[15][1] < hold_s * 1e6
    assert [decisions[s][0] for s in (7, 11)] == [None, None]  # before: the model's (after: frames that came
    # during the hold are too old for the model by the time the loop runs again)
    assert device.dec.counters.seq_gaps == 0
