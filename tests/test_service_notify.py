"""systemd's side of the notify protocol, played around a real `edge-infer run` on the bundled log in real time.

A real AF_UNIX datagram socket in ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` set,
as systemd does: the run must say ``READY=1``, feed ``WATCHDOG=1`` at least
every half watchdog period, report ``STATUS=``, and on SIGTERM say
``STOPPING=1``, send the safe action, flush its decision log and recording and
exit 0. Timing is checked only against the watchdog's own limit (a gap longer
than the full period is what would make systemd kill the service); the
measured gaps and stop time are in docs/operations.md.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

from conftest import ROOT, read_jsonl

from edge_infer.io.mcap_log import read_mcap

WATCHDOG_USEC = 2_000_000  # 2 s: pings are due every 1 s, and a loaded machine has 1 s to be late by
OBSERVE_S = 6.0  # how long the running service is watched before SIGTERM
SAFETY_S = 120.0  # generous upper bound for start-up and stop on a shared, noisy machine


def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.05)
    return sock


def receive_until(sock, proc, messages, done, deadline):
    """Append (time, message) to ``messages`` until ``done(messages)`` or the process exits or the deadline."""
    while time.monotonic() < deadline and not done(messages):
        try:
            messages.append((time.monotonic(), sock.recv(4096).decode()))
        except socket.timeout:
            if proc.poll() is not None:
                break


def test_ready_watchdog_status_stopping_and_a_clean_stop_on_sigterm(tmp_path):
    sock = notify_socket(tmp_path)
    decisions, recording = tmp_path / "decisions.jsonl", tmp_path / "run.mcap"
    env = dict(os.environ, PYTHONPATH=str(ROOT), NOTIFY_SOCKET=str(tmp_path / "notify.sock"),
               WATCHDOG_USEC=str(WATCHDOG_USEC))
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "edge_infer", "run", "--speed", "1", "--record", str(recording),
                             "--decisions", str(decisions), "--json"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    messages = []
    try:
        receive_until(sock, proc, messages, lambda m: any("READY=1" in text for _, text in m),
                      time.monotonic() + SAFETY_S)
        assert messages and "READY=1" in messages[-1][1], (messages, proc.poll())
        ready_at = messages[-1][0]
        receive_until(sock, proc, messages, lambda m: False, ready_at + OBSERVE_S)
        assert proc.poll() is None, "the run ended before SIGTERM"
        proc.send_signal(signal.SIGTERM)
        term_at = time.monotonic()
        receive_until(sock, proc, messages, lambda m: False, term_at + SAFETY_S)
        stdout, stderr = proc.communicate(timeout=SAFETY_S)
        exited_at = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()

    assert proc.returncode == 0, stderr
    running = [(t, text) for t, text in messages if ready_at <= t < term_at]
    pings = [ready_at] + [t for t, text in running if text == "WATCHDOG=1"]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    # due every half period: at least one a period even on a slow machine
    assert len(pings) - 1 >= OBSERVE_S // (WATCHDOG_USEC / 1e6), pings
    assert max(gaps) <= WATCHDOG_USEC / 1e6, gaps  # never the full period: systemd would have killed it
    assert max(term_at - pings[-1], 0) <= WATCHDOG_USEC / 1e6
    statuses = [text for _, text in running if text.startswith("STATUS=")]
    assert statuses and all("decisions" in text and "last latency" in text for text in statuses), running

    stopping = [(t, text) for t, text in messages if "STOPPING=1" in text]
    assert len(stopping) == 1 and stopping[0][0] >= term_at
    assert not [text for t, text in messages if t > stopping[0][0] and text == "WATCHDOG=1"]
    assert exited_at - term_at < 5.0  # the unit's TimeoutStopSec; the measured time is in docs/operations.md

    summary = json.loads(stdout)
    records = read_jsonl(decisions)  # every line complete: the log was flushed
    assert len(records) == summary["decisions"] > 0
    assert records[-1]["reason"] == "shutdown" and records[-1]["source"] == "fallback"
    assert summary["fallback_reasons"].get("shutdown") == 1
    recorded = read_mcap(recording, strict=True)  # strict: a footer, i.e. closed, not cut off
    assert len(recorded.frames) == summary["frames"]
    assert [record for _, record in recorded.decisions] == records
