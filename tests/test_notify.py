"""The systemd notify protocol: message format, path and abstract sockets, the watchdog schedule.

systemd's side is played by a real AF_UNIX datagram socket; time is a FakeClock.
"""

import os
import socket
import uuid

import pytest

from edge_infer.deadline.clock import FakeClock
from edge_infer.service.notify import Notifier, format_message, socket_address, watchdog_interval_ns

MS = 1_000_000


@pytest.fixture
def listener(tmp_path):
    """systemd's end: a datagram socket bound to a path, and its NOTIFY_SOCKET value."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def received(sock):
    """Every datagram waiting on ``sock``, decoded."""
    sock.setblocking(False)
    out = []
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(5)


def test_message_is_key_value_lines_and_a_newline_cannot_inject_a_field():
    assert format_message(READY=1, STATUS="deciding") == b"READY=1\nSTATUS=deciding"
    assert format_message(STATUS="two\nWATCHDOG=1") == b"STATUS=two WATCHDOG=1"


def test_socket_address_path_and_abstract():
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@/org/freedesktop/systemd1/notify/123") == "\0/org/freedesktop/systemd1/notify/123"
    with pytest.raises(ValueError, match="neither a socket path nor an abstract"):
        socket_address("vsock:2:1234")


@pytest.mark.parametrize("environ,pid,expected", [
    ({"WATCHDOG_USEC": "5000000"}, 42, 2_500_000_000),  # half of 5 s, in ns
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "42"}, 42, 500_000_000),
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "43"}, 42, None),  # inherited from a parent: not ours
    ({"WATCHDOG_USEC": "0"}, 42, None),
    ({"WATCHDOG_USEC": "soon"}, 42, None),
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "x"}, 42, None),
    ({}, 42, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec_for_our_pid_only(environ, pid, expected):
    assert watchdog_interval_ns(environ, pid) == expected


def test_notifier_sends_to_a_path_socket(listener):
    sock, name = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": name})
    assert notifier.enabled and notifier.watchdog_ns is None
    notifier.ready("deciding", now_ns=0)
    notifier.status("12 decisions")
    notifier.stopping("bye")
    notifier.close()
    assert received(sock) == ["READY=1\nSTATUS=deciding", "STATUS=12 decisions", "STOPPING=1\nSTATUS=bye"]


def test_notifier_sends_to_an_abstract_socket():
    name = f"@edge-infer-test-{os.getpid()}-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name[1:])
    try:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": name})
        notifier.ready("up", now_ns=0)
        notifier.close()
        assert received(sock) == ["READY=1\nSTATUS=up"]
    finally:
        sock.close()


def test_watchdog_every_half_period_after_ready_and_never_after_stopping(listener):
    sock, name = listener
    clock = FakeClock(start_ns=10**12)
    environ = {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier.from_environ(environ)
    assert notifier.watchdog_ns == 500 * MS
    assert not notifier.feed_watchdog(clock.now_ns())  # not before READY=1: systemd arms the watchdog then
    notifier.ready("up", clock.now_ns())
    sent_at = []
    for _ in range(300):  # a loop ticking every 10 ms for 3 s
        clock.advance(10 * MS)
        if notifier.feed_watchdog(clock.now_ns()):
            sent_at.append(clock.now_ns())
    gaps = {b - a for a, b in zip(sent_at, sent_at[1:])}
    assert len(sent_at) == 6 and gaps == {500 * MS}
    notifier.stopping()
    clock.advance(10_000 * MS)
    assert not notifier.feed_watchdog(clock.now_ns())
    messages = received(sock)
    assert messages.count("WATCHDOG=1") == 6 and messages[-1].startswith("STOPPING=1")


def test_late_ticks_do_not_stretch_the_schedule_and_a_stall_does_not_cause_a_burst(listener):
    sock, name = listener
    notifier = Notifier(socket_address(name), watchdog_ns=500 * MS)
    notifier.ready("up", 0)
    assert not notifier.feed_watchdog(499 * MS)
    assert notifier.feed_watchdog(590 * MS)  # a tick 90 ms late still feeds...
    assert not notifier.feed_watchdog(999 * MS)
    assert notifier.feed_watchdog(1000 * MS)  # ...and the next ping stays on the 500 ms grid
    assert notifier.feed_watchdog(2700 * MS)  # after a 1.7 s stall: one ping, not three
    assert not notifier.feed_watchdog(3199 * MS)
    assert notifier.feed_watchdog(3200 * MS)


def test_without_notify_socket_nothing_is_sent_and_nothing_fails():
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled and notifier.watchdog_ns is None
    notifier.ready("up", 0)
    assert not notifier.feed_watchdog(10**12)
    assert not notifier.send(STATUS="x")
    notifier.close()


def test_an_unusable_socket_is_counted_and_logged_not_raised(tmp_path, caplog):
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert not notifier.send(READY=1)
    assert notifier.failed == 1 and "cannot notify systemd" in caplog.text
    unsupported = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:99"})
    assert not unsupported.enabled and "not notifying systemd" in caplog.text
