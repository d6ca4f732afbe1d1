"""One sample of all channels, as it travels from a source to the window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class Frame:
    """One sample of every channel.

    ``seq`` is the 0-based index of the frame within its stream (the log, or
    the link since the runtime started): decisions are keyed by it.
    ``t`` is the sample's own timestamp in seconds (the log's ``t`` column or
    the device's clock), used for pacing and gap checks.
    ``recv_ns`` is the host's monotonic clock (``time.perf_counter_ns``) when
    the frame *arrived* (stamped by the source's reader thread, dated by the
    device clock; a paced replay's due time): deadlines and decision latency
    run from it (docs/deadlines.md).
    ``values`` has one float per channel, in the model's channel order.
    ``label`` is the ground truth where a recorded log carries one.
    ``device_seq`` is the sequence number the device put on the wire (None for logs).

    Treat a frame as read-only. It is not a frozen dataclass only because one is made per sample
    and a frozen one costs about three times as much to build (docs/performance.md).
    """

    __slots__ = ("seq", "t", "recv_ns", "values", "label", "device_seq")

    seq: int
    t: float
    recv_ns: int
    values: np.ndarray
    label: Optional[str]
    device_seq: Optional[int]
