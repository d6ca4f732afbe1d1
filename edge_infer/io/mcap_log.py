"""Sensor recordings in MCAP: the container ROS 2 and Foxglove use, so a field log opens in standard tools.

One file holds three channels, each JSON with a JSON Schema (``jsonschema``
schema encoding, ``json`` message encoding: what Foxglove reads without a
plug-in):

* ``/sensor/frames`` -- every raw frame: ``seq``, ``t``, ``values`` (one per
  channel, names in the channel's ``channels`` metadata), ``label``, ``device_seq``;
* ``/decisions`` -- every decision record, as ``--decisions`` writes it;
* ``/device/hello`` -- each HELLO the device sent, field by field.

``log_time`` is the host's wall-clock time of receipt (ns since the Unix
epoch), ``publish_time`` the sample's own time (``t``). A metadata record named
``edge_infer`` says what made the file (model, hash, spec, channels, rate).

Crash safety lives in the writer's caller (:mod:`edge_infer.sinks.recorder`
flushes a chunk and fsyncs every second); the reader's part is to read a file
that has no summary or footer -- one cut off by SIGKILL or a power cut -- up
to its last complete chunk, and say that it did.

JSON has no NaN or infinity, yet a sensor fault is data worth keeping: a
non-finite value is written as ``null`` with its kind in ``non_finite``
(index -> ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``), so it reads back exactly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .._version import __version__
from ..errors import EdgeInferError, LogError
from .csv_log import CHUNK_ROWS, RecordedLog

TOPIC_FRAMES = "/sensor/frames"
TOPIC_DECISIONS = "/decisions"
TOPIC_HELLO = "/device/hello"
#: Name of the metadata record that says what made the file.
METADATA_NAME = "edge_infer"
#: Bumped when the payloads change incompatibly.
FORMAT_VERSION = "1"
#: Upper bound of a chunk; the recorder closes chunks every second long before a 10 Hz stream fills this.
CHUNK_BYTES = 256 * 1024
#: Larger records are corruption, not data (a chunk is at most a few CHUNK_BYTES).
MAX_RECORD_BYTES = 64 * 1024 * 1024
_MAX_TIME_NS = 2 ** 64 - 1
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

_FRAME_SCHEMA = {
    "title": "edge_infer.SensorFrame",
    "description": "One sample of every sensor channel, as the runtime received it.",
    "type": "object",
    "properties": {
        "seq": {"type": "integer", "description": "0-based index of the frame within its stream"},
        "t": {"type": "number", "description": "the sample's own time in seconds (log t column or device clock)"},
        "values": {"type": "array", "items": {"type": ["number", "null"]},
                   "description": "one value per channel, names in the channel metadata 'channels'; "
                                  "null where the sensor gave NaN or infinity (see non_finite)"},
        "non_finite": {"type": "object", "additionalProperties": {"enum": list(_NON_FINITE)},
                       "description": "index in values -> which non-finite value it was"},
        "label": {"type": "string", "description": "ground truth, where the source has one"},
        "device_seq": {"type": "integer", "description": "sequence number the device put on the wire"},
    },
    "required": ["seq", "t", "values"],
}
_DECISION_SCHEMA = {
    "title": "edge_infer.Decision",
    "description": "One decided window (README: Decision record).",
    "type": "object",
    "properties": {
        "seq": {"type": "integer"},
        "t": {"type": "number"},
        "action": {"type": ["string", "integer"]},
        "source": {"type": "string", "enum": ["model", "fallback"]},
        "reason": {"type": ["string", "null"]},
        "latency_us": {"type": "number"},
        "invoke_us": {"type": ["number", "null"]},
        "output": {"type": ["array", "null"], "items": {"type": ["number", "null"]}},
        "label": {"type": ["string", "null"]},
    },
    "required": ["seq", "t", "action", "source"],
}
_HELLO_SCHEMA = {
    "title": "edge_infer.DeviceHello",
    "description": "The device's HELLO frame (firmware version, channels, scales, schema hash), field by field.",
    "type": "object",
}
SCHEMAS = {TOPIC_FRAMES: _FRAME_SCHEMA, TOPIC_DECISIONS: _DECISION_SCHEMA, TOPIC_HELLO: _HELLO_SCHEMA}


def _mcap() -> Any:
    """The ``mcap`` package, imported only when a recording is read or written."""
    try:
        import mcap.exceptions
        import mcap.stream_reader
        import mcap.writer
    except ImportError:
        raise EdgeInferError("MCAP recordings need the 'mcap' package: pip install mcap (the 'record' extra)") from None
    return mcap


def time_ns(seconds: float) -> int:
    """Seconds to MCAP's unsigned nanoseconds (clamped: MCAP times cannot be negative)."""
    return min(max(int(round(seconds * 1e9)), 0), _MAX_TIME_NS)


def encode_values(values: np.ndarray) -> str:
    """``"values":[...]`` with each value's shortest exact text (float32 stays float32), NaN/Inf kept aside."""
    if np.isfinite(values).all():
        return '"values":[' + ",".join(map(str, values)) + "]"
    texts, kinds = [], {}
    for i, value in enumerate(values):
        if math.isfinite(value):
            texts.append(str(value))
        else:
            texts.append("null")
            kinds[str(i)] = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return '"values":[' + ",".join(texts) + '],"non_finite":' + json.dumps(kinds)


def encode_frame(seq: int, t: float, values: np.ndarray, label: Optional[str], device_seq: Optional[int]) -> bytes:
    parts = ['{"seq":', str(int(seq)), ',"t":', repr(float(t)), ",", encode_values(values)]
    if label is not None:
        parts += [',"label":', json.dumps(label)]
    if device_seq is not None:
        parts += [',"device_seq":', str(int(device_seq))]
    parts.append("}")
    return "".join(parts).encode("utf-8")


def encode_json(record: Dict[str, Any]) -> bytes:
    """Strict JSON (what Foxglove parses): a non-finite number, say a float model's NaN output, becomes null."""
    try:
        text = json.dumps(record, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_finite_only(record), separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


def _finite_only(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_only(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_only(v) for v in value]
    return value


class McapLogWriter:
    """Writes one MCAP file: the three channels, the metadata record, chunks closed on :meth:`flush`.

    Not thread-safe (neither is ``mcap.Writer``): the recorder sink serialises calls.
    """

    def __init__(self, path: "str | Path", channels: Sequence[str], metadata: Dict[str, str],
                 chunk_bytes: int = CHUNK_BYTES):
        mcap = _mcap()
        self.path = Path(path)
        try:
            self._file: IO[bytes] = self.path.open("wb")
        except OSError as exc:
            raise EdgeInferError(f"cannot write recording {self.path}: {exc.strerror or exc}") from None
        self._writer = mcap.writer.Writer(self._file, chunk_size=chunk_bytes,
                                          compression=mcap.writer.CompressionType.ZSTD)
        self._writer.start(profile="", library=f"edge-infer {__version__}")
        self._channel_ids: Dict[str, int] = {}
        for topic, schema in SCHEMAS.items():
            schema_id = self._writer.register_schema(name=schema["title"], encoding="jsonschema",
                                                     data=json.dumps(schema).encode("utf-8"))
            channel_meta = {"channels": json.dumps(list(channels))} if topic == TOPIC_FRAMES else {}
            self._channel_ids[topic] = self._writer.register_channel(topic=topic, message_encoding="json",
                                                                    schema_id=schema_id, metadata=channel_meta)
        self._writer.add_metadata(METADATA_NAME, {"format_version": FORMAT_VERSION,
                                                  "edge_infer_version": __version__,
                                                  "channels": json.dumps(list(channels)), **metadata})
        self._frames = self._channel_ids[TOPIC_FRAMES]
        self._decisions = self._channel_ids[TOPIC_DECISIONS]
        self._hello = self._channel_ids[TOPIC_HELLO]
        self._hellos = 0
        try:
            self.flush()  # the header and metadata are on disk before the first frame
        except OSError as exc:
            try:
                self._file.close()  # closes the descriptor even when its last flush fails again
            except OSError:
                pass
            raise EdgeInferError(f"cannot write recording {self.path}: {exc.strerror or exc}") from None

    def write_frame(self, seq: int, t: float, values: np.ndarray, label: Optional[str], log_ns: int,
                    device_seq: Optional[int] = None) -> None:
        self._writer.add_message(self._frames, log_time=log_ns, publish_time=time_ns(t),
                                 data=encode_frame(seq, t, values, label, device_seq), sequence=seq & 0xFFFFFFFF)

    def write_decision(self, record: Dict[str, Any], log_ns: int) -> None:
        self._writer.add_message(self._decisions, log_time=log_ns, publish_time=time_ns(record["t"]),
                                 data=encode_json(record), sequence=record["seq"] & 0xFFFFFFFF)

    def write_hello(self, hello: Dict[str, Any], log_ns: int, publish_ns: int) -> None:
        self._writer.add_message(self._hello, log_time=log_ns, publish_time=publish_ns, data=encode_json(hello),
                                 sequence=self._hellos)
        self._hellos += 1

    def flush(self, sync: bool = True) -> None:
        """Close the open chunk and hand everything to the OS (survives SIGKILL); ``sync`` also fsyncs
        (survives a power cut)."""
        self._writer.flush()
        if sync:
            os.fsync(self._file.fileno())

    def dup_fd(self) -> int:
        """A duplicate of the file's descriptor, to fsync without holding the writer (the caller closes it)."""
        return os.dup(self._file.fileno())

    @property
    def size(self) -> int:
        """Bytes handed to the file so far (what a flush has written)."""
        return self._file.tell()

    def close(self, sync: bool = True) -> None:
        """Write the summary and footer (indexes, statistics), fsync (unless the caller will, through a
        :meth:`dup_fd`) and close. Safe to call twice."""
        if self._file.closed:
            return
        try:
            self._writer.finish()
            self._file.flush()
            if sync:
                os.fsync(self._file.fileno())
        finally:
            self._file.close()


# --- reading --------------------------------------------------------------------------------------------------

@dataclass
class McapRecording:
    """Everything an edge-infer MCAP file holds, in file order.

    ``frames`` is the recording as a :class:`RecordedLog` (``bad_rows`` names
    frame messages by their 1-based position on ``/sensor/frames``);
    ``frame_log_ns[i]`` is the receipt time of ``frames`` row ``i``.
    ``cut_off`` says why reading stopped before a footer (a recording cut
    off by a crash or power loss), or is None for a complete file.
    """

    path: Path
    metadata: Dict[str, Dict[str, str]]
    frames: RecordedLog
    frame_log_ns: np.ndarray
    decisions: List[Tuple[int, Dict[str, Any]]] = field(default_factory=list)
    hellos: List[Tuple[int, int, Dict[str, Any]]] = field(default_factory=list)
    cut_off: Optional[str] = None


class _SensorRecordParser:
    """Collects ``/sensor/frames`` messages into columns, noting frames that do not fit."""

    def __init__(self, path: Path, strict: bool):
        self.path = path
        self.strict = strict
        self.channels: Optional[List[str]] = None
        self.times: List[float] = []
        self.log_ns: List[int] = []
        self.rows: List[List[float]] = []
        self.labels: List[str] = []
        self.labelled = False
        self.bad: List[Tuple[int, str]] = []
        self.count = 0

    def add(self, data: bytes, log_ns: int) -> None:
        self.count += 1
        try:
            t, values, label = self._decode(data)
        except (ValueError, KeyError, TypeError) as exc:
            if self.strict:
                raise LogError(f"recording {self.path}: frame message {self.count} is malformed: {exc} "
                               "(run without --strict to skip it)") from None
            self.bad.append((self.count, f"malformed frame: {exc}"))
            return
        self.times.append(t)
        self.rows.append(values)
        self.log_ns.append(log_ns)
        self.labels.append("" if label is None else label)
        self.labelled = self.labelled or label is not None

    def _decode(self, data: bytes) -> Tuple[float, List[float], Optional[str]]:
        message = json.loads(data)
        t = float(message["t"])
        if not math.isfinite(t):
            raise ValueError(f"timestamp {t} is not finite")
        values = [math.nan if v is None else float(v) for v in message["values"]]
        for index, kind in (message.get("non_finite") or {}).items():
            values[int(index)] = _NON_FINITE[kind]
        if len(values) != len(self.channels or ()):
            raise ValueError(f"{len(values)} values, but the recording has {len(self.channels or ())} channels")
        label = message.get("label")
        return t, values, None if label is None else str(label)

    def take(self) -> Tuple[RecordedLog, np.ndarray]:
        """The frames gathered since the last take, and their receipt times; the parser starts afresh."""
        log, log_ns = self.log(), np.array(self.log_ns, dtype=np.int64)
        self.times, self.log_ns, self.rows, self.labels, self.bad = [], [], [], [], []
        return log, log_ns

    def log(self) -> RecordedLog:
        channels = self.channels or []
        return RecordedLog(
            t=np.array(self.times, dtype=np.float64),
            values=np.array(self.rows, dtype=np.float32).reshape(len(self.rows), len(channels)),
            channels=channels,
            labels=self.labels if self.labelled else None,
            bad_rows=self.bad,
        )


def read_mcap(path: "str | Path", strict: bool = False) -> McapRecording:
    """Read an edge-infer MCAP recording, complete or cut off.

    A file without footer is read up to its last complete, CRC-valid chunk
    (``cut_off`` says where it stopped); with ``strict`` that is a
    :class:`LogError` instead. A file that is not MCAP, or not an edge-infer
    recording, is always a :class:`LogError`.
    """
    recording: Optional[McapRecording] = None
    for recording, _chunk, _log_ns in _scan(path, strict, None):
        pass
    assert recording is not None  # _scan yields at least once or raises
    return recording


def iter_mcap_log(path: "str | Path", strict: bool = False, chunk_rows: int = CHUNK_ROWS) -> Iterator[RecordedLog]:
    """The frames of a recording in chunks of at most ``chunk_rows`` (``eval``: bounded memory), the same rows
    and ``bad_rows`` as :func:`read_mcap_log`; decisions and HELLOs in the file are skipped, a cut-off
    recording warns as there."""
    recording = None
    for recording, chunk, _log_ns in _scan(path, strict, chunk_rows):
        if len(chunk) or chunk.bad_rows:
            yield chunk
    if recording is not None and recording.cut_off:
        logging.getLogger(__name__).warning("recording %s: %s", path, recording.cut_off)


def _scan(path: "str | Path", strict: bool,
          chunk_rows: Optional[int]) -> Iterator[Tuple[McapRecording, RecordedLog, np.ndarray]]:
    """Read a recording record by record, yielding ``(recording, frames, log_ns)`` every ``chunk_rows``
    frames (kept: decisions and HELLOs only without ``chunk_rows``) and once more at the end, when
    ``recording`` is complete: ``cut_off`` set, channels known. With ``chunk_rows`` None, the one
    final yield holds every frame."""
    mcap = _mcap()
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise LogError(f"cannot read recording {path}: {exc.strerror or exc}") from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise LogError(f"recording {path} is empty")
        frames = _SensorRecordParser(path, strict)
        recording = McapRecording(path=path, metadata={}, frames=frames.log(), frame_log_ns=np.zeros(0, np.int64))
        topics: Dict[int, str] = {}
        complete = False
        reader = mcap.stream_reader.StreamReader(_WholeReads(handle, size, mcap.exceptions.EndOfFile),
                                                 validate_crcs=True, record_size_limit=MAX_RECORD_BYTES)
        try:
            for record in reader.records:
                complete = _take_record(record, mcap, topics, frames, recording) or complete
                if chunk_rows is not None:
                    recording.decisions.clear()
                    if len(frames.times) >= chunk_rows:
                        yield (recording, *frames.take())
        except mcap.exceptions.InvalidMagic:
            raise LogError(f"{path} is not an MCAP file (it does not start with the MCAP magic bytes); "
                           "recordings are .mcap files written by edge-infer, logs are .csv") from None
        except (mcap.exceptions.McapError, ValueError, struct.error, OverflowError, RuntimeError,
                _zstd_error()) as exc:
            if not complete:  # after the footer only the closing magic can be missing: nothing lost
                recording.cut_off = (f"no footer after byte {size}: the recording was cut off, not closed"
                                     if isinstance(exc, mcap.exceptions.EndOfFile) else
                                     f"unreadable data near byte {handle.tell()} ({type(exc).__name__}: {exc})")
    if frames.channels is None and METADATA_NAME not in recording.metadata:
        raise LogError(f"recording {path} has no {TOPIC_FRAMES} channel: not an edge-infer recording"
                       + (f" ({recording.cut_off})" if recording.cut_off else ""))
    if recording.cut_off and strict:
        raise LogError(f"recording {path}: {recording.cut_off}; run without --strict to read it up to there")
    if frames.channels is None:
        frames.channels = _channel_names(recording.metadata[METADATA_NAME].get("channels"), path)
    recording.frames, recording.frame_log_ns = frames.take()
    yield recording, recording.frames, recording.frame_log_ns


class _WholeReads:
    """A file whose ``read(n)`` returns n bytes or raises: mcap's reader would parse a short read at the
    cut-off end of a crashed recording as a (garbled) record, and would try to allocate whatever length a
    corrupt record claims."""

    def __init__(self, handle: IO[bytes], size: int, end_of_file: type):
        self._handle = handle
        self._remaining = size
        self._end_of_file = end_of_file

    def read(self, length: int) -> bytes:
        if length > self._remaining:
            raise self._end_of_file()
        data = self._handle.read(length)
        self._remaining -= len(data)
        if len(data) < length:
            raise self._end_of_file()
        return data


def _take_record(record: Any, mcap: Any, topics: Dict[int, str], frames: _SensorRecordParser,
                 recording: McapRecording) -> bool:
    """File one record where it belongs; True for the footer (the file is complete)."""
    records = mcap.records
    if isinstance(record, records.Channel):
        topics[record.id] = record.topic if record.message_encoding == "json" else ""
        if record.topic == TOPIC_FRAMES and frames.channels is None:
            frames.channels = _channel_names(record.metadata.get("channels"), frames.path)
    elif isinstance(record, records.Message):
        topic = topics.get(record.channel_id)
        if topic == TOPIC_FRAMES:
            frames.add(record.data, record.log_time)
        elif topic == TOPIC_DECISIONS:
            recording.decisions.append((record.log_time, json.loads(record.data)))
        elif topic == TOPIC_HELLO:
            recording.hellos.append((record.log_time, record.publish_time, json.loads(record.data)))
    elif isinstance(record, records.Metadata):
        recording.metadata[record.name] = dict(record.metadata)
    return isinstance(record, records.Footer)


def _channel_names(text: Optional[str], path: Path) -> List[str]:
    try:
        names = json.loads(text or "")
    except ValueError:
        names = None
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise LogError(f"recording {path}: the channel names {text!r} are not a JSON list of strings")
    return names


def _zstd_error() -> type:
    try:
        import zstandard
    except ImportError:  # pragma: no cover - mcap requires it
        return RuntimeError
    return zstandard.ZstdError


def read_mcap_log(path: "str | Path", strict: bool = False) -> RecordedLog:
    """The frames of a recording as a :class:`RecordedLog` (what ``replay`` needs); warns if it was cut off."""
    recording = read_mcap(path, strict=strict)
    if recording.cut_off:
        logging.getLogger(__name__).warning("recording %s: %s; read %d frames up to there", path,
                                            recording.cut_off, len(recording.frames))
    return recording.frames


def write_mcap_log(path: "str | Path", log: RecordedLog, metadata: Dict[str, str],
                   log_ns: Optional[Iterable[int]] = None) -> int:
    """Write a whole :class:`RecordedLog` as a recording (``convert``); returns the frames written.

    Without receipt times (a CSV has none) ``log_time`` is the sample time.
    """
    writer = McapLogWriter(path, log.channels, metadata)
    try:
        times = log_ns if log_ns is not None else (time_ns(t) for t in log.t)
        for i, (t, received) in enumerate(zip(log.t, times)):
            writer.write_frame(i, float(t), log.values[i], None if log.labels is None else log.labels[i],
                               log_ns=int(received))
    finally:
        writer.close()
    return len(log)
