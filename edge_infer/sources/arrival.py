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
    """When a frame left the device, on the host's clock: the device's timestamp mapped through the lower envelope
    of ``read stamp − device time``.

    A reader thread stamps a frame when it *read* it, which is later than when it arrived whenever the reader
    itself waited for a CPU or the GIL, or the driver held the bytes. The device's own timestamp is taken when it
    sent the frame; ``read − device`` is then the clock offset plus that frame's delay, and the frames that came
    through fastest show the offset. Device crystals run fast or slow (tens of ppm), so the offset moves: the
    smallest sample of each :data:`BUCKET_NS` of device time is kept for the last :data:`BUCKETS`, the skew is the
    slope from the lowest of the older half to the lowest of the newer half, "lowest" along the skew known so far (at
    most :data:`DRIFT_PPM` either
    way), and a frame's offset is the lowest kept minimum carried forward along that skew. So a stretch in which
    the reader is late for every frame (a busy Python thread), shorter than half the kept span, moves neither
    the skew nor the estimate; an earlier version let the offset rise at the largest drift believed (500 ppm)
    whenever no frame came through fast, and dated frames up to 0.6 ms late after a second of a busy thread
    (docs/performance.md 5.7). Until the kept minima span :data:`SKEW_SPAN_NS` the skew is taken as none: a
    device clock slower than the host's then makes frames look older than they are (a deadline counted from
    before the frame came), never younger. The mapped time is never after the read stamp, and never more than
    :data:`MAX_LAG_NS` before it (a device clock gone wrong must not make every frame look ancient); a device
    clock that does not advance, or a frame :data:`STEP_NS` faster than the envelope (the clock jumped ahead,
    which a skew would otherwise take for drift for half a minute), starts the mapping again. Limits: a device
    clock slower than the host's by more than :data:`DRIFT_PPM` (a ceramic resonator far off) is followed at
    that rate only, so its frames look older and older; a reader late for every frame for longer than half
    the kept span tilts the skew (measured: 0.3 ms late after 32-40 s of it).
    """

    BUCKET_NS = 1_000_000_000
    BUCKETS = 64
    SKEW_SPAN_NS = 16 * BUCKET_NS
    DRIFT_PPM = 500
    MAX_LAG_NS = 1_000_000_000
    #: A frame this much faster than the envelope says: the device clock jumped ahead (not drift: start again).
    STEP_NS = 2_000_000

    def __init__(self) -> None:
        #: Completed buckets: (device ns, smallest ``read − device`` in it) at the frame that had it.
        self._minima: Deque["tuple[int, int]"] = collections.deque(maxlen=self.BUCKETS)
        self._bucket_end = 0  # device ns at which the open bucket closes
        self._open: Optional["tuple[int, int]"] = None  # the open bucket's smallest sample so far
        self._skew = 0.0  # device-clock drift against the host's: d(offset) / d(device time)
        self._base = 0.0  # min over completed buckets of (sample − skew · device time)
        self._last_device_ns = -1

    def reset(self) -> None:
        """A new epoch (reconnect, reboot): the device's clock restarted."""
        self._minima.clear()
        self._open = None
        self._bucket_end = 0
        self._skew = 0.0
        self._last_device_ns = -1

    def arrival_ns(self, device_ns: int, read_ns: int) -> int:
        sample = read_ns - device_ns
        if device_ns <= self._last_device_ns or (self._minima and sample < self._base + self._skew * device_ns
                                                  - self.STEP_NS):
            self.reset()  # the device clock went back, or jumped ahead: the envelope is of another clock
        self._last_device_ns = device_ns
        if device_ns >= self._bucket_end:
            self._close_bucket(device_ns)
        if self._open is None or sample < self._open[1]:
            self._open = (device_ns, sample)
        opened, least = self._open
        skew = self._skew
        offset = least + skew * (device_ns - opened)
        if self._minima:
            carried = self._base + skew * device_ns
            if carried < offset:
                offset = carried
        return max(min(device_ns + int(offset), read_ns), read_ns - self.MAX_LAG_NS)

    def _close_bucket(self, device_ns: int) -> None:
        """The open bucket's minimum joins the kept ones; the skew and the carried minimum are worked out again."""
        if self._open is not None:
            self._minima.append(self._open)
        self._open = None
        self._bucket_end = device_ns + self.BUCKET_NS
        minima = self._minima
        if not minima:
            return
        if minima[-1][0] - minima[0][0] >= self.SKEW_SPAN_NS:
            points = list(minima)
            self._skew = self._refit(points, self._skew)
            self._skew = self._refit(points, self._skew)  # again, the lowest points chosen along the new skew
        skew = self._skew
        self._base = min(sample - skew * at for at, sample in minima)

    def _refit(self, minima: List["tuple[int, int]"], skew: float) -> float:
        """The slope from the lowest point of the older half to the lowest of the newer, "lowest" along ``skew``
        (with a drifting clock the lowest raw sample is merely the newest)."""
        half = len(minima) // 2
        older = min(minima[:half], key=lambda point: point[1] - skew * point[0])
        newer = min(minima[half:], key=lambda point: point[1] - skew * point[0])
        if newer[0] - older[0] < self.SKEW_SPAN_NS // 2:
            return skew
        limit = self.DRIFT_PPM / 1e6
        return max(-limit, min(limit, (newer[1] - older[1]) / (newer[0] - older[0])))
