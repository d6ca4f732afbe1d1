"""Remote control, narrow and authenticated: the only commands a board takes from ``edge-infer/<id>/control``.

What a command may do: set the input checks' thresholds (``min_confidence``, ``ood_threshold``) and
start or stop a recording, on a board with several streams for one ``stream`` or (thresholds) for all.
Nothing else exists, so nothing else can be asked for: a command with any other field is refused whole.

Why a signature on top of the broker's ACL: the ACL decides who may *publish* to a topic, but it is
configured on a server the board does not control, often shared with dashboards and bridges whose
credentials sit on many machines; one leaked dashboard password, or one ACL line too broad
(``edge-infer/#``), would let anyone steer a thousand boards. With a per-device key (a file on the
board, ``--control-key-file``) the board itself checks each command:

* the envelope is ``{"command": "<the body as JSON text>", "hmac_sha256": "<hex>"}``; the MAC is
  HMAC-SHA256 with the device's key over the exact bytes of the ``command`` text (no canonical JSON to
  get wrong), checked with a constant-time compare *before* the body is parsed;
* the body names the ``device`` (a command for one board is refused by another that shares the key)
  and a ``ts`` (Unix seconds): it must be later than the last accepted command's (saved on disk, so a
  recorded command cannot be replayed after a restart either) and within ``MAX_SKEW_S`` of the board's
  clock (a command signed long ago and held back is refused).

Every command accepted or refused is logged; the MQTT sink acknowledges it on ``events``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from ..io.files import replace_atomically

#: A command's ``ts`` may differ from the board's clock by this much (NTP keeps boards within a second).
MAX_SKEW_S = 300.0
#: Longest remote recording unless the command says less: a forgotten "start" must not fill the disk.
MAX_RECORDING_S = 3600.0
DEFAULT_RECORDING_S = 600.0
THRESHOLDS = ("min_confidence", "ood_threshold")
RECORDING = ("start", "stop")
_BODY_KEYS = {"device", "ts", "id", "stream", "set", "recording", "max_s"}
#: A stream's name is its source by default (a log's path, serial:/dev/serial/by-id/...): room for a long one.
MAX_STREAM_NAME = 512
MIN_KEY_BYTES = 16
#: A real command is about 200 bytes; anything much larger is not parsed at all.
MAX_COMMAND_BYTES = 4096


class Refused(Exception):
    """A command that is not applied; the message says why (it goes to the log and to ``events``).

    ``command_id`` is the command's ``id`` once its signature was verified (an unsigned one names none)."""

    command_id: Optional[str] = None


@dataclass(frozen=True)
class Command:
    """A verified command: thresholds to set, or a recording to start or stop."""

    id: str
    ts: float
    set: Dict[str, float] = field(default_factory=dict)
    recording: Optional[str] = None
    max_s: float = DEFAULT_RECORDING_S
    #: the one stream it is for, on a board with several (None: every stream; the board checks the name)
    stream: Optional[str] = None

    def describe(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"id": self.id}
        if self.stream is not None:
            out["stream"] = self.stream
        if self.set:
            out["set"] = dict(self.set)
        if self.recording:
            out["recording"] = self.recording
        return out


def sign(key: bytes, body: Dict[str, Any]) -> bytes:
    """The payload to publish on the control topic for ``body`` (``fleet control`` and the tests use it)."""
    text = json.dumps(body, separators=(",", ":"))
    mac = hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()
    return json.dumps({"command": text, "hmac_sha256": mac}).encode("utf-8")


def check_key(key: bytes, path: str) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"control key {path} has {len(key)} bytes; use at least {MIN_KEY_BYTES} "
                         "(e.g. openssl rand -hex 32 > FILE)")
    return key


class CommandVerifier:
    """Checks signature, device, freshness and content of control payloads for one device."""

    def __init__(self, key: bytes, device_id: str, state_file: "str | Path"):
        self._key = key
        self.device_id = device_id
        self.state_file = Path(state_file)
        self.last_ts = self._load_last_ts()

    def verify(self, payload: bytes, now: float) -> Command:
        """The command in ``payload``, or :class:`Refused`; an accepted command's ``ts`` is saved first."""
        if len(payload) > MAX_COMMAND_BYTES:
            raise Refused(f"{len(payload)} bytes: larger than any command ({MAX_COMMAND_BYTES})")
        try:
            envelope = json.loads(payload)
            text, mac = envelope["command"], envelope["hmac_sha256"]
            if not isinstance(text, str) or not isinstance(mac, str):
                raise TypeError
        except (ValueError, TypeError, KeyError):
            raise Refused('not a signed command: expected {"command": "...", "hmac_sha256": "..."}') from None
        expected = hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, mac.lower()):
            raise Refused("bad signature (not signed with this device's control key)")
        try:
            body = json.loads(text)
        except ValueError:
            raise Refused("signed, but the command is not JSON") from None
        try:
            command = self._parse(body, now)
        except Refused as exc:
            ident = body.get("id") if isinstance(body, dict) else None
            exc.command_id = ident if isinstance(ident, str) else None
            raise
        self._save_last_ts(command.ts)
        return command

    def _parse(self, body: Any, now: float) -> Command:
        if not isinstance(body, dict):
            raise Refused("the command must be a JSON object")
        unknown = sorted(set(body) - _BODY_KEYS)
        if unknown:
            raise Refused(f"not allowed: {', '.join(unknown)} (a command may only set "
                          f"{' or '.join(THRESHOLDS)}, or start/stop a recording)")
        if body.get("device") != self.device_id:
            raise Refused(f"for device {body.get('device')!r}, not {self.device_id!r}")
        ts = body.get("ts")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
            raise Refused("ts (Unix seconds) missing or not a number")
        if ts <= self.last_ts:
            raise Refused(f"replayed or out of order: ts {ts} is not after the last accepted {self.last_ts}")
        if abs(ts - now) > MAX_SKEW_S:
            raise Refused(f"ts {ts} is {ts - now:+.0f} s from this board's clock (more than {MAX_SKEW_S:g} s)")
        ident = body.get("id", "")
        if not isinstance(ident, str) or len(ident) > 64:
            raise Refused("id must be a string of at most 64 characters")
        stream = body.get("stream")
        if stream is not None and (not isinstance(stream, str) or not 0 < len(stream) <= MAX_STREAM_NAME):
            raise Refused(f"stream must be a stream's name (a string of 1 to {MAX_STREAM_NAME} characters)")
        has_set, recording = "set" in body, body.get("recording")
        if has_set == (recording is not None):
            raise Refused("a command has exactly one of: set (thresholds), recording (start or stop)")
        if has_set:
            return Command(ident, float(ts), set=self._thresholds(body["set"]), stream=stream)
        if recording not in RECORDING:
            raise Refused(f"recording must be start or stop, not {recording!r}")
        max_s = body.get("max_s", DEFAULT_RECORDING_S)
        if isinstance(max_s, bool) or not isinstance(max_s, (int, float)) or not 0 < max_s <= MAX_RECORDING_S:
            raise Refused(f"max_s must be a number of seconds in (0, {MAX_RECORDING_S:g}]")
        if "max_s" in body and recording != "start":
            raise Refused("max_s goes with recording start")
        return Command(ident, float(ts), recording=recording, max_s=float(max_s), stream=stream)

    @staticmethod
    def _thresholds(values: Any) -> Dict[str, float]:
        if not isinstance(values, dict) or not values:
            raise Refused(f"set must name at least one of {', '.join(THRESHOLDS)}")
        out = {}
        for name, value in values.items():
            if name not in THRESHOLDS:
                raise Refused(f"not allowed: set {name} (only {', '.join(THRESHOLDS)} can be changed)")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise Refused(f"{name} must be a number, not {value!r}")
            if name == "min_confidence" and not 0.0 <= value <= 1.0:
                raise Refused(f"min_confidence must be in [0, 1], not {value}")
            if name == "ood_threshold" and not value > 0.0:
                raise Refused(f"ood_threshold must be greater than 0, not {value}")
            out[name] = float(value)
        return out

    def _load_last_ts(self) -> float:
        try:
            return float(self.state_file.read_text().strip())
        except FileNotFoundError:
            return -math.inf
        except (OSError, ValueError):  # unreadable: accept nothing older than now minus the skew
            return -math.inf

    def _save_last_ts(self, ts: float) -> None:
        """Saved (fsync, rename) before the command takes effect: a crash right after cannot reopen it."""
        replace_atomically(self.state_file, repr(ts).encode(), "control state")
        self.last_ts = ts


__all__ = ["Command", "CommandVerifier", "Refused", "sign", "check_key", "THRESHOLDS", "MAX_SKEW_S",
           "DEFAULT_RECORDING_S", "MAX_RECORDING_S"]
