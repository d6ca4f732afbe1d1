"""A virtual edge-link device: plays a recorded log over a pty, as a board would over USB.

    python -m firmware_bridge.sim LOG --link PATH [--speed FACTOR|max] [--sample-type float32|int16]
        [--corrupt RATE] [--drop RATE] [--garbage RATE] [--seed N]
        [--unplug-after S] [--unplug-for S] [--unplug-count N]
        [--duration S] [--linger S] [--wait-host] [--loop] [--safe-timeout-ms MS] [--link-key FILE]

The device publishes its pty at PATH (a symlink, replacing a stale one,
removed on exit), says HELLO, then sends one SENSOR frame per log row at the
log's pace (the ``t`` column divided by ``--speed``; ``max`` sends as fast as
the host reads), and reads the host's ACTION and HEARTBEAT frames. It
behaves like the reference firmware (``c/examples/arduino_imu``): it starts
in its safe state, leaves it on a model ACTION, returns to it on the safe
action or when the host is silent for the safe timeout, says HELLO again
when the host comes back after silence, and sends a HEARTBEAT when it has
sent nothing for 250 ms. Its clock (``t_us``) is the log's time since the
first row. With ``--wait-host`` it holds the log until the host has spoken.

With ``--link-key FILE`` the link is signed (PROTOCOL.md section 13), as
the reference firmware does it with a key: every frame goes out signed, only
host frames signed in the current session are acted on, the host's SESSION
offer begins a new session (the device goes safe, answers SESSION and HELLO),
and host silence ends the session.

Faults on demand, from a seeded RNG: bit flips and lost bytes on the way to
the host, bursts of noise, and unplugging: after ``--unplug-after`` seconds
of streaming the pty is closed (the host's reads fail as with a pulled
cable) and the link removed; ``--unplug-for`` seconds later a new pty
appears at the same path and the device boots again (seq from 0, HELLO).
The log pauses while the device is unplugged or waiting for the host.

On exit (end of log plus up to ``--linger`` seconds for the ACTIONs still
owed, ``--duration``, SIGINT or SIGTERM) it prints one JSON line to stdout:
frames and actions counted, action sources and reasons, faults injected,
unplugs, and the counters of its own decoder (``link``). ``actions_bad``
counts host frames that could not be used: rejected by the decoder, or an
ACTION answering a SENSOR seq this device never sent (since its last boot).
Bad arguments or an unreadable log: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import select
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, Set

import numpy as np

from edge_infer.decide.reasons import Reason
from edge_infer.errors import EdgeInferError, LogError
from edge_infer.io import read_log

from .auth import LinkAuth, Side
from .keys import load_key
from .faults import FaultInjector
from .protocol import (
    HELLO_FIXED,
    MAX_CHANNELS,
    MAX_PAYLOAD,
    MAX_SIGNED_PAYLOAD,
    SAFE_ACTION,
    Action,
    Flags,
    FrameEncoder,
    Heartbeat,
    Hello,
    LinkFrame,
    SampleType,
    Sensor,
    Session,
    schema_hash,
)
from .pty_link import PtyLink
from .stream import FrameDecoder

HEARTBEAT_S = 0.25  #: the device sends a HEARTBEAT after this long without sending anything
WRITE_WAIT_S = 1.0  #: how long a write waits for a host that is reading before bytes are dropped
FIRMWARE_VERSION = (0, 1, 0)


@dataclass
class SimConfig:
    speed: Optional[float]  #: None: as fast as the host reads
    sample_type: SampleType
    safe_timeout_ms: int
    unplug_after: Optional[float]
    unplug_for: float
    unplug_count: int
    duration: Optional[float]
    linger: float
    wait_host: bool
    loop: bool


class _Rows:
    """The log as the device sends it: wire-ready sample tuples, the HELLO that describes them."""

    def __init__(self, path: Path, sample_type: SampleType, max_payload: int = MAX_PAYLOAD) -> None:
        log = read_log(path)
        if len(log) == 0:
            raise LogError(f"log {path} has no usable rows")
        if len(log.channels) > MAX_CHANNELS:
            raise LogError(f"log {path} has {len(log.channels)} channels; the link carries at most {MAX_CHANNELS}")
        self.t = log.t - log.t[0]
        self.bad_rows = len(log.bad_rows)
        values = log.values.astype(np.float32)
        if sample_type == SampleType.INT16:
            finite = np.where(np.isfinite(values), np.abs(values), 0.0)
            peak = finite.max(axis=0)
            scales = np.where(peak > 0, peak / 32767.0, 1.0).astype(np.float32)
            raw = np.nan_to_num(values / scales, nan=0.0, posinf=32767.0, neginf=-32768.0)
            self.samples: List[tuple] = [tuple(r) for r in np.clip(np.rint(raw), -32768, 32767).astype(int).tolist()]
        else:
            scales = np.ones(len(log.channels), dtype=np.float32)
            self.samples = [tuple(r) for r in values.tolist()]
        steps = np.diff(self.t)
        period = float(np.median(steps)) if len(steps) else 0.0
        self.period = period if period > 0 else 0.1
        names = tuple(log.channels)
        fits = HELLO_FIXED.size + 4 * len(names) + 1 + len(",".join(names).encode("utf-8")) <= max_payload
        try:
            shash = schema_hash(names, sample_type)
        except ValueError as exc:
            raise LogError(f"log {path}: {exc}") from None
        self.hello = Hello(fw_version=FIRMWARE_VERSION, sample_type=sample_type,
                           sample_rate_millihz=round(1000.0 / period) if period > 0 else 0, schema_hash=shash,
                           scales=tuple(float(s) for s in scales), channels=names if fits else ())

    def __len__(self) -> int:
        return len(self.samples)


class VirtualDevice:
    """The device's behaviour over a :class:`PtyLink`; :meth:`run` returns the summary."""

    def __init__(self, rows: _Rows, link: PtyLink, faults: FaultInjector, cfg: SimConfig,
                 wake_fd: Optional[int] = None, auth: Optional[LinkAuth] = None) -> None:
        self.rows, self.link, self.faults, self.cfg = rows, link, faults, cfg
        self.auth = auth  #: the device's signing state (None: an unsigned link)
        self._session_pending = False
        self.hello = replace(rows.hello, safe_timeout_ms=cfg.safe_timeout_ms)
        self._wake_fd = wake_fd
        self.stop_requested = False
        self._end = "end_of_log"
        self._log_us = 0
        self._enc = FrameEncoder(clock_us=lambda: self._log_us)
        self._dec = FrameDecoder(auth=auth)
        self._host_present = False
        self._hello_pending = False
        self._safe = True
        self._last_host = self._last_tx = 0.0
        self._sent: Set[int] = set()
        self._owed: Set[int] = set()
        self._t_start = self._paused = 0.0
        self._unplug_due: Optional[float] = None
        self._duration_end: Optional[float] = None
        self._awaiting_host = False
        self._awaiting_since = 0.0
        self.n: Counter = Counter()
        self.sources: Counter = Counter()
        self.reasons: Counter = Counter()

    # --- the run ---------------------------------------------------------------------------

    def run(self) -> Dict[str, Any]:
        self._t_start = time.monotonic()
        if self.cfg.duration is not None:
            self._duration_end = self._t_start + self.cfg.duration
        self._boot()
        try:
            self._stream()
            if self._end == "end_of_log":
                until = time.monotonic() + self.cfg.linger
                self._serve(lambda: until, done=lambda: not self._owed)
            self._poll(0.0)
        finally:
            self.link.close()
        return self.summary()

    def _stream(self) -> None:
        t, base = self.rows.t, 0.0
        while True:
            for i, sample in enumerate(self.rows.samples):
                log_t = base + float(t[i])
                if not self._serve(lambda: self._wall_due(log_t)):
                    return
                self._send_sensor(sample, log_t)
            if not self.cfg.loop:
                return
            base += float(t[-1]) + self.rows.period

    def _wall_due(self, log_t: float) -> float:
        if self.cfg.speed is None:
            return 0.0
        return self._t_start + self._paused + log_t / self.cfg.speed

    def _serve(self, due: Callable[[], float], done: Callable[[], bool] = lambda: False) -> bool:
        """Serve the link until ``due()`` (a monotonic time) or ``done()``; False when the run must stop."""
        while True:
            if self.stop_requested:
                self._end = "signal"
                return False
            now = time.monotonic()
            if self._duration_end is not None and now >= self._duration_end:
                self._end = "duration"
                return False
            if self._unplug_due is not None and now >= self._unplug_due:
                if not self._unplug_and_replug():
                    return False
                continue
            self._housekeeping(now)
            if self._awaiting_host:
                if not self._host_present:
                    self._poll(self._next_timer() - now)
                    continue
                self._awaiting_host = False  # the log was paused while we waited
                self._paused += now - self._awaiting_since
                self._arm_unplug()
            if done():
                return True
            target = due()
            if now >= target:
                self._poll(0.0)
                return True
            self._poll(min(target, self._next_timer()) - now)

    def _housekeeping(self, now: float) -> None:
        if self._host_present and now - self._last_host > self.cfg.safe_timeout_ms / 1000.0:
            self._host_present = False
            self._enter_safe()
            if self.auth is not None:
                self.auth.end()  # frames held back from this session must never count later
        if self._session_pending:  # answer the host's offer with our nonce, then say who we are
            self._session_pending = False
            host, device = self.auth.session[:8], self.auth.session[8:]  # type: ignore[union-attr]
            self._send(self._enc.encode(Session(host_nonce=host, device_nonce=device), self._flags()))
            self._hello_pending = True
        if self._hello_pending:
            self._hello_pending = False
            self._send_hello()
        elif now - self._last_tx >= HEARTBEAT_S:
            self._send(self._enc.heartbeat(self._flags()))
            self.n["heartbeats_sent"] += 1

    def _next_timer(self) -> float:
        timers = [self._last_tx + HEARTBEAT_S]
        if self._host_present:
            timers.append(self._last_host + self.cfg.safe_timeout_ms / 1000.0 + 0.001)
        for t in (self._unplug_due, self._duration_end):
            if t is not None:
                timers.append(t)
        return min(timers)

    # --- boot, unplug ----------------------------------------------------------------------

    def _arm_unplug(self) -> None:
        more = self.cfg.unplug_after is not None and self.n["unplugs"] < self.cfg.unplug_count
        self._unplug_due = time.monotonic() + self.cfg.unplug_after if more else None  # type: ignore[operator]

    def _boot(self) -> None:
        """Power-up: a new pty, seq from 0, a lone delimiter, HELLO; streaming (and the unplug timer) start
        now, or with --wait-host once the host has spoken."""
        self.link.plug()
        self._awaiting_host, self._awaiting_since = self.cfg.wait_host, time.monotonic()
        if not self.cfg.wait_host:
            self._arm_unplug()
        if self.auth is not None:
            self.auth.end()  # a booting device has no session
        self._enc = FrameEncoder(clock_us=lambda: self._log_us, auth=self.auth)
        self._dec.reset()
        self._host_present = self._hello_pending = self._session_pending = False
        self._safe = True
        self.n["unanswered_before_unplug"] += len(self._owed)
        self._sent.clear()
        self._owed.clear()
        self._send(b"\x00")
        self._send_hello()

    def _unplug_and_replug(self) -> bool:
        began = time.monotonic()
        self.link.unplug()
        self.n["unplugs"] += 1
        back = began + self.cfg.unplug_for
        while time.monotonic() < back:
            if self.stop_requested or (self._duration_end is not None and time.monotonic() >= self._duration_end):
                self._end = "signal" if self.stop_requested else "duration"
                return False
            wait = back - time.monotonic()
            if self._duration_end is not None:
                wait = min(wait, self._duration_end - time.monotonic())
            self._wait_wake(max(wait, 0.0))
        self._paused += time.monotonic() - began
        self._unplug_due = None
        self._boot()
        return True

    # --- sending ---------------------------------------------------------------------------

    def _flags(self) -> int:
        return int(Flags.DEVICE_SAFE) if self._safe else 0

    def _send(self, wire: bytes) -> None:
        data = self.faults.apply(wire)
        unsent = self.link.write(data, WRITE_WAIT_S if self._host_present else 0.0, self._on_input)
        self.n["bytes_sent"] += len(data) - unsent
        self.n["bytes_overrun"] += unsent
        self._last_tx = time.monotonic()

    def _send_hello(self) -> None:
        self._send(self._enc.encode(self.hello, self._flags()))
        self.n["hellos_sent"] += 1

    def _send_sensor(self, sample: tuple, log_t: float) -> None:
        self._log_us = int(round(log_t * 1e6)) & 0xFFFFFFFF
        seq = self._enc.next_seq
        self._send(self._enc.encode(Sensor(sample_type=self.hello.sample_type, values=sample), self._flags()))
        self._sent.add(seq)
        self._owed.add(seq)
        self.n["frames_sent"] += 1

    def _enter_safe(self) -> None:
        if not self._safe:
            self.n["safe_entries"] += 1
        self._safe = True

    # --- receiving -------------------------------------------------------------------------

    def _poll(self, timeout: float) -> None:
        fds = [fd for fd in (self.link.master, self._wake_fd) if fd is not None]
        try:
            readable, _, _ = select.select(fds, [], [], max(timeout, 0.0))
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for safety
            return
        if self._wake_fd is not None and self._wake_fd in readable:
            _drain(self._wake_fd)
        while self.link.master is not None and self.link.master in readable:
            chunk = self.link.read()
            if not chunk:
                break
            self._on_input(chunk)

    def _wait_wake(self, timeout: float) -> None:
        fds = [self._wake_fd] if self._wake_fd is not None else []
        readable, _, _ = select.select(fds, [], [], timeout)
        if readable:
            _drain(self._wake_fd)  # type: ignore[arg-type]

    def _on_input(self, data: bytes) -> None:
        for frame in self._dec.feed(data):
            self._on_frame(frame)

    def _on_frame(self, frame: LinkFrame) -> None:
        if isinstance(frame, Session) and self.auth is not None:  # the decoder began a session: start it safe
            self._enter_safe()
            self._host_present, self._last_host = True, time.monotonic()
            self._session_pending, self._hello_pending = True, False
            return
        if not self._host_present:  # the host (re)appeared: tell it who we are, from the main loop
            self._host_present = True
            self._hello_pending = True
        self._last_host = time.monotonic()
        if isinstance(frame, Heartbeat):
            self.n["heartbeats_received"] += 1
        elif isinstance(frame, Action):
            self._on_action(frame)
        else:
            self.n["other_received"] += 1

    def _on_action(self, action: Action) -> None:
        self.n["actions_received"] += 1
        if action.action == SAFE_ACTION:  # "go safe" is obeyed whatever frame it answers (PROTOCOL.md 7)
            self._enter_safe()
        if action.answers_seq not in self._sent:
            self.n["actions_unknown_seq"] += 1
            return
        self._owed.discard(action.answers_seq)
        self.sources[action.source.name.lower()] += 1
        reason = action.reason
        self.reasons[reason.code if isinstance(reason, Reason) else str(reason)] += 1
        if action.action == SAFE_ACTION:
            self.n["actions_safe"] += 1
        else:
            self._safe = False

    # --- the summary -----------------------------------------------------------------------

    def summary(self) -> Dict[str, Any]:
        n, link = self.n, self._dec.counters
        return {
            "frames_sent": n["frames_sent"],
            "actions_received": n["actions_received"],
            "actions_bad": n["actions_unknown_seq"] + link.rejected,
            "actions_unanswered": n["unanswered_before_unplug"] + len(self._owed),
            "actions_safe": n["actions_safe"],
            "heartbeats_received": n["heartbeats_received"],
            "other_received": n["other_received"],
            "action_sources": {"model": self.sources["model"], "fallback": self.sources["fallback"]},
            "action_reasons": dict(sorted(self.reasons.items())),
            "hellos_sent": n["hellos_sent"],
            "heartbeats_sent": n["heartbeats_sent"],
            "safe_entries": n["safe_entries"],
            "unplugs": n["unplugs"],
            "bytes_sent": n["bytes_sent"],
            "bytes_overrun": n["bytes_overrun"],
            **self.faults.counts.as_dict(),
            "log_rows": len(self.rows),
            "bad_rows": self.rows.bad_rows,
            "sessions": self.auth.sessions if self.auth is not None else 0,
            "end": self._end,
            "link": link.as_dict(),
        }


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, InterruptedError):
        pass


# --- command line ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Reports a usage error as one line (via EdgeInferError), not usage text plus a line."""

    def error(self, message: str) -> NoReturn:
        raise EdgeInferError(message)


def speed(text: str) -> Optional[float]:
    if text == "max":
        return None
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise ValueError
    return value


def seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or not math.isfinite(value):
        raise ValueError
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError
    return value


def _args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = _Parser(prog="python -m firmware_bridge.sim", description="A virtual edge-link device on a pty.")
    p.add_argument("log", type=Path, help="recorded CSV log: t,<channels...>[,label]")
    p.add_argument("--link", type=Path, required=True, metavar="PATH", help="path of the symlink to the device (the pty slave)")
    p.add_argument("--speed", type=speed, default=1.0, metavar="FACTOR", help="playback speed factor, or 'max' (default 1)")
    p.add_argument("--sample-type", choices=[t.label for t in SampleType], default="float32",
                   help="how SENSOR frames carry the samples (default float32; int16 scales each channel)")
    p.add_argument("--corrupt", type=probability, default=0.0, metavar="RATE", help="per byte: probability of a bit flip")
    p.add_argument("--drop", type=probability, default=0.0, metavar="RATE", help="per byte: probability it is lost")
    p.add_argument("--garbage", type=probability, default=0.0, metavar="RATE", help="per frame: probability of a noise burst before it")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the fault RNG (default 0)")
    p.add_argument("--unplug-after", type=seconds, metavar="S",
                   help="unplug after streaming for this many seconds (since boot, or since the host spoke)")
    p.add_argument("--unplug-for", type=seconds, default=1.0, metavar="S", help="seconds to stay unplugged (default 1)")
    p.add_argument("--unplug-count", type=int, default=1, metavar="N", help="how many times to unplug (default 1)")
    p.add_argument("--duration", type=seconds, metavar="S", help="stop after this many seconds")
    p.add_argument("--linger", type=seconds, default=1.0, metavar="S",
                   help="after the log, wait up to this long for owed ACTIONs (default 1)")
    p.add_argument("--wait-host", action="store_true",
                   help="after each boot, stream only once the host has sent a frame (the log waits)")
    p.add_argument("--loop", action="store_true", help="replay the log until --duration or a signal")
    p.add_argument("--safe-timeout-ms", type=int, default=500, metavar="MS", help="host silence before the device goes safe")
    p.add_argument("--link-key", type=Path, metavar="FILE",
                   help="sign the link with this key file (32 raw bytes or 64 hex digits, mode 0600)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = _args(argv)
        if not 0 < args.safe_timeout_ms <= 0xFFFF:
            raise EdgeInferError(f"--safe-timeout-ms must be 1..65535, not {args.safe_timeout_ms}")
        sample_type = SampleType[args.sample_type.upper()]
        auth = LinkAuth(load_key(args.link_key), Side.DEVICE) if args.link_key is not None else None
        rows = _Rows(args.log, sample_type, MAX_SIGNED_PAYLOAD if auth is not None else MAX_PAYLOAD)
        faults = FaultInjector(random.Random(args.seed), args.corrupt, args.drop, args.garbage)
        link = PtyLink(args.link)
    except EdgeInferError as exc:
        print(f"sim: error: {exc}", file=sys.stderr)
        return 2
    cfg = SimConfig(speed=args.speed, sample_type=sample_type, safe_timeout_ms=args.safe_timeout_ms,
                    unplug_after=args.unplug_after, unplug_for=args.unplug_for, unplug_count=args.unplug_count,
                    duration=args.duration, linger=args.linger, wait_host=args.wait_host, loop=args.loop)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    device = VirtualDevice(rows, link, faults, cfg, wake_fd=wake_r, auth=auth)

    def on_signal(signum: int, frame: Any) -> None:
        device.stop_requested = True

    signal.set_wakeup_fd(wake_w)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        summary = device.run()
    except OSError as exc:
        print(f"sim: error: {exc}", file=sys.stderr)
        link.close()
        return 1
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
