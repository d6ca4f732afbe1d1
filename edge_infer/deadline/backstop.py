"""The backstop: the fallback for the device at the deadline, written by a native thread that needs no GIL.

The watchdog (:mod:`.watchdog`) is a Python thread: to decide a window it
must take the GIL, and CPython's GIL has no priority inheritance. A Python
thread of normal priority that the kernel preempts while holding it (the
metrics server under a hard scrape, an MQTT worker, any library's thread)
keeps the SCHED_FIFO loop and watchdog waiting for milliseconds: measured
3-34 ms with a busy Python thread in the process (docs/performance.md).

So for the one sink that has a deadline, the device, each window's fallback
ACTION is encoded as the window's last frame arrives (on the reader's thread)
and handed to a native thread (``_backstop.c``) with a fire time just before
the deadline, after the watchdog's own (:func:`fire_at_ns`). Whoever decides
the window first (the loop with the model's answer, the watchdog with the
fallback, a deputy) writes its decision in the fallback's place
(:meth:`~edge_infer.sources.serial_link.SerialSource.send_action`); if the
backstop wrote the fallback first, that fallback *is* the window's decision
(:meth:`~edge_infer.sources.serial_link.SerialSource.backstop_sent`): the
device has it, and every other sink is told so, with the time it went out
(``latency_us``) — the decision log agrees with the device.

The native part is built at install time when a C compiler is there
(setup.py); without it, or with ``EDGE_INFER_BACKSTOP=off`` in the
environment (to measure what it is worth: ``scripts/bench_arrival.py
--backstop on,off``), :func:`native_type` is None and the watchdog alone
keeps the deadlines, as before.
"""

from __future__ import annotations

import os
from typing import Any, Optional

try:
    from ._backstop import Backstop as _Native
except ImportError:  # not built (no compiler at install, or a checkout built for another machine)
    _Native = None

#: The backstop fires this long before the deadline, at least (the watchdog fires a whole reserve before).
MIN_LEAD_NS = 100_000


def native_type() -> Optional[Any]:
    """The native backstop's class, or None where it was not built or ``EDGE_INFER_BACKSTOP=off`` says not to."""
    return None if os.environ.get("EDGE_INFER_BACKSTOP", "on") == "off" else _Native


def fire_at_ns(deadline_ns: int, reserve_floor_ns: int) -> int:
    """When the backstop writes a window's fallback: three quarters of the reserve's floor before the deadline.

    After the watchdog (a whole reserve before, at least the floor), so that on a machine where Python threads
    run on time the watchdog decides and the backstop rarely writes; and as early as that allows, because what
    it writes must still reach the device: half the floor (0.5 ms) was less than a pty and the device's reader
    took now and then (fallbacks written 0.3-0.5 ms before the deadline reached the device up to 0.2 ms after
    it: docs/performance.md 5.7). A model answer is never cut short by it: the watchdog has decided the window
    by then.
    """
    return deadline_ns - max(reserve_floor_ns * 3 // 4, MIN_LEAD_NS)
