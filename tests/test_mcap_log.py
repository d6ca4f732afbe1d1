"""MCAP recordings in-process: round trips, cut-off files, rotation, a recorder whose disk fails.

The files are written by the real ``mcap`` writer and read back by the real
reader; a "crash" is the file truncated where a crash could leave it.
"""

import json
import math
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from edge_infer.deadline.clock import FakeClock
from edge_infer.decide.decision import Decision
from edge_infer.decide.reasons import Reason
from edge_infer.errors import LogError
from edge_infer.frame import Frame
from edge_infer.io import read_log
from edge_infer.io.convert import convert_log
from edge_infer.io.mcap_log import TOPIC_DECISIONS, TOPIC_FRAMES, TOPIC_HELLO, McapLogWriter, read_mcap
from edge_infer.sinks.recorder import RecordingSink, part_path

CHANNELS = ["acc_x", "acc_y", "gyro_z"]


def frames(n, seed=0, labels=True):
    rng = np.random.default_rng(seed)
    values = rng.normal(scale=3.0, size=(n, len(CHANNELS))).astype(np.float32)
    values[3, 1] = np.nan  # sensor faults are data: they must survive the trip
    values[4, 0] = np.inf
    values[5, 2] = -np.inf
    return [Frame(seq=i, t=i * 0.02 + 0.001, recv_ns=1_000_000 * i, values=values[i],
                  label=(f"class {i // 10}" if labels else None), device_seq=i % 65536) for i in range(n)]


def decision(seq, fallback=False):
    return Decision(seq=seq, t=seq * 0.02, action="idle" if fallback else "walk", source="fallback" if fallback else
                    "model", reason=Reason.DEADLINE if fallback else None, latency_us=123.4, invoke_us=None if fallback
                    else 99.5, output=None if fallback else [0.25, float("nan"), 0.75], label="walk")


def test_frames_decisions_and_hello_round_trip(tmp_path):
    path = tmp_path / "rec.mcap"
    sink = RecordingSink(path, CHANNELS, {"model": "m"}, flush_interval_s=None, clock=FakeClock(5_000))
    sink.on_hello({"fw_version": (1, 2, 3), "scales": [0.5, 0.5, 0.25]})
    sent = frames(40)
    for frame in sent:
        sink.on_frame(frame)
        if frame.seq % 8 == 7:
            sink.on_decision(decision(frame.seq, fallback=frame.seq == 15))
    sink.close()

    recording = read_mcap(path)
    assert recording.cut_off is None
    log = recording.frames
    assert log.channels == CHANNELS
    np.testing.assert_array_equal(log.t, [f.t for f in sent])
    np.testing.assert_array_equal(log.values, np.stack([f.values for f in sent]))  # NaN and +-Inf included
    assert log.labels == [f.label for f in sent]
    # log_time is the receipt time on the wall clock: the same offset for every frame
    offsets = recording.frame_log_ns - np.array([f.recv_ns for f in sent])
    assert len(set(offsets.tolist())) == 1
    records = [r for _, r in recording.decisions]
    assert [r["seq"] for r in records] == [7, 15, 23, 31, 39]
    assert records[1] == {**decision(15, True).to_record()}
    assert records[0]["output"] == [0.25, None, 0.75]  # strict JSON: a NaN output is null
    assert recording.hellos[0][2] == {"fw_version": [1, 2, 3], "scales": [0.5, 0.5, 0.25]}
    meta = recording.metadata["edge_infer"]
    assert meta["model"] == "m" and json.loads(meta["channels"]) == CHANNELS


def test_the_file_is_standard_mcap_with_json_schemas(tmp_path):
    """What Foxglove needs: json messages on channels whose schema is a JSON Schema object."""
    from mcap.reader import make_reader

    path = tmp_path / "rec.mcap"
    writer = McapLogWriter(path, CHANNELS, {})
    for frame in frames(6)[:5]:
        writer.write_frame(frame.seq, frame.t, frame.values, frame.label, log_ns=frame.recv_ns)
    writer.close()
    with path.open("rb") as handle:
        reader = make_reader(handle)
        summary = reader.get_summary()
        topics = {c.topic: c for c in summary.channels.values()}
        assert set(topics) == {TOPIC_FRAMES, TOPIC_DECISIONS, TOPIC_HELLO}
        for channel in topics.values():
            schema = summary.schemas[channel.schema_id]
            assert channel.message_encoding == "json" and schema.encoding == "jsonschema"
            assert json.loads(schema.data)["type"] == "object"
        messages = [json.loads(m.data) for _, _, m in reader.iter_messages(topics=[TOPIC_FRAMES])]
    assert [m["seq"] for m in messages] == [0, 1, 2, 3, 4]
    assert messages[4]["values"][0] is None and messages[4]["non_finite"] == {"0": "Infinity"}


def test_a_file_cut_anywhere_reads_up_to_its_last_flush(tmp_path):
    path = tmp_path / "rec.mcap"
    writer = McapLogWriter(path, CHANNELS, {})
    flushed_at = []  # (file size after a flush, frames written by then)
    for frame in frames(60):
        writer.write_frame(frame.seq, frame.t, frame.values, frame.label, log_ns=frame.recv_ns)
        if frame.seq % 10 == 9:
            writer.flush(sync=False)
            flushed_at.append((writer.size, frame.seq + 1))
    writer.close()
    whole, all_t = path.read_bytes(), read_mcap(path).frames.t
    cut = tmp_path / "cut.mcap"
    near_flushes = {at + d for at, _ in flushed_at for d in (-1, 0, 1)}
    for size in sorted(set(range(1, len(whole), 13)) | near_flushes):
        cut.write_bytes(whole[:size])
        try:
            recording = read_mcap(cut)
        except LogError as exc:  # cut inside the header: not yet a recording
            assert size < flushed_at[0][0] and "not an edge-infer recording" in str(exc), size
            continue
        expected = max((n for at, n in flushed_at if at <= size), default=0)
        assert len(recording.frames) >= expected, size
        np.testing.assert_array_equal(recording.frames.t, all_t[:len(recording.frames)])
        if size < flushed_at[-1][0] or len(recording.frames) < 60:
            assert recording.cut_off is not None
    cut.write_bytes(whole[:flushed_at[2][0] + 5])
    with pytest.raises(LogError, match="cut off"):
        read_mcap(cut, strict=True)


def test_rotation_writes_complete_parts_that_join_to_the_whole(tmp_path):
    path = tmp_path / "rec.mcap"
    sink = RecordingSink(path, CHANNELS, {}, max_bytes=3000, flush_interval_s=None)
    sink.on_hello({"fw_version": [1, 0, 0]})
    sent = frames(400, labels=False)
    for frame in sent:
        sink.on_frame(frame)
        if frame.seq % 25 == 24:
            sink.flush()
    sink.close()
    assert sink.paths == [part_path(path, i) for i in range(1, len(sink.paths) + 1)]
    assert len(sink.paths) >= 3 and not path.exists()
    parts = [read_mcap(p) for p in sink.paths]
    assert all(p.cut_off is None for p in parts)
    assert all(p.hellos and p.hellos[0][2] == {"fw_version": [1, 0, 0]} for p in parts)  # each part stands alone
    assert [p.metadata["edge_infer"]["part"] for p in parts] == [str(i) for i in range(1, len(parts) + 1)]
    np.testing.assert_array_equal(np.concatenate([p.frames.t for p in parts]), [f.t for f in sent])
    assert all(p.stat().st_size < 3000 + 4000 for p in sink.paths)  # a part ends at the flush after the limit


def test_csv_to_mcap_to_csv_keeps_every_value(tmp_path):
    csv_in = tmp_path / "in.csv"
    rows = ["t,b,a,label", "0,1.5,-2,x", "0.1,3.14159,1e-07,x", "0.2,nan,inf,y", "0.30000000000000004,-0,1e+30,",
            "bad,row", "0.4,123456.789,-0.000123,z"]
    csv_in.write_text("\n".join(rows) + "\n")
    result = convert_log(csv_in, tmp_path / "mid.mcap")
    assert result["frames"] == 5 and result["bad_rows"] == 1
    back = convert_log(tmp_path / "mid.mcap", tmp_path / "out.csv")
    assert back["frames"] == 5 and back["decisions_left_out"] == 0
    original, again = read_log(csv_in), read_log(tmp_path / "out.csv")
    assert again.channels == original.channels == ["b", "a"]
    np.testing.assert_array_equal(again.t, original.t)
    assert again.values.tobytes() == original.values.tobytes()  # bit for bit, NaN and -0 included
    assert again.labels == original.labels
    # and a second round gives the same text
    convert_log(tmp_path / "out.csv", tmp_path / "mid2.mcap")
    convert_log(tmp_path / "mid2.mcap", tmp_path / "out2.csv")
    assert (tmp_path / "out2.csv").read_text() == (tmp_path / "out.csv").read_text()


@pytest.mark.parametrize("content,message", [
    (b"", "is empty"),
    (b"t,a\n0,1\n", "not an MCAP file"),
    (b"\x89MCAP0\r\n" + b"\x00" * 3, "not an edge-infer recording"),
])
def test_files_that_are_not_recordings_are_refused(tmp_path, content, message):
    path = tmp_path / "x.mcap"
    path.write_bytes(content)
    with pytest.raises(LogError, match=message):
        read_mcap(path)


def test_a_recording_whose_disk_fills_stops_and_the_loop_goes_on(tmp_path):
    """A real write failure: the file size limit (EFBIG), as a full disk would fail the write (ENOSPC)."""
    script = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from edge_infer.sinks.recorder import RecordingSink
from test_mcap_log import frames
sink = RecordingSink({str(tmp_path / 'rec.mcap')!r}, ["acc_x", "acc_y", "gyro_z"], {{}}, flush_interval_s=None)
for frame in frames(3000):
    sink.on_frame(frame)
    if frame.seq % 50 == 49:
        sink.flush()
sink.close()
print("loop finished")
"""

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT / "tests", capture_output=True, text=True,
                          timeout=120, preexec_fn=limit_file_size)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "loop finished"
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "stopped: File too large" in errors[0]
    recording = read_mcap(tmp_path / "rec.mcap")
    assert recording.cut_off and 0 < len(recording.frames) < 3000
    assert not math.isnan(recording.frames.t[-1])


def test_a_recording_never_overwrites_one_on_disk(tmp_path):
    """A service restarted after a crash must not erase the recording of the crash."""
    path = tmp_path / "field.mcap"
    names = []
    for run, rotate in enumerate([None, None, 2000, None]):
        sink = RecordingSink(path, CHANNELS, {}, max_bytes=rotate, flush_interval_s=None)
        for frame in frames(200, seed=run):
            sink.on_frame(frame)
            if frame.seq % 50 == 49:
                sink.flush()
        sink.close()
        names.append([p.name for p in sink.paths])
    assert names[0] == ["field.mcap"] and names[1] == ["field-0001.mcap"]
    rotated = names[2]
    assert len(rotated) >= 2 and rotated == [f"field-{i:04d}.mcap" for i in range(2, 2 + len(rotated))]
    assert names[3] == [f"field-{2 + len(rotated):04d}.mcap"]
    for run, parts in enumerate(names):  # every run's recording is still there, whole
        values = np.concatenate([read_mcap(tmp_path / name).frames.values for name in parts])
        np.testing.assert_array_equal(values, np.stack([f.values for f in frames(200, seed=run)]))
