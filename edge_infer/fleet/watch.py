"""What ``edge-infer fleet watch`` shows: one row per device heard on the broker.

Built from the messages alone (``status``, ``decisions``, ``summary``, ``events``), so it works for any
subscriber: online or not, decisions per second and fallback rate over the last ``window_s`` seconds,
the top fallback reasons, and when the device was last heard from. A message sent twice (at least once
delivery after a crash or a reconnect) is counted once, by its ``run`` and ``n``.
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


@dataclass
class DeviceState:
    device: str
    status: str = "?"
    last_seen: Optional[float] = None  # wall-clock seconds
    decisions: int = 0
    fallbacks: int = 0
    #: (receipt time, decisions, fallbacks, reasons) per decisions message in the window
    recent: Deque[Tuple[float, int, int, Counter]] = field(default_factory=deque)
    last_event: Optional[str] = None
    summary: Dict[str, Any] = field(default_factory=dict)
    seen: "OrderedDict[Tuple[str, int], None]" = field(default_factory=OrderedDict)

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
            reasons = Counter(r.get("reason") or "unknown" for r in records if r.get("source") == "fallback")
            fallbacks = sum(reasons.values())
            state.decisions += len(records)
            state.fallbacks += fallbacks
            state.recent.append((now, len(records), fallbacks, reasons))
        elif kind == topics.SUMMARY:
            state.summary = body.get("summary") or {}
        elif kind == topics.EVENTS:
            state.last_event = body.get("event")

    def rows(self, now: float) -> List[Dict[str, Any]]:
        """One dict per device, sorted by name (what ``--json`` prints)."""
        out = []
        for name in sorted(self.devices):
            state = self.devices[name]
            while state.recent and state.recent[0][0] < now - self.window_s:
                state.recent.popleft()
            decisions = sum(item[1] for item in state.recent)
            fallbacks = sum(item[2] for item in state.recent)
            reasons: Counter = Counter()
            for item in state.recent:
                reasons.update(item[3])
            if not state.recent and state.summary.get("fallback_reasons"):
                reasons = Counter(state.summary["fallback_reasons"])  # nothing live: the last summary's counts
            out.append({
                "device": name, "status": state.status,
                "decisions_per_s": round(decisions / self.window_s, 2),
                "fallback_rate": None if not decisions else round(fallbacks / decisions, 4),
                "top_reasons": dict(reasons.most_common(3)),
                "last_seen_s": None if state.last_seen is None else round(max(0.0, now - state.last_seen), 1),
                "decisions": state.decisions, "last_event": state.last_event,
            })
        return out

    def render(self, now: float) -> str:
        """The table for a terminal."""
        header = ("DEVICE", "STATUS", "DECISIONS/S", "FALLBACK", "TOP REASONS", "LAST SEEN", "LAST EVENT")
        lines = [header]
        for row in self.rows(now):
            rate = "-" if row["fallback_rate"] is None else f"{row['fallback_rate'] * 100:.1f}%"
            reasons = ", ".join(f"{k} {v}" for k, v in row["top_reasons"].items()) or "-"
            seen = "-" if row["last_seen_s"] is None else f"{row['last_seen_s']:.1f} s ago"
            lines.append((row["device"], row["status"], f"{row['decisions_per_s']:.1f}", rate, reasons, seen,
                          row["last_event"] or "-"))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
        if len(lines) == 1:
            text.append("(no device heard yet)")
        return "\n".join(text)


def _sent_at(body: Dict[str, Any]) -> float:
    """The wall-clock time a message says it was made (0 if it does not say)."""
    try:
        return datetime.datetime.fromisoformat(str(body["time"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return 0.0


__all__ = ["FleetView", "DeviceState", "DEFAULT_WINDOW_S"]
