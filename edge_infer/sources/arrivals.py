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
  python-can's Notifier pattern, the same as with one stream), which puts the
  stream's number on the loop's event queue for every frame: the loop wakes
  and takes that reader's frames. Restart markers reset the stream's window
  on the loop's thread; a fatal error (a device whose schema does not match
  the model) ends that stream only, and is reported in its state.

The loop's event queue carries other wake-ups too (a model worker that
finished a batch); :meth:`wait` hands those back to the loop.
"""

from __future__ import annotations

import heapq
import logging
import queue
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..deadline.clock import Clock
from ..frame import Frame
from .arrival import ArrivalReader
from .base import EndOfStream, Source
from .log_replay import LogSource

log = logging.getLogger(__name__)


class StreamEnded:
    """Put on the event queue when a stream's source ended (``error`` is None) or failed (a one-line reason)."""

    __slots__ = ("stream", "error")

    def __init__(self, stream: int, error: Optional[str] = None):
        self.stream = stream
        self.error = error


class Arrivals:
    """The frames of ``sources`` (stream ``i`` is ``sources[i]``), taken by one loop thread."""

    def __init__(self, sources: Sequence[Source], clock: Optional[Clock] = None,
                 events: "Optional[queue.SimpleQueue[Any]]" = None):
        """``sources[i]`` is stream ``i``'s: a :class:`LogSource`, or the :class:`ArrivalReader` of a live one."""
        self.sources = list(sources)
        self.clock = clock or Clock()
        #: The loop's one place to wait: live streams with frames, ends, and whatever else must wake it.
        self.events: "queue.SimpleQueue[Any]" = events if events is not None else queue.SimpleQueue()
        self._paced: List[Tuple[int, int]] = []  # heap of (due ns, stream)
        self._unpaced: List[int] = []
        self._live: Dict[int, ArrivalReader] = {}
        for i, source in enumerate(self.sources):
            if isinstance(source, ArrivalReader):
                self._live[i] = source
                source.on_arrival = _putter(self.events, i)
            elif isinstance(source, LogSource):
                (self._paced if source.paced else self._unpaced).append(i)
            else:
                raise TypeError(f"stream {i}: a log or a live source's ArrivalReader, not {type(source).__name__}")
        self.ended: List[bool] = [False] * len(self.sources)

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

    def due(self, now_ns: int, take: Callable[[int, Frame], None], ready: Callable[[int], bool]) -> bool:
        """Hand ``take`` every log frame due by ``now_ns`` (paced), and one frame of each unpaced log that is
        ``ready`` (its last window was decided: a replay as fast as possible waits for the model, it does not
        skip windows). Returns whether an unpaced log gave a frame (then the loop must not sleep)."""
        paced = self._paced
        while paced and paced[0][0] <= now_ns:
            _, i = paced[0]
            source: LogSource = self.sources[i]  # type: ignore[assignment]
            frame = source.take_due()
            if frame is None:
                heapq.heappop(paced)
                self._end(i)
            else:
                take(i, frame)
                due = source.next_due_ns()
                if due is None:
                    heapq.heappop(paced)
                    self._end(i)
                else:
                    heapq.heapreplace(paced, (due, i))
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

    def wait(self, timeout_s: float) -> Optional[Any]:
        """Block up to ``timeout_s`` for an event (a live frame as ``(stream, frame)``, or a wake-up); None if none."""
        try:
            return self.events.get(True, timeout_s) if timeout_s > 0 else self.events.get_nowait()
        except queue.Empty:
            return None

    def poll(self) -> Optional[Any]:
        """An event that is already waiting, or None."""
        try:
            return self.events.get_nowait()
        except queue.Empty:
            return None

    def all_ended(self) -> bool:
        return all(self.ended)

    def _end(self, stream: int, error: Optional[str] = None) -> None:
        self.ended[stream] = True
        self.events.put(StreamEnded(stream, error))

    def take_live(self, stream: int, take: Callable[[int, Frame], None]) -> None:
        """Hand ``take`` every frame live stream ``stream`` has queued; its end or failure ends the stream."""
        reader = self._live[stream]
        while not self.ended[stream]:
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


def _putter(events: "queue.SimpleQueue[Any]", stream: int) -> Callable[[], None]:
    return lambda: events.put(stream)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
