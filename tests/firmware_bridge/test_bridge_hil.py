"""Hardware-in-the-loop checks of an edge-link device: a real board, or the virtual one.

With a board flashed (scripts/flash_board.md) and plugged in:

    EDGE_INFER_HIL_PORT=/dev/serial/by-id/usb-Arduino... python -m pytest tests/firmware_bridge/test_bridge_hil.py

optional: EDGE_INFER_HIL_BAUD (default 115200), EDGE_INFER_HIL_CHANNELS (the
model's channel names, comma-separated; default the IMU's six),
EDGE_INFER_HIL_SETTLE (seconds to wait after opening the port, default 2: an
Arduino Uno resets when its port opens). Without
EDGE_INFER_HIL_PORT the board test is skipped, and the same checks run
against ``python -m firmware_bridge.sim`` so that they stay correct.

The checks are about behaviour, not speed: every wait is a generous safety
net that ends as soon as the expected frame arrives.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional

import pytest
import serial
from fb_helpers import CHANNELS, finish, hil_board, start_sim, write_log

from firmware_bridge.protocol import (
    SAFE_ACTION,
    ActionSource,
    Flags,
    FrameEncoder,
    Hello,
    LinkFrame,
    Sensor,
    check_hello,
)
from firmware_bridge.stream import FrameDecoder

BOOT_TIMEOUT = 10.0  # an Arduino resets when the port opens and waits ~2 s in its bootloader
HEARTBEAT_S = 0.1


class Link:
    """The host end: reads frames, keeps the device alive with heartbeats unless told to be silent."""

    def __init__(self, port: str, baud: int) -> None:
        self.ser = serial.Serial(port, baud, timeout=0.02)
        self.dec = FrameDecoder()
        self.enc = FrameEncoder()
        self.silent = False
        self._last_tx = 0.0

    def send(self, data: bytes) -> None:
        self.ser.write(data)
        self._last_tx = time.monotonic()

    def next_frame(self, want: Callable[[LinkFrame], bool], what: str, timeout: float,
                   on_sensor: Optional[Callable[[Sensor], None]] = None) -> LinkFrame:
        """The next frame ``want`` accepts; SENSOR frames on the way go to ``on_sensor``."""
        end = time.monotonic() + timeout
        pending: List[LinkFrame] = []
        while time.monotonic() < end:
            if not self.silent and time.monotonic() - self._last_tx > HEARTBEAT_S:
                self.send(self.enc.heartbeat())
            pending += self.dec.feed(self.ser.read(256))
            while pending:
                frame = pending.pop(0)
                if isinstance(frame, Sensor) and on_sensor:
                    on_sensor(frame)
                if want(frame):
                    return frame
        raise AssertionError(f"no {what} within {timeout:.0f} s (link counters: {self.dec.counters.as_dict()})")


def check_device(port: str, channels: List[str], baud: int = 115200, sensors: int = 10,
                 settle: float = 0.0) -> Dict[str, int]:
    """Run the behavioural checks against the device on ``port``; AssertionError names the first that fails.

    ``settle``: seconds to stay quiet after opening the port, for boards that reset on open and sit in
    their bootloader for a moment (an Uno's listens for a programmer for about a second).
    """
    link = Link(port, baud)
    time.sleep(settle)
    try:
        # 1. The host speaks first; the device must say HELLO, with the model's schema.
        hello = link.next_frame(lambda f: isinstance(f, Hello), "HELLO", BOOT_TIMEOUT)
        assert isinstance(hello, Hello)
        check_hello(hello, channels)
        silence = hello.safe_timeout_ms / 1000.0

        # 2. SENSOR frames that fit the HELLO; answering them takes the device out of its safe state.
        got: List[Sensor] = []

        def answer(sensor: Sensor) -> None:
            got.append(sensor)
            hello.physical_values(sensor)  # raises if the frame does not fit the HELLO
            link.send(link.enc.action(0, source=ActionSource.MODEL, answers_seq=sensor.seq, name="hil"))

        link.next_frame(lambda f: len(got) >= sensors, f"{sensors} SENSOR frames", BOOT_TIMEOUT, answer)
        link.next_frame(lambda f: isinstance(f, Sensor) and not f.flags & Flags.DEVICE_SAFE,
                        "a SENSOR frame without DEVICE_SAFE after model ACTIONs", 2.0 + silence, answer)
        stamps = [s.t_us for s in got]
        assert all((b - a) & 0xFFFFFFFF < 0x80000000 for a, b in zip(stamps, stamps[1:])), "t_us went backwards"

        # 3. Host silence: the device goes to its own safe state and says so.
        link.silent = True
        link.next_frame(lambda f: isinstance(f, Sensor) and f.flags & Flags.DEVICE_SAFE,
                        "DEVICE_SAFE after host silence", 2.0 + 4 * silence)

        # 4. The host comes back: HELLO again. A heartbeat alone does not end the safe state.
        link.silent = False
        link.next_frame(lambda f: isinstance(f, Hello), "a new HELLO when the host came back", 2.0 + silence)
        link.next_frame(lambda f: isinstance(f, Sensor), "a SENSOR frame after the HELLO", 2.0 + silence)
        flagged = link.next_frame(lambda f: isinstance(f, Sensor), "another SENSOR frame", 2.0 + silence)
        assert flagged.flags & Flags.DEVICE_SAFE, "the device left its safe state on a mere heartbeat"

        # 5. The safe action keeps it safe.
        link.send(link.enc.action(SAFE_ACTION, source=ActionSource.FALLBACK, reason=4, answers_seq=flagged.seq))
        after = link.next_frame(lambda f: isinstance(f, Sensor), "a SENSOR frame after ACTION -1", 2.0 + silence)
        after = link.next_frame(lambda f: isinstance(f, Sensor), "another SENSOR frame", 2.0 + silence)
        assert after.flags & Flags.DEVICE_SAFE, "the device left its safe state on the safe action"
        return link.dec.counters.as_dict()
    finally:
        link.ser.close()


@pytest.mark.skipif(hil_board() is None, reason="no board: set EDGE_INFER_HIL_PORT")
def test_board():
    board = hil_board()
    counters = check_device(board.port, board.channels, board.baud, settle=board.settle)
    assert counters["crc_errors"] + counters["cobs_errors"] <= 1  # at most the fragment caught at the join


def test_the_hil_checks_pass_against_the_virtual_device(tmp_path):
    log = write_log(tmp_path / "log.csv", 100)
    link = tmp_path / "dev"
    sim = start_sim(log, link, "--loop", "--speed", "2")
    try:
        counters = check_device(str(link), list(CHANNELS))
    finally:
        sim.terminate()
    summary = finish(sim)
    assert counters["crc_errors"] == 0 and counters["frames"] > 10
    assert summary["safe_entries"] >= 1 and summary["actions_safe"] == 1 and summary["hellos_sent"] >= 2


def test_the_hil_checks_fail_on_a_schema_mismatch(tmp_path):
    log = write_log(tmp_path / "log.csv", 20, channels=("a", "b"))
    link = tmp_path / "dev"
    sim = start_sim(log, link, "--loop")
    try:
        with pytest.raises(Exception, match="device schema does not match the model"):
            check_device(str(link), list(CHANNELS))
    finally:
        sim.terminate()
    finish(sim)
