"""The fleet over MQTT: ``run --mqtt`` (the sink's options), ``fleet watch`` and ``fleet control``.

``edge-infer fleet watch --mqtt URL`` shows every device heard on the broker in a live table;
``edge-infer fleet control --mqtt URL --device-id ID --key-file FILE --set min_confidence=0.8`` sends a
signed command and prints the device's acknowledgement. Topics and payloads: docs/fleet.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..errors import ConfigError, EdgeInferError
from ..fleet import topics
from ..fleet.broker import (BrokerUrl, Credentials, add_broker_options, check_credentials, new_client,
                            parse_broker_url, read_secret)
from ..fleet.control import THRESHOLDS, check_key, sign
from ..fleet.streams import BoardStreams
from ..fleet.watch import DEFAULT_WINDOW_S, FleetView
from ..settings.argtypes import positive_float
from ..sinks.mqtt import MqttOptions, MqttSink
from ..sinks.recorder import RecordingSink
from .recording import runtime_metadata, source_metadata

if TYPE_CHECKING:
    from ..runtime import Runtime

DEFAULT_SPOOL_MB = 64.0


# --- run --mqtt ---------------------------------------------------------------------------------------------

def add_mqtt_options(parser: argparse.ArgumentParser) -> None:
    """The ``run`` options of the MQTT sink (service config ``[fleet]``)."""
    group = parser.add_argument_group("fleet (MQTT; needs the fleet extra: pip install 'edge-infer[fleet]')")
    group.add_argument("--mqtt", metavar="mqtt[s]://HOST[:PORT]",
                       help="publish decisions, status, summaries and events to this broker (docs/fleet.md)")
    group.add_argument("--device-id", metavar="ID", help="this board's name in the topics (default: the host name)")
    group.add_argument("--spool", metavar="DIR", help="store-and-forward directory (default: "
                                                      "$STATE_DIRECTORY/mqtt-spool/ID or ~/.local/state/...)")
    group.add_argument("--spool-max-mb", type=positive_float, default=DEFAULT_SPOOL_MB, metavar="N",
                       help=f"bound of the spool; beyond it the oldest unsent messages are dropped, and said so "
                            f"(default {DEFAULT_SPOOL_MB:g})")
    add_broker_options(group)
    group.add_argument("--control-key-file", metavar="FILE",
                       help="this device's key for signed commands on the control topic (without it, no control)")
    group.add_argument("--remote-recordings", metavar="DIR",
                       help="where a recording started by a control command goes (default: STATE/recordings)")
    group.add_argument("--mqtt-summary-interval", type=positive_float, default=60.0, metavar="S",
                       help="publish the summary every S seconds (and at stop)")
    group.add_argument("--mqtt-drain-timeout", type=positive_float, default=3.0, metavar="S",
                       help="at a stop, send what is spooled for at most S seconds (the rest waits for the next start)")


def state_dir() -> Path:
    """systemd's ``StateDirectory=`` (the first one), else the XDG state directory."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "edge-infer"


def mqtt_options(args: argparse.Namespace) -> MqttOptions:
    """Validate the fleet options (every file is checked here, before the model loads)."""
    url = parse_broker_url(args.mqtt)
    try:
        device_id = topics.check_device_id(args.device_id or socket.gethostname().split(".")[0])
    except ValueError as exc:
        raise ConfigError(f"--device-id: {exc}") from None
    creds = Credentials.from_args(args)
    check_credentials(url, creds)
    key = None
    if args.control_key_file:
        try:
            key = check_key(read_secret(args.control_key_file, "--control-key-file"), args.control_key_file)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    spool = Path(args.spool) if args.spool else state_dir() / "mqtt-spool" / device_id
    recordings = Path(args.remote_recordings) if args.remote_recordings else state_dir() / "recordings"
    return MqttOptions(url=url, device_id=device_id, spool_dir=spool, recordings_dir=recordings,
                       spool_max_bytes=int(args.spool_max_mb * 1024 * 1024), credentials=creds, control_key=key,
                       summary_interval_s=args.mqtt_summary_interval, drain_timeout_s=args.mqtt_drain_timeout)


def attach_mqtt(runtime: Any, options: MqttOptions) -> MqttSink:
    """Add the MQTT sink (and the slot a remote recording plays into) to a built runtime: one sink for the
    whole runtime, also when it runs several streams (one board, one client id, one spool: docs/fleet.md)."""
    streams: List["Runtime"] = getattr(runtime, "streams", None) or [runtime]
    by_name = {stream.name: stream for stream in streams}

    def recorder(path: Path, name: Optional[str]) -> RecordingSink:
        stream = runtime if name is None else by_name[name]
        return RecordingSink(path, stream.source.channels, {**source_metadata(stream.source),
                                                            **runtime_metadata(stream), "started_by": "control topic"})

    if streams[0] is runtime:
        sink = MqttSink(options, runtime.summary, _model(runtime), guard=runtime.guard, recorder_factory=recorder)
        runtime.sinks.extend([sink.recordings[None], sink])
        return sink
    board = BoardStreams(guards={s.name: s.guard for s in streams}, states=runtime.stream_states,
                         about=[{"stream": s.name, "source": str(getattr(s.source, "name", "")),
                                 "model": _model(s)["name"], "budget_ms": s.spec.budget_ms} for s in streams])
    sink = MqttSink(options, runtime.summary, _models(streams), recorder_factory=recorder, streams=board)
    for stream in streams:
        stream.sinks.append(sink.recordings[stream.name])
    runtime.add_sink(sink)
    return sink


def _model(runtime: "Runtime") -> Dict[str, Any]:
    spec = runtime.spec
    return {"name": spec.name or spec.model_path.name, "version": spec.version, "sha256": runtime.engine.sha256}


def _models(streams: List["Runtime"]) -> Dict[str, Any]:
    """The ``model`` of the start event: the one model the streams share, or every model's field joined by ", "
    (as the summary names them), so that a change of any of them is a ``model_changed`` event."""
    models = list({m["sha256"]: m for m in map(_model, streams)}.values())
    if len(models) == 1:
        return models[0]
    return {key: ", ".join(str(m[key]) for m in models) for key in ("name", "version", "sha256")}


# --- edge-infer fleet ---------------------------------------------------------------------------------------

def add_parser(sub: "argparse._SubParsersAction") -> None:
    parser = sub.add_parser("fleet", help="watch and steer boards over MQTT (docs/fleet.md)",
                            description="Watch every board publishing to a broker, or send one a signed command.")
    actions = parser.add_subparsers(dest="fleet_command", metavar="ACTION")
    actions.required = True

    watch = actions.add_parser("watch", help="a live table of every device heard",
                               description="Subscribe to edge-infer/+/# and show one row per device: online, "
                                           "decisions/s, fallback rate, top reasons, last seen.")
    watch.add_argument("--mqtt", required=True, metavar="mqtt[s]://HOST[:PORT]")
    add_broker_options(watch)
    watch.add_argument("--interval", type=positive_float, default=1.0, metavar="S", help="redraw every S seconds")
    watch.add_argument("--window", type=positive_float, default=DEFAULT_WINDOW_S, metavar="S",
                       help="rates over the last S seconds")
    watch.add_argument("--duration", type=positive_float, metavar="S", help="stop after S seconds")
    watch.add_argument("--once", action="store_true",
                       help="listen for --duration seconds (default 3), print the table once and exit")
    watch.add_argument("--json", action="store_true", help="rows as JSON (one line per redraw)")
    watch.set_defaults(handler=watch_main)

    control = actions.add_parser("control", help="send a device a signed command and print its answer",
                                 description="Set an input-check threshold, or start/stop a recording, on one "
                                             "device; signed with its control key (docs/fleet.md).")
    control.add_argument("--mqtt", required=True, metavar="mqtt[s]://HOST[:PORT]")
    add_broker_options(control)
    control.add_argument("--device-id", required=True, metavar="ID")
    control.add_argument("--key-file", required=True, metavar="FILE", help="the device's control key")
    what = control.add_mutually_exclusive_group(required=True)
    what.add_argument("--set", action="append", metavar="NAME=VALUE",
                      help=f"a threshold to set: {', '.join(THRESHOLDS)} (repeatable)")
    what.add_argument("--recording", choices=("start", "stop"))
    control.add_argument("--stream", metavar="NAME",
                         help="on a board with several streams: the one stream (default for --set: every stream; "
                              "a recording is always of one)")
    control.add_argument("--max-s", type=positive_float, metavar="S", help="with --recording start: stop after S s")
    control.add_argument("--timeout", type=positive_float, default=10.0, metavar="S",
                         help="wait this long for the device's acknowledgement")
    control.set_defaults(handler=control_main)


def connect(args: argparse.Namespace, role: str) -> "tuple[Any, BrokerUrl]":
    url = parse_broker_url(args.mqtt)
    creds = Credentials.from_args(args)
    check_credentials(url, creds)
    client = new_client(f"edge-infer-{role}-{uuid.uuid4().hex[:8]}", url, creds)
    return client, url


def watch_main(args: argparse.Namespace) -> int:
    client, url = connect(args, "watch")
    view, lock = FleetView(args.window), threading.Lock()
    connected = threading.Event()

    def on_connect(client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not reason_code.is_failure:
            client.subscribe(f"{topics.ROOT}/+/+", qos=1)
            connected.set()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        with lock:
            view.on_message(message.topic, bytes(message.payload), time.time(), bool(message.retain))

    client.on_connect, client.on_message = on_connect, on_message
    client.connect_async(url.host, url.port, keepalive=30)
    client.loop_start()
    duration = args.duration if args.duration is not None else (3.0 if args.once else None)
    end = None if duration is None else time.monotonic() + duration
    redraw = sys.stdout.isatty() and not args.json and not args.once
    try:
        while end is None or time.monotonic() < end:
            time.sleep(args.interval if end is None else max(0.0, min(args.interval, end - time.monotonic())))
            if args.once:
                continue
            _show(view, lock, args.json, redraw, connected.is_set(), url)
        if args.once:
            _show(view, lock, args.json, False, connected.is_set(), url)
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    if not connected.is_set():
        raise EdgeInferError(f"could not connect to {url} (is the broker up, the URL and TLS settings right?)")
    return 0


def _show(view: FleetView, lock: threading.Lock, as_json: bool, redraw: bool, connected: bool, url: BrokerUrl) -> None:
    with lock:
        now = time.time()
        text = json.dumps(view.rows(now)) if as_json else view.render(now)
    if redraw:
        sys.stdout.write("\033[H\033[2J")  # home, clear: a table that stays in place
    if not as_json:
        head = f"{url}  {'connected' if connected else 'connecting...'}  {time.strftime('%H:%M:%S')}"
        text = f"{head}\n{text}\n"
    print(text, flush=True)


def _command_body(args: argparse.Namespace, device: str) -> Dict[str, Any]:
    body: Dict[str, Any] = {"device": device, "ts": round(time.time(), 3), "id": uuid.uuid4().hex[:8]}
    if args.stream is not None:
        body["stream"] = args.stream
    if args.recording:
        body["recording"] = args.recording
        if args.max_s is not None:
            body["max_s"] = args.max_s
        return body
    values: Dict[str, float] = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or name not in THRESHOLDS:
            raise EdgeInferError(f"--set {item}: expected NAME=VALUE with NAME one of {', '.join(THRESHOLDS)}")
        try:
            values[name] = float(value)
        except ValueError:
            raise EdgeInferError(f"--set {item}: {value!r} is not a number") from None
    body["set"] = values
    return body


def control_main(args: argparse.Namespace) -> int:
    try:
        device = topics.check_device_id(args.device_id)
        key = check_key(read_secret(args.key_file, "--key-file"), args.key_file)
    except ValueError as exc:
        raise EdgeInferError(str(exc)) from None
    body = _command_body(args, device)
    client, url = connect(args, "control")
    answers: List[Dict[str, Any]] = []
    answered, subscribed = threading.Event(), threading.Event()

    def on_connect(client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not reason_code.is_failure:
            client.subscribe(topics.topic(device, topics.EVENTS), qos=1)

    def on_subscribe(*_: Any) -> None:
        subscribed.set()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        try:
            event = json.loads(message.payload)
        except ValueError:
            return
        if isinstance(event, dict) and event.get("id") == body["id"] and str(event.get("event", "")).startswith("control"):
            answers.append(event)
            answered.set()

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect_async(url.host, url.port, keepalive=30)
    client.loop_start()
    try:
        if not subscribed.wait(args.timeout):
            raise EdgeInferError(f"could not connect to {url} within {args.timeout:g} s")
        client.publish(topics.topic(device, topics.CONTROL), sign(key, body), qos=1).wait_for_publish(args.timeout)
        if not answered.wait(args.timeout):
            print(json.dumps({"sent": body, "answer": None}))
            print(f"edge-infer: error: no answer from {device} within {args.timeout:g} s (offline? control off? "
                  "a refusal of an unsigned or replayed command names no id)", file=sys.stderr)
            return 1
    finally:
        client.disconnect()
        client.loop_stop()
    answer = answers[0]
    print(json.dumps({"sent": body, "answer": answer}))
    return 1 if answer.get("event") == "control_refused" else 0


__all__ = ["add_mqtt_options", "attach_mqtt", "add_parser", "mqtt_options", "state_dir"]
