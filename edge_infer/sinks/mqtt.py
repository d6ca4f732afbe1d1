"""The MQTT sink: decisions, health and events of one board to the fleet's broker, nothing lost while it is away.

The decision loop never waits on the network, nor on the disk: :meth:`MqttSink.on_decision`
appends the decision to a ``deque`` (no lock, no wake-up call) and returns. A worker thread wakes
every ``batch_interval_s``, turns what came into JSON messages (decisions batched into lists), writes
them to the on-disk spool (:mod:`edge_infer.fleet.spool`, write-ahead: the one path whether the broker
is up or not) and publishes from the spool in order with QoS 1; a message leaves the spool when the
broker acknowledged it. paho's own thread does the network I/O and reconnects.

At a clean stop the last summary and a ``stop`` event are spooled; if the broker is connected, the
worker sends until the spool is empty or ``drain_timeout_s`` passed, then sets ``status`` to
``offline`` (retained) and disconnects; whatever is left stays in the spool for the next start. If the
process dies instead, the broker publishes the same ``offline`` as the last will.

The control topic (:mod:`edge_infer.fleet.control`) is verified on the worker; threshold changes are
applied by the loop's own thread in :meth:`on_decision` (between two windows, never in the middle of
one), and the next decision record published carries a ``control`` field saying what changed.

A runtime with several streams (docs/streams.md) has one sink like a single stream: one client, one
spool. Each stream has its own burst detector, its own ``control`` marks and its own recording slot;
the worker looks at every stream's state each step and announces a change (``stream_state``, and a
fresh retained summary). Topic tree and payloads: docs/fleet.md.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from .._version import __version__
from ..decide.decision import Decision
from ..fleet import topics
from ..fleet.broker import BrokerUrl, Credentials, new_client
from ..fleet.bursts import BurstDetector
from ..fleet.control import Command, CommandVerifier, Refused
from ..fleet.spool import Spool
from ..fleet.streams import BoardStreams, StateWatch, file_safe
from ..frame import Frame
from ..io.files import replace_atomically
from .base import Sink

log = logging.getLogger(__name__)

#: At most this many decision records in one message (a message stays well under 100 kB).
MAX_RECORDS_PER_MESSAGE = 200
#: Messages published and not yet acknowledged: bounds paho's memory while the link is slow.
MAX_IN_FLIGHT = 100
SYNC_INTERVAL_S = 1.0
#: Refusals of control commands are announced on ``events`` at most this often (a flood must not fill it).
REFUSAL_EVENT_INTERVAL_S = 1.0
STATE_FILE = "device.json"
CONTROL_STATE_FILE = "control-last-ts"


@dataclass(frozen=True)
class MqttOptions:
    """Where and how to publish; see ``edge-infer run --help`` (fleet options) and docs/fleet.md."""

    url: BrokerUrl
    device_id: str
    spool_dir: Path
    spool_max_bytes: int = 64 * 1024 * 1024
    credentials: Credentials = Credentials()
    control_key: Optional[bytes] = None
    summary_interval_s: float = 60.0
    drain_timeout_s: float = 3.0
    batch_interval_s: float = 0.1
    #: where a recording started by a control command goes (None: recording commands are refused)
    recordings_dir: Optional[Path] = None


class SwitchableSink(Sink):
    """A place in the loop's sink list for a sink that another thread starts and stops (a remote recording).

    Swapping ``inner`` is one reference assignment, so the loop never waits; a recording closed while the
    loop still holds it ignores the write (the recorder checks under its own lock).
    """

    def __init__(self) -> None:
        self.inner: Optional[Sink] = None

    def on_frame(self, frame: Frame) -> None:
        inner = self.inner
        if inner is not None:
            inner.on_frame(frame)

    def on_decision(self, decision: Decision) -> None:
        inner = self.inner
        if inner is not None:
            inner.on_decision(decision)

    def close(self) -> None:
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.close()


class MqttSink(Sink):
    """Publishes to ``edge-infer/<device-id>/...`` through a spool; takes signed commands on ``control``.

    ``summary`` returns the run summary (called on the worker, and on the loop's thread at close);
    ``model`` describes the model (name, version, sha256) for the start event and model changes;
    ``guard`` (with ``thresholds()``/``set_thresholds()``) is what threshold commands change;
    ``recorder_factory(path, stream)`` makes the sink a recording command starts (in ``options.recordings_dir``),
    placed in ``recordings[stream]``. ``streams``: the runtime runs several streams (then ``guard`` is unused,
    every stream has its own in ``streams.guards``, and a recording slot; ``stream`` is None for one stream).
    """

    def __init__(self, options: MqttOptions, summary: Callable[[], Dict[str, Any]], model: Dict[str, Any], *,
                 guard: Any = None, recorder_factory: Optional[Callable[[Path, Optional[str]], Sink]] = None,
                 streams: Optional[BoardStreams] = None):
        self.options = options
        self.device_id = options.device_id
        self._summary = summary
        self._model = model
        self._guard = guard
        self._streams = streams
        self._recorder_factory = recorder_factory
        self._recordings_dir = options.recordings_dir
        #: where a remote recording plays into: one slot per stream (the key None for a single stream)
        self.recordings: Dict[Optional[str], SwitchableSink] = {
            name: SwitchableSink() for name in ([None] if streams is None else list(streams.guards))}
        self._recording_until: Dict[Optional[str], float] = {}
        self._states = None if streams is None else StateWatch(streams.states())
        self.spool = Spool(options.spool_dir, options.spool_max_bytes)
        self.run_id = uuid.uuid4().hex[:12]
        self._n = 0
        # hand-offs between threads: deques (append and popleft are atomic; nobody waits on them)
        self._inbox: Deque[Any] = deque()            # loop -> worker: Decision, or ("control", dict)
        self._commands: Deque[Command] = deque()     # worker -> loop: verified threshold changes
        self._notes: Deque[Tuple[str, Any]] = deque()  # paho -> worker: connection changes, control payloads
        self._acks: Deque[int] = deque()             # paho -> worker: acknowledged message ids
        self._in_flight: Deque[List[Any]] = deque()  # [mid, end position, acknowledged] in publish order
        self._by_mid: Dict[int, List[Any]] = {}
        # per stream (the key None for a single stream), on the worker: marks to attach to its next decision
        # record, its burst detector, the seq of its last decision taken
        self._marks: Dict[Optional[str], List[Dict[str, Any]]] = {}
        self._bursts: Dict[Optional[str], BurstDetector] = {}
        self._last_seq: Dict[Optional[str], int] = {}
        self._connected = False
        self._attempt_failed = False  # the last connection attempt failed or the connection dropped
        self._said_down = False  # logged that the broker is away (once per outage)
        self._down_since: Optional[float] = time.monotonic()
        self.connections = 0
        self._verifier = None if options.control_key is None else CommandVerifier(
            options.control_key, self.device_id, options.spool_dir / CONTROL_STATE_FILE)
        self._last_refusal_event = -1e9
        self._refusals_unannounced = 0
        self._stop = threading.Event()
        self._closed = False
        self._started = time.monotonic()
        try:
            self._client = new_client(f"edge-infer-{self.device_id}", options.url, options.credentials,
                                      will=(self._topic(topics.STATUS), topics.OFFLINE))
        except BaseException:
            self.spool.close()  # let go of the directory's lock
            raise
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._client.on_connect_fail = self._on_connect_fail
        self._start_events()
        self._client.connect_async(options.url.host, options.url.port, keepalive=30)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._work, name="edge-infer-mqtt", daemon=True)
        self._thread.start()

    # --- the decision loop's side: no waiting ---------------------------------------------------------------

    def on_decision(self, decision: Decision) -> None:
        self._inbox.append(decision)
        if self._commands:  # rare: a verified command waits to be applied between two windows
            self._apply_commands(decision)

    def _apply_commands(self, decision: Decision) -> None:
        while self._commands:
            command = self._commands.popleft()
            result: Dict[str, Any] = command.describe()
            if self._streams is None:
                result["after_seq"] = decision.seq
            try:
                result["thresholds"] = self._set_thresholds(command)
                log.warning("control %s: thresholds now %s (from the next window on)", command.id or "-",
                            result["thresholds"])
            except (ValueError, AttributeError, Refused) as exc:
                result["refused"] = str(exc)
                log.warning("control %s refused: %s", command.id or "-", exc)
            self._inbox.append(("control", result))

    def _set_thresholds(self, command: Command) -> Dict[str, Any]:
        """Apply a verified threshold command; the thresholds now in force (by stream with several streams)."""
        if self._streams is None:
            self._guard.set_thresholds(**command.set)
            return self._guard.thresholds()
        guards = self._streams.targets(command)  # every stream it names can take it, or Refused
        for guard in guards.values():
            guard.set_thresholds(**command.set)
        return {name: guard.thresholds() for name, guard in guards.items()}

    def close(self) -> None:
        """Spool the final summary, drain to the broker (bounded), say offline, let go. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for slot in self.recordings.values():
            slot.close()
        try:
            final = self._summary()
        except Exception:  # the summary must not keep the spool from being drained and closed
            log.exception("mqtt: cannot build the final summary")
            final = {}
        self._inbox.append(("summary", final))
        self._stop.set()
        self._thread.join(self.options.drain_timeout_s + 5.0)
        counters = self.spool.counters()
        log.info("mqtt: %d messages spooled, %d sent, %d dropped at the bound; %d waiting in %s",
                 counters["spooled"], counters["sent"], counters["dropped"], counters["backlog"],
                 self.options.spool_dir)

    # --- paho's thread: note what happened, nothing more ----------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._notes.append(("refused", str(reason_code)))
            return
        self._connected = True
        client.publish(self._topic(topics.STATUS), topics.ONLINE, qos=1, retain=True)
        if self._verifier is not None:
            client.subscribe(self._topic(topics.CONTROL), qos=1)
        self._notes.append(("connected", None))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected = False
        self._notes.append(("disconnected", str(reason_code)))

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._notes.append(("unreachable", None))

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        self._acks.append(mid)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if message.topic == self._topic(topics.CONTROL):
            self._notes.append(("control", bytes(message.payload)))

    # --- the worker -----------------------------------------------------------------------------------------

    def _work(self) -> None:
        next_sync = next_summary = time.monotonic()
        next_summary += self.options.summary_interval_s
        while True:
            stopping = self._stop.wait(self.options.batch_interval_s)
            now = time.monotonic()
            self._guarded(self._step, now)
            if now >= next_sync:
                self._guarded(self.spool.sync)
                next_sync = now + SYNC_INTERVAL_S
            if now >= next_summary and not stopping:
                self._guarded(self._publish_summary, False)
                next_summary = now + self.options.summary_interval_s
            if stopping:
                break
        self._guarded(self._finish)

    def _guarded(self, call: Callable[..., Any], *args: Any) -> None:
        """The worker must outlive a full disk or a bug in one step: log, go on (the loop never notices)."""
        try:
            call(*args)
        except Exception:
            log.exception("mqtt worker: %s failed", getattr(call, "__name__", call))

    def _step(self, now: float) -> None:
        while self._notes:
            self._note(*self._notes.popleft(), now)
        self._take_inbox()
        if self._states is not None:
            self._watch_states()
        for stream, until in list(self._recording_until.items()):
            if now >= until:
                self._stop_recording(stream, "max_s reached")
        self._take_acks()
        self._send()

    def _take_inbox(self) -> None:
        records: List[Dict[str, Any]] = []
        while self._inbox:
            item = self._inbox.popleft()
            if isinstance(item, Decision):
                record = item.to_record()
                stream = None if self._streams is None else item.stream
                marks = self._marks.pop(stream, None)
                if marks:
                    record["control"] = marks if len(marks) > 1 else marks[0]
                records.append(record)
                self._last_seq[stream] = item.seq
                burst = self._burst_detector(stream).feed(record)
                if burst is not None:
                    self._spool_decisions(records)
                    records = []
                    self._event(burst if stream is None else {**burst, "stream": stream})
                if len(records) >= MAX_RECORDS_PER_MESSAGE:
                    self._spool_decisions(records)
                    records = []
                continue
            kind, payload = item
            self._spool_decisions(records)  # what was decided before it goes first
            records = []
            if kind == "control":  # applied by the loop: acknowledge, and mark the next decision record
                targets = self._control_targets(payload)
                if self._streams is not None:  # the last decision of each stream under the old values
                    payload["after_seq"] = {name: self._last_seq.get(name) for name in targets}
                for stream in targets:
                    self._marks.setdefault(stream, []).append(payload)
                self._event({"event": "control_refused" if "refused" in payload else "control", **payload})
            elif kind == "summary":
                self._event({"event": "stop", "reason": "clean"})
                self._publish_summary(True, payload)
        self._spool_decisions(records)

    def _burst_detector(self, stream: Optional[str]) -> BurstDetector:
        detector = self._bursts.get(stream)
        if detector is None:
            detector = self._bursts[stream] = BurstDetector()
        return detector

    def _control_targets(self, payload: Dict[str, Any]) -> List[Optional[str]]:
        """The streams whose next decision record carries a command's mark: its stream, else all of them."""
        if self._streams is None:
            return [None]
        return [payload["stream"]] if payload.get("stream") in self._streams.guards else list(self._streams.guards)

    def _watch_states(self) -> None:
        """A stream that started, ended or failed: a ``stream_state`` event, and the retained summary now."""
        changed = self._states.changes(self._streams.states())  # type: ignore[union-attr]
        if changed:
            log.info("mqtt: stream state %s", changed)
            self._event({"event": "stream_state", "streams": changed})
            self._publish_summary(False)

    def _spool_decisions(self, records: List[Dict[str, Any]]) -> None:
        if records:
            self._append(topics.DECISIONS, {"records": records})

    def _event(self, fields: Dict[str, Any]) -> None:
        log.info("mqtt event: %s", fields.get("event"))
        self._append(topics.EVENTS, fields)

    def _publish_summary(self, final: bool, summary: Optional[Dict[str, Any]] = None) -> None:
        body = self._summary() if summary is None else summary
        self._append(topics.SUMMARY, {"final": final, "uptime_s": round(time.monotonic() - self._started, 1),
                                      "summary": body, "mqtt": self.counters()}, retain=True)

    def _append(self, suffix: str, body: Dict[str, Any], retain: bool = False) -> None:
        """Number and stamp a message and put it in the spool; announce records dropped at the bound."""
        self._n += 1
        payload = {"run": self.run_id, "n": self._n, "time": topics.utc_now(), **body}
        dropped = self.spool.dropped
        self.spool.append(suffix, json.dumps(payload, separators=(",", ":"), default=str).encode(), retain)
        if self.spool.dropped > dropped:
            lost = self.spool.dropped - dropped
            log.warning("mqtt spool %s is full (%d bytes): dropped the %d oldest unsent messages",
                        self.options.spool_dir, self.options.spool_max_bytes, lost)
            self._n += 1
            note = {"run": self.run_id, "n": self._n, "time": topics.utc_now(), "event": "spool_dropped",
                    "messages": lost, "dropped_total": self.spool.dropped, "bound_bytes": self.options.spool_max_bytes}
            self.spool.append(topics.EVENTS, json.dumps(note, separators=(",", ":")).encode(), False)

    def _take_acks(self) -> None:
        while self._acks:
            entry = self._by_mid.pop(self._acks.popleft(), None)
            if entry is not None:
                entry[2] = True
        while self._in_flight and self._in_flight[0][2]:
            self.spool.acknowledge(self._in_flight.popleft()[1])

    def _send(self) -> None:
        while self._connected and len(self._in_flight) < MAX_IN_FLIGHT:
            record = self.spool.next_unsent()
            if record is None:
                return
            info = self._client.publish(self._topic(record.topic), record.payload, qos=1, retain=record.retain)
            entry = [info.mid, record.end, False]
            self._in_flight.append(entry)
            self._by_mid[info.mid] = entry

    def _note(self, kind: str, value: Any, now: float) -> None:
        if kind == "connected":
            self._attempt_failed = self._said_down = False
            self.connections += 1
            offline_s = None if self._down_since is None else round(now - self._down_since, 1)
            self._down_since = None
            log.info("mqtt: connected to %s (%d messages waiting)", self.options.url, self.spool.backlog)
            self._event({"event": "connected", "offline_s": offline_s, "backlog": self.spool.backlog,
                         "connections": self.connections})
        elif kind in ("disconnected", "unreachable", "refused"):
            self._attempt_failed = True
            if self._down_since is None:  # was connected
                self._down_since = now
                self._event({"event": "disconnected", "reason": value or kind})
            if not self._said_down:
                self._said_down = True
                log.warning("mqtt: %s %s; spooling to %s and retrying", self.options.url,
                            f"refused the connection: {value}" if kind == "refused" else f"not reachable ({kind})",
                            self.options.spool_dir)
        elif kind == "control":
            self._control(value, now)

    # --- control --------------------------------------------------------------------------------------------

    def _control(self, payload: bytes, now: float) -> None:
        try:
            command = self._verifier.verify(payload, time.time())  # type: ignore[union-attr]
        except Refused as exc:
            log.warning("control command refused: %s", exc)
            self._refusals_unannounced += 1
            if now - self._last_refusal_event >= REFUSAL_EVENT_INTERVAL_S:
                self._event({"event": "control_refused", "id": exc.command_id, "refused": str(exc),
                             "count": self._refusals_unannounced})
                self._refusals_unannounced = 0
                self._last_refusal_event = now
            return
        log.warning("control command %s accepted: %s", command.id or "-", command.describe())
        if self._streams is None and command.stream is not None:
            self._refuse(command, "this board runs one stream: send the command without a stream")
            return
        try:
            if command.set:
                if self._streams is not None:
                    self._streams.targets(command)  # a stream it does not run: refused here, before the loop
                self._commands.append(command)  # the loop applies it between two windows and reports back
                return
            stream = None if self._streams is None else self._streams.recording_stream(command)
        except Refused as exc:
            self._refuse(command, str(exc))
            return
        if command.recording == "start":
            self._start_recording(stream, command, now)
        else:
            self._stop_recording(stream, "command", command)

    def _refuse(self, command: Command, why: str) -> None:
        log.warning("control command %s refused: %s", command.id or "-", why)
        self._event({"event": "control_refused", **command.describe(), "refused": why})

    def _start_recording(self, stream: Optional[str], command: Command, now: float) -> None:
        if self._recorder_factory is None or self._recordings_dir is None:
            self._refuse(command, "no recordings here")
            return
        slot = self.recordings[stream]
        if slot.inner is not None:
            self._recording_until[stream] = now + command.max_s
            self._event({"event": "control", **command.describe(), "recording_state": "already recording",
                         "max_s": command.max_s})
            return
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        which = "" if stream is None else f"{file_safe(stream)}-"
        path = self._recordings_dir / f"remote-{self.device_id}-{which}{stamp}.mcap"
        try:
            self._recordings_dir.mkdir(parents=True, exist_ok=True)
            slot.inner = self._recorder_factory(path, stream)
        except Exception as exc:
            log.error("remote recording to %s failed to start: %s", path, exc)
            self._refuse(command, f"cannot record: {exc}")
            return
        self._recording_until[stream] = now + command.max_s
        mark = {**command.describe(), "recording_state": "started", "path": str(path), "max_s": command.max_s}
        self._marks.setdefault(stream, []).append(mark)
        self._event({"event": "control", **mark})

    def _stop_recording(self, stream: Optional[str], why: str, command: Optional[Command] = None) -> None:
        slot = self.recordings[stream]
        recorder, slot.inner = slot.inner, None
        self._recording_until.pop(stream, None)
        fields = {} if command is None else command.describe()
        if stream is not None:
            fields.setdefault("stream", stream)
        if recorder is None:
            self._event({"event": "control", **fields, "recording_state": "not recording"})
            return
        recorder.close()
        mark = {**fields, "recording_state": "stopped", "by": why,
                "paths": [str(p) for p in getattr(recorder, "paths", [])]}
        self._marks.setdefault(stream, []).append(mark)
        self._event({"event": "control", **mark})

    # --- start and stop -------------------------------------------------------------------------------------

    def _start_events(self) -> None:
        """``start`` (and how the last run ended), ``model_changed`` if the model differs from the last run's."""
        state_path = self.options.spool_dir / STATE_FILE
        try:
            previous = json.loads(state_path.read_text())
        except (OSError, ValueError):
            previous = None
        last_stop = "first start" if previous is None else ("clean" if previous.get("clean_stop") else "crash")
        start: Dict[str, Any] = {"event": "start", "version": __version__, "model": self._model,
                                 "previous_stop": last_stop, "backlog": self.spool.backlog,
                                 "thresholds": self._thresholds(), "control": self._verifier is not None,
                                 "pid": os.getpid()}
        if self._streams is not None:
            start["streams"] = self._streams.about
        self._event(start)
        if previous is not None and previous.get("model", {}).get("sha256") != self._model.get("sha256"):
            self._event({"event": "model_changed", "from": previous.get("model"), "to": self._model})
        self._save_state(clean_stop=False)

    def _thresholds(self) -> Any:
        """The spec's thresholds (commands do not persist), by stream with several streams."""
        if self._streams is not None:
            return {name: guard.thresholds() for name, guard in self._streams.guards.items()}
        return None if self._guard is None else self._guard.thresholds()

    def _save_state(self, clean_stop: bool) -> None:
        replace_atomically(self.options.spool_dir / STATE_FILE,
                           json.dumps({"clean_stop": clean_stop, "model": self._model, "run": self.run_id}).encode(),
                           "mqtt state")

    def _finish(self) -> None:
        """On the worker, after the loop stopped: drain (bounded), offline, disconnect, close the spool.

        A broker that is up is given until ``drain_timeout_s`` (also to finish connecting, for a run shorter
        than a connect); one that refused or dropped the connection is not waited for.
        """
        deadline = time.monotonic() + self.options.drain_timeout_s
        while time.monotonic() < deadline:
            self._step(time.monotonic())
            if (self._connected and self.spool.drained) or (not self._connected and self._attempt_failed):
                break
            time.sleep(0.02)
        if self._connected:
            info = self._client.publish(self._topic(topics.STATUS), topics.OFFLINE, qos=1, retain=True)
            info.wait_for_publish(max(0.5, deadline - time.monotonic()))
        self._client.disconnect()
        self._client.loop_stop()
        self.spool.close()
        self._save_state(clean_stop=True)

    def counters(self) -> Dict[str, Any]:
        """Spool counters and the connection: the ``mqtt`` part of the summary payload."""
        return {**self.spool.counters(), "connected": self._connected, "connections": self.connections}

    def _topic(self, suffix: str) -> str:
        return topics.topic(self.device_id, suffix)


__all__ = ["MqttSink", "MqttOptions", "SwitchableSink"]
