"""The decision loop: source → window → scheduler → decision → sinks.

Each stage is its own module; this one only wires them and keeps time. The
loop reads a frame, pushes it into the window buffer and, when a window is
due, gets the model's answer by the window's deadline (its last frame's
receipt time plus the budget) or falls back, and hands the decision to every
sink. It stops at the end of a finite source, after ``duration_s``, or when
``stop`` is set (signal handlers set it), and always closes the sinks.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

from .clock import Clock
from .decision import Decision, DecisionRule
from .engine import Engine
from .fallback import ConstantFallback
from .frame import Frame
from .reasons import Reason
from .scheduler import InlineScheduler, ModelAnswer, Scheduler
from .sinks.base import Sink
from .sources.base import EndOfStream, Source
from .spec import ModelSpec
from .summary import RunStats
from .window import WindowBuffer

#: How often a blocked source read wakes up to check for a stop request.
POLL_S = 0.1


class Runtime:
    """One model, one source, any number of sinks."""

    def __init__(self, spec: ModelSpec, engine: Engine, source: Source, sinks: Sequence[Sink] = (),
                 scheduler: Optional[Scheduler] = None, clock: Optional[Clock] = None,
                 fallback: Optional[ConstantFallback] = None):
        self.spec = spec
        self.engine = engine
        self.source = source
        self.clock = clock or Clock()
        self.scheduler = scheduler or InlineScheduler(engine, self.clock)
        self.fallback = fallback or ConstantFallback(spec.fallback_action)
        self.rule = DecisionRule(spec)
        self.window = WindowBuffer(spec.window, len(spec.channels), spec.hop)
        self.stats = RunStats(spec.budget_ms)
        self.sinks: List[Sink] = [self.stats, *sinks]
        self._budget_ns = spec.budget_ns
        self.elapsed_s = 0.0

    def run(self, duration_s: Optional[float] = None, stop: Optional[threading.Event] = None) -> Dict[str, Any]:
        """Decide until the source ends, ``duration_s`` passes or ``stop`` is set; return the summary."""
        started = time.monotonic()
        end_at = None if duration_s is None else started + duration_s
        try:
            while not (stop is not None and stop.is_set()):
                timeout = POLL_S if end_at is None else max(0.0, min(POLL_S, end_at - time.monotonic()))
                try:
                    frame = self.source.recv(timeout)
                except EndOfStream:
                    break
                if frame is not None:
                    self.on_frame(frame)
                if end_at is not None and time.monotonic() >= end_at:
                    break
        finally:
            self.elapsed_s = time.monotonic() - started
            self.close()
        return self.summary()

    def on_frame(self, frame: Frame) -> Optional[Decision]:
        """Take one frame; if it completes a window, decide it and hand the decision to the sinks."""
        for sink in self.sinks:
            sink.on_frame(frame)
        if not self.window.push(frame.values):
            return None
        answer = self.scheduler.run(self.window.view(), frame.recv_ns + self._budget_ns)
        decision = self._decide(frame, answer)
        for sink in self.sinks:
            sink.on_decision(decision)
        return decision

    def _decide(self, frame: Frame, answer: ModelAnswer) -> Decision:
        reason = answer.reason
        action = None
        output = None if answer.output is None else answer.output.tolist()
        if reason is None:
            action, reason = self.rule.decide(answer.output)
        now = self.clock.now_ns()
        if reason is None:
            self.fallback.observe_model_action(action, now)
            source = "model"
        else:
            action = self.fallback.action(reason, now)
            source = "fallback"
        return Decision(
            seq=frame.seq, t=frame.t, action=action, source=source, reason=reason,
            latency_us=(self.clock.now_ns() - frame.recv_ns) / 1000.0,
            invoke_us=None if answer.invoke_ns is None else answer.invoke_ns / 1000.0,
            output=output, label=frame.label,
        )

    def close(self) -> None:
        """Stop the scheduler, close every sink (flushing it) and the source. Errors in one do not skip the rest."""
        for closer in [self.scheduler.close, *(s.close for s in self.sinks), self.source.close]:
            try:
                closer()
            except Exception:  # a sink failing to flush must not keep the others from flushing
                logging.getLogger(__name__).exception("error while closing %r", closer)

    def summary(self) -> Dict[str, Any]:
        """The JSON summary (README: "JSON summary")."""
        out = self.stats.to_dict()
        out.update({
            "elapsed_s": round(self.elapsed_s, 3),
            "model": self.spec.name or self.spec.model_path.name,
            "backend": self.engine.backend.name,
            "backend_version": self.engine.backend_version,
            "source": self.source.counters(),
        })
        return out
