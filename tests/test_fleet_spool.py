"""The store-and-forward spool: order, acknowledgements that survive a restart, torn tails cut after a power cut,
the bound (oldest first, counted), one owner per directory."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_infer.fleet.spool import HEADER, Spool, SpoolError


def drain(spool: Spool):
    out = []
    while True:
        record = spool.next_unsent()
        if record is None:
            return out
        out.append(record)


def fill(spool: Spool, n: int, start: int = 0, size: int = 50):
    for i in range(start, start + n):
        spool.append("decisions", f"{i:06d}".encode() + b"x" * size, retain=(i % 7 == 0))


def test_records_come_back_in_order_with_topic_and_retain(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    fill(spool, 300)
    records = drain(spool)
    assert [r.payload[:6] for r in records] == [f"{i:06d}".encode() for i in range(300)]
    assert [r.retain for r in records] == [i % 7 == 0 for i in range(300)]
    assert {r.topic for r in records} == {"decisions"}
    assert len(list(tmp_path.glob("*.seg"))) > 3  # it rotated
    assert spool.counters()["spooled"] == 300 and spool.backlog == 300
    spool.close()


def test_what_was_acknowledged_is_not_sent_again_after_a_restart_and_old_segments_go(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    fill(spool, 200)
    records = drain(spool)
    segments_before = len(list(tmp_path.glob("*.seg")))
    for record in records[:120]:
        spool.acknowledge(record.end)
    spool.close()
    reopened = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    assert reopened.backlog == 80
    assert [r.payload[:6] for r in drain(reopened)] == [f"{i:06d}".encode() for i in range(120, 200)]
    assert len(list(tmp_path.glob("*.seg"))) < segments_before  # fully acknowledged segments were deleted
    reopened.close()


def test_an_ack_not_yet_saved_means_sending_again_not_losing(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    fill(spool, 10)
    spool.sync()
    for record in drain(spool):
        spool.acknowledge(record.end)
    os.close(spool._fd)  # a crash: no close(), so the ack position was never saved
    os.close(spool._lock_fd)
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert len(drain(reopened)) == 10
    reopened.close()


@settings(max_examples=30, deadline=None)
@given(cut=st.integers(min_value=1, max_value=200))
def test_a_torn_last_record_is_cut_at_the_next_start(tmp_path_factory, cut):
    directory = tmp_path_factory.mktemp("torn")
    spool = Spool(directory, max_bytes=1 << 20)
    fill(spool, 5, size=100)
    spool.close()
    segment = next(directory.glob("*.seg"))
    size = segment.stat().st_size
    record = HEADER.size + len("decisions") + 106
    os.truncate(segment, size - min(cut, record - 1))  # power cut in the middle of the last record
    reopened = Spool(directory, max_bytes=1 << 20)
    assert [r.payload[:6] for r in drain(reopened)] == [f"{i:06d}".encode() for i in range(4)]
    assert reopened.corrupt == 1 and segment.stat().st_size == 4 * record
    fill(reopened, 1, start=99)  # appending after the cut gives a readable file
    assert drain(reopened)[0].payload[:6] == b"000099"
    reopened.close()


def test_a_flipped_bit_is_caught_by_the_crc(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    fill(spool, 3)
    spool.close()
    segment = next(tmp_path.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    data[-5] ^= 0x01  # in the last record's payload
    segment.write_bytes(bytes(data))
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert len(drain(reopened)) == 2 and reopened.corrupt == 1
    reopened.close()


def test_the_bound_drops_whole_oldest_segments_and_counts_what_was_unsent(tmp_path):
    spool = Spool(tmp_path, max_bytes=16384, segment_bytes=4096)
    fill(spool, 1000)
    kept = drain(spool)
    numbers = [int(r.payload[:6]) for r in kept]
    assert numbers == list(range(numbers[0], 1000))  # the newest, contiguous: the oldest went first
    assert spool.dropped == numbers[0] and spool.backlog == len(kept)
    assert sum(f.stat().st_size for f in tmp_path.glob("*.seg")) <= 16384
    spool.close()


def test_records_in_flight_from_a_dropped_segment_are_not_counted_twice(tmp_path):
    spool = Spool(tmp_path, max_bytes=8192, segment_bytes=4096)
    fill(spool, 10)
    in_flight = drain(spool)
    fill(spool, 300, start=10)  # drops the segment the in-flight records came from
    for record in in_flight:
        spool.acknowledge(record.end)  # their PUBACKs arrive late
    assert spool.sent == 0 and spool.dropped + spool.backlog == 310
    spool.close()


def test_a_second_process_cannot_use_the_same_spool(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    with pytest.raises(SpoolError, match="in use by another edge-infer process"):
        Spool(tmp_path, max_bytes=1 << 20)
    spool.close()
    Spool(tmp_path, max_bytes=1 << 20).close()  # released at close
