"""The serial source: a sensor board's SENSOR frames, over the edge-link protocol, as runtime frames.

The protocol is ``firmware_bridge/PROTOCOL.md``; this module is the host's
side of its section 7 ("Link behaviour") on top of a :class:`SerialPort`
that reopens itself after an unplug:

* After every open it sends a delimiter and a HEARTBEAT (opening the port
  discarded what the device had sent; a host that speaks makes the device say
  HELLO) and ignores SENSOR frames until a HELLO has passed the schema check
  against the model's channels. A mismatch is fatal: :class:`SchemaMismatch`,
  one line naming both sides, and the device never gets an ACTION.
* A device answers HELLO only when the host *comes back* after a silence. If
  no HELLO arrives within ``HELLO_WAIT_S`` of speaking (it was lost to noise,
  or the previous host left a moment ago), the source stays quiet long enough
  for the device to time out, then speaks again: 0.75 s, doubling up to 66 s
  (the longest safe timeout a HELLO can announce).
* While connected it sends a HEARTBEAT whenever nothing else went out for a
  quarter of the device's safe timeout (HELLO carries it; clamped by
  :func:`~firmware_bridge.protocol.heartbeat_interval_s`), so the device
  stays out of its safe state between decisions.
* With a link key (``link_key``, PROTOCOL.md section 13) it speaks with a
  signed SESSION offer instead of a HEARTBEAT, takes only frames signed in
  the session the device answered, signs everything it sends, and offers a
  new session when the device's frames show it lost the old one. Frames that
  are unsigned, signed with another key or session, or replayed are dropped
  and counted; there is no unsigned fallback.
* HELLO's sample rate is checked against the model's (a mismatch is refused,
  like a schema mismatch), and the device's ``t_us`` against HELLO's rate (a
  mismatch is counted in ``rate_mismatch`` and logged).
* SENSOR values are multiplied by the HELLO's scales into float32 physical
  values. The schema hash covers the channel names in order, so the
  device's order is the model's order.
* When the port disappears, ``recv`` keeps returning None on time, so the
  loop keeps deciding (``no_data``), and the port is reopened with backoff.

A reconnect, or a device clock that does not continue across a HELLO (it
went back, or moved by much more than the host's clock: the device
rebooted), starts a new *epoch*; a HELLO alone does not (a device may say
HELLO again at any time, PROTOCOL.md 7.2): frames on either side are not
contiguous, so ``restart_listeners`` are told (the runtime resets its window:
the first decision after a reconnect needs a whole window of fresh frames),
device sequence numbers of older frames are forgotten (no ACTION answers a
frame of an earlier boot), and ``Frame.t`` carries on from the last frame
plus the host time in between, so it never goes back across the outage.
Within an epoch ``Frame.t`` is the device's clock (``t_us``, unwrapped).

The decision sink (:mod:`edge_infer.sinks.device`) writes ACTION frames
through :meth:`SerialSource.send_action`, so heartbeats and actions share
one sequence numbering, as the protocol requires.

The runtime reads this source in a thread of its own (``live``:
:mod:`edge_infer.sources.arrival`), so frames are stamped when they arrive
(and dated by the device's ``t_us``, mapped onto the host clock, when the
reader itself was late: :class:`~edge_infer.sources.arrival.DeviceClock`),
while ACTIONs are written from the loop's thread: ``_tx_lock`` keeps an
ACTION and a HEARTBEAT from taking sequence numbers in one order and going
out in the other.
"""

from __future__ import annotations

import collections
import errno
import logging
import math
import os
import threading
import time
from array import array
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Union


from firmware_bridge.auth import LinkAuth, Side
from firmware_bridge.protocol import (
    Action,
    ActionSource,
    ErrorReport,
    FrameEncoder,
    Heartbeat,
    Hello,
    LinkFrame,
    SchemaMismatch,
    Sensor,
    Session,
    check_hello,
    check_sample_rate,
    heartbeat_interval_s,
)
from firmware_bridge.stream import FrameDecoder

from ..deadline.backstop import native_type as backstop_native
from ..deadline.clock import Clock
from ..decide.reasons import Reason
from ..errors import SourceError
from ..frame import Frame
from .arrival import DeviceClock
from .base import Source
from .link_backstop import ArmedAction, Fired, LinkBackstop
from .serial_port import SerialPort
from .uri import DEFAULT_BAUD

log = logging.getLogger(__name__)

HELLO_WAIT_S = 1.0  #: how long to wait for a HELLO after speaking before going quiet
QUIET_FIRST_S = 0.75  #: the first quiet period: longer than the default 500 ms safe timeout
QUIET_MAX_S = 66.0  #: longer than the largest safe timeout a HELLO can announce (65.535 s)
#: Across a HELLO, the device clock must move like the host's, within this (plus 5 %), or it rebooted.
CLOCK_SLACK_S = 1.0
RATE_BLOCK = 32  #: SENSOR intervals per sample-rate check
RATE_TOLERANCE = 0.1  #: the median interval may differ from HELLO's period by this fraction
#: Recent frames whose device sequence numbers are kept, for the ACTION that answers them.
SEQ_RING = 256


class SerialSource(Source):
    """SENSOR frames from the edge-link device at ``path``; ACTION frames back through :meth:`send_action`.

    ``channels``: the model's channel names; the device's HELLO must carry
    their schema hash. ``None`` accepts the first device schema that has
    ``channel_count`` channels (any count if that is None too), and takes
    the channel names from its HELLO: for a bare model, or for recording
    without a model.
    """

    live = True

    def __init__(self, path: str, baud: int = DEFAULT_BAUD, channels: Optional[Sequence[str]] = None,
                 channel_count: Optional[int] = None, *, clock: Optional[Clock] = None,
                 port: Optional[SerialPort] = None, name: Optional[str] = None,
                 sample_rate_hz: Optional[float] = None, link_key: Optional[bytes] = None):
        self.port = port or SerialPort(path, baud)
        self._rate_hz = sample_rate_hz  # the model's; HELLO's must agree
        #: The host's signing state (None: an unsigned link); see PROTOCOL.md section 13.
        self.auth = LinkAuth(link_key, Side.HOST) if link_key is not None else None
        self.name = name or f"serial:{path}"
        self._expected = list(channels) if channels is not None else None
        self._count = len(channels) if channels is not None else channel_count
        #: The model's names; without them, ch0.. for a known count, else the device's (from its first HELLO).
        self.channels: List[str] = (list(channels) if channels is not None
                                    else [f"ch{i}" for i in range(channel_count or 0)])
        self._clock = clock or Clock()
        self._decoder = FrameDecoder(auth=self.auth)
        self._encoder = FrameEncoder(auth=self.auth)
        self._pending: Deque[Frame] = collections.deque()
        self._tx_lock = threading.Lock()  # encode and write one frame at a time (module docstring)
        self._backstop: Optional[LinkBackstop] = None  # enable_backstop()
        #: Frames whose fallback the backstop sent, and when, until their decision asks (backstop_sent).
        self._backstop_sent: Dict[int, int] = {}
        self._shut_down = False  # the shutdown ACTION went out
        #: The port's connection whose descriptor the backstop holds a copy of (None: it holds none).
        self._backstop_connection: Any = None
        self.hello: Optional[Hello] = None  #: the last HELLO accepted (recordings keep it)
        #: Called with each accepted HELLO and its receipt time (the loop clock's ns).
        self.hello_listeners: List[Callable[[Hello, int], None]] = []
        #: Called when the sample stream restarts (reconnect, device reboot): older frames are not contiguous.
        self.restart_listeners: List[Callable[[], None]] = []
        self._ready = False  # a HELLO was accepted since the port opened
        self._greeted = False  # a HELLO arrived in this connection (a later one may be a reboot)
        self._need_delimiter = True
        self._last_tx = 0.0
        self._heartbeat_s = heartbeat_interval_s(0)
        self._hello_again = False  # a HELLO came after the first: check the device clock at the next SENSOR
        self._rate_dts: List[float] = []
        self._warned: set = set()  # kinds of link trouble already logged in this connection
        self._hello_due: Optional[float] = None
        self._quiet_until: Optional[float] = None
        self._quiet_s = QUIET_FIRST_S
        self._hello_requests_here = 0
        # frames: our numbering, the device's numbering of recent ones, the time line
        self._seq = 0
        self._epoch_first_seq = 0
        self._device_seqs = array("l", [0] * SEQ_RING)
        self._t_last_us: Optional[int] = None
        self._t_last: Optional[float] = None
        self._t_last_recv_ns = 0
        self._device_clock = DeviceClock()  # arrival from the device's t_us (sources/arrival.py)
        self._n: Dict[str, int] = dict.fromkeys(
            ("sensor_frames", "ignored_before_hello", "sensor_mismatch", "hellos", "hello_requests",
             "device_restarts", "device_errors", "heartbeats_received", "heartbeats_sent", "actions_sent",
             "actions_unsent", "backstop_actions", "rate_mismatch", "session_offers", "sessions_lost"), 0)

    # --- Source -----------------------------------------------------------------------------

    def recv(self, timeout: Optional[float] = None) -> Optional[Frame]:
        end = math.inf if timeout is None else time.monotonic() + timeout
        while not self._pending:
            if not self._step(end):
                break
        return self._pending.popleft() if self._pending else None

    def wait_for_hello(self, timeout: float) -> Hello:
        """Serve the link until a HELLO is accepted (SENSOR frames meanwhile are kept for ``recv``).

        For callers that need the device's channel names before the first
        frame (a recording without a model). Raises :class:`SourceError`
        if none comes within ``timeout`` seconds.
        """
        end = time.monotonic() + timeout
        while not self._ready:
            if not self._step(end) and not self._ready:
                seen = ", ".join(f"{k} {v}" for k, v in self._decoder.counters.as_dict().items() if v)
                raise SourceError(
                    f"no HELLO from the device on {self.port.path} within {timeout:g} s "
                    f"({'port open, received: ' + (seen or 'nothing') if self.port.connected else 'port not open'})"
                    f": is it powered, at {self.port.baud} baud, and running edge-link firmware "
                    "(firmware_bridge/PROTOCOL.md)?")
        assert self.hello is not None
        return self.hello

    def counters(self) -> Dict[str, Union[int, bool, str, None]]:
        """The link's counters for the summary: decoder (PROTOCOL.md section 8), session, port; see docs/serial.md."""
        port = self.port
        out: Dict[str, Union[int, bool, str, None]] = {"port": port.path, "low_latency": port.low_latency}
        out.update(self._decoder.counters.as_dict())
        out.update(self._n)
        out.update(link_signed=self.auth is not None, sessions=self.auth.sessions if self.auth is not None else 0)
        out.update(reconnects=port.reconnects, disconnects=port.disconnects, write_timeouts=port.write_timeouts,
                   disconnected_ms=port.disconnected_ms)
        return out

    def close(self) -> None:
        self._ready = False
        if self._backstop is not None:
            with self._tx_lock:
                self._account(self._backstop.off())
                self._backstop.close()
        self.port.close()

    # --- the sink's side ----------------------------------------------------------------------

    def send_action(self, action: int, source: ActionSource, reason: int, frame_seq: int, name: str) -> bool:
        """Send the ACTION that answers frame ``frame_seq`` (a :class:`Frame` seq); False if it could not go out.

        It cannot when the device is not there or not greeted, or when the
        frame came from an earlier epoch (the device rebooted since, so its
        sequence number means nothing now): counted in ``actions_unsent``.
        With a backstop, a window whose fallback it holds is answered in that
        fallback's place; if the fallback went out first, nothing more is
        sent for that window (:meth:`backstop_sent` says when it went); after
        the shutdown ACTION nothing queued goes out.
        """
        answers = self.device_seq_of(frame_seq)
        encoder, backstop = self._encoder, self._backstop

        def encode() -> bytes:
            return encoder.action(action, source=source, reason=reason, answers_seq=answers, name=name)

        with self._tx_lock:
            ready = answers is not None and self._ready
            if reason == int(Reason.SHUTDOWN):
                self._shut_down = True  # nothing queued goes out after this ACTION, whether it goes out or not
                if backstop is not None:
                    self._drop_backstop_queue()
            elif backstop is not None:
                self._account(backstop.collect())
                if frame_seq in self._backstop_sent:
                    return True  # the fallback went out first: that is this window's ACTION
                if ready:
                    answered = backstop.answer(frame_seq, self._delimited(encode))
                    if answered is not None:
                        sent = self._answered(*answered)
                        self._n["actions_sent" if sent else "actions_unsent"] += 1
                        return sent
                    self._account(backstop.collect())  # it may have gone out just now
                    if frame_seq in self._backstop_sent:
                        return True
                else:  # its decision cannot go out: nor its fallback, later (the others keep their places)
                    self._account(backstop.off())
                    backstop.forget(frame_seq)
                    backstop.rearm()
            sent = ready and self._send(encode)
        self._n["actions_sent" if sent else "actions_unsent"] += 1
        return sent

    # --- the backstop (edge_infer/deadline/backstop.py) -------------------------------------------

    def enable_backstop(self) -> bool:
        """Give this link a native backstop, if one was built; False if not (the watchdog alone keeps time)."""
        native = backstop_native()
        if native is None:
            return False
        if self._backstop is None:
            with self._tx_lock:
                self._backstop = LinkBackstop(native(self.port.fileno()), self._encoder, self.auth)
                self._backstop_connection = self.port.connection
        return True

    @property
    def backstop_thread_id(self) -> Optional[int]:
        """The backstop thread's id for the OS (None without one): SCHED_FIFO with the loop under --realtime."""
        return None if self._backstop is None else self._backstop.native.native_id

    def arm_backstop(self, frame_seq: int, fire_at_ns: int, action: int, reason: int, name: str) -> None:
        """Have the backstop send this fallback ACTION for frame ``frame_seq`` at ``fire_at_ns``, unless settled first.

        Called as the frame arrives (the reader's thread); windows are armed in the order they arrive.
        Nothing is armed when no ACTION could answer that frame now (no device, not greeted, an old epoch).
        """
        answers = self.device_seq_of(frame_seq)
        with self._tx_lock:
            if answers is not None and self._ready and not self._shut_down:
                self._backstop.arm(ArmedAction(frame_seq, fire_at_ns, action, reason, answers, name))  # type: ignore

    def backstop_sent(self, frame_seq: int) -> Optional[int]:
        """After frame ``frame_seq``'s decision was handed to :meth:`send_action`: when the backstop had sent the
        window's fallback instead (then that fallback is the window's decision), else None."""
        with self._tx_lock:
            self._account(self._backstop.collect())  # type: ignore[union-attr]
            return self._backstop_sent.pop(frame_seq, None)

    def _delimited(self, encode: Callable[[], bytes]) -> Callable[[], bytes]:
        """``encode``, after a 0x00 if a write before was cut short (the device is in the middle of a chunk)."""
        if not self._need_delimiter:
            return encode
        return lambda: b"\x00" + encode()

    def _answered(self, written: int, err: int, length: int) -> bool:
        """A decision went out through the backstop, in its fallback's place (transmit lock held): True if whole.

        One non-blocking write: a device that does not read (a full buffer) loses the ACTION, counted in
        ``write_timeouts`` like a write that timed out.
        """
        self._last_tx = time.monotonic()
        self._need_delimiter = written != length
        if err and err != errno.EAGAIN:  # the reader closes and reopens the port (if it is still that connection)
            self.port.write_failed(OSError(err, os.strerror(err)), self._backstop_connection)
        elif self._need_delimiter:
            self.port.write_timeouts += 1
        return not self._need_delimiter

    def _backstop_let_go(self) -> None:
        """The port is lost: nothing queued goes out, and the backstop's copy of the descriptor is closed (it
        holds the port's exclusive lock, which would keep the port from being opened again)."""
        with self._tx_lock:
            self._account(self._backstop.off())  # type: ignore[union-attr]
            self._backstop.set_fd(-1)  # type: ignore[union-attr]
            self._backstop_connection = None

    def _drop_backstop_queue(self) -> None:
        """Nothing queued goes out (transmit lock held); what the backstop wrote meanwhile is accounted for."""
        self._account(self._backstop.off())  # type: ignore[union-attr]
        self._backstop.drop()  # type: ignore[union-attr]

    def _account(self, fired: List[Fired]) -> None:
        """The fallbacks the backstop wrote (transmit lock held): counted, and kept for their decisions."""
        for one in fired:
            if len(self._backstop_sent) >= SEQ_RING:  # decisions that never asked (the run stopped first)
                self._backstop_sent.clear()
            self._backstop_sent[one.tag] = one.sent_ns
            self._n["backstop_actions"] += 1
            self._n["actions_sent" if one.complete else "actions_unsent"] += 1
            self._need_delimiter = not one.complete
            self._last_tx = time.monotonic()

    def device_seq_of(self, frame_seq: int) -> Optional[int]:
        """The device's sequence number of a recent frame of the current epoch, else None."""
        if not self._epoch_first_seq <= frame_seq < self._seq or self._seq - frame_seq > SEQ_RING:
            return None
        return self._device_seqs[frame_seq % SEQ_RING]

    # --- serving the link -------------------------------------------------------------------

    def _step(self, end: float) -> bool:
        """(Re)connect, keep the device's host-alive timer fed, read and decode until ``end`` or some input.

        Returns False once ``end`` has passed.
        """
        now = time.monotonic()
        if not self.port.connected:  # never opened, or lost (in a read or a write)
            if self._backstop_connection is not None:
                self._backstop_let_go()
            self._ready = False
            if not self.port.open_if_due():
                wake = min(end, self.port.retry_at)
                if wake > now:
                    time.sleep(wake - now)
                return time.monotonic() < end
            self._on_connect(now)
        self._keep_alive(now)
        data = self.port.read(min(end, self._next_keep_alive()) - now)
        if data:
            self._feed(data, self._clock.now_ns())
        return time.monotonic() < end

    def _on_connect(self, now: float) -> None:
        self._ready = self._greeted = False
        if self._backstop is not None:
            with self._tx_lock:
                self._account(self._backstop.off())
                self._backstop.set_fd(self.port.fileno())
                self._backstop_connection = self.port.connection
        self._decoder.reset()
        self._need_delimiter = True
        self._quiet_until = None
        self._quiet_s = QUIET_FIRST_S
        self._hello_requests_here = 0
        self._warned.clear()
        self._new_epoch()
        log.info("serial port %s open at %d baud: asking the device for its HELLO%s", self.port.path, self.port.baud,
                 " (signed link)" if self.auth is not None else "")
        self._speak(now)

    def _speak(self, now: float) -> None:
        """A HEARTBEAT that a device which thinks the host is absent answers with HELLO; signed: a SESSION offer."""
        self._hello_due = now + HELLO_WAIT_S
        if self.auth is None:
            self._send_heartbeat()
            return
        self._ready = False
        with self._tx_lock:  # the reader thread offers; the loop's thread may be writing an ACTION
            offer = Session(host_nonce=self.auth.offer())
            if self._send(lambda: self._encoder.encode(offer)):
                self._n["session_offers"] += 1

    def _keep_alive(self, now: float) -> None:
        if self._quiet_until is not None:
            if now >= self._quiet_until:
                self._quiet_until = None
                self._speak(now)
        elif not self._ready and self._hello_due is not None and now >= self._hello_due:
            self._go_quiet(now)
        elif now - self._last_tx >= self._heartbeat_s and (self.auth is None or self.auth.established):
            self._send_heartbeat()

    def _next_keep_alive(self) -> float:
        if self._quiet_until is not None:
            return self._quiet_until
        due = self._last_tx + self._heartbeat_s
        if not self._ready and self._hello_due is not None:
            due = min(due, self._hello_due)
        return due

    def _go_quiet(self, now: float) -> None:
        """No HELLO came: fall silent past the device's safe timeout, so that it greets us when we speak again."""
        self._quiet_until = now + self._quiet_s
        self._n["hello_requests"] += 1
        self._hello_requests_here += 1
        c = self._decoder.counters
        detail = (f"{self._n['ignored_before_hello']} SENSOR frames ignored, {c.rejected} chunks rejected so far")
        if self._hello_requests_here == 3:
            log.warning("still no HELLO from the device on %s (%s): wrong baud rate (%d), or firmware that does not "
                        "speak edge-link? Staying quiet %g s at a time so that it greets us when we speak again",
                        self.port.path, detail, self.port.baud, self._quiet_s)
        else:
            log.info("no HELLO from the device on %s yet (%s): quiet for %g s, then asking again",
                     self.port.path, detail, self._quiet_s)
        self._quiet_s = min(self._quiet_s * 2, QUIET_MAX_S)

    def _send_heartbeat(self) -> None:
        with self._tx_lock:
            if self._send(self._encoder.heartbeat):
                self._n["heartbeats_sent"] += 1

    def _send(self, encode: Callable[[], bytes]) -> bool:
        """Encode and write one frame (transmit lock held) before the backstop's queue, which is armed again after."""
        backstop = self._backstop
        if backstop is not None:
            self._account(backstop.off())  # its frames must not take our numbers, nor go out in the middle of ours
        wire = encode()
        if self._need_delimiter:  # after a (re)open or a cut-off write: end whatever the device half-read
            wire = b"\x00" + wire
        sent = self.port.write(wire)
        self._need_delimiter = not sent
        self._last_tx = time.monotonic()  # a failed write is not retried before the next interval either
        if backstop is not None:
            if self._ready:
                backstop.rearm()
            else:
                backstop.drop()
        return sent

    # --- receiving ---------------------------------------------------------------------------

    def _feed(self, data: bytes, recv_ns: int) -> None:
        unbound = self._decoder.counters.unbound
        for frame in self._decoder.feed(data):
            if isinstance(frame, Sensor):
                self._on_sensor(frame, recv_ns)
            elif isinstance(frame, Hello):
                self._on_hello(frame, recv_ns)
            else:
                self._on_other(frame)
        if self.auth is not None or self._decoder.counters.no_key:
            self._check_signing(self._decoder.counters.unbound > unbound)

    def _check_signing(self, unbound: bool) -> None:
        """Say once per connection why frames are dropped; offer a new session when the device lost its own."""
        c = self._decoder.counters
        for kind, count, why in (
                ("unsigned", c.unsigned, "sends unsigned frames, but this host has a link key: they are dropped; "
                                         "give the device the same key (docs/link-security.md)"),
                ("bad_signature", c.bad_signature, "sends frames whose signature does not verify (another key, an "
                                                   "old session, or someone else on the line): they are dropped"),
                ("replayed", c.replayed, "sent signed frames that were already received (replayed): dropped"),
                ("no_key", c.no_key, "signs its frames, but this host has no link key: they are dropped; give "
                                     "--link-key (or [source].link_key) the device's key")):
            if count and kind not in self._warned:
                self._warned.add(kind)
                log.warning("device on %s %s", self.port.path, why)
        if unbound and self.auth is not None and self.auth.established:
            self._n["sessions_lost"] += 1  # it rebooted, or timed out on us: its frames are in no session
            log.warning("device on %s lost its signed session (reboot or safe timeout): offering a new one",
                        self.port.path)
            self._speak(time.monotonic())

    def _on_hello(self, hello: Hello, recv_ns: int) -> None:
        log.debug("HELLO seq %d from %s", hello.seq, self.port.path)
        try:
            self._check(hello)
        except SourceError:
            if self._backstop is not None:  # a refused device gets no ACTION: none of those queued either
                with self._tx_lock:
                    self._drop_backstop_queue()
            raise
        self._hello_again = self._greeted  # the stream continues unless the device clock says otherwise
        self._greeted = self._ready = True
        self._hello_due = self._quiet_until = None
        self._quiet_s = QUIET_FIRST_S
        if self.hello is None or hello.channels != self.hello.channels or hello.scales != self.hello.scales:
            log.info("device on %s: firmware %s, %d %s channels [%s] at %g Hz, safe timeout %d ms",
                     self.port.path, ".".join(map(str, hello.fw_version)), hello.channel_count,
                     hello.sample_type.label, ",".join(self.channels), hello.sample_rate_hz, hello.safe_timeout_ms)
        self.hello = hello
        self._n["hellos"] += 1
        self._heartbeat_s = heartbeat_interval_s(hello.safe_timeout_ms)
        if hello.safe_timeout_ms and self._heartbeat_s * 4 > hello.safe_timeout_ms / 1000.0 and \
                "short_timeout" not in self._warned:
            self._warned.add("short_timeout")
            log.warning("device on %s announces a safe timeout of %d ms, shorter than a host can keep fed: "
                        "heartbeats every %g ms (PROTOCOL.md 7.2); it will go safe between them",
                        self.port.path, hello.safe_timeout_ms, self._heartbeat_s * 1000)
        for listener in self.hello_listeners:
            listener(hello, recv_ns)

    def _clock_continues(self, t_us: int, recv_ns: int) -> bool:
        """After a HELLO: did the device clock move like the host's since the last frame (no reboot)?"""
        if self._t_last_us is None:
            return True
        delta = (t_us - self._t_last_us) & 0xFFFFFFFF
        device_s = (delta - (1 << 32) if delta >= 1 << 31 else delta) / 1e6
        host_s = max(0, recv_ns - self._t_last_recv_ns) / 1e9
        return device_s >= 0 and abs(device_s - host_s) <= CLOCK_SLACK_S + 0.05 * host_s

    def _check_rate(self, t_us: int) -> None:
        """Compare the median SENSOR interval (device clock) with HELLO's rate, every RATE_BLOCK frames."""
        hello = self.hello
        rate = (hello.sample_rate_hz if hello is not None else 0.0) or self._rate_hz
        if not rate or self._t_last_us is None:
            return
        self._rate_dts.append(((t_us - self._t_last_us) & 0xFFFFFFFF) / 1e6)
        if len(self._rate_dts) < RATE_BLOCK:
            return
        median = sorted(self._rate_dts)[RATE_BLOCK // 2]
        self._rate_dts.clear()
        if abs(median * rate - 1.0) > RATE_TOLERANCE:
            self._n["rate_mismatch"] += 1
            log.warning("device on %s: its clock (t_us) says %.4g samples/s (median interval %.4g ms), its HELLO "
                        "says %g Hz: the model sees data at the wrong rate, or the device clock is off",
                        self.port.path, 1.0 / median if median > 0 else math.inf, median * 1000, rate)

    def _check(self, hello: Hello) -> None:
        """Refuse a device that does not send the model's channels (or, without a model, changed its own)."""
        self._ready = False  # a refused device gets no ACTION, not even the shutdown one
        check_sample_rate(hello, self._rate_hz)
        if not hello.sample_rate_millihz and "no_rate" not in self._warned:
            self._warned.add("no_rate")
            log.warning("device on %s announces no sample rate (0: not fixed): %s", self.port.path,
                        f"its clock is checked against the model's {self._rate_hz:g} Hz" if self._rate_hz
                        else "the model has none either, so the rate is not checked")
        if self._expected is not None:
            check_hello(hello, self._expected)
            return
        first = self.hello
        if first is not None and (hello.schema_hash, hello.channel_count) != (first.schema_hash, first.channel_count):
            raise SchemaMismatch(
                f"the device on {self.port.path} changed its schema mid-run (was {first.channel_count} channels "
                f"[{','.join(self.channels)}], hash 0x{first.schema_hash:08x}; now {hello.channel_count} "
                f"[{','.join(hello.channels) or 'names not sent'}], hash 0x{hello.schema_hash:08x}); restart to take it")
        if self._count is not None and hello.channel_count != self._count:
            raise SchemaMismatch(
                f"the device on {self.port.path} sends {hello.channel_count} channels "
                f"[{','.join(hello.channels) or 'names not sent'}] but the model takes {self._count}; "
                "flash firmware built for this model, or run the model made for this device")
        if not self.channels:
            self.channels = list(hello.channels) or [f"ch{i}" for i in range(hello.channel_count)]

    def _on_sensor(self, sensor: Sensor, recv_ns: int) -> None:
        hello = self.hello
        if not self._ready or hello is None:
            self._n["ignored_before_hello"] += 1
            return
        if not hello.fits(sensor):
            self._n["sensor_mismatch"] += 1
            log.warning("device on %s: SENSOR frame seq %d has %d %s values, its HELLO announced %d %s channels; "
                        "dropped", self.port.path, sensor.seq, len(sensor.values), sensor.sample_type.label,
                        hello.channel_count, hello.sample_type.label)
            return
        values = hello.physical_values(sensor)
        if self._hello_again:
            self._hello_again = False
            if not self._clock_continues(sensor.t_us, recv_ns):
                self._n["device_restarts"] += 1  # its clock restarted: it rebooted, the stream is cut
                self._new_epoch()
        self._check_rate(sensor.t_us)
        seq = self._seq
        self._seq = seq + 1
        self._device_seqs[seq % SEQ_RING] = sensor.seq
        self._n["sensor_frames"] += 1
        t = self._device_time(sensor.t_us, recv_ns)
        self._pending.append(Frame(seq=seq, t=t, recv_ns=self._device_clock.arrival_ns(round(t * 1e9), recv_ns),
                                   values=values, label=None, device_seq=sensor.seq))

    def _on_other(self, frame: LinkFrame) -> None:
        if isinstance(frame, Session):  # the decoder took the device's answer: HELLO comes next
            if self.auth is None:
                return  # a keyless host has no sessions (a signed SESSION was already dropped as no_key)
            log.info("device on %s answered: signed session %s established", self.port.path,
                     self.auth.session.hex())
        elif isinstance(frame, Heartbeat):
            self._n["heartbeats_received"] += 1
        elif isinstance(frame, ErrorReport):
            self._n["device_errors"] += 1
            log.warning("device on %s reports error %d: %s", self.port.path, frame.code, frame.text)
        elif isinstance(frame, Action):  # a host-to-device frame coming back: a loopback, or two hosts
            log.warning("an ACTION frame arrived from %s: is the port looped back or shared with another host?",
                        self.port.path)

    # --- the time line ------------------------------------------------------------------------

    def _new_epoch(self) -> None:
        if self._backstop is not None:  # the fallbacks queued answer frames of the device's previous life
            with self._tx_lock:
                self._drop_backstop_queue()
        self._epoch_first_seq = self._seq
        self._t_last_us = None
        self._rate_dts.clear()
        self._device_clock.reset()
        for listener in self.restart_listeners:
            listener()

    def _device_time(self, t_us: int, recv_ns: int) -> float:
        """The frame's time in seconds: the device clock unwrapped; across epochs, the host time in between."""
        if self._t_last_us is not None:
            delta = (t_us - self._t_last_us) & 0xFFFFFFFF
            t = self._t_last + (delta - (1 << 32) if delta >= 1 << 31 else delta) / 1e6  # type: ignore[operator]
        elif self._t_last is None:
            t = t_us / 1e6
        else:
            t = self._t_last + max(0, recv_ns - self._t_last_recv_ns) / 1e9
        self._t_last_us, self._t_last, self._t_last_recv_ns = t_us, t, recv_ns
        return t
