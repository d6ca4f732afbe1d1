"""A sink that keeps every decision (and, if asked, every frame) of a run, for the report and the comparison.

:class:`~edge_infer.sinks.stats.RunStats` keeps constant memory for weeks of
service; a replay report and a model comparison need each window instead.
They are kept column by column in typed ``array.array`` buffers (8 bytes per
number, not a dict per decision), so a replay of millions of frames stays
in tens of megabytes, and the columns turn into numpy arrays without a copy.
"""

from __future__ import annotations

import math
from array import array
from typing import Dict, Hashable, List, Optional

import numpy as np

from ..decide.decision import Decision
from ..decide.reasons import Reason
from ..frame import Frame
from .base import Sink


class _Codes:
    """Distinct values (actions, labels) numbered in order of first appearance."""

    def __init__(self) -> None:
        self.values: List[Hashable] = []
        self._index: Dict[Hashable, int] = {}

    def code(self, value: Hashable) -> int:
        index = self._index.get(value)
        if index is None:
            index = self._index[value] = len(self.values)
            self.values.append(value)
        return index


class CollectSink(Sink):
    """Every decision as columns; with ``frames=True`` also every frame's time, values and label."""

    def __init__(self, frames: bool = False):
        self.keep_frames = frames
        self.actions = _Codes()
        self.labels = _Codes()
        self.seq = array("q")
        self.t = array("d")
        self.action = array("l")
        self.fallback = array("b")
        self.reason = array("b")  # Reason values; 0 (NONE) for a plain model decision
        self.latency_us = array("d")
        self.invoke_us = array("d")  # NaN where the model did not run
        self.label = array("l")  # -1 where the window has no label
        self.frame_t = array("d")
        self.frame_values = array("f")
        self.frame_label = array("l")
        self.channel_count = 0

    def on_frame(self, frame: Frame) -> None:
        if self.keep_frames:
            self.frame_t.append(frame.t)
            self.frame_values.extend(frame.values)
            self.channel_count = len(frame.values)
            self.frame_label.append(-1 if frame.label is None else self.labels.code(frame.label))

    def on_decision(self, decision: Decision) -> None:
        self.seq.append(decision.seq)
        self.t.append(decision.t)
        self.action.append(self.actions.code(decision.action))
        self.fallback.append(decision.is_fallback)
        self.reason.append(0 if decision.reason is None else int(decision.reason))
        self.latency_us.append(decision.latency_us)
        self.invoke_us.append(math.nan if decision.invoke_us is None else decision.invoke_us)
        self.label.append(-1 if decision.label is None else self.labels.code(decision.label))

    def __len__(self) -> int:
        return len(self.seq)

    def column(self, name: str) -> np.ndarray:
        """A decision or frame column as a numpy array (a view, no copy)."""
        return np.frombuffer(getattr(self, name), dtype=getattr(self, name).typecode)

    def frame_matrix(self) -> np.ndarray:
        """Frame values as (frames, channels)."""
        return self.column("frame_values").reshape(len(self.frame_t), self.channel_count)

    def action_names(self) -> List[str]:
        """Each decision's action as text (labels and class indices compare alike)."""
        names = [str(v) for v in self.actions.values]
        return [names[i] for i in self.action]

    def label_names(self, codes: "array[int]") -> List[Optional[str]]:
        return [None if i < 0 else str(self.labels.values[i]) for i in codes]

    def reason_codes(self) -> List[Optional[str]]:
        """Each decision's reason code (``None`` for a plain model decision)."""
        return [None if r == 0 else Reason(r).code for r in self.reason]
