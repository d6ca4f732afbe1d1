"""Human-readable decision lines on the terminal.

Printing every window of a 10 Hz stream scrolls too fast to read, so the
default shows what an operator watches for: when the action or its source
changes. ``all`` prints every decision, ``none`` nothing.
"""

from __future__ import annotations

import sys
from typing import Optional, TextIO

from ..decide.decision import Decision
from .base import Sink

SHOW_MODES = ("changes", "all", "none")


def format_decision(decision: Decision) -> str:
    """One line: where, what, from whom, why, how fast."""
    what = f"{decision.action!s:<12}"
    if decision.is_fallback:
        how = f"fallback ({decision.reason.code})" if decision.reason is not None else "fallback"
    elif decision.output is not None:
        how = f"model {max(decision.output):.2f}"
        if decision.reason is not None:
            how += f" [{decision.reason.code}]"
    else:
        how = "model"
    label = f"  label={decision.label}" if decision.label is not None else ""
    return f"seq {decision.seq:>7}  t={decision.t:9.2f}s  {what} {how:<24} {decision.latency_us:8.0f} us{label}"


class ConsoleSink(Sink):
    """Prints decision lines to a stream (stdout by default)."""

    def __init__(self, show: str = "changes", stream: Optional[TextIO] = None, prefix: str = ""):
        """``prefix`` starts every line (the stream's name, when one runtime decides for several)."""
        if show not in SHOW_MODES:
            raise ValueError(f"show must be one of {SHOW_MODES}")
        self.show = show
        self.stream = stream or sys.stdout
        self.prefix = f"{prefix}  " if prefix else ""
        self._last: Optional[tuple] = None

    def on_decision(self, decision: Decision) -> None:
        if self.show == "none":
            return
        key = (decision.action, decision.source, decision.reason)
        if self.show == "all" or key != self._last:
            self.stream.write(self.prefix + format_decision(decision) + "\n")
        self._last = key

    def close(self) -> None:
        self.stream.flush()
