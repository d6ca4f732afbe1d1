"""The isolated mode: the model in a child process that can be killed and restarted.

A thread cannot be stopped, so a native crash (segfault) in the interpreter
kills the whole service and a hung ``invoke()`` keeps the thread mode's
worker busy forever. Here the model runs in a child process: a crash or a
hang costs fallbacks with reason ``model_error``, not the service. The child
is killed once an invoke runs past the hang limit, and a new one is started,
loads the model and warms it up while the loop goes on deciding by fallback;
restarts are counted in the summary.

The transport is built for a small per-window cost:

* the window and the output vector live in one shared-memory array
  (``multiprocessing.RawArray``), written in place, never pickled;
* a request is its 8-byte id on a pipe, a report is 24 bytes back
  (status, id, invoke ns); the parent waits for it with ``select`` and a
  microsecond timeout, and a child that dies shows up as end-of-file.

Children are started by a **forkserver**: a fresh, single-threaded Python
started once, with numpy and the TFLite backend imported, that forks each
child. ``fork`` from the service itself would copy a multi-threaded process
(locks held by other threads stay locked forever in the child), and
``spawn`` re-imports numpy and the backend on every restart (about 0.5 s of
fallbacks here, against about 10 ms with the forkserver; docs/performance.md).
The forkserver listens on a socket in a private (0700) directory, never on an
abstract socket: on Python 3.9 < 3.9.16 and 3.10 < 3.10.9 multiprocessing
chose an abstract socket, which any local user can connect to and have
arbitrary code run as the service (CVE-2022-42919). :func:`_context` turns
abstract sockets off before the forkserver starts, on every version.

The child runs the model **bytes the parent loaded and verified** (hash,
signature), sent with its configuration: it never reads the model file, so a
file swapped on disk after start cannot change what decides, however often
the child is restarted.

A hung or crashed child is killed, reaped and replaced **off the decision
path**: the loop only sends SIGKILL (one system call) and decides
``model_error`` meanwhile; a helper thread waits for the exit, sleeps the
restart backoff and starts the next child, which the loop takes over at its
next tick once it is ready.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import multiprocessing.util
import select
import signal
import struct
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..decide.reasons import Reason
from ..errors import ModelError
from ..model.engine import Engine
from .clock import Clock
from .scheduler import WorkerScheduler

log = logging.getLogger(__name__)

_REQUEST = struct.Struct("<q")
_REPORT = struct.Struct("<qqq")  # status, request id, invoke ns
_OK, _ERROR, _READY = 0, 1, 2
#: Warm-up invokes the child runs before it reports ready.
CHILD_WARMUP = 10
#: How long a (re)started child may take to load and warm up the model before it counts as failed.
START_TIMEOUT_S = 60.0
#: Delays before restarting a child that failed again without answering any window in between.
RESTART_BACKOFF_S = (0.0, 0.1, 0.5, 2.0, 5.0)


@dataclass(frozen=True)
class ChildConfig:
    """What a child needs to run the same model the parent checked (picklable): its bytes, not its path."""

    model_path: str  #: for messages only: the child never opens it
    backend: str
    num_threads: int
    offset: Tuple[float, ...]
    scale: Tuple[float, ...]
    window: int
    channels: int
    output_size: int
    warmup: int = CHILD_WARMUP
    #: CPUs and nice value for the child (``--cpu-affinity``, ``--realtime``); None: inherit.
    cpu_affinity: Optional[Tuple[int, ...]] = None
    nice: Optional[int] = None
    #: The model as the parent loaded and verified it, and its sha256 (checked again in the child).
    model_bytes: bytes = field(default=b"", repr=False)
    sha256: str = ""

    @classmethod
    def of(cls, engine: Engine, warmup: int = CHILD_WARMUP) -> "ChildConfig":
        offset, scale = engine.normalization
        return cls(str(engine.path), engine.backend.name, engine.num_threads, tuple(map(float, offset)),
                   tuple(map(float, scale)), engine.window, engine.channels, engine.output_size, warmup,
                   model_bytes=engine.model_bytes, sha256=engine.sha256)


def _same_bytes(config: ChildConfig) -> "Callable[[str], None]":
    def check(sha256: str) -> None:
        if sha256 != config.sha256:  # cannot happen through a pipe; a guard against a wrong config, not noise
            raise ModelError(f"the model bytes sent to the child hash to {sha256}, not the parent's {config.sha256}")
    return check


def load_engine(config: ChildConfig) -> Engine:
    """The default engine factory: the bytes the parent loaded, with the same normalisation."""
    engine = Engine(config.model_path, backend=config.backend, num_threads=config.num_threads,
                    model_bytes=config.model_bytes, check_sha256=_same_bytes(config))
    engine.set_normalization(np.array(config.offset, dtype=np.float32), np.array(config.scale, dtype=np.float32))
    return engine


#: ``factory(config)`` returns an object with ``infer(window) -> output`` (an Engine, or a test double).
EngineFactory = Callable[[ChildConfig], Any]


def _shared_views(shared: Any, config: ChildConfig) -> Tuple[np.ndarray, np.ndarray]:
    flat = np.frombuffer(shared, dtype=np.float32)
    split = config.window * config.channels
    return flat[:split].reshape(config.window, config.channels), flat[split:split + config.output_size]


def _child_main(config: ChildConfig, factory: EngineFactory, shared: Any, requests: Any, reports: Any) -> None:
    """The child: load, warm up, say ready, then answer requests until the parent closes the pipe."""
    # The parent owns the child's life: Ctrl-C or a service stop reach the parent, which closes or kills us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    _set_priority(0, config)
    request_fd, report_fd = requests.fileno(), reports.fileno()
    window, output = _shared_views(shared, config)
    engine = factory(config)
    warm = np.zeros_like(window)
    for _ in range(config.warmup):
        engine.infer(warm)
    os.write(report_fd, _REPORT.pack(_READY, 0, 0))
    now = time.perf_counter_ns
    failed = False
    while True:
        data = os.read(request_fd, _REQUEST.size)
        if len(data) < _REQUEST.size:
            return
        request = _REQUEST.unpack(data)[0]
        start = now()
        try:
            np.copyto(output, engine.infer(window))
            status = _OK
        except Exception:
            if not failed:
                traceback.print_exc()
                failed = True
            status = _ERROR
        try:
            os.write(report_fd, _REPORT.pack(status, request, now() - start))
        except BrokenPipeError:  # the parent stopped listening: it is closing
            return


def _die_with_parent() -> None:
    """Linux: SIGKILL this child when its parent (the forkserver, which exits with the service) goes away.

    A child hung in native code would otherwise outlive a service that was killed.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _set_priority(pid: int, config: ChildConfig) -> None:
    """Best effort: the parent already warned if the settings are not permitted."""
    try:
        if config.cpu_affinity:
            os.sched_setaffinity(pid, config.cpu_affinity)
        if config.nice is not None:
            os.setpriority(os.PRIO_PROCESS, pid, config.nice)
    except OSError:
        pass


#: How children are started (see the module docstring); scripts/bench_deadline.py compares "spawn".
START_METHOD = "forkserver"


def _context() -> Any:
    """The multiprocessing context, with abstract sockets off (CVE-2022-42919, module docstring).

    On the affected versions ``connection.arbitrary_address('AF_UNIX')`` returns an abstract address
    while ``util.abstract_sockets_supported`` is true; false, it returns a path in a private temporary
    directory (what fixed versions always do). Set before the forkserver starts.
    """
    multiprocessing.util.abstract_sockets_supported = False
    return multiprocessing.get_context(START_METHOD)


def forkserver_address() -> Optional[str]:
    """Where the forkserver listens (None if it is not running): a filesystem path, never abstract."""
    from multiprocessing import forkserver

    address = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_address", None)
    return None if address is None else str(address)


class ProcessScheduler(WorkerScheduler):
    """The deadline scheduler with the model in a child process (see the module docstring).

    ``engine`` is the parent's loaded and checked model: the child loads the
    same file on the same backend with the same normalisation (via
    ``engine_factory``, which tests replace by doubles that crash or hang).
    The first child is started and awaited here, so a model that cannot run
    at all fails at start; later restarts do not block the loop.
    """

    mode = "process"

    def __init__(self, engine: Engine, clock: Optional[Clock] = None, engine_factory: Optional[EngineFactory] = None,
                 child_warmup: int = CHILD_WARMUP, start_timeout_s: float = START_TIMEOUT_S, **policy: Any):
        super().__init__(clock, engine.output_size, **policy)
        self._config = ChildConfig.of(engine, child_warmup)
        self._factory = engine_factory or load_engine
        self._start_timeout_ns = int(start_timeout_s * 1e9)
        ctx = _context()
        if START_METHOD == "forkserver":
            ctx.set_forkserver_preload([__name__, engine.backend.module])
        self._shared = ctx.RawArray("f", engine.window * engine.channels + engine.output_size)
        self._window, self._result = _shared_views(self._shared, self._config)
        self.restarts = 0
        self.exits: List[str] = []
        self._process: Any = None
        self._request_fd: Optional[int] = None
        self._report_fd: Optional[int] = None
        self._ready = False
        self._started_ns = 0
        self._failures_in_row = 0
        self._closing = threading.Event()
        self._replacer: Optional[threading.Thread] = None
        self._fresh: Optional[Tuple[Any, int, int]] = None  # a child the helper thread started, not taken over yet
        self._start_child()
        self._await_first_child()

    # --- child life ---------------------------------------------------------------------------------------

    def _start_child(self) -> None:
        self._install(*self._spawn())

    def _spawn(self) -> Tuple[Any, int, int]:
        """Fork a child through the forkserver; its process and our ends of its two pipes."""
        ctx = _context()
        request_r, request_w = ctx.Pipe(duplex=False)
        report_r, report_w = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_child_main, name="edge-infer-model", daemon=True,
                              args=(self._config, self._factory, self._shared, request_r, report_w))
        process.start()
        request_r.close()
        report_w.close()
        # Keep raw descriptors; the Connection objects would close them when garbage-collected.
        fds = os.dup(request_w.fileno()), os.dup(report_r.fileno())
        request_w.close()
        report_r.close()
        return process, fds[0], fds[1]

    def _install(self, process: Any, request_fd: int, report_fd: int) -> None:
        self._process = process
        self._request_fd, self._report_fd = request_fd, report_fd
        self._ready = False
        self._started_ns = self.clock.now_ns()

    def _await_first_child(self) -> None:
        deadline = self.clock.now_ns() + self._start_timeout_ns
        while not self._ready:
            if self._process is None:
                self.close()  # waits for the helper thread to record the exit, and starts no other child
                exits = "; ".join(self.exits) or "no reason given"
                raise ModelError(f"the isolated model process could not start ({exits}); "
                                 "its error is printed above")
            if not self.clock.wait(self._receive, deadline):
                self.close()
                raise ModelError(f"the isolated model process did not load and warm up the model within "
                                 f"{self._start_timeout_ns / 1e9:g} s")

    def _stop_child(self, why: str) -> None:
        """Kill the child (if alive) and have a helper thread reap it and start the next one after the backoff.

        On the loop's thread this is a ``kill`` and closing two descriptors: waiting for the exit (up to
        a second) and forking the next child happen on the helper thread, off the decision path.
        """
        process = self._process
        self._close_fds()
        self._process = None
        self._ready = False
        self._lost()
        if process is not None and process.exitcode is None:
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        delay = RESTART_BACKOFF_S[min(self._failures_in_row, len(RESTART_BACKOFF_S) - 1)]
        self._failures_in_row += 1
        self._replacer = threading.Thread(target=self._replace, args=(process, why, delay),
                                          name="edge-infer-model-restart", daemon=True)
        self._replacer.start()

    def _replace(self, process: Any, why: str, delay_s: float) -> None:
        """The helper thread: reap ``process``, record why it ended, wait ``delay_s``, start the next child."""
        if process is not None:
            process.join(timeout=1.0)  # after SIGKILL the forkserver reports the exit within a few ms
            self.exits.append(f"{why}, {_describe_exit(process.exitcode)}")
            del self.exits[:-5]  # the last few, for the summary
            if why == "crashed":
                log.warning("the model process ended unexpectedly (%s); its windows fall back (model_error) until "
                            "a new one is ready", self.exits[-1])
        if self._closing.wait(delay_s):
            return
        try:
            self._fresh = self._spawn()
        except Exception as exc:  # the forkserver itself failed: say so; the loop keeps deciding model_error
            self.exits.append(f"could not start a new model process: {exc}")
            del self.exits[:-5]

    def _take_over_restarted(self) -> None:
        """Take over the child the helper thread started (the loop's side of :meth:`_replace`)."""
        fresh = self._fresh
        if fresh is not None:
            self._fresh = None
            self.restarts += 1
            self._install(*fresh)

    def _close_fds(self) -> None:
        for fd in (self._request_fd, self._report_fd):
            if fd is not None:
                os.close(fd)
        self._request_fd = self._report_fd = None

    def _on_hang(self, now_ns: int) -> None:
        log.warning("the model has been running one invoke for %.0f ms (hang limit %.0f ms): killing the model "
                    "process and starting a new one", (now_ns - self._in_flight_since) / 1e6,
                    self.hang_limit_ns / 1e6)
        self._stop_child("hung")

    # --- transport ----------------------------------------------------------------------------------------

    def _available(self) -> bool:
        return self._ready

    def _send(self, window: np.ndarray, request_id: int) -> None:
        np.copyto(self._window, window)
        try:
            os.write(self._request_fd, _REQUEST.pack(request_id))  # type: ignore[arg-type]
        except OSError:  # the child died since its last report; its end-of-file is read next
            pass

    def _receive(self, timeout_s: float) -> bool:
        fd = self._report_fd
        if fd is None:
            return False
        if not select.select((fd,), (), (), timeout_s)[0]:
            return False
        data = os.read(fd, _REPORT.size)
        if len(data) < _REPORT.size:
            self._stop_child("crashed")  # the helper thread says how it ended
            return True
        status, request, invoke_ns = _REPORT.unpack(data)
        if status == _READY:
            self._ready = True
        else:
            self._failures_in_row = 0
            if status == _ERROR:
                self.model_errors += 1
            self._completed(request, None if status == _OK else Reason.MODEL_ERROR, invoke_ns)
        return True

    def poll(self, now_ns: int) -> None:
        if self._process is not None and not self._ready:
            self._receive(0.0)  # its ready report, or its end
            if self._process is not None and not self._ready and now_ns - self._started_ns > self._start_timeout_ns:
                self._stop_child("did not start in time")
        super().poll(now_ns)  # late reports, and the hang limit
        if self._process is None:
            self._take_over_restarted()

    def set_child_affinity(self, cpus: List[int]) -> None:
        """Pin the model's child process to ``cpus``, now and after every restart."""
        self._config = replace(self._config, cpu_affinity=tuple(cpus))
        if self._process is not None:
            os.sched_setaffinity(self._process.pid, cpus)

    def set_worker_nice(self, nice: int) -> None:
        """The nice value of the model's child process, now and after every restart."""
        if self._process is not None:
            os.setpriority(os.PRIO_PROCESS, self._process.pid, nice)
        self._config = replace(self._config, nice=nice)

    def counters(self) -> Dict[str, Any]:
        out = super().counters()
        out["restarts"] = self.restarts
        out["child_exits"] = list(self.exits)
        return out

    def close(self) -> None:
        """Close the request pipe (the child exits at end-of-file); kill it if it does not."""
        self._closing.set()
        if self._replacer is not None:
            self._replacer.join(timeout=2.0)
        if self._fresh is not None:  # started by the helper thread, never taken over
            self._install(*self._fresh)
            self._fresh = None
        process = self._process
        self._close_fds()
        self._process = None
        if process is not None:
            process.join(timeout=1.0)
            if process.exitcode is None:
                process.kill()
                process.join(timeout=5.0)


def _describe_exit(code: Optional[int]) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
