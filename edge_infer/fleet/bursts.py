"""Fallback bursts: the moments an operator of many boards wants pushed, not found in a decision stream.

A fallback now and then is the runtime doing its job; a run of them (the sensor went silent, the
model misses its budget under load, the input is garbage) is an incident. A burst starts when at
least half of the last ``window`` decisions fell back, and ends when ``window`` decisions in a row
did not; one event at each end, with the reasons counted, instead of one per decision.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, Deque, Dict, Optional

DEFAULT_WINDOW = 20


class BurstDetector:
    """Fed every decision record in order; returns an event (a dict) when a burst starts or ends."""

    def __init__(self, window: int = DEFAULT_WINDOW):
        self.window = window
        self._recent: Deque[Optional[str]] = deque(maxlen=window)  # the reason of each fallback, None for the model
        self._fallbacks = 0  # in _recent
        self._calm = 0       # decisions without a fallback in a row
        self._in_burst = False
        self._burst_decisions = 0
        self._burst_reasons: Counter = Counter()

    def feed(self, record: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        reason = (record.get("reason") or "unknown") if record.get("source") == "fallback" else None
        if len(self._recent) == self.window:
            self._fallbacks -= self._recent[0] is not None
        self._recent.append(reason)
        self._fallbacks += reason is not None
        self._calm = 0 if reason is not None else self._calm + 1
        if self._in_burst:
            self._burst_decisions += 1
            if reason is not None:
                self._burst_reasons[reason] += 1
            if self._calm < self.window:
                return None
            self._in_burst = False
            return {"event": "fallback_burst", "state": "end", "seq": record.get("seq"),
                    "decisions": self._burst_decisions, "fallbacks": sum(self._burst_reasons.values()),
                    "reasons": dict(self._burst_reasons)}
        if reason is None or self._fallbacks * 2 < self.window:
            return None
        self._in_burst = True
        self._burst_decisions = len(self._recent)
        self._burst_reasons = Counter(r for r in self._recent if r is not None)
        return {"event": "fallback_burst", "state": "start", "seq": record.get("seq"),
                "fallbacks": self._fallbacks, "of_last": len(self._recent), "reasons": dict(self._burst_reasons)}


__all__ = ["BurstDetector", "DEFAULT_WINDOW"]
