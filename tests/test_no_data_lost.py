"""Nothing lost (issue 12, item 4): decision logs are appended run after run, conversions never overwrite.

The rule for every writer is in edge_infer/io/files.py and docs/security.md ("What is never overwritten").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import BUNDLED_LOG, ROOT, read_jsonl, run_cli
from test_cli_errors import assert_one_line_error

from edge_infer.errors import EdgeInferError
from edge_infer.io.files import create_new, replace_atomically
from edge_infer.sinks.jsonl import RUN_START, read_decision_log, read_decisions

ROWS = 300


def short_log(tmp_path: Path) -> Path:
    log = tmp_path / "log.csv"
    log.write_text("\n".join(BUNDLED_LOG.read_text().splitlines()[:ROWS + 1]) + "\n")
    return log


def test_two_runs_with_the_same_decision_file_leave_both_runs(tmp_path):
    log, decisions = short_log(tmp_path), tmp_path / "d.jsonl"
    first = json.loads(run_cli("run", "--source", str(log), "--decisions", str(decisions), "--json",
                               check=True).stdout)
    second = json.loads(run_cli("run", "--source", str(log), "--decisions", str(decisions), "--json",
                                check=True).stdout)
    lines = [json.loads(line) for line in decisions.read_text().splitlines()]
    starts = [line for line in lines if line.get("event") == RUN_START]
    assert len(starts) == 2 and lines[0]["event"] == RUN_START
    assert starts[0]["model"] == "basic-motions-cnn" and starts[0]["source"] == str(log)
    assert len(lines) == 2 + first["decisions"] + second["decisions"]
    history = read_decision_log(decisions)
    assert [len(run) for run in history.runs] == [first["decisions"], second["decisions"]]
    assert read_decisions(decisions) == history.runs[1] == read_jsonl(decisions)
    assert read_decisions(decisions, run=0) == history.runs[0]
    assert len(read_decisions(decisions, run=None)) == first["decisions"] + second["decisions"]


def test_a_run_cut_off_mid_line_does_not_spoil_the_next(tmp_path):
    log, decisions = short_log(tmp_path), tmp_path / "d.jsonl"
    run_cli("run", "--source", str(log), "--decisions", str(decisions), check=True)
    with decisions.open("a") as handle:  # what a power cut in the middle of a write leaves
        handle.write('{"seq":999,"t":1.0,"act')
    run_cli("run", "--source", str(log), "--decisions", str(decisions), check=True)
    history = read_decision_log(decisions)
    assert history.bad_lines == 1 and len(history.runs) == 2
    assert len(history.runs[0]) == len(history.runs[1]) > 0


def test_a_decision_file_of_an_older_version_reads_as_one_run(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text('{"seq": 1, "action": "a"}\n{"seq": 2, "action": "b"}\n')
    assert [r["seq"] for r in read_decisions(path)] == [1, 2]


def test_compare_decisions_compares_the_last_runs(tmp_path):
    log, a, b = short_log(tmp_path), tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path, runs in ((a, 2), (b, 1)):
        for _ in range(runs):
            # a budget no invoke misses, even on a loaded machine: the two replays decide alike
            run_cli("replay", str(log), "--decisions", str(path), "--budget-ms", "10000", check=True)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_decisions.py"), str(a), str(b)],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["same"] is True


def test_convert_refuses_to_overwrite_and_leaves_the_target_unchanged(tmp_path):
    target = tmp_path / "out.mcap"
    target.write_bytes(b"precious")
    before = target.stat()
    assert_one_line_error(run_cli("convert", str(short_log(tmp_path)), str(target)),
                          "already exists", "never overwrites")
    after = target.stat()
    assert target.read_bytes() == b"precious" and (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns,
                                                                                        before.st_ino)


def test_a_failed_convert_leaves_nothing_behind(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("t,a\n0.0,1\nnot,a number\n")
    target = tmp_path / "out.mcap"
    assert_one_line_error(run_cli("convert", str(bad), str(target), "--strict"), "line 3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_convert_writes_a_new_file_whole(tmp_path):
    log = short_log(tmp_path)
    run_cli("convert", str(log), str(tmp_path / "out.mcap"), check=True)
    run_cli("convert", str(tmp_path / "out.mcap"), str(tmp_path / "back.csv"), check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.csv", "log.csv", "out.mcap"]
    assert len((tmp_path / "back.csv").read_text().splitlines()) == ROWS + 1


def test_create_new_never_replaces_a_file_that_appears_while_writing(tmp_path):
    target = tmp_path / "x.csv"

    def write(path: Path) -> None:
        path.write_text("new")
        target.write_text("someone else's")  # appears between the check and the publication

    try:
        create_new(target, write, "target")
    except EdgeInferError as exc:
        assert "appeared while it was being written" in str(exc)
    else:
        raise AssertionError("create_new published over a file that appeared")
    assert target.read_text() == "someone else's" and sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]


def test_replace_atomically_sets_the_mode_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "m.prom"
    path.write_text("old")
    replace_atomically(path, b"new", "metrics textfile", 0o644)
    assert path.read_text() == "new" and oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["m.prom"]


def test_decisions_can_go_to_a_pipe(tmp_path):
    """Appending must not need a seekable file: ``--decisions /dev/stdout`` into a pipe still works."""
    proc = run_cli("replay", str(short_log(tmp_path)), "--decisions", "/dev/stdout", "--show", "none", check=True)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines[0]["event"] == RUN_START and len(lines) > 10 and "action" in lines[1]


def test_create_new_works_where_there_are_no_hard_links(tmp_path, monkeypatch):
    """vfat (a USB stick) refuses link(2) with EPERM: the file is still published, and still never over one."""
    import errno

    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    target = tmp_path / "x.csv"
    create_new(target, lambda path: path.write_text("first"), "target")
    try:
        create_new(target, lambda path: path.write_text("second"), "target")
    except EdgeInferError as exc:
        assert "already exists" in str(exc)
    else:
        raise AssertionError("create_new overwrote a file")
    assert target.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["x.csv"]
