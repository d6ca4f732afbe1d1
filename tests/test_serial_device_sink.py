"""The device sink and the runtime on a serial link, in-process, against a device the test plays on a real pty.

The runtime (real model, real loop) runs in a thread; the test is the board:
it answers the host's greeting, sends SENSOR frames, reads the ACTIONs back,
and pulls the plug. Every check is on what was sent and counted.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from serial_helpers import (
    CHANNELS,
    HOP,
    LABELS,
    WINDOW,
    LiveRun,
    ScriptedDevice,
    hello_for,
    pump_until,
    wait_for,
    write_spec,
)

from edge_infer.decide.decision import Decision
from edge_infer.decide.reasons import Reason
from edge_infer.model.loader import open_model
from edge_infer.sinks.device import DeviceSink
from edge_infer.sources.serial_link import SerialSource
from firmware_bridge.protocol import SAFE_ACTION, Action, ActionSource, Heartbeat


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    spec, engine = open_model(str(write_spec(tmp_path_factory.mktemp("model"))))
    return spec, engine


def test_action_codes_index_the_labels_and_the_fallback_is_the_devices_own_safe_state(model):
    spec, _ = model
    sink = DeviceSink(None, spec)  # the codes need no link
    assert [sink.action_code(label, None) for label in LABELS] == [0, 1, 2]
    assert sink.action_code("idle", Reason.DEADLINE) == SAFE_ACTION  # the fallback is not a label
    assert sink.action_code("walk", Reason.DEADLINE) == 1  # hold_last repeating a model action
    assert sink.action_code("walk", Reason.SHUTDOWN) == SAFE_ACTION  # stopping: always the device's own safe state
    bare = DeviceSink(None, replace(spec, labels=None))
    assert [bare.action_code(a, None) for a in (0, 5, -1, -7, 40000)] == [0, 5, SAFE_ACTION, SAFE_ACTION, SAFE_ACTION]


def play(device: ScriptedDevice, frames: int, first_row: int = 0, t0_us: int = 0):
    """Answer the host's greeting with HELLO, then send ``frames`` SENSOR rows; return their seqs."""
    wait_for(lambda: device.read(0.02) is not None and device.of_type(Heartbeat), "the host's heartbeat")
    device.send(hello_for())
    return [device.sensor([float(first_row + i + c) for c in range(len(CHANNELS))], t0_us + 100_000 * i)
            for i in range(frames)]


def actions(device: ScriptedDevice):
    return device.of_type(Action)


def test_every_decision_goes_back_as_one_action_answering_the_windows_last_frame(model, tmp_path):
    device = ScriptedDevice(tmp_path / "dev")
    run = LiveRun(model, device.link, no_data_ms=0)
    try:
        seqs = play(device, WINDOW + 3 * HOP)
        wait_for(lambda: device.read(0.02) is not None and len(actions(device)) == 4, "4 ACTIONs")
        summary = run.finish()
        wait_for(lambda: device.read(0.02) is not None and len(actions(device)) == 5, "the shutdown ACTION")
    finally:
        device.close()
    decisions = [run.collect.column("seq").tolist(), run.collect.action_names()]
    sent = actions(device)
    assert summary["decisions"] == 5 and summary["source"]["actions_sent"] == 5
    assert summary["source"]["actions_unsent"] == 0
    window_ends = [seqs[WINDOW - 1 + k * HOP] for k in range(4)]
    assert [a.answers_seq for a in sent] == window_ends + [seqs[-1]]
    assert [a.name for a in sent[:4]] == decisions[1][:4]
    assert [a.action for a in sent[:4]] == [LABELS.index(name) for name in decisions[1][:4]]
    assert all(a.source == ActionSource.MODEL and a.reason == Reason.NONE for a in sent[:4])
    last = sent[-1]
    assert (last.action, last.source, last.reason, last.name) == (SAFE_ACTION, ActionSource.FALLBACK,
                                                                  Reason.SHUTDOWN, "idle")
    assert [f.seq for f in device.received] == list(range(len(device.received)))  # heartbeats and actions: one numbering


def test_after_a_reconnect_the_window_starts_again_and_silence_is_decided_but_not_sent(model, tmp_path):
    device = ScriptedDevice(tmp_path / "dev")
    run = LiveRun(model, device.link, no_data_ms=200)
    try:
        play(device, WINDOW + HOP)
        wait_for(lambda: device.read(0.02) is not None and len(actions(device)) == 2, "2 ACTIONs")
        device.unplug()
        wait_for(lambda: run.collect.reason.count(int(Reason.NO_DATA)) >= 2, "no_data decisions while unplugged")
        back = ScriptedDevice(device.link)
        play(back, WINDOW, first_row=100)
        wait_for(lambda: back.read(0.02) is not None
                 and any(a.source == ActionSource.MODEL for a in actions(back)), "the first decision after")
        summary = run.finish()
        back.read(0.1)
        back.close()
    finally:
        device.close()
    source = summary["source"]
    model_seqs = [seq for seq, fb in zip(run.collect.seq, run.collect.fallback) if not fb]
    # frames 0..19 before, 20..35 after: without the reset, windows would have ended at 23, 27, 31 too
    assert model_seqs == [WINDOW - 1, WINDOW + HOP - 1, 2 * WINDOW + HOP - 1]
    assert source["reconnects"] == 1 and source["disconnects"] == 1
    assert 2 <= source["actions_unsent"] <= summary["fallback_reasons"]["no_data"]
    assert summary["decisions"] == source["actions_sent"] + source["actions_unsent"]
    assert len(actions(device)) + len(actions(back)) == source["actions_sent"]


def test_close_sends_the_shutdown_action_once_when_the_loop_did_not(model, tmp_path):
    spec, _ = model
    device = ScriptedDevice(tmp_path / "dev")
    source = SerialSource(str(device.link), channels=list(CHANNELS))
    sink = DeviceSink(source, spec)
    try:
        source.recv(0.05)
        (seq,) = play(device, 1)
        (frame,) = pump_until(source, device, lambda got: len(got) == 1, "a frame")
        sink.on_frame(frame)
        sink.close()
        sink.close()
        wait_for(lambda: device.read(0.02) is not None and actions(device), "the shutdown ACTION")
        device.read(0.1)
    finally:
        source.close()
        device.close()
    (action,) = actions(device)
    assert (action.action, action.reason, action.answers_seq) == (SAFE_ACTION, Reason.SHUTDOWN, seq)


def test_a_shutdown_decision_from_the_loop_is_not_sent_twice(model, tmp_path):
    spec, _ = model
    device = ScriptedDevice(tmp_path / "dev")
    source = SerialSource(str(device.link), channels=list(CHANNELS))
    sink = DeviceSink(source, spec)
    try:
        source.recv(0.05)
        play(device, 1)
        (frame,) = pump_until(source, device, lambda got: len(got) == 1, "a frame")
        sink.on_frame(frame)
        sink.on_decision(Decision(seq=frame.seq, t=frame.t, action="idle", source="fallback",
                                  reason=Reason.SHUTDOWN, latency_us=0.0, invoke_us=None, output=None, label=None))
        sink.close()
        wait_for(lambda: device.read(0.02) is not None and actions(device), "the shutdown ACTION")
        device.read(0.1)
    finally:
        source.close()
        device.close()
    assert len(actions(device)) == 1 and source.counters()["actions_sent"] == 1


def test_a_device_that_says_hello_again_every_few_frames_keeps_the_model_deciding(model, tmp_path):
    """Before: each HELLO with its seq back at 0 was taken for a reboot and reset the window, so a device that
    re-sends HELLO more often than a window fills got no model decision at all. A re-HELLO is not a reboot."""
    device = ScriptedDevice(tmp_path / "dev")
    run = LiveRun(model, device.link, no_data_ms=0)
    frames, burst = 5 * WINDOW, WINDOW - HOP  # a HELLO every 12 frames, a window is 16
    try:
        wait_for(lambda: device.read(0.02) is not None and device.of_type(Heartbeat), "the host's heartbeat")
        for i in range(frames):
            if i % burst == 0:
                device.enc.next_seq = 0
                device.send(hello_for())
            device.sensor([float(i + c) for c in range(len(CHANNELS))], 100_000 * i)
        expected = (frames - WINDOW) // HOP + 1
        wait_for(lambda: device.read(0.02) is not None and len(actions(device)) >= expected, "the ACTIONs")
        summary = run.finish()
    finally:
        device.close()
    assert summary["model_decisions"] == expected and summary["source"]["device_restarts"] == 0
    assert summary["source"]["hellos"] == -(-frames // burst)
