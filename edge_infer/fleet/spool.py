"""Store and forward: a bounded on-disk queue of MQTT messages that survives restarts and power cuts.

A field link drops for minutes at a time, and a Mosquitto bridge with a clean
session does not buffer meanwhile: what is not kept on the board is lost. So
every message the MQTT sink publishes goes through this spool first
(write-ahead), and leaves it only when the broker acknowledged it (QoS 1
PUBACK). One code path whether the broker is up or not, and the order is the
order of the file.

Format (docs/fleet.md, "Spool"): a directory of append-only segment files
``00000001.seg``, ``00000002.seg``, ...; each record is a 12-byte header
(magic ``EI``, flags, topic length, payload length, CRC-32 of everything but
the CRC) followed by the topic suffix and the payload. The file ``acked``
holds the position (segment, offset) up to which the broker has
acknowledged; it is replaced atomically (write, fsync, rename, fsync of the
directory). A record is
appended with one ``write`` call; the segment is fsynced at most once per
``sync()`` (the sink calls it every second and at stop), so a power cut
loses at most the last second of messages, and a torn record at a segment's
end is found by its length or CRC at the next start and cut off. Nothing is
ever rewritten in place. Delivery is at least once: messages sent after the
last ack was saved are sent again after a crash (each carries a number, so a
consumer can drop repeats).

The bound: when the segments exceed ``max_bytes``, whole oldest segments are
dropped, and the records in them that were not yet sent are counted as
dropped (the sink announces it on ``events``). Only the single owner may
use a spool directory: a second process gets a clear error (``flock``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Dict, List, NamedTuple, Optional, Tuple

from ..errors import EdgeInferError
from ..io.files import replace_atomically, sync_folder

log = logging.getLogger(__name__)

MAGIC = b"EI"
#: magic, flags, topic length, payload length, CRC-32 (of the header's first 8 bytes, the topic and the payload)
HEADER = struct.Struct("<2sBBII")
RETAIN = 0x01
SEGMENT_SUFFIX = ".seg"
ACK_FILE = "acked"
LOCK_FILE = "lock"
MIN_SEGMENT_BYTES = 4096

#: (segment number, byte offset in it): where a record ends, or where reading goes on.
Position = Tuple[int, int]


class SpoolError(EdgeInferError):
    """The spool directory cannot be used (permissions, another process owns it)."""


class SpoolRecord(NamedTuple):
    """One stored message and the position just past it (what its acknowledgement moves the ack to)."""

    topic: str
    payload: bytes
    retain: bool
    end: Position


def encode(topic: str, payload: bytes, retain: bool) -> bytes:
    """A record as it is written: header, topic, payload."""
    name = topic.encode("utf-8")
    if len(name) > 255:
        raise ValueError(f"topic suffix too long: {topic!r}")
    head = HEADER.pack(MAGIC, RETAIN if retain else 0, len(name), len(payload), 0)[:8]
    crc = zlib.crc32(payload, zlib.crc32(name, zlib.crc32(head)))
    return head + struct.pack("<I", crc) + name + payload


def read_record(file: BinaryIO, segment: int) -> Optional[SpoolRecord]:
    """The record at the file's position, or None at its end or at a torn or corrupt record."""
    head = file.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    magic, flags, name_len, size, crc = HEADER.unpack(head)
    if magic != MAGIC:
        return None
    body = file.read(name_len + size)
    if len(body) < name_len + size or zlib.crc32(body, zlib.crc32(head[:8])) != crc:
        return None
    return SpoolRecord(body[:name_len].decode("utf-8", "replace"), body[name_len:], bool(flags & RETAIN),
                       (segment, file.tell()))


class Spool:
    """The queue on disk: :meth:`append` at the tail, :meth:`next_unsent` from a send cursor, :meth:`acknowledge`.

    Used by one thread (the MQTT sink's worker); counters are plain ints another thread may read.
    """

    def __init__(self, directory: "str | Path", max_bytes: int, segment_bytes: Optional[int] = None):
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.segment_bytes = max(MIN_SEGMENT_BYTES, int(segment_bytes or self.max_bytes // 8))
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock_fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot use spool directory {self.directory}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise SpoolError(f"spool directory {self.directory} is in use by another edge-infer process; "
                             "give each process its own --spool") from None
        #: records appended, acknowledged by the broker, dropped at the bound (this process), and waiting now
        self.spooled = self.sent = self.dropped = 0
        self.backlog = 0
        #: records cut off at start because they were torn (power cut while writing) or corrupt
        self.corrupt = 0
        self._sizes: Dict[int, int] = {}
        self._ack: Position = (0, 0)
        self._saved_ack: Position = (0, 0)
        self._recover()
        last = max(self._sizes, default=0)
        if not self._sizes or self._sizes[last] >= self.segment_bytes:
            last += 1
            self._sizes[last] = 0
        self._active = last
        self._fd = self._open_append(last)
        self._dirty = False
        self._cursor: Position = self._ack
        self._reader: Optional[BinaryIO] = None
        self._reader_segment = -1

    # --- start: recover what the last process left -------------------------------------------------------

    def _recover(self) -> None:
        """Read the ack, check every segment record by record, cut torn tails, count what is waiting."""
        segments = sorted(int(p.stem) for p in self.directory.glob("*" + SEGMENT_SUFFIX) if p.stem.isdigit())
        self._ack = self._read_ack(segments)
        for number in segments:
            if number < self._ack[0]:  # fully acknowledged before the last stop: deleting it was interrupted
                self._remove(number)
                continue
            path = self._path(number)
            good, waiting, size = 0, 0, path.stat().st_size
            with path.open("rb") as file:
                while True:
                    record = read_record(file, number)
                    if record is None:
                        break
                    good = record.end[1]
                    if record.end > self._ack:
                        waiting += 1
            if good < size:
                log.warning("spool %s: cut %d bytes of a torn or corrupt record at offset %d (a power cut "
                            "while it was written)", path, size - good, good)
                self.corrupt += 1
                os.truncate(path, good)
            self._sizes[number] = good
            self.backlog += waiting
        if self._sizes and self._ack < (min(self._sizes), 0):
            self._ack = (min(self._sizes), 0)
        self._saved_ack = self._ack

    def _read_ack(self, segments: List[int]) -> Position:
        try:
            seg, off = (self.directory / ACK_FILE).read_text().split()
            return int(seg), int(off)
        except FileNotFoundError:
            return (segments[0], 0) if segments else (0, 0)
        except (OSError, ValueError):
            log.warning("spool %s: unreadable ack file; sending everything in the spool again", self.directory)
            return (segments[0], 0) if segments else (0, 0)

    # --- the tail ----------------------------------------------------------------------------------------

    def append(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Add a message at the tail (one ``write``; fsynced by the next :meth:`sync`); enforce the bound."""
        data = encode(topic, payload, retain)
        if self._sizes[self._active] and self._sizes[self._active] + len(data) > self.segment_bytes:
            self._rotate()
        written = os.write(self._fd, data)
        if written != len(data):  # a full disk: take the partial record back, so the file stays readable
            os.ftruncate(self._fd, self._sizes[self._active])
            raise OSError(28, f"short write to the spool ({written} of {len(data)} bytes)")
        self._sizes[self._active] += len(data)
        self._dirty = True
        self.spooled += 1
        self.backlog += 1
        self._enforce_bound()

    def _rotate(self) -> None:
        os.fsync(self._fd)  # a finished segment is complete on disk before the next one exists
        os.close(self._fd)
        self._active += 1
        self._sizes[self._active] = 0
        self._fd = self._open_append(self._active)
        sync_folder(self._path(self._active))  # the new segment's name survives a power cut too

    def _enforce_bound(self) -> int:
        """Drop whole oldest segments while the spool is over its bound; returns the records dropped."""
        dropped = 0
        while sum(self._sizes.values()) > self.max_bytes and len(self._sizes) > 1:
            oldest = min(self._sizes)
            start = self._ack[1] if self._ack[0] == oldest else 0
            lost = self._count_from(oldest, start)
            self._remove(oldest)
            del self._sizes[oldest]
            nxt = (min(self._sizes), 0)
            self._ack = max(self._ack, nxt)
            if self._cursor < nxt:
                self._cursor = nxt
            dropped += lost
        if dropped:
            self.dropped += dropped
            self.backlog -= dropped
        return dropped

    def _count_from(self, segment: int, offset: int) -> int:
        count = 0
        with self._path(segment).open("rb") as file:
            file.seek(offset)
            while read_record(file, segment) is not None:
                count += 1
        return count

    # --- the head ----------------------------------------------------------------------------------------

    def next_unsent(self) -> Optional[SpoolRecord]:
        """The next record after the send cursor (None if all were handed out); moves the cursor past it."""
        while True:
            segment, offset = self._cursor
            if segment not in self._sizes:
                later = [s for s in self._sizes if s > segment]
                if not later:
                    return None
                self._cursor = (min(later), 0)
                continue
            if offset >= self._sizes[segment]:
                if segment == self._active:
                    return None
                self._cursor = (segment + 1, 0)
                continue
            reader = self._open_reader(segment)
            reader.seek(offset)
            record = read_record(reader, segment)
            if record is None:  # cannot happen to a file checked at start and appended whole since
                log.error("spool %s: unreadable record at offset %d; skipping the rest of the segment",
                          self._path(segment), offset)
                self.corrupt += 1
                self._cursor = (segment, self._sizes[segment])
                continue
            self._cursor = record.end
            return record

    def acknowledge(self, end: Position) -> None:
        """The broker acknowledged the record ending at ``end``; the caller acknowledges in order."""
        if end <= self._ack:  # its segment was dropped at the bound meanwhile: already counted
            return
        self._ack = end
        self.sent += 1
        self.backlog -= 1
        for number in [s for s in self._sizes if s < end[0]]:  # every record in them is acknowledged
            self._remove(number)
            del self._sizes[number]

    @property
    def pending_bytes(self) -> int:
        return sum(self._sizes.values())

    @property
    def drained(self) -> bool:
        """Whether the broker acknowledged everything appended."""
        return self.backlog == 0

    # --- durability ----------------------------------------------------------------------------------------

    def sync(self) -> None:
        """fsync what was appended, then save the ack position (write, fsync, rename): the power-cut boundary."""
        if self._dirty:
            os.fsync(self._fd)
            self._dirty = False
        if self._ack != self._saved_ack:
            replace_atomically(self.directory / ACK_FILE, f"{self._ack[0]} {self._ack[1]}\n".encode(), "spool ack")
            self._saved_ack = self._ack

    def close(self) -> None:
        """Sync and let go of the directory."""
        try:
            self.sync()
        finally:
            os.close(self._fd)
            if self._reader is not None:
                self._reader.close()
            os.close(self._lock_fd)  # releases the flock

    def counters(self) -> Dict[str, int]:
        return {"spooled": self.spooled, "sent": self.sent, "dropped": self.dropped, "backlog": self.backlog,
                "corrupt": self.corrupt, "bytes": self.pending_bytes}

    # --- files ---------------------------------------------------------------------------------------------

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:08d}{SEGMENT_SUFFIX}"

    def _open_append(self, number: int) -> int:
        return os.open(self._path(number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def _open_reader(self, segment: int) -> BinaryIO:
        if self._reader_segment != segment or self._reader is None:
            if self._reader is not None:
                self._reader.close()
            self._reader = self._path(segment).open("rb")
            self._reader_segment = segment
        return self._reader

    def _remove(self, number: int) -> None:
        if self._reader_segment == number and self._reader is not None:
            self._reader.close()
            self._reader, self._reader_segment = None, -1
        try:
            self._path(number).unlink()
        except FileNotFoundError:
            pass


__all__ = ["Spool", "SpoolRecord", "SpoolError", "Position", "encode", "read_record"]
