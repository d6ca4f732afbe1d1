"""Human-readable decision lines on the terminal.

Printing every window of a 10 Hz stream scrolls too fast to read, so the
default shows what an operator watches for: when the action or its source
changes. ``all`` prints every decision, ``none`` nothing.
"""

from __future__ import annotations

import os
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
            try:
                self.stream.write(self.prefix + format_decision(decision) + "\n")
            except BrokenPipeError:
                self._reader_gone()
                raise  # once: the CLI ends quietly on it
        self._last = key

    def _reader_gone(self) -> None:
        """The reader closed the pipe (``| head``): print nothing more, here or at exit.

        The runtime still hands the sinks its shutdown decision, and Python flushes stdout at exit;
        either would raise again and print a traceback. Pointing stdout at /dev/null is what Python's
        documentation recommends for it (the signal module's note on SIGPIPE).
        """
        self.show = "none"
        if self.stream is sys.stdout:
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):  # no file descriptor behind it (a test's StringIO)
                pass

    def close(self) -> None:
        self.stream.flush()
