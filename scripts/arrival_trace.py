"""Where a window's time went, seen from inside the runtime: the ``--trace`` option of bench_arrival.py.

Installed in the runtime's process by the benchmark's launcher (never by the runtime itself), it wraps a
few methods and stamps, with the same monotonic clock the device uses:

* every decision handed to the sinks: host seq, reason, arrival stamp, when ``_emit`` started, which
  thread (the loop or the watchdog);
* every ACTION written to the device: host and device seq, before and after the write;
* every invoke: the window's host seq, start, end, and the loop thread's CPU time over it (wall minus
  CPU is time off the CPU: waiting for a CPU, or for the GIL after the invoke returned);
* every watchdog firing: when it meant to act (the earliest fire time armed) and when it did act
  (after its timer woke it and it got the GIL back), with the watchdog's run-queue wait (schedstat)
  since its previous firing.

At exit the records go to the JSON file named by ``EDGE_INFER_TRACE``; the benchmark joins them with the
device's own stamps (``explain`` below). Tracing adds a few microseconds per window on the loop thread
and no GIL release (only ``perf_counter_ns``/``thread_time_ns``), except the schedstat read on the watchdog.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from typing import Any, Dict, List, Optional

now = time.perf_counter_ns
cpu = time.thread_time_ns


def _run_delay_ns() -> int:
    try:
        with open(f"/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def install(path: str) -> None:
    """Wrap the runtime's methods and write the records to ``path`` at exit."""
    from edge_infer.deadline.scheduler import InlineScheduler
    from edge_infer.deadline.watchdog import Watchdog
    from edge_infer.model.engine import Engine
    from edge_infer.runtime import Runtime
    from edge_infer.sources.serial_link import SerialSource

    emits: List[tuple] = []
    writes: List[tuple] = []
    invokes: List[tuple] = []
    fires: List[tuple] = []
    current = [-1]
    watchdog_delay = [0]

    backstops: List[tuple] = []
    emit, send, run, infer, fire = (Runtime._emit, SerialSource.send_action, InlineScheduler.run, Engine.infer,
                                    Watchdog._fire)
    backstop_sent = SerialSource.backstop_sent

    def traced_emit(self: Any, decision: Any, arrival_ns: int) -> None:
        emits.append((decision.seq, int(decision.reason) if decision.reason is not None else 0, arrival_ns, now(),
                      threading.get_native_id()))
        emit(self, decision, arrival_ns)

    def traced_send(self: Any, action: int, source: Any, reason: int, frame_seq: int, name: str) -> bool:
        answers = self.device_seq_of(frame_seq)
        start = now()
        sent = send(self, action, source, reason, frame_seq, name)
        writes.append((frame_seq, answers, reason, start, now()))
        return sent

    def traced_backstop_sent(self: Any, frame_seq: int) -> Any:
        answers = self.device_seq_of(frame_seq)
        sent = backstop_sent(self, frame_seq)
        if sent is not None:  # the native backstop wrote the window's fallback at ``sent`` (its own stamp)
            backstops.append((frame_seq, answers, sent))
        return sent

    def traced_run(self: Any, window: Any, deadline_ns: int, pending: Any = None) -> Any:
        current[0] = -1 if pending is None else pending.frame.seq
        return run(self, window, deadline_ns, pending)

    def traced_infer(self: Any, window: Any) -> Any:
        c0, t0 = cpu(), now()
        out = infer(self, window)
        t1, c1 = now(), cpu()
        invokes.append((current[0], t0, t1, c1 - c0))
        return out

    def traced_fire(self: Any, armed: Any, at: int) -> None:
        entered = now()
        meant = min((p.fire_at_ns for p in armed if p.open), default=at)
        delay = _run_delay_ns()
        fires.append((meant, at, entered, delay - watchdog_delay[0] if watchdog_delay[0] else -1,
                      [p.frame.seq for p in armed if p.open and p.fire_at_ns <= at]))
        watchdog_delay[0] = delay
        fire(self, armed, at)

    Runtime._emit, SerialSource.send_action = traced_emit, traced_send  # type: ignore[method-assign]
    SerialSource.backstop_sent = traced_backstop_sent  # type: ignore[method-assign]
    InlineScheduler.run, Engine.infer, Watchdog._fire = traced_run, traced_infer, traced_fire  # type: ignore

    loop_tid = threading.get_native_id()

    def dump() -> None:
        tids = {"loop": loop_tid, **{t.name: t.native_id for t in threading.enumerate() if t.native_id != loop_tid}}
        with open(path, "w") as f:
            json.dump({"emits": emits, "writes": writes, "invokes": invokes, "fires": fires, "tids": tids,
                       "backstops": backstops}, f)

    atexit.register(dump)


def explain(trace: Dict[str, Any], sent_ns: Dict[int, int], actions: List[Any], budget_ms: float,
            limit: int = 40) -> Dict[str, Any]:
    """Join the runtime's records with the device's stamps: one line per late window, and totals.

    ``sent_ns``: device seq -> when the device wrote the SENSOR frame; ``actions``: (stamp ns, Action).
    """
    writes = {w[1]: w for w in trace["writes"] if w[1] is not None}  # device seq -> (host seq, ..., start, end)
    # a window whose fallback the native backstop wrote: the decision's send_action wrote nothing; the backstop's
    # own stamp is when its ACTION left
    by_backstop = {b[1]: b for b in trace.get("backstops", []) if b[1] is not None}
    for dev, (host, _, sent) in by_backstop.items():
        writes[dev] = (host, dev, 1, sent, sent)
    emits = {e[0]: e for e in trace["emits"]}  # host seq -> (seq, reason, arrival, emit start, tid)
    invokes = sorted(trace["invokes"], key=lambda i: i[1])
    invoke_of = {i[0]: i for i in invokes if i[0] >= 0}
    fires = trace["fires"]
    budget_ns = int(budget_ms * 1e6)
    rows: List[Dict[str, Any]] = []
    by_reason: Dict[str, int] = {}
    for stamp, action in actions:
        dev = action.answers_seq
        if dev not in sent_ns or dev not in writes:
            continue
        latency = stamp - sent_ns[dev]
        if latency <= budget_ns:
            continue
        write = writes[dev]
        host = write[0]
        em = emits.get(host)
        sent = sent_ns[dev]
        row: Dict[str, Any] = {"seq": dev, "reason": action.reason, "latency_ms": round(latency / 1e6, 2)}
        if em is not None:
            row["arrival_stamp_after_send_ms"] = round((em[2] - sent) / 1e6, 2)
            row["emit_started_ms"] = round((em[3] - sent) / 1e6, 2)
            row["by"] = ("backstop" if dev in by_backstop else "watchdog" if any(host in f[4] for f in fires)
                         else "loop")
        row["write_ms"] = [round((write[3] - sent) / 1e6, 2), round((write[4] - sent) / 1e6, 2)]
        row["action_seen_ms"] = round(latency / 1e6, 2)
        inv = invoke_of.get(host)
        if inv is not None:
            row["invoke_ms"] = [round((inv[1] - sent) / 1e6, 2), round((inv[2] - sent) / 1e6, 2)]
            row["invoke_off_cpu_ms"] = round((inv[2] - inv[1] - inv[3]) / 1e6, 2)
        elif em is not None:  # decided without the model: the invoke it waited for is the last one before
            before = [i for i in invokes if i[2] <= em[3]]
            if before:
                inv = before[-1]
                row["invoke_before_ms"] = [round((inv[1] - sent) / 1e6, 2), round((inv[2] - sent) / 1e6, 2)]
                row["invoke_before_off_cpu_ms"] = round((inv[2] - inv[1] - inv[3]) / 1e6, 2)
        fire = next((f for f in fires if host in f[4]), None)
        if fire is not None:
            row["watchdog_meant_ms"] = round((fire[0] - sent) / 1e6, 2)
            row["watchdog_acted_ms"] = round((fire[1] - sent) / 1e6, 2)
            row["watchdog_runqueue_ms"] = round(fire[3] / 1e6, 2) if fire[3] >= 0 else None
        rows.append(row)
        key = {1: "deadline", 14: "overrun", 0: "model"}.get(action.reason, str(action.reason))
        by_reason[key] = by_reason.get(key, 0) + 1
    wake_late = sorted(f[1] - f[0] for f in fires)
    invoke_wall = sorted(i[2] - i[1] for i in invokes if i[0] >= 0)
    off_cpu = sorted(i[2] - i[1] - i[3] for i in invokes if i[0] >= 0)
    write_us = sorted(w[4] - w[3] for w in trace["writes"])
    # ACTIONs that left the runtime after the budget (its own count should match this), and the others the device
    # saw late: written on time, held up on the way (the pty's tty layer: docs/performance.md 5.7)
    written_late = sum(1 for r in rows if r["write_ms"][1] > budget_ms)
    # from the end of the runtime's write to the device seeing the ACTION: the transport (pty, tty layer)
    delivery = sorted(stamp - writes[a.answers_seq][4] for stamp, a in actions if a.answers_seq in writes)

    def pct(values: List[int], q: float) -> Optional[float]:
        return round(values[min(len(values) - 1, int(q * len(values)))] / 1e6, 3) if values else None

    return {
        "late_by_reason": by_reason,
        "late_written": written_late,
        "late_in_transport": len(rows) - written_late,
        "backstop_writes": len(by_backstop),
        "late": rows[:limit],
        "watchdog_fires": len(fires),
        "watchdog_late_ms_p50_p99_max": [pct(wake_late, 0.5), pct(wake_late, 0.99), pct(wake_late, 1.0)],
        "invoke_ms_p50_p99_max": [pct(invoke_wall, 0.5), pct(invoke_wall, 0.99), pct(invoke_wall, 1.0)],
        "invoke_off_cpu_ms_p50_p99_max": [pct(off_cpu, 0.5), pct(off_cpu, 0.99), pct(off_cpu, 1.0)],
        "device_write_ms_p50_p99_max": [pct(write_us, 0.5), pct(write_us, 0.99), pct(write_us, 1.0)],
        "delivery_ms_p50_p99_max": [pct(delivery, 0.5), pct(delivery, 0.99), pct(delivery, 1.0)],
    }


#: The GIL hog's status object is serialised in this long (one C call that keeps the GIL), every GIL_HOG_EVERY_S.
GIL_HOG_MS = 25.0
GIL_HOG_EVERY_S = 0.1


def launcher(trace_path: Optional[str], busy: bool, gil_hog: bool = False,
             hiccup: Optional["tuple[float, int, int]"] = None) -> str:
    """The Python source the benchmark runs the CLI with: optionally a busy thread or a GIL hog, optionally
    tracing, optionally a model that hangs.

    The busy thread spins in Python (it hands the GIL over at every switch interval, unless the kernel preempts
    it while it holds it). The GIL hog is a telemetry thread that serialises a large status object with
    ``json.dumps`` every ``GIL_HOG_EVERY_S``: one C call that keeps the GIL for about ``GIL_HOG_MS``.
    ``hiccup`` = (ms, every, after): every ``every``-th invoke after the first ``after`` (the warm-up) sleeps
    ``ms`` first (a sleep releases the GIL, as a hung native invoke does).
    """
    lines = ["import sys, threading", f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})"]
    if busy:
        lines += ["def spin():", "    n = 0", "    while True:", "        n += 1",
                  "threading.Thread(target=spin, daemon=True, name='busy').start()"]
    if gil_hog:
        lines += ["import json, time",
                  "def status(n): return [{'k': i, 'v': [i] * 10} for i in range(n)]",
                  "t = time.perf_counter(); json.dumps(status(5000)); per_item = (time.perf_counter() - t) / 5000",
                  f"big = status(max(1, int({GIL_HOG_MS} / 1000 / per_item)))",
                  "def hog():",
                  "    while True:",
                  "        json.dumps(big)",
                  f"        time.sleep({GIL_HOG_EVERY_S})",
                  "threading.Thread(target=hog, daemon=True, name='gil-hog').start()"]
    if hiccup:
        ms, every, after = hiccup
        lines += ["import time", "from edge_infer.model.engine import Engine", "_infer, _calls = Engine.infer, [0]",
                  "def infer(self, window):", "    _calls[0] += 1",
                  f"    if _calls[0] > {after} and _calls[0] % {every} == 0:", f"        time.sleep({ms / 1000.0})",
                  "    return _infer(self, window)", "Engine.infer = infer"]
    if trace_path:
        lines += ["import arrival_trace", f"arrival_trace.install({trace_path!r})"]
    lines += ["from edge_infer.cli import main", "sys.exit(main(sys.argv[1:]))"]
    return "\n".join(lines) + "\n"
