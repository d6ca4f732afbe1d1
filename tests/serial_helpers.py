"""Helpers for the serial source and in-the-loop tests: a model for the virtual device's channels, a device
played by the test on a real pty, the C device on a pty, a fault relay, and ``edge-infer run`` as a process.

The firmware_bridge helpers (``fb_helpers``: logs, the sims, building the C code) are reused, not copied.
Every wait here is a safety net against hangs; no assertion depends on how fast anything runs.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import tty
from pathlib import Path
from typing import Callable, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent / "firmware_bridge"))

from fb_helpers import CHANNELS, ROOT, TIMEOUT, wait_for  # noqa: E402

from edge_infer.deadline.options import DeadlineOptions  # noqa: E402
from edge_infer.runtime import Runtime  # noqa: E402
from edge_infer.sinks.collect import CollectSink  # noqa: E402
from edge_infer.sinks.device import attach_device  # noqa: E402
from edge_infer.sinks.jsonl import read_decisions  # noqa: E402
from edge_infer.sources.serial_link import SerialSource  # noqa: E402
from edge_infer.testing.tflite_builder import dense_model, write_model  # noqa: E402
from firmware_bridge.faults import FaultInjector  # noqa: E402
from firmware_bridge.protocol import FrameEncoder, Hello, LinkFrame, SampleType, Sensor, schema_hash  # noqa: E402
from firmware_bridge.stream import FrameDecoder  # noqa: E402

LABELS = ("rest", "walk", "run")
WINDOW, HOP = 16, 4


def write_spec(directory: Path, channels: Sequence[str] = CHANNELS, fallback: str = "idle",
               name: str = "serial-test") -> Path:
    """A real int8 model (window 16, hop 4, 3 labels) for ``channels`` at 10 Hz, and its spec; returns the spec."""
    model = write_model(directory / f"{name}.tflite", dense_model(WINDOW, len(channels), len(LABELS), seed=3))
    spec = directory / f"{name}.toml"
    spec.write_text(f"""[model]
file = "{model.name}"
name = "{name}"
[input]
channels = {json.dumps(list(channels))}
window = {WINDOW}
hop = {HOP}
sample_rate_hz = 10
[output]
kind = "classes"
labels = {json.dumps(list(LABELS))}
[deadline]
budget_ms = 5000
[fallback]
action = "{fallback}"
""")
    return spec


def hello_for(channels: Sequence[str] = CHANNELS, sample_type: SampleType = SampleType.FLOAT32,
              scales: Optional[Sequence[float]] = None, safe_timeout_ms: int = 500) -> Hello:
    return Hello(fw_version=(1, 2, 3), sample_type=sample_type, sample_rate_millihz=10000,
                 schema_hash=schema_hash(channels, sample_type), scales=tuple(scales or [1.0] * len(channels)),
                 safe_timeout_ms=safe_timeout_ms, channels=tuple(channels))


class ScriptedDevice:
    """A device played by the test, step by step, on the master end of a real pty published at ``link``."""

    def __init__(self, link: Path):
        self.link = link
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.ttyname(self.slave), link)
        self.t_us = 0
        self.enc = FrameEncoder(clock_us=lambda: self.t_us)
        self.dec = FrameDecoder()
        self.received: List[LinkFrame] = []

    def send(self, frame: LinkFrame, flags: int = 0) -> None:
        """Stamp ``frame`` with the next seq and the device clock, and write it."""
        os.write(self.master, self.enc.encode(frame, flags))

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def sensor(self, values: Sequence[float], t_us: int, sample_type: SampleType = SampleType.FLOAT32) -> int:
        """Send one SENSOR frame at device time ``t_us``; return its seq."""
        self.t_us = t_us
        seq = self.enc.next_seq
        self.send(Sensor(sample_type=sample_type, values=tuple(values)))
        return seq

    def read(self, timeout: float = 0.0) -> List[LinkFrame]:
        """What the host sent, decoded (waits up to ``timeout`` for the first bytes)."""
        new: List[LinkFrame] = []
        if select.select([self.master], [], [], timeout)[0]:
            try:
                new = self.dec.feed(os.read(self.master, 4096))
            except (BlockingIOError, OSError):
                new = []
        self.received += new
        return new

    def of_type(self, cls: type) -> list:
        return [f for f in self.received if isinstance(f, cls)]

    def unplug(self) -> None:
        """Close both ends and remove the link: the host's reads fail as when a cable is pulled."""
        if os.path.lexists(self.link) and os.readlink(self.link) == os.ttyname(self.slave):
            os.unlink(self.link)
        os.close(self.master)
        os.close(self.slave)
        self.master = self.slave = -1

    def close(self) -> None:
        if self.master >= 0:
            self.unplug()


def pump_until(source, device: ScriptedDevice, cond: Callable[[list], bool], what: str,
               timeout: float = TIMEOUT) -> list:
    """Drive a SerialSource (``recv``) and read what the host sent until ``cond(frames)``; return the frames."""
    frames: list = []

    def step() -> bool:
        frame = source.recv(0.02)
        while frame is not None:  # take what is already decoded before the next wait
            frames.append(frame)
            frame = source.recv(0)
        if device.master >= 0:
            device.read()
        return cond(frames)

    wait_for(step, what, timeout)
    return frames


class CDevice:
    """``sim_device`` (the C reference in a POSIX harness) talking on a pty whose other end is at ``link``.

    The device's stdin and stdout are the pty's master; the test keeps the
    slave open too, so the device's reads never fail while no host has the
    port open. With ``faults`` its bytes reach the host through a
    :class:`FaultRelay` (a noisy line) instead.
    """

    def __init__(self, exe: Path, log: Path, link: Path, *args: str, faults: Optional[FaultInjector] = None):
        self.relay = FaultRelay(link, faults) if faults is not None else None
        self._fds: List[int] = []
        if self.relay is not None:
            device_fd = self.relay.device_fd
        else:
            device_fd, slave = os.openpty()
            tty.setraw(slave)
            os.symlink(os.ttyname(slave), link)
            self._fds = [device_fd, slave]
        self.proc = subprocess.Popen([str(exe), str(log), *args], stdin=device_fd, stdout=device_fd,
                                     stderr=subprocess.PIPE, text=True)

    def summary(self) -> dict:
        """Stop the device (SIGTERM) and return its JSON summary (stderr, in its stdio mode).

        What the host wrote last is first let through the relay; the device reads what is pending on its
        input before it answers the signal.
        """
        if self.relay is not None:
            self.relay.wait_idle()
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=TIMEOUT)
        assert self.proc.returncode == 0, err
        return json.loads(err.strip().splitlines()[-1])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        if self.relay is not None:
            self.relay.close()
        for fd in self._fds:
            os.close(fd)


class FaultRelay:
    """A noisy line between two ptys: device -> host bytes are damaged by ``faults``, host -> device bytes pass.

    The device talks on ``device_fd`` (the slave of one pty); the host opens the slave of the other, published
    at ``link``. A thread copies between the two masters; bytes that find no room are lost, as on a UART
    nobody reads.
    """

    def __init__(self, link: Path, faults: FaultInjector):
        self.faults = faults
        self._device_master, self.device_fd = os.openpty()
        self._host_master, self._host_slave = os.openpty()
        for fd in (self.device_fd, self._host_slave):
            tty.setraw(fd)
        for fd in (self._device_master, self._host_master):
            os.set_blocking(fd, False)
        os.symlink(os.ttyname(self._host_slave), link)
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ends = {self._device_master: self._host_master, self._host_master: self._device_master}
        while not self._stop.is_set():
            self._idle.clear()
            ready = select.select(list(ends), [], [], 0.05)[0]
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                    os.write(ends[fd], self.faults.apply(data) if fd == self._device_master else data)
                except (BlockingIOError, OSError):
                    pass  # no room (the host is not reading) or nothing after all: the bytes are lost
            if not ready:
                self._idle.set()  # a whole select period with nothing to copy either way

    def wait_idle(self) -> None:
        """Until nothing is left to copy (the host's last bytes have reached the device)."""
        self._idle.clear()
        assert self._idle.wait(TIMEOUT), "the relay never went idle"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        for fd in (self._device_master, self.device_fd, self._host_master, self._host_slave):
            os.close(fd)


def seeded_faults(seed: int, corrupt: float = 0.0, drop: float = 0.0, garbage: float = 0.0) -> FaultInjector:
    return FaultInjector(random.Random(seed), corrupt, drop, garbage)


class LiveRun:
    """The runtime on a :class:`SerialSource` in a background thread (inline model, no warm-up), watched by a
    :class:`CollectSink` that keeps every frame and decision. ``model`` is ``open_model``'s (spec, engine)."""

    def __init__(self, model, link: Path, channels: Sequence[str] = CHANNELS, **options):
        spec, engine = model
        self.source = SerialSource(str(link), channels=list(channels))
        self.collect = CollectSink(frames=True)
        self.runtime = Runtime(spec, engine, self.source, [self.collect],
                               options=DeadlineOptions(mode="inline", warmup=0, gc_control=False, **options))
        attach_device(self.runtime)
        self.stop = threading.Event()
        self.summary: Optional[dict] = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.summary = self.runtime.run(stop=self.stop)

    def model_decisions(self) -> int:
        return len(self.collect.fallback) - sum(self.collect.fallback)

    def finish(self) -> dict:
        """Stop the loop (the device gets the shutdown ACTION) and return the summary."""
        self.stop.set()
        self._thread.join(2 * TIMEOUT)
        assert self.summary is not None, "the runtime did not stop"
        return self.summary


class RuntimeProcess:
    """``python -m edge_infer run --source URI ...`` as a user runs it; decisions go to a JSON-lines file."""

    def __init__(self, uri: str, spec: Path, decisions: Path, *args: str):
        self.decisions = decisions
        self.stderr = ""
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_infer", "run", "--source", uri,
                                      "--model", str(spec), "--json", "--decisions", str(decisions), *args],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def records(self) -> List[dict]:
        if not self.decisions.exists():
            return []
        return read_decisions(self.decisions)  # a line being written is not JSON yet: skipped

    def wait_for(self, cond: Callable[[List[dict]], bool], what: str, timeout: float = 2 * TIMEOUT) -> None:
        wait_for(lambda: self.proc.poll() is not None or cond(self.records()), what, timeout)
        assert self.proc.poll() is None, f"edge-infer run ended early: {self.proc.communicate()}"

    def stop(self, sig: int = signal.SIGINT) -> dict:
        """Signal the run (or let a --duration run end), then return its JSON summary; checks stderr is clean."""
        if sig and self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.finish()

    def finish(self, timeout: float = 2 * TIMEOUT) -> dict:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        assert "Traceback" not in err, err
        self.stderr = err
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
