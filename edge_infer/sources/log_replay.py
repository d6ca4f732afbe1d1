"""Replay a recorded log as a source: as fast as possible, or paced by its timestamps."""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from ..deadline.clock import Clock
from ..errors import LogError
from ..frame import Frame
from ..io import RecordedLog
from .base import EndOfStream, Source


def channel_columns(log: RecordedLog, channels: Optional[List[str]], model_channels: int, where: str) -> List[int]:
    """Which log columns feed the model's channels, in the model's order.

    With a spec, columns are matched by name (the log may order them
    differently or carry extra ones); without, every channel column feeds the
    model in the log's order and their number must match the model's input.
    """
    if channels is None:
        if len(log.channels) != model_channels:
            raise LogError(f"log {where} has {len(log.channels)} channel columns {log.channels}, "
                           f"but the model takes {model_channels} channels")
        return list(range(len(log.channels)))
    missing = [c for c in channels if c not in log.channels]
    if missing:
        raise LogError(f"log {where} has no column {missing[0]!r}; the model spec needs {channels} "
                       f"and the log has {log.channels}")
    return [log.channels.index(c) for c in channels]


class LogSource(Source):
    """Frames from a :class:`RecordedLog`.

    ``speed=None`` replays as fast as the loop can take them; a factor paces
    frame ``i`` at ``(t[i] - t[0]) / speed`` seconds after the first, against
    the absolute start (so waiting never drifts, unlike sleeping per gap).

    A paced frame *arrives* at its due time: that is its ``recv_ns``, whenever
    the loop gets round to reading it, so a loop that falls behind a paced
    replay sees its frames as old as they are (and :meth:`backlog` says how
    many are already due), exactly as it would with a device.
    """

    def __init__(self, log: RecordedLog, columns: List[int], channels: List[str],
                 speed: Optional[float] = None, clock: Optional[Clock] = None, name: str = "log"):
        self.channels = channels
        self.name = name
        self._values = np.ascontiguousarray(log.values[:, columns], dtype=np.float32)
        self._t = log.t
        self._labels = log.labels
        self._bad_rows = log.bad_rows
        self.speed = speed
        self._clock = clock or Clock()
        self._index = 0
        self._start_ns: Optional[int] = None

    def recv(self, timeout: Optional[float] = None) -> Optional[Frame]:
        i = self._index
        if i >= len(self._t):
            raise EndOfStream
        if self.speed is None:
            arrived = self._clock.now_ns()
        else:
            arrived = self._wait_due(i, timeout)
            if arrived is None:
                return None
        self._index = i + 1
        # positional: keyword arguments cost more than the rest of this method (one frame per sample)
        return Frame(i, self._t.item(i), arrived, self._values[i], None if self._labels is None else self._labels[i],
                     None)

    @property
    def values(self) -> np.ndarray:
        """Every frame's values, ``(frames, channels)``: a frame from :meth:`recv` is a view of row ``seq``."""
        return self._values

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start`` to ``stop - 1`` (fewer at the end of the log) as ``(n, channels)``, by ``seq``:
        what the input checks read ahead (:meth:`~edge_infer.checks.guard.InputGuard.read_ahead`)."""
        return self._values[start:stop]

    def _wait_due(self, i: int, timeout: Optional[float]) -> Optional[int]:
        """Wait (up to ``timeout``) until frame ``i`` is due; its due time, or None if it is not due yet."""
        now = self._clock.now_ns()
        if self._start_ns is None:
            self._start_ns = now
        due = self._start_ns + int((self._t[i] - self._t[0]) / self.speed * 1e9)
        if timeout is not None and due - now > timeout * 1e9:
            self._clock.sleep_until(now + int(timeout * 1e9))
            return None
        self._clock.sleep_until(due)
        return due

    def backlog(self) -> int:
        """Paced: the frames already due and not yet read (a loop that is behind has some)."""
        if self.speed is None or self._start_ns is None:
            return 0
        t_now = self._t[0] + (self._clock.now_ns() - self._start_ns) * self.speed / 1e9
        return max(0, int(np.searchsorted(self._t, t_now, side="right")) - self._index)

    # --- pacing by a loop that serves many sources (edge_infer.sources.arrivals) ----------------------------------

    @property
    def paced(self) -> bool:
        return self.speed is not None

    def start_pacing(self, start_ns: int) -> int:
        """Frame 0 is due at ``start_ns``; returns when the next frame is due."""
        self._start_ns = start_ns
        return self._due_ns(self._index)

    def _due_ns(self, i: int) -> int:
        return self._start_ns + int((self._t[i] - self._t[0]) / self.speed * 1e9)  # type: ignore[operator]

    def next_due_ns(self) -> Optional[int]:
        """When the next frame is due on the loop clock; None after the last one."""
        return self._due_ns(self._index) if self._index < len(self._t) else None

    def take_due(self) -> Optional[Frame]:
        """The next frame without waiting, stamped with its due time (its arrival); None after the last one."""
        i = self._index
        if i >= len(self._t):
            return None
        self._index = i + 1
        return Frame(seq=i, t=float(self._t[i]), recv_ns=self._due_ns(i), values=self._values[i],
                     label=None if self._labels is None else self._labels[i], device_seq=None)

    def counters(self) -> Dict[str, int]:
        out: Dict[str, int] = {"rows": len(self._t), "bad_rows": len(self._bad_rows)}
        if self._bad_rows:
            out["first_bad_line"] = self._bad_rows[0][0]
        return out
