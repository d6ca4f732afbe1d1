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
import select
import shutil
import subprocess
import sys
import threading
import time
import tty

import numpy as np
import pytest
from serial_helpers import ScriptedDevice, hello_for, wait_for

from edge_infer.deadline import backstop
from edge_infer.deadline.backstop import MIN_LEAD_NS
from edge_infer.deadline.backstop import fire_at_ns as backstop_fire_at
from edge_infer.deadline.options import DeadlineOptions
from edge_infer.decide.reasons import Reason
from edge_infer.errors import EdgeInferError
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
needs_native = pytest.mark.skipif(
    Native is None, reason="no native backstop (not built: no C compiler at install; or EDGE_INFER_BACKSTOP=off)")
SAFETY_S = 30.0
#: How far ahead the link tests arm a fallback: what the test does before it is due must be done by then, and a
#: loaded machine can stall a thread for a few hundred ms (300 ms was once the margin here)
FIRE_AFTER_NS = 1_000_000_000


def test_the_backstop_is_built_where_a_compiler_is():
    # CI has gcc: a build that silently fell back to the pure-Python watchdog would skip every test below
    if shutil.which("gcc") or shutil.which("cc"):
        # (built, whether or not EDGE_INFER_BACKSTOP=off turns it off for this run)
        assert backstop._Native is not None, "setup.py should have built edge_infer/deadline/_backstop.c"


def raw_pty():
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    os.set_blocking(slave, False)
    return master, slave


def read_from_pty(master: int, size: int) -> bytes:
    """Up to ``size`` bytes from the pty's master: the kernel hands the slave's writes over to the master side
    later (a work queue), so one read may see only part of what was already written (CI saw exactly that)."""
    got = b""
    deadline = time.monotonic() + SAFETY_S
    while len(got) < size and time.monotonic() < deadline:
        if select.select([master], [], [], 0.1)[0]:
            got += os.read(master, size - len(got))
    return got


@needs_native
def test_the_native_thread_writes_its_frames_in_order_at_their_fire_times_unless_answered_first():
    master, slave = raw_pty()
    guard = Native(slave)
    try:
        assert guard.native_id > 0
        now = time.perf_counter_ns()
        assert guard.arm(1, now, b"one\x00") and guard.arm(2, now + 10**10, b"two\x00")
        assert guard.arm(3, now, b"three\x00")  # due, but behind 2: never before it
        wait_for(lambda: guard.fired == 1, "the first write")
        assert [(tag, written, err) for tag, _, written, err in guard.collect()] == [(1, 4, 0)]
        assert guard.collect() == ()  # collected once
        assert guard.answer(3, b"not next") is None  # 3 is not next: nothing written
        assert guard.answer(2, b"answer\x00") == (7, 0)  # written in 2's place; 3 goes out right after
        wait_for(lambda: guard.fired == 2, "the third write")
        assert [tag for tag, *_ in guard.collect()] == [3]
        expected = b"one\x00answer\x00three\x00"
        assert read_from_pty(master, len(expected)) == expected
        assert guard.answer(3, b"too late") is None  # it went out already
        assert guard.arm(4, now + 10**10, b"four")
        guard.clear()  # drops 4
        assert guard.arm(5, now, b"five\x00")
        wait_for(lambda: guard.fired == 3, "the write after a clear")
        assert [tag for tag, *_ in guard.collect()] == [5]
        with pytest.raises(ValueError):
            guard.arm(6, 0, bytes(513))
        assert all(guard.arm(7 + i, now + 10**10, b"x") for i in range(16)) and not guard.arm(99, now, b"full")
        guard.set_fd(-1)  # a lost port: frames go nowhere, and say so (and it cleared the queue)
        guard.arm(30, 0, b"lost")
        wait_for(lambda: guard.fired == 4, "the write to no port")
        assert [(tag, written, err) for tag, _, written, err in guard.collect()] == [(30, 0, 9)]  # EBADF
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


@pytest.mark.parametrize("floor_ms", [0.1, 0.2, 1.0, 5.0])
def test_the_backstop_fires_after_the_watchdog_and_before_the_deadline(floor_ms: float):
    """The watchdog fires a whole reserve (at least its floor) before the deadline: the backstop comes after it, so
    it never cuts a model answer short, and as early as that allows (what it writes must still reach the device)."""
    deadline, floor = 10**12, int(floor_ms * 1e6)
    fire_at = backstop_fire_at(deadline, floor)
    assert deadline - floor <= fire_at < deadline
    assert deadline - fire_at >= MIN_LEAD_NS
    if floor >= 4 * MIN_LEAD_NS:
        assert fire_at - (deadline - floor) == floor // 4  # a quarter of the floor after the watchdog at the earliest


def fallback(tag: int, fire_at_ns: int) -> ArmedAction:
    return ArmedAction(tag, fire_at_ns, action=0, reason=int(Reason.DEADLINE), answers=100 + tag, name="idle")


@needs_native
def test_a_signed_links_numbering_stays_whole_whichever_of_the_backstop_and_the_link_writes():
    host, device = Host(Side.HOST), Host(Side.DEVICE)
    device.dec.feed(host.enc.encode(Session(host_nonce=host.auth.offer())))
    host.dec.feed(device.enc.encode(Session(host_nonce=device.auth.session[:8], device_nonce=device.auth.session[8:])))
    assert host.auth.established
    read_end, write_end = os.pipe()
    link = LinkBackstop(Native(write_end), host.enc, host.auth)
    model = lambda tag: host.enc.action(3, source=ActionSource.MODEL, answers_seq=100 + tag)  # noqa: E731
    try:
        now, far = time.perf_counter_ns(), time.perf_counter_ns() + 10**10
        assert link.arm(fallback(1, now)) and link.arm(fallback(2, far)) and link.arm(fallback(3, far))
        wait_for(lambda: link.native.fired == 1, "window 1's fallback")
        assert [f.tag for f in link.collect()] == [1]  # the encoder moves past its numbers
        assert link.answer(3, lambda: model(3)) is None  # not next: nothing written, no numbers taken
        assert link.answer(2, lambda: model(2)) is not None  # the model's answer for 2 takes 2's numbers
        link.off()  # a heartbeat while 3 waits: it goes first, 3's fallback is encoded again after it
        os.write(write_end, host.enc.heartbeat())
        link.rearm()
        assert link.answer(3, lambda: model(3)) is not None
        assert link.arm(fallback(4, time.perf_counter_ns()))
        wait_for(lambda: link.native.fired == 2, "window 4's fallback")
        assert [f.tag for f in link.collect()] == [4]
        os.write(write_end, host.enc.heartbeat())  # the link's next frame: numbers after 4's
        link.native.close()
        os.close(write_end)
        data = b""
        while chunk := os.read(read_end, 4096):
            data += chunk
    finally:
        os.close(read_end)
    wire = device.dec.feed(data)
    described = [(type(f).__name__, getattr(f, "answers_seq", None), getattr(f, "source", None)) for f in wire]
    assert described == [("Action", 101, ActionSource.FALLBACK), ("Action", 102, ActionSource.MODEL),
                         ("Heartbeat", None, None), ("Action", 103, ActionSource.MODEL),
                         ("Action", 104, ActionSource.FALLBACK), ("Heartbeat", None, None)]
    counters = device.dec.counters
    assert (counters.seq_gaps, counters.replayed, counters.bad_signature) == (0, 0, 0)  # every frame accepted


def hold_the_gil(seconds: float) -> None:
    """Block in C *with* the GIL held (PyDLL calls keep it), as a preempted Python thread holding it would."""
    ctypes.PyDLL(None).usleep(int(seconds * 1e6))


@needs_native
@pytest.mark.parametrize("mode", ["inline", "thread"])
def test_a_model_holding_the_gil_past_the_deadline_still_gets_the_device_its_fallback_before_the_gil_is_free(
        tmp_path, mode):
    hold_s, budget_ms = 1.5, 300  # a budget a loaded machine meets for windows 7 and 11, well short of the hold
    spec_path = write_spec(tmp_path, dense_model(8, len(CHANNELS), 3, seed=5), rate=100.0, window=8, hop=4,
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
            frame_of[device.sensor([42.0 if i == 15 else float(i % 5), 1.0, -1.0], 10_000 * i)] = i
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
    # it went out while the GIL was still held (latency from the frame's arrival, which came before the invoke)
    assert decisions[15][1] < hold_s * 1e6
    # windows that came during the hold were armed when the reader could read them again: their fallbacks went
    # out then if their deadlines had passed; either way the log says what the device got, window by window
    assert summary["backstop_decisions"] == summary["source"]["backstop_actions"] >= 1
    assert {seq: decisions[seq][0] for seq in actions} == {
        seq: None if a.reason == int(Reason.NONE) else Reason(a.reason).code for seq, a in actions.items()}
    assert [decisions[s][0] for s in (7, 11)] == [None, None]  # before: the model's (after: frames that came
    # during the hold are too old for the model by the time the loop runs again)
    assert device.dec.counters.seq_gaps == 0


@needs_native
def test_a_port_lost_and_found_again_opens_although_the_backstop_held_a_copy_of_it(tmp_path):
    # pyserial locks the port (flock, exclusive); the backstop's dup of the descriptor shares that lock, so it
    # must let go when the port is lost, or the same device can never be opened again (seen: a spurious loss
    # right after a replug, then "Could not exclusively lock port" for good)
    device = ScriptedDevice(tmp_path / "dev")
    source = SerialSource(str(device.link), channels=CHANNELS)
    try:
        source.recv(0.05)  # opens the port
        assert source.port.connected and source.enable_backstop()
        source.port.lost(OSError("a spurious loss"))
        wait_for(lambda: source.recv(0.02) is None and source.port.reconnects == 1, "the port opened again")
        assert source.port.connected
    finally:
        source.close()
        device.close()


class Slowed:
    """The real native backstop, with a delay before one of its calls: the native thread runs meanwhile, as it may
    whenever the calling Python thread is preempted between two calls into it."""

    def __init__(self, native, before: str, until):
        self._native, self._before, self._until = native, before, until
        self.collected = []  # what each collect() returned

    def __getattr__(self, name):
        call = getattr(self._native, name)
        if name == self._before:
            def delayed(*args):
                wait_for(self._until, f"the moment before {name}")
                return call(*args)
            return delayed
        if name == "collect":
            def collect():
                out = call()
                self.collected.append(out)
                return out
            return collect
        return call


def greeted_link(tmp_path, frames: int = 1):
    """A SerialSource greeted by a scripted device that sent ``frames`` SENSOR frames; (device, source, frames)."""
    device = ScriptedDevice(tmp_path / "dev")
    source = SerialSource(str(device.link), channels=CHANNELS)
    source.recv(0.05)  # opens the port
    device.send(hello_for(CHANNELS))
    for i in range(frames):
        device.sensor([float(i), 1.0, -1.0], 5_000_000 + 10_000 * i)  # (a device up for 5 s)
    got = []
    wait_for(lambda: (got.extend(f for f in [source.recv(0.02)] if f is not None) or len(got) == frames)
             and device.read(0.0) is not None, "the frames")
    return device, source, got


def device_actions(device: ScriptedDevice, settle_s: float = 0.2):
    device.read(settle_s)
    while device.read(0.05):
        pass
    return [a for a in device.of_type(Action)]


@needs_native
def test_a_fallback_written_between_the_links_look_and_its_answer_is_the_windows_decision_not_one_of_two(tmp_path):
    # send_action collects what was written, then writes the decision in the fallback's place: if the native thread
    # writes the fallback in between, the answer finds it gone, and the window counts as decided by the backstop
    # (not a second ACTION); the runtime learns it from backstop_sent
    device, source, (frame,) = greeted_link(tmp_path)
    try:
        assert source.enable_backstop()
        native = source._backstop.native
        slowed = source._backstop.native = Slowed(native, "answer", lambda: native.fired == 1)
        source.arm_backstop(frame.seq, time.perf_counter_ns() + FIRE_AFTER_NS, 0, int(Reason.DEADLINE), "idle")
        assert source.send_action(1, ActionSource.MODEL, int(Reason.NONE), frame.seq, "walk")
        assert slowed.collected[0] == ()  # nothing written yet when the link looked first
        sent_ns = source.backstop_sent(frame.seq)
        actions = device_actions(device)
    finally:
        source.close()
        device.close()
    assert [(a.answers_seq, a.source) for a in actions] == [(frame.device_seq, ActionSource.FALLBACK)]
    assert sent_ns is not None and device.dec.counters.seq_gaps == 0


def no_fallback_goes_out_after(tmp_path, event) -> None:
    """Queue one window's fallback, let ``event(device, source, frame)`` happen, and check that nothing reaches the
    device until well after the fallback's fire time."""
    device, source, (frame,) = greeted_link(tmp_path)
    try:
        assert source.enable_backstop()
        fire_at = time.perf_counter_ns() + FIRE_AFTER_NS
        source.arm_backstop(frame.seq, fire_at, 0, int(Reason.DEADLINE), "idle")
        event(device, source, frame)
        wait_for(lambda: time.perf_counter_ns() > fire_at + 100_000_000, "the window's fire time")
        actions = device_actions(device)
    finally:
        source.close()
        device.close()
    assert actions == []


@needs_native
def test_a_device_that_rebooted_gets_no_fallback_armed_for_a_frame_of_its_previous_life(tmp_path):
    # an ACTION answering a frame of an earlier epoch is never sent (its seq means nothing to the rebooted device,
    # or worse, names one of its new frames): the backstop must not send one either
    def reboot(device, source, frame):
        device.enc = FrameEncoder(clock_us=lambda: device.t_us)  # it reboots: its seq and its clock start again
        device.send(hello_for(CHANNELS))
        device.sensor([5.0, 1.0, -1.0], 0)
        wait_for(lambda: source.recv(0.02) is not None, "the rebooted device's first frame")
        assert source.counters()["device_restarts"] == 1

    no_fallback_goes_out_after(tmp_path, reboot)


@needs_native
def test_a_window_whose_decision_cannot_go_out_gets_no_fallback_later_and_holds_up_none_behind_it(tmp_path):
    # the link can stop being ready for a moment (the reader thread's _on_hello clears _ready while it checks a
    # repeated HELLO): a decision not sent then is counted unsent; its fallback must not go out later either (the log
    # would disagree with the device), and the fallbacks behind it keep their places and numbers
    device, source, (first, second) = greeted_link(tmp_path, frames=2)
    try:
        assert source.enable_backstop()
        native = source._backstop.native
        now = time.perf_counter_ns()
        source.arm_backstop(first.seq, now + FIRE_AFTER_NS, 0, int(Reason.DEADLINE), "idle")
        source.arm_backstop(second.seq, now + FIRE_AFTER_NS + 50_000_000, 0, int(Reason.DEADLINE), "idle")
        source._ready = False  # (as _on_hello's check does, on the reader thread)
        assert not source.send_action(1, ActionSource.MODEL, int(Reason.NONE), first.seq, "walk")
        source._ready = True
        wait_for(lambda: native.fired == 1, "the second window's fallback", SAFETY_S)
        time.sleep(0.1)
        actions = device_actions(device)
    finally:
        source.close()
        device.close()
    assert [(a.answers_seq, a.source) for a in actions] == [(second.device_seq, ActionSource.FALLBACK)]
    assert device.dec.counters.seq_gaps == 0 and native.fired == 1


@needs_native
def test_a_refused_device_gets_no_fallback_either(tmp_path):
    # "a refused device gets no ACTION, not even the shutdown one" (SerialSource._check): nor one of the backstop's
    def refuse(device, source, frame):
        device.send(hello_for(["other", "channels"]))  # it changed its schema: refused
        with pytest.raises(EdgeInferError):
            wait_for(lambda: source.recv(0.02) is not None, "the refusal")

    no_fallback_goes_out_after(tmp_path, refuse)


@needs_native
def test_no_fallback_goes_out_after_the_shutdown_even_one_that_could_not_go_out_itself(tmp_path):
    # the shutdown answers the last frame the loop took: one the link no longer knows (a loop that fell far behind)
    # cannot be answered, but the run is over all the same: the fallbacks queued for later windows stay unsent
    def shut_down(device, source, frame):
        assert not source.send_action(-1, ActionSource.FALLBACK, int(Reason.SHUTDOWN), frame.seq + 10**6, "shutdown")

    no_fallback_goes_out_after(tmp_path, shut_down)


@needs_native
def test_a_backstop_whose_thread_cannot_start_keeps_no_descriptor_and_a_closed_one_never_starts_again():
    # no room for the thread's stack (a tight address-space limit, in a process of its own): each failed
    # construction used to keep its dup of the port's descriptor (and with it the port's exclusive lock)
    script = """
import os, resource
from edge_infer.deadline._backstop import Backstop
r, w = os.pipe()
before = len(os.listdir("/proc/self/fd"))
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
used = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
resource.setrlimit(resource.RLIMIT_AS, (used + 2 * 1024 * 1024, hard))
fails = 0
for _ in range(5):
    try:
        Backstop(w)
    except OSError:
        fails += 1
resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
print(fails, len(os.listdir("/proc/self/fd")) - before)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=SAFETY_S)
    assert out.returncode == 0, out.stderr
    fails, leaked = map(int, out.stdout.split())
    if fails == 0:
        pytest.skip("the address-space limit did not keep the thread from starting here")
    assert leaked == 0
    read_end, write_end = os.pipe()
    guard = Native(write_end)
    guard.close()
    with pytest.raises(RuntimeError):  # (it used to start a thread that exited at once: armed, never written)
        guard.__init__(write_end)
    os.close(read_end)
    os.close(write_end)


@needs_native
def test_a_decision_the_device_cannot_take_now_is_counted_and_the_next_one_starts_a_fresh_frame(tmp_path):
    # a decision written in its fallback's place is one non-blocking write: a device that does not read (its
    # buffer full) loses it, counted in write_timeouts; the next frame starts with a delimiter, so the device does
    # not read it as the rest of whatever it had half-read
    device, source, (first, second) = greeted_link(tmp_path, frames=2)
    try:
        assert source.enable_backstop()
        far = time.perf_counter_ns() + 10**10
        source.arm_backstop(first.seq, far, 0, int(Reason.DEADLINE), "idle")
        source.arm_backstop(second.seq, far, 0, int(Reason.DEADLINE), "idle")
        fill_until_full(source.port.fileno())  # with the start of a frame that never ends (no 0x00)
        assert not source.send_action(1, ActionSource.MODEL, int(Reason.NONE), first.seq, "walk")
        assert source.port.write_timeouts == 1
        while device.read(0.05) is not None and device.master >= 0 and select_readable(device.master):
            pass
        assert source.send_action(2, ActionSource.MODEL, int(Reason.NONE), second.seq, "run")
        actions = device_actions(device)
    finally:
        source.close()
        device.close()
    assert [(a.answers_seq, a.action) for a in actions] == [(second.device_seq, 2)]


def fill_until_full(fd: int, settle_s: float = 0.25, within_s: float = 10.0) -> None:
    """Write 0x01 bytes to ``fd`` until it has taken none for ``settle_s``: the tty layer's kworker moves what a pty
    was given into the other end's buffer a moment later (on a loaded machine, tens of ms), which makes room
    again until that buffer is full too."""
    deadline = time.monotonic() + within_s
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < settle_s:
        assert time.monotonic() < deadline, "the pty never filled up: something reads the other end"
        for size in (4096, 256, 16, 1):
            try:
                while True:
                    os.write(fd, b"\x01" * size)
                    quiet_since = time.monotonic()
            except BlockingIOError:
                pass
        time.sleep(0.02)


def select_readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])
