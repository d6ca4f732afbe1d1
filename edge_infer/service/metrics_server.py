"""The metrics HTTP endpoint, served from a process of its own: a scrape never costs the decision loop the GIL.

    python -m edge_infer.service.metrics_server HOST PORT

Started by :class:`~edge_infer.service.metrics.HttpExporter`. A Python HTTP
server in the service's own process parses every request while holding the
GIL, and the loop (and the watchdog, and the source's reader) must take the
GIL back each time it wakes: scraped as fast as it answers, such a server
made decisions late (issue 10: the worst latency went from 3.6 to 9.8 ms).
This process holds no state of the runtime: the loop renders the text in
its slack time and sends it down this process's stdin (a 4-byte big-endian
length, then the bytes); every request is answered with the last text
received, as it is. It runs at nice 10, so under load the loop wins the CPU.

It prints ``ok`` on stdout once it listens (or one error line, and exits 2),
and exits when its stdin ends (the service stopped, or died: the kernel
closes the pipe) or its parent dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List, Optional

LENGTH = struct.Struct(">I")
#: What is served before the loop sent its first text (it sends one as soon as it is ready).
EMPTY = b"# edge-infer: no metrics yet\n"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Cache:
    """The last text the loop sent (replaced whole: a reader sees the old bytes or the new ones)."""

    body = EMPTY


class _Handler(BaseHTTPRequestHandler):
    server_version = "edge-infer-metrics"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.split("?", 1)[0] not in ("/", "/metrics"):
            self.send_error(404)
            return
        body = _Cache.body
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # a scrape every few seconds is not news
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def _server_for(host: str) -> type:
    class Server(_Server):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return Server


def _read_updates(stdin: int, server: ThreadingHTTPServer) -> None:
    """Take each text the loop sends; stop the server when stdin ends."""
    buffer = b""
    while True:
        chunk = os.read(stdin, 65536)
        if not chunk:
            break
        buffer += chunk
        while len(buffer) >= LENGTH.size:
            (size,) = LENGTH.unpack_from(buffer)
            if len(buffer) < LENGTH.size + size:
                break
            _Cache.body = bytes(buffer[LENGTH.size:LENGTH.size + size])
            buffer = buffer[LENGTH.size + size:]
    server.shutdown()


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[1].isdigit():
        print("usage: python -m edge_infer.service.metrics_server HOST PORT", flush=True)
        return 2
    host, port = args[0], int(args[1])
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service stops us by closing our stdin
    try:  # never compete with the decision loop: normal scheduling (whatever the parent had), nice 10
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        os.nice(10)
    except (OSError, AttributeError):
        pass
    try:
        server = _server_for(host)((host, port), _Handler)
    except OSError as exc:
        print(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}", flush=True)
        return 2
    print("ok", flush=True)
    threading.Thread(target=_read_updates, args=(sys.stdin.fileno(), server), daemon=True).start()
    server.serve_forever(poll_interval=0.5)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
