"""Logging: journald priority prefixes when stderr is the journal, and repeated warnings held back."""

import io
import logging
import os

import pytest

from edge_infer.service.logs import JournalFormatter, RepeatFilter, setup_logging, stream_is_journal


class FakeTime:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def record(msg, *args, level=logging.WARNING, name="edge_infer.sources.serial"):
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_repeats_of_a_warning_pass_once_per_interval_and_say_how_many_were_held_back():
    clock = FakeTime()
    limiter = RepeatFilter(interval_s=10.0, now=clock)
    passed = []
    for i in range(101):  # a CRC error on every frame at 10 Hz for 10 s
        clock.now = 1000.0 + i / 10
        rec = record("CRC error on frame %d", i)
        if limiter.filter(rec):
            passed.append(rec.getMessage())
    assert passed == ["CRC error on frame 0", "CRC error on frame 100 (99 more like this in the last 10 s)"]


def test_different_messages_levels_and_loggers_are_limited_separately_and_info_is_not_limited():
    limiter = RepeatFilter(interval_s=10.0, now=FakeTime())
    assert limiter.filter(record("port %s gone", "a"))
    assert limiter.filter(record("port %s back", "a"))
    assert limiter.filter(record("port %s gone", "a", level=logging.ERROR))
    assert limiter.filter(record("port %s gone", "a", name="edge_infer.other"))
    assert not limiter.filter(record("port %s gone", "b"))
    assert all(limiter.filter(record("decided", level=logging.INFO)) for _ in range(5))


def test_the_filter_remembers_a_bounded_number_of_messages():
    limiter = RepeatFilter(interval_s=10.0, now=FakeTime())
    for i in range(10_000):
        limiter.filter(record(f"distinct message {i}"))
    assert len(limiter._seen) <= 256


def test_journal_lines_carry_the_syslog_priority_on_every_line():
    formatter = JournalFormatter()
    assert formatter.format(record("link lost")) == "<4>edge_infer.sources.serial: link lost"
    assert formatter.format(record("loaded", level=logging.INFO)) == "<6>edge_infer.sources.serial: loaded"
    multi = formatter.format(record("first\nsecond", level=logging.ERROR))
    assert multi.splitlines() == ["<3>edge_infer.sources.serial: first", "<3>second"]


def test_stderr_is_the_journal_only_when_journal_stream_names_its_device_and_inode(tmp_path, monkeypatch):
    with open(tmp_path / "stream", "w") as stream, open(tmp_path / "other", "w") as other:
        status = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
        assert stream_is_journal(stream)
        assert not stream_is_journal(other)
        assert not stream_is_journal(io.StringIO())
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not stream_is_journal(stream)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not stream_is_journal(stream)


def test_setup_logging_writes_journal_lines_to_the_journal_stream_and_replaces_itself(tmp_path, monkeypatch):
    path = tmp_path / "journal"
    root = logging.getLogger()
    old_level = root.level
    try:
        with open(path, "w") as stream:
            status = os.fstat(stream.fileno())
            monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
            setup_logging("info", stream=stream)
            setup_logging("warning", stream=stream)  # a second call must not double every line
            logging.getLogger("edge_infer.test").info("not shown at warning level")
            logging.getLogger("edge_infer.test").warning("shown once")
        assert path.read_text() == "<4>edge_infer.test: shown once\n"
    finally:
        for handler in [h for h in root.handlers if type(h).__name__ == "_OurHandler"]:
            root.removeHandler(handler)
        root.setLevel(old_level)


def test_unknown_level_is_refused():
    with pytest.raises(ValueError, match="log level must be one of"):
        setup_logging("loud")
