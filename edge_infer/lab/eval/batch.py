"""Chunks of a log's frames in, the decisions for the windows they complete out: the loop's decisions, in bulk.

The real-time loop pushes a frame, and when a window is due checks it,
invokes the model on it and decides. :class:`WindowStream` does the same for
a whole chunk at a time:

* the windows are strided views into the chunk (plus the ``window - 1``
  frames carried from the chunk before): no window is copied;
* the input checks run over all of them at once (:class:`~edge_infer.checks.batch.BatchGuard`);
* the interpreter runs ``batch`` windows per invoke, straight from the views;
* the decision rule runs over all outputs at once (:meth:`DecisionRule.decide_many`).

Windows are numbered as the loop numbers them: a window is decided at the
frame that completes it (``seq``, the frame's 0-based index in the log)
after the first ``window`` frames, then every ``hop`` frames. Timing reasons
(``deadline``, ``busy``, ``model_error`` from a hung model) do not arise:
there is no deadline offline, every window gets the model's answer. The
budget is judged from the invoke-time distribution instead (single-window
invokes timed on a sample of windows, see :mod:`.results`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ...checks.batch import BatchGuard, WindowVerdicts
from ...decide.fallback import ConstantFallback
from ...decide.reasons import Reason
from ...histogram import Histogram
from ...io import RecordedLog
from .model import LoadedModel, output_tolerance


@dataclass
class Decisions:
    """The decisions of one chunk, column by column (one row per window)."""

    seq: np.ndarray          #: int64: the frame that completed the window
    t: np.ndarray            #: float64: its timestamp
    action: np.ndarray       #: int32 codes into LoadedModel.actions
    fallback: np.ndarray     #: bool
    reason: np.ndarray       #: int8 Reason values, 0 for a plain model decision
    output: np.ndarray       #: (n, outputs) float32
    has_output: np.ndarray   #: bool: False where an input check kept the model from running
    label: Optional[np.ndarray]  #: str: the label of the window's last frame (None: the log has no labels)
    ood: np.ndarray          #: float64, NaN where the guard gives no score

    def __len__(self) -> int:
        return len(self.seq)


class WindowStream:
    """Decides the windows of one log, fed chunk by chunk, with one loaded model."""

    def __init__(self, model: LoadedModel, columns: List[int]):
        self.model = model
        self.columns = columns
        spec = model.spec
        self.window, self.hop, self.channels = spec.window, spec.hop, len(spec.channels)
        self.guard = BatchGuard(model.checks)
        self.frames = 0
        self._carry = np.zeros((0, self.channels), dtype=np.float32)
        self._tolerance = output_tolerance(model.engine)
        self._constant = type(model.fallback) is ConstantFallback
        self.invoke_us = Histogram()        #: single-window invokes, sampled
        self.batch_s = 0.0                  #: time in batched invokes
        self.rechecked = 0                  #: near-tie windows re-decided at batch 1

    def feed(self, chunk: RecordedLog) -> Decisions:
        values = np.ascontiguousarray(chunk.values[:, self.columns], dtype=np.float32)
        m, w, hop = len(values), self.window, self.hop
        first = self.frames
        # local indices of the frames that complete a window: global index >= w-1, every hop after that
        start = max(w - 1 - first, (hop - (first - (w - 1)) % hop) % hop)
        ends = np.arange(start, m, hop, dtype=np.int64)
        verdicts = self.guard.check(chunk.t, values, ends)
        frames = np.concatenate([self._carry, values]) if len(self._carry) else values
        carried = len(self._carry)
        self._carry = frames[max(0, len(frames) - (w - 1)):].copy() if w > 1 else frames[:0]
        self.frames += m
        n = len(ends)
        outputs = np.zeros((n, self.model.engine.output_size), dtype=np.float32)
        if n:
            offset = ends[0] + carried - w + 1
            windows = _windows(frames, w, offset, hop, n)
            converted = _windows(self.model.engine.convert_frames(frames), w, offset, hop, n)
            self._invoke(windows, converted, outputs)
            self._time_sample(windows, first + ends)
        return self._decide(chunk, ends, first, verdicts, outputs)

    def _invoke(self, windows: np.ndarray, converted: np.ndarray, outputs: np.ndarray) -> None:
        """Every window through the model, ``batch`` per invoke; near ties re-decided one window per invoke."""
        model, batch = self.model, self.model.batch
        started = time.perf_counter()
        for s in range(0, len(converted), batch):
            result = model.engine.infer_batch(converted[s:s + batch])
            outputs[s:s + batch] = result[:len(outputs) - s]  # a last, partial batch: the rest is dropped
        self.batch_s += time.perf_counter() - started
        if batch > 1:
            for i in self._near_ties(outputs):
                outputs[i] = model.single.infer(windows[i])
                self.rechecked += 1

    def _near_ties(self, outputs: np.ndarray) -> np.ndarray:
        """Windows whose decision a one-step difference in the outputs could change."""
        if outputs.shape[1] < 2:
            return np.zeros(0, dtype=np.int64)
        top2 = -np.partition(-outputs.astype(np.float64), 1, axis=1)[:, :2]
        near = top2[:, 0] - top2[:, 1] <= 2 * self._tolerance
        for threshold in (self.model.rule.min_confidence, self.model.flag_min_confidence):
            if threshold > 0.0:
                near |= np.abs(top2[:, 0] - threshold) <= self._tolerance
        return np.flatnonzero(near)

    def _time_sample(self, windows: np.ndarray, seqs: np.ndarray) -> None:
        """Time single-window set + invoke + get on a sample of windows: what the device's loop pays per window."""
        options = self.model.options
        if options.time_every <= 0:
            return
        single, clock = self.model.single, time.perf_counter_ns
        index = (seqs - (self.window - 1)) // self.hop  # the window's number in the log
        for i in np.flatnonzero((index < options.time_first) | (index % options.time_every == 0)):
            started = clock()
            single.infer(windows[i])
            self.invoke_us.record((clock() - started) / 1000.0)

    def _decide(self, chunk: RecordedLog, ends: np.ndarray, first: int, verdicts: WindowVerdicts,
                outputs: np.ndarray) -> Decisions:
        model = self.model
        reason = verdicts.fallback.copy()
        has_output = reason == 0
        index, low = model.rule.decide_many(outputs)
        reason[has_output & low] = int(Reason.LOW_CONFIDENCE)
        fallback = reason != 0
        flag = verdicts.flag
        if model.flag_min_confidence > 0.0:
            low_flag = (flag == 0) & (outputs.astype(np.float64).max(axis=1) < model.flag_min_confidence)
            flag = np.where(low_flag, int(Reason.LOW_CONFIDENCE), flag).astype(np.int8)
        reason = np.where(fallback, reason, flag).astype(np.int8)
        action = index.astype(np.int32)
        t = chunk.t[ends]
        if self._constant:
            action[fallback] = model.action_code(model.fallback.safe_action)
        else:
            self._hold(action, fallback, reason, t)
        labels = None if chunk.labels is None else np.asarray(chunk.labels, dtype=str)[ends]
        return Decisions(seq=first + ends, t=t, action=action, fallback=fallback, reason=reason, output=outputs,
                         has_output=has_output, label=labels, ood=verdicts.ood)

    def _hold(self, action: np.ndarray, fallback: np.ndarray, reason: np.ndarray, t: np.ndarray) -> None:
        """A strategy with memory (hold_last), window by window, on the log's clock: what the device would do
        in real time, not what a replay at full speed does on the wall clock."""
        model = self.model
        for i in range(len(action)):
            now_ns = int(t[i] * 1e9)
            if fallback[i]:
                action[i] = model.action_code(model.fallback.action(Reason(int(reason[i])), now_ns))
            else:
                model.fallback.observe_model_action(model.actions[action[i]], now_ns)


def _windows(frames: np.ndarray, window: int, offset: int, hop: int, count: int) -> np.ndarray:
    """``count`` windows of ``frames``, the first starting at ``offset``, every ``hop`` frames: a strided view."""
    return sliding_window_view(frames, (window, frames.shape[1]))[offset::hop, 0][:count]
