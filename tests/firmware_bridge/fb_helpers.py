"""Helpers for the firmware_bridge tests: building the C code, small logs, a scripted host.

A plain module, not a conftest.py: tests/conftest.py is imported by name (``from conftest
import ...``) elsewhere in the suite, and a second conftest module would shadow it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import pytest
import serial

from edge_infer.decide.reasons import Reason
from firmware_bridge.protocol import Action, ActionSource, FrameEncoder, LinkFrame, Sensor
from firmware_bridge.stream import FrameDecoder

ROOT = Path(__file__).resolve().parents[2]
C_DIR = ROOT / "firmware_bridge" / "c"
C_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-g"]
CHANNELS = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
#: Only a safety net against hangs: no assertion depends on how fast anything runs.
TIMEOUT = 30.0


@dataclass(frozen=True)
class HilBoard:
    """The real board named by the environment (scripts/flash_board.md, "Check the board: the HIL suite")."""

    port: str
    baud: int
    channels: List[str]
    settle: float


def hil_board() -> Optional[HilBoard]:
    """``EDGE_INFER_HIL_PORT`` (and ``_BAUD``, ``_CHANNELS``, ``_SETTLE``), or None: no board, its tests skip."""
    port = os.environ.get("EDGE_INFER_HIL_PORT")
    if not port:
        return None
    text = os.environ.get("EDGE_INFER_HIL_CHANNELS", "")
    channels = [c.strip() for c in text.split(",")] if text.strip() else list(CHANNELS)
    return HilBoard(port, int(os.environ.get("EDGE_INFER_HIL_BAUD", "115200")), channels,
                    float(os.environ.get("EDGE_INFER_HIL_SETTLE", "2.0")))


def build_c(out: Path, *sources: Path, flags: List[str] = C_FLAGS, compiler: str = "gcc") -> Path:
    """Compile with the system compiler; fail with its output if it does not build."""
    exe = shutil.which(compiler)
    if exe is None:
        pytest.skip(f"{compiler} is not installed")
    proc = subprocess.run([exe, *flags, "-I", str(C_DIR), "-o", str(out), *map(str, sources)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{compiler} failed:\n{proc.stderr}"
    return out


@pytest.fixture(scope="session")
def c_build_dir(tmp_path_factory) -> Path:
    """Where the C programs are built, once per session (import this fixture into a test module to use it)."""
    return tmp_path_factory.mktemp("c_build")


@pytest.fixture(scope="session")
def sim_device_exe(c_build_dir) -> Path:
    return build_c(c_build_dir / "sim_device", C_DIR / "sim_device.c", C_DIR / "edge_link.c")


def log_values(rows: int, n_channels: int = len(CHANNELS)) -> List[tuple]:
    """The values write_log() writes: multiples of 1/64, so exact in float32."""
    return [tuple(((i * 7 + c * 13) % 97 - 48) / 64.0 for c in range(n_channels)) for i in range(rows)]


def write_log(path: Path, rows: int, channels=CHANNELS, rate_hz: float = 10.0) -> Path:
    """A small log in the bundled log's format (t,<channels>,label)."""
    lines = ["t," + ",".join(channels) + ",label"]
    for i, values in enumerate(log_values(rows, len(channels))):
        label = "walk" if i % 20 < 10 else "rest"
        lines.append(f"{i / rate_hz:.3f}," + ",".join(repr(v) for v in values) + f",{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def row_of(sensor: Sensor, rate_hz: float = 10.0) -> int:
    """The log row a SENSOR frame carries (the device's clock is the log's t)."""
    return round(sensor.t_us * rate_hz / 1e6)


def start_sim(log: Path, link: Path, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "firmware_bridge.sim", str(log), "--link", str(link), *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: os.path.islink(link) or proc.poll() is not None, "the sim's link to appear")
    assert proc.poll() is None, proc.communicate()
    return proc


def wait_for(cond: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> dict:
    """Wait for a sim to exit on its own; return its JSON summary."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    return json.loads(lines[0])


class Host:
    """A scripted host on a serial port: decodes everything, answers SENSOR frames with ACTIONs."""

    def __init__(self, port: str, answer: Optional[Callable[[Sensor], Optional[bytes]]] = None) -> None:
        self.ser = serial.Serial(port, timeout=0.05)
        self.dec = FrameDecoder()
        self.enc = FrameEncoder()
        self.frames: List[LinkFrame] = []
        self.actions_sent = 0
        self.answer = answer or self.default_answer

    def default_answer(self, sensor: Sensor) -> bytes:
        """Odd seqs: a model decision; even: a fallback (deadline)."""
        if sensor.seq % 2:
            return self.enc.action(1, source=ActionSource.MODEL, answers_seq=sensor.seq, name="walk")
        return self.enc.action(-1, source=ActionSource.FALLBACK, reason=Reason.DEADLINE, answers_seq=sensor.seq)

    def send(self, data: bytes) -> None:
        # write() returns once the bytes are in the pty; no flush(): its tcdrain() fails with EIO
        # if the device has already hung up, which a finished sim does.
        self.ser.write(data)

    def pump(self) -> List[LinkFrame]:
        """Read once (up to 50 ms); answer the SENSOR frames; return the new frames."""
        new = self.dec.feed(self.ser.read(4096))
        for frame in new:
            if isinstance(frame, Sensor):
                reply = self.answer(frame)
                if reply:
                    self.send(reply)
                    self.actions_sent += 1
        self.frames += new
        return new

    def run_until(self, cond: Callable[["Host"], bool], what: str, timeout: float = TIMEOUT) -> None:
        end = time.monotonic() + timeout
        while not cond(self):
            assert time.monotonic() < end, f"timed out waiting for {what}; got {len(self.frames)} frames"
            self.pump()

    def of_type(self, cls: type) -> list:
        return [f for f in self.frames if isinstance(f, cls)]

    def close(self) -> None:
        self.ser.close()


__all__ = ["Action", "build_c", "finish", "hil_board", "HilBoard", "Host", "log_values", "row_of", "start_sim",
           "wait_for", "write_log"]
