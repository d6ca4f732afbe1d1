"""Signed control commands: only thresholds and recordings, only with this device's key, never twice; the guard
applies new thresholds from the next window on."""

from __future__ import annotations

import hashlib
import hmac
import json

import numpy as np
import pytest
from replay_helpers import write_model, write_spec

from edge_infer.checks.guard import build_guard
from edge_infer.decide.decision import DecisionRule
from edge_infer.decide.reasons import Reason
from edge_infer.fleet.control import CommandVerifier, Refused, sign
from edge_infer.frame import Frame
from edge_infer.model.loader import open_model

KEY = b"k" * 32
NOW = 1_800_000_000.0


@pytest.fixture
def verifier(tmp_path):
    return CommandVerifier(KEY, "d1", tmp_path / "last-ts")


def body(**fields):
    return {"device": "d1", "ts": NOW, "id": "c1", **fields}


def test_a_signed_threshold_command_is_accepted(verifier):
    command = verifier.verify(sign(KEY, body(set={"min_confidence": 0.7, "ood_threshold": 6})), NOW)
    assert command.set == {"min_confidence": 0.7, "ood_threshold": 6.0} and command.id == "c1"
    start = verifier.verify(sign(KEY, body(ts=NOW + 1, recording="start", max_s=30)), NOW)
    assert start.recording == "start" and start.max_s == 30 and start.stream is None
    one = verifier.verify(sign(KEY, body(ts=NOW + 2, stream="serial:/dev/ttyACM1", set={"min_confidence": 0.5})), NOW)
    assert one.stream == "serial:/dev/ttyACM1" and one.describe()["stream"] == "serial:/dev/ttyACM1"


@pytest.mark.parametrize("payload, why", [
    (b"min_confidence=0", "not a signed command"),
    (b"{" + b" " * 5000 + b"}", "larger than any command"),
    (sign(b"x" * 32, body(set={"min_confidence": 0.1})), "bad signature"),
    (sign(KEY, body(set={"budget_ms": 1})), "not allowed: set budget_ms"),
    (sign(KEY, body(set={"min_confidence": 0.1}, fallback="go")), "not allowed: fallback"),
    (sign(KEY, body(device="d2", set={"min_confidence": 0.1})), "for device 'd2'"),
    (sign(KEY, body(ts=NOW - 1000, set={"min_confidence": 0.1})), "from this board's clock"),
    (sign(KEY, body(ts=NOW + 1000, set={"min_confidence": 0.1})), "from this board's clock"),
    (sign(KEY, body(set={"min_confidence": 1.5})), "must be in [0, 1]"),
    (sign(KEY, body(set={"ood_threshold": -1})), "greater than 0"),
    (sign(KEY, body(set={"min_confidence": 0.1}, recording="start")), "exactly one of"),
    (sign(KEY, body(recording="erase")), "start or stop"),
    (sign(KEY, body(recording="start", max_s=1e9)), "max_s"),
    (sign(KEY, body(stream=3, set={"min_confidence": 0.1})), "stream must be a stream's name"),
    (sign(KEY, body(stream="", recording="stop")), "stream must be a stream's name"),
])
def test_anything_else_is_refused(verifier, payload, why):
    with pytest.raises(Refused, match=why.replace("[", r"\[").replace("]", r"\]")):
        verifier.verify(payload, NOW)


def test_a_tampered_command_fails_its_signature(verifier):
    envelope = json.loads(sign(KEY, body(set={"min_confidence": 0.1})))
    envelope["command"] = envelope["command"].replace("0.1", "0.0")
    with pytest.raises(Refused, match="bad signature"):
        verifier.verify(json.dumps(envelope).encode(), NOW)


def test_a_command_is_not_taken_twice_even_after_a_restart(verifier, tmp_path):
    payload = sign(KEY, body(set={"min_confidence": 0.5}))
    verifier.verify(payload, NOW)
    with pytest.raises(Refused, match="replayed"):
        verifier.verify(payload, NOW)
    restarted = CommandVerifier(KEY, "d1", tmp_path / "last-ts")
    with pytest.raises(Refused, match="replayed"):
        restarted.verify(payload, NOW + 1)
    restarted.verify(sign(KEY, body(ts=NOW + 0.5, set={"min_confidence": 0.5})), NOW + 1)


def test_the_signature_is_over_the_exact_text(verifier):
    text = '{"device":"d1","ts":%r,"id":"c9","set":{"min_confidence":0.25}}' % NOW
    mac = hmac.new(KEY, text.encode(), hashlib.sha256).hexdigest()
    command = verifier.verify(json.dumps({"command": text, "hmac_sha256": mac.upper()}).encode(), NOW)
    assert command.set == {"min_confidence": 0.25}


def test_a_refusal_after_the_signature_names_the_command(verifier):
    with pytest.raises(Refused) as info:
        verifier.verify(sign(KEY, body(set={"budget_ms": 1})), NOW)
    assert info.value.command_id == "c1"
    with pytest.raises(Refused) as unsigned:
        verifier.verify(sign(b"y" * 32, body(set={"min_confidence": 0.1})), NOW)
    assert unsigned.value.command_id is None


def test_the_guard_applies_new_thresholds(tmp_path, bundled_spec):
    spec, _ = open_model(str(bundled_spec), None)
    rule = DecisionRule(spec)
    guard = build_guard(spec, rule)
    before = guard.thresholds()
    assert before["ood_threshold"] is not None
    guard.set_thresholds(min_confidence=0.9, ood_threshold=1e-6)
    assert guard.thresholds() == {"min_confidence": 0.9, "ood_threshold": 1e-6}
    assert rule.min_confidence == 0.9 or guard._min_confidence == 0.9
    assert build_guard(spec, DecisionRule(spec)).thresholds() == before  # the spec's values are untouched
    window = np.random.default_rng(0).normal(size=(spec.window, len(spec.channels))).astype(np.float32)
    for i in range(spec.window):
        guard.on_frame(Frame(seq=i, t=i * 0.1, recv_ns=i, values=window[i], label=None, device_seq=None))
    guard.check_window(window)
    assert guard.failed[Reason.OUT_OF_DISTRIBUTION] == 1  # the new threshold is in force for the next window


def test_a_model_without_an_ood_check_refuses_its_threshold(tmp_path):
    spec, _ = open_model(str(write_spec(tmp_path / "m.toml", write_model(tmp_path / "m.tflite", seed=1))), None)
    guard = build_guard(spec, DecisionRule(spec))
    with pytest.raises(ValueError, match="no OOD check"):
        guard.set_thresholds(ood_threshold=3.0)
    guard.set_thresholds(min_confidence=0.4)
    assert guard.thresholds() == {"min_confidence": 0.4, "ood_threshold": None}


def test_a_board_with_several_streams_changes_one_streams_thresholds_or_every_ones_all_or_nothing(tmp_path):
    from edge_infer.fleet.control import Command
    from edge_infer.fleet.streams import BoardStreams

    spec, _ = open_model(str(write_spec(tmp_path / "m.toml", write_model(tmp_path / "m.tflite", seed=1))))
    guards = {name: build_guard(spec, DecisionRule(spec)) for name in ("m1", "m2")}
    board = BoardStreams(guards, lambda: {}, [])
    assert list(board.targets(Command("c", NOW, set={"min_confidence": 0.5}))) == ["m1", "m2"]
    assert list(board.targets(Command("c", NOW, set={"min_confidence": 0.5}, stream="m2"))) == ["m2"]
    with pytest.raises(Refused, match="no stream 'm3' on this board"):
        board.targets(Command("c", NOW, set={"min_confidence": 0.5}, stream="m3"))
    with pytest.raises(Refused, match="stream 'm1' has no ood_threshold"):  # (this model has no [ood])
        board.targets(Command("c", NOW, set={"min_confidence": 0.5, "ood_threshold": 3.0}))
    with pytest.raises(Refused, match="a recording is of one, name it"):
        board.recording_stream(Command("c", NOW, recording="start"))
    assert board.recording_stream(Command("c", NOW, recording="start", stream="m1")) == "m1"
