"""Arrival time for a live source: a reader thread that is always reading (python-can's ``Notifier``).

A live source stamps each frame with the host clock at the read that
completed it (``Frame.recv_ns``), and every deadline and ``latency_us`` runs
from that stamp. A stamp is only honest if somebody is reading when the bytes
come in: a loop that reads between invokes would find a model's worth of
frames in the OS buffer and stamp them all at once, late, and then decide on
frames older than it believes. :class:`ArrivalReader` runs the source's
``recv`` in a thread of its own, so frames are stamped as they arrive
whatever the loop is doing, and queues them; the loop takes them with
:meth:`ArrivalReader.recv` and sees how many more already wait with
:meth:`ArrivalReader.backlog` (the never-behind rule, docs/deadlines.md).

The hand-over is a ``deque`` (append and popleft are atomic) and a
:class:`Wake`: a lock used as a binary semaphore that the reader releases only
when the loop said it is about to sleep: one wake-up per frame at most, none
while the loop is busy. Readers of several sources can share one ``Wake``.

A restart of the source's stream (a reconnect, a device reboot) is queued
in order with the frames (:meth:`mark_restart`), so the loop resets its
window between the last frame before and the first frame after, never while
it is deciding.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable, Deque, Dict, List, Optional, Union

from ..frame import Frame
from .base import EndOfStream, Source

log = logging.getLogger(__name__)

#: How long one ``recv`` of the wrapped source may block, so that :meth:`ArrivalReader.close` is prompt.
READ_SLICE_S = 0.05
_RESTART = object()
_END = object()


class Wake:
    """A loop's wake-up, shared by the readers of every source it takes frames from.

    A lock used as a binary semaphore: a reader releases it after queueing a frame, but only when the
    loop said it is about to sleep (:attr:`waiting`), so a busy loop costs the readers nothing; several
    streams' readers can share one (issue 13: one loop, many sources).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.waiting = False

    def notify(self) -> None:
        if self.waiting and self._lock.locked():
            try:
                self._lock.release()
            except RuntimeError:  # another reader released it at the same moment
                pass

    def sleep(self, timeout: Optional[float], ready: Callable[[], int]) -> None:
        """Sleep up to ``timeout`` (None: forever) unless ``ready()`` is already true, or until notified."""
        self.waiting = True  # publish, then look again: a frame queued in between releases the lock
        if not ready():
            self._lock.acquire(True, -1 if timeout is None else timeout)
        self.waiting = False


class ArrivalReader(Source):
    """Reads ``source`` in a thread from :meth:`start` on; the loop takes the frames in order.

    ``restart_listeners`` are called on the loop's thread when the loop reaches
    a restart marker (:meth:`mark_restart`, called by the source on the reader
    thread).
    """

    def __init__(self, source: Source, name: str = "edge-infer-reader", wake: Optional[Wake] = None):
        self.source = source
        self.channels = source.channels
        self.restart_listeners: List[Callable[[], None]] = []
        self._queue: Deque[Any] = collections.deque()
        self.wake = wake or Wake()
        self._closing = False
        self._error: Optional[BaseException] = None
        self.queued_max = 0
        #: Called on the reader thread with each frame before the loop can take it (the backstop arms there).
        self.on_arrival: Optional[Callable[[Frame], None]] = None
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)

    def start(self) -> None:
        """Start reading (after warm-up: frames stamped before the loop can take them would only be old)."""
        if not self._thread.is_alive() and not self._closing:
            self._thread.start()

    @property
    def native_id(self) -> int:
        """The reader thread's id for the OS (``--realtime`` makes it SCHED_FIFO)."""
        return self._thread.native_id  # type: ignore[return-value]

    # --- the reader thread ----------------------------------------------------------------------------------

    def _read(self) -> None:
        recv, queue = self.source.recv, self._queue
        try:
            while not self._closing:
                frame = recv(READ_SLICE_S)
                if frame is not None:
                    if self.on_arrival is not None:
                        self.on_arrival(frame)
                    queue.append(frame)
                    self.wake.notify()
        except EndOfStream:
            queue.append(_END)
        except BaseException as exc:  # a fatal source error (schema mismatch) ends the run on the loop's thread
            self._error = exc
            queue.append(_END)
        self.wake.notify()

    def mark_restart(self) -> None:
        """The source's stream restarted (called on the reader thread, from inside its ``recv``)."""
        self._queue.append(_RESTART)

    # --- the loop's side ------------------------------------------------------------------------------------

    def recv(self, timeout: Optional[float] = None) -> Optional[Frame]:
        queue = self._queue
        if not queue:
            self.wake.sleep(timeout, queue.__len__)
            if not queue:
                return None
        item = queue.popleft()
        if item.__class__ is Frame:
            return item
        return self._special(item)

    def _special(self, item: Any) -> Optional[Frame]:
        if item is _RESTART:
            for listener in self.restart_listeners:
                listener()
            return self.recv(0.0)
        self._queue.appendleft(_END)  # stays the last item: every later recv ends too
        if self._error is not None:
            raise self._error
        raise EndOfStream

    def backlog(self) -> int:
        """Frames (and markers) already arrived that the loop has not taken."""
        n = len(self._queue)
        if n > self.queued_max:
            self.queued_max = n
        return n

    def counters(self) -> Dict[str, Union[int, bool, str, None]]:
        out: Dict[str, Union[int, bool, str, None]] = dict(self.source.counters())
        out["arrival_queue_max"] = self.queued_max
        #: Frames that arrived but were not taken: the loop stopped first.
        out["unread_frames"] = sum(1 for item in self._queue if item.__class__ is Frame)
        return out

    def close(self) -> None:
        """Stop reading (the wrapped source is closed by its owner)."""
        self._closing = True
        if self._thread.is_alive():
            self._thread.join(timeout=1.0 + READ_SLICE_S)
            if self._thread.is_alive():
                log.warning("the source's reader thread did not stop within %.1f s", 1.0 + READ_SLICE_S)



class DeviceClock:
    """When a frame left the device, on the host's clock: the device's timestamp plus the smallest delay seen.

    A reader thread stamps a frame when it *read* it, which is later than when it arrived whenever the
    reader itself waited for a CPU (a loaded machine) or the driver held the bytes. The device's own
    timestamp is taken when it sent the frame; ``offset`` = the smallest ``read stamp − device time``
    seen (the frame that came through fastest) maps device time onto the host clock, so a frame read
    late is still dated when it came. The offset may only rise slowly (``DRIFT_PPM``, a crystal slower
    than the host's), and a device clock that does not advance resets it. The mapped time is never
    after the read stamp, and never more than ``MAX_LAG_NS`` before it (a device clock gone wrong must
    not make every frame look ancient).
    """

    DRIFT_PPM = 500
    MAX_LAG_NS = 1_000_000_000

    def __init__(self) -> None:
        self._offset: Optional[int] = None
        self._last_device_ns = 0
        self._last_read_ns = 0

    def reset(self) -> None:
        """A new epoch (reconnect, reboot): the device's clock restarted."""
        self._offset = None

    def arrival_ns(self, device_ns: int, read_ns: int) -> int:
        sample = read_ns - device_ns
        offset = self._offset
        if offset is None or device_ns <= self._last_device_ns:
            offset = sample
        else:
            offset = min(offset + (read_ns - self._last_read_ns) * self.DRIFT_PPM // 1_000_000, sample)
        self._offset, self._last_device_ns, self._last_read_ns = offset, device_ns, read_ns
        return max(device_ns + offset, read_ns - self.MAX_LAG_NS)
