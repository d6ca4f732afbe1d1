"""What ``edge-infer fleet watch`` shows: one row per device heard on the broker, and under a device that runs
several streams one row per stream.

Built from the messages alone (``status``, ``decisions``, ``summary``, ``events``), so it works for any
subscriber: online or not, decisions per second and fallback rate over the last ``window_s`` seconds,
the top fallback reasons, and when the device was last heard from. A message sent twice (at least once
delivery after a crash or a reconnect) is counted once, by its ``run`` and ``n``. A stream is known by the
``stream`` of its decision records and by the summary's ``streams`` (each with its ``state``), which a
``stream_state`` event updates at once (docs/fleet.md, "Several streams on one board").
"""

from __future__ import annotations

import datetime
import json
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Tuple

from . import topics

DEFAULT_WINDOW_S = 10.0
#: (run, n) pairs remembered per device to drop repeats: more than a spool's worth of in-flight messages.
_SEEN = 4096


#: A stream's state is cut to this many characters in the table (``failed: <the error>`` can be long; --json has it all).
STATE_WIDTH = 40


@dataclass
class Rates:
    """Decisions and fallbacks: in total, and per decisions message over the last window (by receipt)."""

    decisions: int = 0
    fallbacks: int = 0
    #: (receipt time, decisions, fallbacks, reasons) per decisions message in the window
    recent: Deque[Tuple[float, int, int, Counter]] = field(default_factory=deque)

    def add(self, records: List[Dict[str, Any]], now: float) -> None:
        reasons = Counter(r.get("reason") or "unknown" for r in records if r.get("source") == "fallback")
        fallbacks = sum(reasons.values())
        self.decisions += len(records)
        self.fallbacks += fallbacks
        self.recent.append((now, len(records), fallbacks, reasons))

    def row(self, now: float, window_s: float, summary: Dict[str, Any]) -> Dict[str, Any]:
        """``decisions_per_s``, ``fallback_rate``, ``top_reasons`` (the summary's counts while nothing is live)."""
        while self.recent and self.recent[0][0] < now - window_s:
            self.recent.popleft()
        decisions = sum(item[1] for item in self.recent)
        fallbacks = sum(item[2] for item in self.recent)
        reasons: Counter = Counter()
        for item in self.recent:
            reasons.update(item[3])
        if not self.recent and summary.get("fallback_reasons"):
            reasons = Counter(summary["fallback_reasons"])  # nothing live: the last summary's counts
        return {"decisions_per_s": round(decisions / window_s, 2),
                "fallback_rate": None if not decisions else round(fallbacks / decisions, 4),
                "top_reasons": dict(reasons.most_common(3))}


@dataclass
class StreamState:
    """One stream of a device that runs several (docs/streams.md)."""

    name: str
    state: str = "?"
    rates: Rates = field(default_factory=Rates)
    summary: Dict[str, Any] = field(default_factory=dict)
    last_event: Optional[str] = None


@dataclass
class DeviceState:
    device: str
    status: str = "?"
    last_seen: Optional[float] = None  # wall-clock seconds
    rates: Rates = field(default_factory=Rates)
    last_event: Optional[str] = None
    summary: Dict[str, Any] = field(default_factory=dict)
    #: by name, in the order first heard of
    streams: Dict[str, StreamState] = field(default_factory=dict)
    seen: "OrderedDict[Tuple[str, int], None]" = field(default_factory=OrderedDict)

    def stream(self, name: str) -> StreamState:
        state = self.streams.get(name)
        if state is None:
            state = self.streams[name] = StreamState(name)
        return state

    def is_repeat(self, body: Dict[str, Any]) -> bool:
        key = (body.get("run"), body.get("n"))
        if key[0] is None:
            return False
        if key in self.seen:
            return True
        self.seen[key] = None  # type: ignore[index]
        if len(self.seen) > _SEEN:
            self.seen.popitem(last=False)
        return False


class FleetView:
    """Feed it every message (:meth:`on_message`); :meth:`rows` and :meth:`render` say what it knows."""

    def __init__(self, window_s: float = DEFAULT_WINDOW_S):
        self.window_s = window_s
        self.devices: Dict[str, DeviceState] = {}

    def on_message(self, topic: str, payload: bytes, now: float, retained: bool = False) -> None:
        """``now``: wall-clock seconds at receipt. A retained message is old news: not counted as heard now."""
        parts = topics.split_topic(topic)
        if parts is None or parts[1] not in topics.PUBLISHED:
            return
        device, kind = parts
        state = self.devices.setdefault(device, DeviceState(device))
        if kind == topics.STATUS:
            state.status = payload.decode("utf-8", "replace").strip() or "?"
            if not retained:
                state.last_seen = now
            return
        try:
            body = json.loads(payload)
        except ValueError:
            return
        if not isinstance(body, dict) or state.is_repeat(body):
            return
        state.last_seen = max(state.last_seen or 0.0, _sent_at(body) if retained else now) or None
        if kind == topics.DECISIONS:
            records = [r for r in body.get("records", []) if isinstance(r, dict)]
            state.rates.add(records, now)
            by_stream: Dict[str, List[Dict[str, Any]]] = {}
            for record in records:
                if isinstance(record.get("stream"), str):
                    by_stream.setdefault(record["stream"], []).append(record)
            for name, mine in by_stream.items():
                state.stream(name).rates.add(mine, now)
        elif kind == topics.SUMMARY:
            state.summary = body.get("summary") or {}
            for part in state.summary.get("streams") or []:
                if isinstance(part, dict) and isinstance(part.get("stream"), str):
                    stream = state.stream(part["stream"])
                    stream.summary = part
                    stream.state = str(part.get("state", stream.state))
        elif kind == topics.EVENTS:
            state.last_event = body.get("event")
            self._stream_event(state, body)

    @staticmethod
    def _stream_event(state: DeviceState, body: Dict[str, Any]) -> None:
        """A ``stream_state`` event moves its streams' states; an event about one stream is its last event."""
        changed = body.get("streams") if body.get("event") == "stream_state" else None
        if isinstance(changed, dict):
            for name, value in changed.items():
                stream = state.stream(str(name))
                stream.state = str(value)
                stream.last_event = "stream_state"
        elif isinstance(body.get("stream"), str):
            state.stream(body["stream"]).last_event = body.get("event")

    def rows(self, now: float) -> List[Dict[str, Any]]:
        """One dict per device, sorted by name (what ``--json`` prints)."""
        out = []
        for name in sorted(self.devices):
            state = self.devices[name]
            streams = []
            if len(state.streams) > 1:  # a single stream's row is its device's
                streams = [{"stream": s.name, "state": s.state, **s.rates.row(now, self.window_s, s.summary),
                            "decisions": s.rates.decisions, "last_event": s.last_event}
                           for s in state.streams.values()]
            out.append({
                "device": name, "status": state.status, **state.rates.row(now, self.window_s, state.summary),
                "last_seen_s": None if state.last_seen is None else round(max(0.0, now - state.last_seen), 1),
                "decisions": state.rates.decisions, "last_event": state.last_event, "streams": streams,
            })
        return out

    def render(self, now: float) -> str:
        """The table for a terminal."""
        header = ("DEVICE", "STATUS", "DECISIONS/S", "FALLBACK", "TOP REASONS", "LAST SEEN", "LAST EVENT")
        lines = [header]
        for row in self.rows(now):
            seen = "-" if row["last_seen_s"] is None else f"{row['last_seen_s']:.1f} s ago"
            lines.append((row["device"], row["status"], *_rate_cells(row), seen, row["last_event"] or "-"))
            for stream in row["streams"]:  # indented under their device
                state = stream["state"]
                state = state if len(state) <= STATE_WIDTH else state[:STATE_WIDTH - 3] + "..."
                lines.append((f"  {stream['stream']}", state, *_rate_cells(stream), "", stream["last_event"] or "-"))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
        if len(lines) == 1:
            text.append("(no device heard yet)")
        return "\n".join(text)


def _rate_cells(row: Dict[str, Any]) -> Tuple[str, str, str]:
    """DECISIONS/S, FALLBACK and TOP REASONS of a device's or a stream's row."""
    rate = "-" if row["fallback_rate"] is None else f"{row['fallback_rate'] * 100:.1f}%"
    reasons = ", ".join(f"{k} {v}" for k, v in row["top_reasons"].items()) or "-"
    return f"{row['decisions_per_s']:.1f}", rate, reasons


def _sent_at(body: Dict[str, Any]) -> float:
    """The wall-clock time a message says it was made (0 if it does not say)."""
    try:
        return datetime.datetime.fromisoformat(str(body["time"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return 0.0


__all__ = ["FleetView", "DeviceState", "StreamState", "Rates", "DEFAULT_WINDOW_S"]
