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
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from .checks.guard import build_guard
from .deadline import build_scheduler
from .deadline.clock import Clock
from .deadline.hygiene import GcPacer, LoopPriority
from .deadline.options import REALTIME_PRIORITY, DeadlineOptions, options_for_spec
from .deadline.scheduler import ModelAnswer, Scheduler
from .deadline.silence import SilenceTimer
from .deadline.startup import StartupReport, check_budget, warm_up
from .decide.decision import Decision, DecisionRule
from .decide.fallback import ConstantFallback, build_fallback
from .decide.reasons import Reason
from .frame import Frame
from .model.engine import Engine
from .model.spec import ModelSpec
from .sinks.base import Sink
from .sinks.stats import RunStats
from .sources.base import EndOfStream, Source
from .window import WindowBuffer

if TYPE_CHECKING:  # the service module imports metrics and config; the loop only calls its hooks
    from .service.hooks import ServiceHooks

#: How often a blocked source read wakes up to check for a stop request.
POLL_S = 0.1


class Runtime:
    """One model, one source, any number of sinks."""

    def __init__(self, spec: ModelSpec, engine: Engine, source: Source, sinks: Sequence[Sink] = (),
                 scheduler: Optional[Scheduler] = None, clock: Optional[Clock] = None,
                 fallback: Optional[ConstantFallback] = None, options: Optional[DeadlineOptions] = None):
        self.spec = spec
        self.engine = engine
        self.source = source
        self.clock = clock or Clock()
        self.options = options or options_for_spec(spec)
        self.fallback = fallback or build_fallback(spec)
        self.scheduler = scheduler or self._build_scheduler()  # last: it may start a thread or a process
        self.rule = DecisionRule(spec)
        self.guard = build_guard(spec, self.rule)  # input checks: docs/robustness.md
        self.window = WindowBuffer(spec.window, len(spec.channels), spec.hop)
        self.stats = RunStats(spec.budget_ms)
        self.sinks: List[Sink] = [self.stats, *sinks]
        self._budget_ns = spec.budget_ns
        self._last_frame: Optional[Frame] = None  # what the shutdown decision answers
        self.elapsed_s = 0.0
        self.startup: Optional[StartupReport] = None
        self._started = False
        self._gc = GcPacer()
        self._priority = LoopPriority()
        self._silence: Optional[SilenceTimer] = None  # armed by start() if no_data is on

    def _build_scheduler(self) -> Scheduler:
        budget_ns, options = self.spec.budget_ns, self.options
        if options.mode == "inline":
            return build_scheduler("inline", self.engine, self.clock)
        return build_scheduler(options.mode, self.engine, self.clock, overload=options.overload,
                               admission=options.admission, reserve_ns=options.reserve_ns(budget_ns),
                               hang_limit_ns=options.hang_limit_ns(budget_ns))

    def run(self, duration_s: Optional[float] = None, stop: Optional[threading.Event] = None,
            hooks: Optional["ServiceHooks"] = None) -> Dict[str, Any]:
        """Decide until the source ends, ``duration_s`` passes or ``stop`` is set; return the summary.

        ``hooks`` (:mod:`edge_infer.service.hooks`: systemd notify, metrics) hear when the loop is ready, a tick
        at least every ``POLL_S`` whether frames come or not, and when it stops. Unless the source ended,
        the sinks get a last safe decision (:meth:`shutdown`) before they are flushed.
        """
        started = time.monotonic()
        end_at = None if duration_s is None else started + duration_s
        source_ended = False
        try:
            self.start()
            now = self.clock.now_ns()
            if hooks is not None:
                hooks.on_ready(self)
            while not (stop is not None and stop.is_set()):
                timeout = POLL_S if end_at is None else max(0.0, min(POLL_S, end_at - time.monotonic()))
                if self._silence is not None:  # wake up in time for the next no_data decision
                    wait = (self._silence.next_due_ns - now) / 1e9
                    if wait < timeout:
                        timeout = wait if wait > 0.0 else 0.0
                try:
                    frame = self.source.recv(timeout)
                except EndOfStream:
                    source_ended = True
                    break
                if frame is not None:
                    self.on_frame(frame)
                now = self.clock.now_ns()
                self._tick(now)
                if hooks is not None:
                    hooks.tick(now)
                if end_at is not None and time.monotonic() >= end_at:
                    break
        finally:
            self.elapsed_s = time.monotonic() - started
            if hooks is not None:
                hooks.on_stop()
            if not source_ended:
                self.shutdown()
            self.close()
        return self.summary()

    def start(self) -> None:
        """Before the first frame (once): warm-up and budget check, CPU pinning/SCHED_FIFO, GC control, no_data.

        Raises :class:`~edge_infer.deadline.startup.BudgetError` if the warm-up p99 does not fit the budget and
        ``strict_budget`` is set.
        """
        if self._started:
            return
        self._started = True
        options, budget_ns = self.options, self._budget_ns
        if options.warmup > 0:
            self.startup = warm_up(self.scheduler, (self.spec.window, len(self.spec.channels)), options.warmup,
                                   self.spec.budget_ms, options.reserve_ns(budget_ns) / 1e6,
                                   options.hang_limit_ns(budget_ns), self.clock)
            check_budget(self.startup, self.scheduler.mode, options.strict_budget)
        if options.cpu_affinity or options.realtime:
            self._priority.apply(options.cpu_affinity, REALTIME_PRIORITY if options.realtime else None,
                                   self.scheduler)
        if options.gc_control:
            self._gc.start()
        hop_period_ns = (None if not self.spec.sample_rate_hz
                         else int(self.window.hop / self.spec.sample_rate_hz * 1e9))
        gap_ns = options.no_data_ns(hop_period_ns)
        if gap_ns is not None and self.source.paced:  # an unpaced replay has no silence (Source.paced)
            self._silence = SilenceTimer(gap_ns, hop_period_ns or gap_ns, self.clock.now_ns())

    def _tick(self, now_ns: int) -> None:
        """Called after every frame and at least every ``POLL_S`` without one: what must happen on time anyway.

        Collects late model answers (and kills a hung isolated model) and decides ``no_data`` when the
        source has been silent too long.
        """
        self.scheduler.poll(now_ns)
        silence = self._silence
        if silence is not None and now_ns >= silence.next_due_ns:
            self._no_data(silence.take_due(now_ns), now_ns)  # type: ignore[arg-type]

    def _no_data(self, due_ns: int, now_ns: int) -> Decision:
        """The safe action for a silent source, with the seq and t of the last frame received (-1, 0.0 if none)."""
        frame = self._last_frame
        decision = Decision(seq=-1 if frame is None else frame.seq, t=0.0 if frame is None else frame.t,
                            action=self.fallback.action(Reason.NO_DATA, now_ns), source="fallback",
                            reason=Reason.NO_DATA, latency_us=(self.clock.now_ns() - due_ns) / 1000.0,
                            invoke_us=None, output=None, label=None)
        for sink in self.sinks:
            sink.on_decision(decision)
        if self._gc.active:
            self._gc.slack()
        return decision

    def shutdown(self) -> Optional[Decision]:
        """Hand the sinks a last decision: the safe action with reason ``shutdown``, for the last frame seen.

        The device sink forwards it, so the device goes safe at once instead of after its own silence
        timeout. Without any frame there is nothing to answer: the device never left its safe state.
        """
        frame = self._last_frame
        if frame is None:
            return None
        now = self.clock.now_ns()
        decision = Decision(seq=frame.seq, t=frame.t, action=self.fallback.action(Reason.SHUTDOWN, now),
                            source="fallback", reason=Reason.SHUTDOWN, latency_us=0.0,  # no window waited for it
                            invoke_us=None, output=None, label=None)
        for sink in self.sinks:
            try:
                sink.on_decision(decision)
            except Exception:  # one broken sink must not keep the device sink from sending the safe action
                logging.getLogger(__name__).exception("error while sending the shutdown decision to %r", sink)
        return decision

    def on_frame(self, frame: Frame) -> Optional[Decision]:
        """Take one frame; if it completes a window, decide it and hand the decision to the sinks."""
        self._last_frame = frame
        if self._silence is not None:
            self._silence.on_frame(frame.recv_ns)
        for sink in self.sinks:
            sink.on_frame(frame)
        self.guard.on_frame(frame)
        if not self.window.push(frame.values):
            return None
        answer = (self.guard.check_window(self.window.view())  # a failed input check: no invoke, fall back
                  or self.scheduler.run(self.window.view(), frame.recv_ns + self._budget_ns))
        decision = self.guard.review(self._decide(frame, answer))
        for sink in self.sinks:
            sink.on_decision(decision)
        if self._gc.active:  # the slack after a decision: the next window is a hop away
            self._gc.slack()
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
        self._gc.stop()
        self._priority.restore()
        for closer in [self.scheduler.close, *(s.close for s in self.sinks), self.source.close]:
            try:
                closer()
            except Exception:  # a sink failing to flush must not keep the others from flushing
                logging.getLogger(__name__).exception("error while closing %r", closer)

    def summary(self) -> Dict[str, Any]:
        """The JSON summary (README: "JSON summary")."""
        out = self.stats.to_dict()
        out["input_checks"] = self.guard.summary()
        out.update({
            "elapsed_s": round(self.elapsed_s, 3),
            "model": self.spec.name or self.spec.model_path.name,
            "backend": self.engine.backend.name,
            "backend_version": self.engine.backend_version,
            "source": self.source.counters(),
            "scheduler": self.scheduler.counters(),
            "fallback": self.fallback.describe(),
            "startup": None if self.startup is None else self.startup.to_dict(),
        })
        return out
