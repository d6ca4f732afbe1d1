"""A one-line progress bar on stderr for long replays, as a sink that counts frames.

A replay of a day-long field log takes minutes; without a sign of life
people kill it. The bar is drawn only on a terminal (never into a log file
or a pipe, where carriage returns are noise) and at most a few times a
second, so it costs one counter and one clock read per frame. It is written
here rather than taken from tqdm: a dozen lines, and no dependency to
install on every Pi for a lab-side feature.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Callable, Optional, TextIO

from ..decide.decision import Decision
from ..frame import Frame
from .base import Sink

#: Seconds between redraws.
REDRAW_S = 0.25


def wanted(choice: Optional[bool], stream: TextIO) -> bool:
    """``--progress``/``--no-progress``, or by default: only when ``stream`` is a terminal."""
    if choice is not None:
        return choice
    return bool(getattr(stream, "isatty", lambda: False)())


class ProgressBar(Sink):
    """``label [#####.....]  45%  12345/27000 frames  3400 frames/s  ~4 s left``, redrawn in place."""

    def __init__(self, total: int, label: str = "replay", stream: Optional[TextIO] = None,
                 clock: Callable[[], float] = time.monotonic, unit: str = "frames"):
        self.total = max(total, 1)
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.clock = clock
        self.done = 0
        self._started = clock()
        self._next_draw = self._started + REDRAW_S

    def on_frame(self, frame: Frame) -> None:
        self.done += 1
        now = self.clock()
        if now >= self._next_draw:
            self._next_draw = now + REDRAW_S
            self._draw(now)

    def advance(self, count: int) -> None:
        """``count`` more done (``eval`` counts logs), redrawn if due."""
        self.done += count
        now = self.clock()
        if now >= self._next_draw:
            self._next_draw = now + REDRAW_S
            self._draw(now)

    def on_decision(self, decision: Decision) -> None:
        """Decisions do not move the bar."""

    def close(self) -> None:
        """Draw the final state (even of a replay too short for a redraw) and end the line."""
        if self.done:
            self._draw(self.clock())
            self.stream.write("\n")
            self.stream.flush()

    def line(self, now: float) -> str:
        """The bar's text at time ``now``, fitted to the terminal's width."""
        fraction = min(self.done / self.total, 1.0)
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        left = f"  ~{(self.total - self.done) / rate:.0f} s left" if rate > 0 and self.done < self.total else ""
        digits = 0 if rate >= 10 else 1
        tail = f" {fraction:4.0%}  {self.done}/{self.total} {self.unit}  {rate:.{digits}f} {self.unit}/s{left}"
        width = max(10, min(40, shutil.get_terminal_size((80, 20)).columns - len(self.label) - len(tail) - 4))
        filled = int(round(fraction * width))
        return f"{self.label} [{'#' * filled}{'.' * (width - filled)}]{tail}"

    def _draw(self, now: float) -> None:
        self.stream.write("\r" + self.line(now) + "\033[K")  # clear what a longer line left
        self.stream.flush()
