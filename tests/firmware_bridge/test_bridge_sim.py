"""The virtual device (python -m firmware_bridge.sim) over a real pty, driven by a pyserial host.

No assertion depends on timing: the sim is paced by the host (--wait-host,
--speed max with a reading host) or ended by a signal, and the timeouts in
fb_helpers are only safety nets against hangs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from fb_helpers import CHANNELS, ROOT, TIMEOUT, Host, finish, log_values, row_of, start_sim, wait_for, write_log

from firmware_bridge.protocol import ActionSource, Flags, Heartbeat, Hello, Sensor, check_hello


def first_hello(host: Host) -> Hello:
    """The first HELLO, which must come before any SENSOR frame (heartbeats may come first)."""
    kinds = [type(f) for f in host.frames]
    assert Hello in kinds and (Sensor not in kinds or kinds.index(Hello) < kinds.index(Sensor)), kinds[:5]
    return host.frames[kinds.index(Hello)]


@pytest.fixture
def log(tmp_path):
    return write_log(tmp_path / "log.csv", 40)


def test_hello_then_every_row_as_sensor_frames_and_the_actions_are_counted(log, tmp_path):
    link = tmp_path / "dev"
    sim = start_sim(log, link, "--speed", "max", "--wait-host", "--linger", str(TIMEOUT))
    host = Host(str(link))
    host.send(host.enc.heartbeat())
    host.run_until(lambda h: len(h.of_type(Sensor)) == 40, "40 SENSOR frames")
    summary = finish(sim)
    host.close()

    hello = first_hello(host)
    assert hello.channels == CHANNELS and hello.sample_rate_hz == 10.0
    check_hello(hello, list(CHANNELS))
    sensors = host.of_type(Sensor)
    assert [row_of(s) for s in sensors] == list(range(40))
    assert [s.values for s in sensors] == log_values(40)
    assert host.dec.counters.rejected == 0 and host.dec.counters.seq_gaps == 0
    # safe until the first model decision, then following the host's answers
    assert sensors[0].flags & Flags.DEVICE_SAFE

    odd = sum(1 for s in sensors if s.seq % 2)
    assert summary["frames_sent"] == 40 and summary["log_rows"] == 40
    assert summary["actions_received"] == host.actions_sent == 40
    assert summary["actions_bad"] == 0 and summary["actions_unanswered"] == 0
    assert summary["action_sources"] == {"model": odd, "fallback": 40 - odd}
    assert summary["action_reasons"] == {"none": odd, "deadline": 40 - odd}
    assert summary["actions_safe"] == 40 - odd
    assert summary["heartbeats_received"] == 1
    assert summary["end"] == "end_of_log" and summary["link"]["frames"] == 41
    assert not os.path.lexists(link), "the link is removed on exit"


def test_int16_samples_scale_back_to_the_log(log, tmp_path):
    link = tmp_path / "dev"
    sim = start_sim(log, link, "--speed", "max", "--wait-host", "--sample-type", "int16", "--linger", str(TIMEOUT))
    host = Host(str(link))
    host.send(host.enc.heartbeat())
    host.run_until(lambda h: len(h.of_type(Sensor)) == 40, "40 SENSOR frames")
    finish(sim)
    host.close()
    hello = first_hello(host)
    check_hello(hello, list(CHANNELS))
    for sensor, expected in zip(host.of_type(Sensor), log_values(40)):
        for got, want, scale in zip(hello.physical_values(sensor), expected, hello.scales):
            assert abs(got - want) <= scale / 2 + 1e-9


def test_bad_actions_and_rejected_frames_count_as_actions_bad(log, tmp_path):
    link = tmp_path / "dev"
    sim = start_sim(log, link, "--speed", "max", "--wait-host", "--linger", str(TIMEOUT))
    host = Host(str(link))
    host.send(host.enc.heartbeat())
    host.send(host.enc.action(0, source=ActionSource.MODEL, answers_seq=60000))  # never sent
    host.send(b"\x05\x01\x02\x00")  # broken COBS
    host.run_until(lambda h: len(h.of_type(Sensor)) == 40, "40 SENSOR frames")
    summary = finish(sim)
    host.close()
    assert summary["actions_received"] == 41 and summary["actions_bad"] == 2
    assert summary["link"]["cobs_errors"] == 1


def test_corruption_is_counted_and_intact_frames_still_decode(tmp_path):
    rows = 300
    log = write_log(tmp_path / "log.csv", rows)
    link = tmp_path / "dev"
    sim = start_sim(log, link, "--speed", "max", "--wait-host", "--corrupt", "0.003", "--drop", "0.001",
                    "--garbage", "0.05", "--seed", "7", "--linger", str(TIMEOUT))
    host = Host(str(link))
    host.send(host.enc.heartbeat())
    # After the last row the device idles and sends heartbeats: that is the end of the stream.
    host.run_until(lambda h: isinstance(h.frames[-1:] and h.frames[-1], Heartbeat)
                   and any(row_of(s) >= rows - 20 for s in h.of_type(Sensor)), "the end of the stream")
    sim.send_signal(signal.SIGTERM)
    summary = finish(sim)
    host.close()

    sensors = host.of_type(Sensor)
    expected = log_values(rows)
    assert all(s.values == expected[row_of(s)] for s in sensors), "a damaged frame got through"
    c = host.dec.counters
    assert c.crc_errors + c.cobs_errors + c.bad_length > 0 and c.resyncs > 0 and c.seq_gaps > 0
    assert summary["bytes_corrupted"] > 0 and summary["bytes_dropped"] > 0 and summary["garbage_bursts"] > 0
    assert summary["frames_sent"] == rows and summary["end"] == "signal"
    assert rows * 0.5 < len(sensors) < rows
    # the host -> device direction is clean: every ACTION written arrived, every one was usable
    assert summary["actions_received"] == host.actions_sent and summary["actions_bad"] == 0
    assert summary["actions_unanswered"] == rows - len(sensors)


def test_the_same_seed_damages_the_same_bytes(tmp_path):
    log = write_log(tmp_path / "log.csv", 30)
    counts = []
    for run in range(2):  # no host: the device boots and streams into the pty's buffer
        proc = subprocess.run([sys.executable, "-m", "firmware_bridge.sim", str(log), "--link", str(tmp_path / "dev"),
                               "--speed", "max", "--corrupt", "0.01", "--garbage", "0.2", "--seed", "3",
                               "--linger", "0"], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        counts.append({k: summary[k] for k in ("bytes_corrupted", "garbage_bursts", "garbage_bytes", "bytes_sent")})
    assert counts[0] == counts[1] and counts[0]["bytes_corrupted"] > 0 and counts[0]["garbage_bursts"] > 0


def test_unplug_is_seen_as_a_dead_port_then_a_new_device_appears_at_the_same_path(tmp_path):
    rows = 60
    log = write_log(tmp_path / "log.csv", rows)
    link = tmp_path / "dev"
    sim = start_sim(log, link, "--speed", "4", "--wait-host", "--unplug-after", "0.5", "--unplug-for", "0.5",
                    "--linger", str(TIMEOUT))
    first = Host(str(link))
    first.send(first.enc.heartbeat())
    with pytest.raises(OSError):  # serial.SerialException is an OSError: "device disconnected"
        first.run_until(lambda h: False, "the unplug")
    first.close()

    wait_for(lambda: os.path.islink(link), "the device to come back")
    second = Host(str(link))
    second.send(second.enc.heartbeat())
    try:
        second.run_until(lambda h: sim.poll() is not None, "the end of the log")
    except OSError:
        pass  # the sim closed its pty on exit while we were reading
    summary = finish(sim)
    second.close()

    assert summary["unplugs"] == 1 and summary["hellos_sent"] >= 3  # boot, re-boot, one per host
    before, after = first.of_type(Sensor), second.of_type(Sensor)
    assert before and after
    first_hello(first), first_hello(second)
    rows_seen = [row_of(s) for s in before + after]
    assert rows_seen == sorted(rows_seen) and len(set(rows_seen)) == len(rows_seen)
    assert rows_seen[-1] == rows - 1 and summary["frames_sent"] == rows
    # the device rebooted: the second connection's numbering starts again near 0
    assert first_hello(second).seq < 5 < before[-1].seq
    assert summary["actions_received"] == first.actions_sent + second.actions_sent


def test_sigterm_prints_the_summary_and_a_stale_link_is_replaced_then_removed(log, tmp_path):
    link = tmp_path / "dev"
    os.symlink("/dev/nonexistent-device", link)
    sim = subprocess.Popen([sys.executable, "-m", "firmware_bridge.sim", str(log), "--link", str(link), "--loop"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: os.readlink(link).startswith("/dev/pts/") or sim.poll() is not None, "the pty link")
    sim.send_signal(signal.SIGTERM)
    summary = finish(sim)
    assert summary["end"] == "signal" and summary["frames_sent"] >= 0
    assert not os.path.lexists(link)


def test_duration_ends_the_run(log, tmp_path):
    sim = start_sim(log, tmp_path / "dev", "--duration", "0.3", "--loop")
    assert finish(sim)["end"] == "duration"


@pytest.mark.parametrize("args, message", [
    (["missing.csv", "--link", "{dev}"], "cannot read log"),
    (["{log}"], "--link"),
    (["{log}", "--link", "{dev}", "--speed", "0"], "--speed"),
    (["{log}", "--link", "{dev}", "--corrupt", "2"], "--corrupt"),
    (["{log}", "--link", "{tmp}/no/such/dir/dev"], "does not exist"),
    (["{log}", "--link", "{log}"], "not a symlink"),
    (["{empty}", "--link", "{dev}"], "no usable rows"),
    (["{nohead}", "--link", "{dev}"], "no 't' column"),
])
def test_bad_input_is_one_line_on_stderr_and_exit_2(log, tmp_path, args, message):
    empty = tmp_path / "empty.csv"
    empty.write_text("t,a\n")
    nohead = tmp_path / "nohead.csv"
    nohead.write_text("x,y\n1,2\n")
    names = {"log": log, "dev": tmp_path / "dev", "tmp": tmp_path, "empty": empty, "nohead": nohead}
    argv = [a.format(**names) for a in args]
    proc = subprocess.run([sys.executable, "-m", "firmware_bridge.sim", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.lexists(tmp_path / "dev")
