"""The recording sink: raw frames, decisions and device HELLOs into MCAP, crash-safe to about a second.

A field recording is only worth something if it survives what happens in
the field: the service killed by the watchdog, the Pi's power pulled. MCAP
is append-only with its index written last, and the ``mcap`` writer buffers
messages in a chunk until the chunk is full (256 KiB here: minutes at 10 Hz).
So once per ``flush_interval_s`` the write that finds the interval over
closes the open chunk and hands it to the OS (that survives SIGKILL; it
costs a small zstd compression, in the loop), and a background thread
fsyncs it (that survives a power cut; tens of ms on an SD card, off the
loop). A file cut off anywhere reads back up to its last flush
(:func:`edge_infer.io.mcap_log.read_mcap`). When the source goes silent, no
write comes to flush what is pending, so the thread flushes it.

Why the loop flushes and not the thread: a thread that takes the writer's
lock on a timer starves while the loop takes it hundreds of times a second
(Python's lock is not fair); measured in ``scripts/bench_recording.py``.

With ``max_bytes`` the recording rotates: parts ``NAME-0001.mcap``,
``NAME-0002.mcap``, ... each a complete MCAP file with its own metadata (and
the last HELLO), started when a flush finds the current part over the size.
A recording never overwrites one on disk: a service restarted after a crash
would otherwise erase the very recording of the crash. Numbering continues
after the highest part there, and an existing ``NAME.mcap`` makes the new
recording a numbered part.

A recording that fails (disk full, card pulled) logs one error and stops;
the decision loop, which steers hardware, goes on.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..deadline.clock import Clock
from ..decide.decision import Decision
from ..errors import EdgeInferError
from ..frame import Frame
from ..io.mcap_log import McapLogWriter
from .base import Sink

#: How often the open chunk is written and fsynced: the most a crash can lose.
FLUSH_INTERVAL_S = 1.0
#: Tells the background thread to finish (descriptors are never negative).
_STOP = -1

log = logging.getLogger(__name__)


def part_path(path: Path, number: int) -> Path:
    """``rec.mcap`` -> ``rec-0001.mcap``: the name of rotation part ``number``."""
    return path.with_name(f"{path.stem}-{number:04d}{path.suffix}")


def highest_part(path: Path) -> int:
    """The highest part number already on disk for ``path`` (0 if none): a restarted service continues
    after it instead of overwriting the recording of the run that crashed."""
    numbers = [int(p.stem[len(path.stem) + 1:]) for p in path.parent.glob(f"{path.stem}-[0-9][0-9][0-9][0-9]*")
               if p.suffix == path.suffix and p.stem[len(path.stem) + 1:].isdigit()]
    return max(numbers, default=0)


def hello_fields(hello: Any) -> Dict[str, Any]:
    """A HELLO as JSON-ready fields: a dataclass (``firmware_bridge.protocol.Hello``) or a mapping."""
    fields = dataclasses.asdict(hello) if dataclasses.is_dataclass(hello) else dict(hello)
    return {key: _plain(value) for key, value in fields.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class RecordingSink(Sink):
    """Records every frame and decision (and each HELLO given to :meth:`on_hello`) to MCAP.

    ``metadata`` (strings) goes into each file's ``edge_infer`` metadata
    record. ``flush_interval_s=None`` starts no thread: the caller flushes
    (tests use that to rotate deterministically).
    """

    def __init__(self, path: "str | Path", channels: Sequence[str], metadata: Dict[str, str], *,
                 max_bytes: Optional[int] = None, flush_interval_s: Optional[float] = FLUSH_INTERVAL_S,
                 clock: Optional[Clock] = None):
        self.path = Path(path)
        self.channels = list(channels)
        self.metadata = dict(metadata)
        self.max_bytes = max_bytes
        self.clock = clock or Clock()
        #: Added to the monotonic clock to get wall-clock ns since the epoch (MCAP's log_time).
        self._wall_offset_ns = time.time_ns() - self.clock.now_ns()
        self.paths: List[Path] = []
        self._part = 0
        self._last_hello: Optional[Tuple[Dict[str, Any], int]] = None
        self._lock = threading.Lock()
        self._failed = False
        self._dirty = False
        self._writer = self._open_part()
        self._interval_ns = None if flush_interval_s is None else int(flush_interval_s * 1e9)
        self._due_ns = self._next_due()
        self._to_sync: "queue.Queue[int]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        if flush_interval_s is not None:
            self._thread = threading.Thread(target=self._sync_in_background, args=(flush_interval_s,),
                                            name="edge-infer-recorder", daemon=True)
            self._thread.start()

    # --- the decision loop's side ---------------------------------------------------------------------------

    def on_frame(self, frame: Frame) -> None:
        with self._lock:
            self._write(self._writer.write_frame if not self._failed else None, frame.seq, frame.t, frame.values,
                        frame.label, frame.recv_ns + self._wall_offset_ns, frame.device_seq)

    def on_decision(self, decision: Decision) -> None:
        with self._lock:
            self._write(self._writer.write_decision if not self._failed else None, decision.to_record(),
                        self._wall_now())

    def on_hello(self, hello: Any, recv_ns: Optional[int] = None) -> None:
        """Record a device HELLO (a ``Hello`` dataclass or a mapping); ``recv_ns`` on the loop's clock."""
        fields = hello_fields(hello)
        received = self._wall_now() if recv_ns is None else recv_ns + self._wall_offset_ns
        with self._lock:
            self._last_hello = (fields, received)
            self._write(self._writer.write_hello if not self._failed else None, fields, received, received)

    def _write(self, call: Any, *args: Any) -> None:
        """A write under the lock; at most once per interval it also closes the chunk (the fsync is queued)."""
        if call is None or self._guard(call, *args) is None:
            return
        self._dirty = True
        if self._interval_ns is not None and self.clock.now_ns() >= self._due_ns:
            fd = self._flush_locked()
            if fd is not None:
                self._to_sync.put(fd)

    # --- flushing, rotation, closing ------------------------------------------------------------------------

    def flush(self) -> None:
        """Write the open chunk to the OS and fsync it now (rotating if the part is full)."""
        with self._lock:
            fd = self._flush_locked()
        self._sync(fd)

    def close(self) -> None:
        """Stop the background thread, write the summary and footer, fsync. Safe to call twice."""
        if self._thread is not None:
            self._to_sync.put(_STOP)
            self._thread.join()
            self._thread = None
        with self._lock:
            if not self._failed:
                self._guard(self._writer.close)
            self._failed = True  # nothing more is written

    def _flush_locked(self) -> Optional[int]:
        """With the lock held: close the chunk, hand it to the OS, rotate if the part is full. Returns a
        descriptor of the file to fsync (the caller closes it), or None if there was nothing to write."""
        self._due_ns = self._next_due()
        if self._failed or not self._dirty:
            return None
        self._dirty = False
        if self._guard(self._writer.flush, False) is None:
            return None
        fd = self._guard(self._writer.dup_fd)
        if self.max_bytes is not None and self._writer.size >= self.max_bytes:
            self._rotate()
        return fd

    def _sync_in_background(self, interval_s: float) -> None:
        """fsync what the loop flushed (an SD card may take tens of ms), and flush when the loop has not:
        a silent source writes nothing that would trigger a flush."""
        while True:
            try:
                fd = self._to_sync.get(timeout=interval_s)
            except queue.Empty:
                with self._lock:
                    fd = self._flush_locked() if self.clock.now_ns() >= self._due_ns else None
            if fd == _STOP:
                return
            self._sync(fd)

    def _sync(self, fd: Optional[int]) -> None:
        if fd is None:
            return
        try:
            os.fsync(fd)
        except OSError as exc:
            self._fail(exc)
        finally:
            os.close(fd)

    def _rotate(self) -> None:
        """Close the full part (its fsync goes with the descriptor the flush returns) and open the next."""
        if self._guard(self._writer.close, False) is None:
            return
        self._writer = self._guard(self._open_part)
        if self._writer is not None and self._last_hello is not None:
            fields, received = self._last_hello
            self._guard(self._writer.write_hello, fields, received, received)
            self._dirty = True

    def _next_due(self) -> int:
        return self.clock.now_ns() + (self._interval_ns or 0)

    def _open_part(self) -> McapLogWriter:
        if self.max_bytes is None and not self.paths and not self.path.exists():
            path, number = self.path, 1
        else:
            number = (self._part or highest_part(self.path)) + 1
            path = part_path(self.path, number)
            if not self.paths and self.max_bytes is None:
                log.warning("%s exists: recording to %s instead (recordings are never overwritten)", self.path, path)
        writer = McapLogWriter(path, self.channels, {**self.metadata, "part": str(number)})
        self._part = number
        self.paths.append(path)
        return writer

    def _wall_now(self) -> int:
        return self.clock.now_ns() + self._wall_offset_ns

    def _guard(self, call: Any, *args: Any) -> Any:
        """Run a writer call; if the disk fails it, log once and stop recording (returns None), else return
        its result (True for calls without one)."""
        try:
            result = call(*args)
        except (OSError, EdgeInferError) as exc:
            self._fail(exc)
            return None
        return True if result is None else result

    def _fail(self, exc: Exception) -> None:
        if not self._failed:
            self._failed = True
            log.error("recording to %s stopped: %s", self.paths[-1] if self.paths else self.path,
                      getattr(exc, "strerror", None) or exc)


__all__ = ["RecordingSink", "FLUSH_INTERVAL_S", "part_path", "highest_part", "hello_fields"]
