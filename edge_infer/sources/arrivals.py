"""Frames from many sources for one loop, each stamped when it arrived.

A runtime with many streams cannot block in one source's ``recv``: while it
waits there, the other sources' frames queue up unseen and their deadlines
run. :class:`Arrivals` gives the loop one place to wait and one call to take
every frame that has arrived, from any stream, stamped with its arrival:

* a **paced log** needs no thread: its frame ``i`` is due at
  ``start + (t[i] - t[0]) / speed``, and that due time is its arrival stamp
  (the loop may take it a little later; its deadline does not move). The
  logs are kept in a heap by due time, so the loop sleeps until the next one;
* an **unpaced log** (``speed=max``) gives one frame per turn, round robin,
  to the streams that are ready for one;
* a **live source** (a device on a serial port) is read by its stream's
  :class:`~.arrival.ArrivalReader` (a thread that reads, stamps and queues,
  python-can's Notifier pattern, the same as with one stream); every reader
  shares the loop's one :class:`~.arrival.Wake`, released only when the loop
  is about to sleep. Restart markers reset the stream's window on the loop's
  thread; a fatal error (a device whose schema does not match the model)
  ends that stream only, and is reported in its state.

A model worker that finished a batch releases the same ``Wake``.
"""

from __future__ import annotations

import heapq
import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..deadline.clock import Clock
from ..frame import Frame
from .arrival import ArrivalReader, Wake
from .base import EndOfStream, Source
from .log_replay import LogSource

log = logging.getLogger(__name__)


class StreamEnded:
    """A stream whose source ended (``error`` is None) or failed (a one-line reason)."""

    __slots__ = ("stream", "error")

    def __init__(self, stream: int, error: Optional[str] = None):
        self.stream = stream
        self.error = error


class Arrivals:
    """The frames of ``sources`` (stream ``i`` is ``sources[i]``), taken by one loop thread."""

    def __init__(self, sources: Sequence[Source], clock: Optional[Clock] = None, wake: Optional[Wake] = None):
        """``sources[i]`` is stream ``i``'s: a :class:`LogSource`, or the :class:`ArrivalReader` of a live one.
        Every reader is given ``wake``, the loop's one wake-up (others, a model worker, may share it too)."""
        self.sources = list(sources)
        self.clock = clock or Clock()
        self.wake = wake or Wake()
        self._paced: List[Tuple[int, int]] = []  # heap of (due ns, stream)
        self._unpaced: List[int] = []
        self._live: Dict[int, ArrivalReader] = {}
        for i, source in enumerate(self.sources):
            if isinstance(source, ArrivalReader):
                self._live[i] = source
                source.wake = self.wake
            elif isinstance(source, LogSource):
                (self._paced if source.paced else self._unpaced).append(i)
            else:
                raise TypeError(f"stream {i}: a log or a live source's ArrivalReader, not {type(source).__name__}")
        self._readers = list(self._live.items())
        self.ended: List[bool] = [False] * len(self.sources)
        self._ends: List[StreamEnded] = []

    def start(self) -> None:
        """Start the clock of every paced log and the reader of every live source: frames are stamped from now."""
        now = self.clock.now_ns()
        self._paced = [(self.sources[i].start_pacing(now), i) for i in self._paced]  # type: ignore[attr-defined]
        heapq.heapify(self._paced)
        for reader in self._live.values():
            reader.start()

    def next_due_ns(self) -> Optional[int]:
        """When the next paced log frame is due (None if none is)."""
        return self._paced[0][0] if self._paced else None

    def take(self, now_ns: int, take: Callable[[int, Frame], None], ready: Callable[[int], bool]) -> bool:
        """Hand ``take`` every frame that has arrived: paced log frames due by ``now_ns``, every frame a live
        reader queued, and one frame of each unpaced log that is ``ready`` (its last window was decided: a
        replay as fast as possible waits for the model, it does not skip windows). Returns whether an unpaced
        log gave a frame (then the loop must not sleep)."""
        paced = self._paced
        while paced and paced[0][0] <= now_ns:
            _, i = paced[0]
            source: LogSource = self.sources[i]  # type: ignore[assignment]
            frame = source.take_due()
            due = None if frame is None else source.next_due_ns()
            if frame is not None:
                take(i, frame)
            if due is None:
                heapq.heappop(paced)
                self._end(i)
            else:
                heapq.heapreplace(paced, (due, i))
        for i, reader in self._readers:
            if reader.backlog() and not self.ended[i]:
                self._take_live(i, reader, take)
        gave = False
        for i in list(self._unpaced):
            if not ready(i):
                continue
            try:
                frame = self.sources[i].recv(0.0)
            except EndOfStream:
                self._unpaced.remove(i)
                self._end(i)
                continue
            if frame is not None:
                gave = True
                take(i, frame)
        return gave

    def wait(self, timeout_s: float, ready: Callable[[], bool]) -> None:
        """Sleep up to ``timeout_s`` unless a live frame is queued or ``ready()`` (a model worker reported)."""
        readers = self._readers
        self.wake.sleep(timeout_s, lambda: ready() or any(r.backlog() for _, r in readers))

    def take_ends(self) -> List[StreamEnded]:
        """The streams that ended or failed since the last call."""
        ends, self._ends = self._ends, []
        return ends

    def all_ended(self) -> bool:
        return all(self.ended)

    def _end(self, stream: int, error: Optional[str] = None) -> None:
        self.ended[stream] = True
        self._ends.append(StreamEnded(stream, error))

    def _take_live(self, stream: int, reader: ArrivalReader, take: Callable[[int, Frame], None]) -> None:
        """Hand ``take`` every frame a live reader has queued; its end or failure ends the stream, not the run."""
        while True:
            try:
                frame = reader.recv(0.0)
            except EndOfStream:
                self._end(stream)
                return
            except Exception as exc:  # a fatal source error ends this stream, never the others
                log.error("stream %s stopped: %s", getattr(reader.source, "name", stream), _one_line(exc))
                self._end(stream, _one_line(exc))
                return
            if frame is None:
                return
            take(stream, frame)

    def close(self) -> None:
        """Stop the readers; the loop closes the sources themselves after."""
        for reader in self._live.values():
            reader.close()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
