"""The decision loop: source → window → scheduler → decision → sinks.

Each stage is its own module; this one only wires them and keeps time. The
loop reads a frame, pushes it into the window buffer and, when a window is
due, gets the model's answer by the window's deadline (its last frame's
*arrival* plus the budget) or falls back, and hands the decision to the
sinks, the device first. It stops at the end of a finite source, after
``duration_s``, or when ``stop`` is set (signal handlers set it), and always
closes the sinks.

Never behind (docs/deadlines.md): a live source is read by a thread of its
own that stamps frames as they arrive (:mod:`.sources.arrival`), and a paced
log stamps each frame with its due time, so the loop always knows how old a
frame is and how many more already wait. A window for which a newer one has
already arrived, or whose deadline (minus the reserve) has passed before the
model could start, is decided at once with reason ``overrun``; the model
only ever takes the newest window, and the loop catches up instead of
acting on old frames.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

import numpy as np

from .checks.guard import build_guard
from .deadline import build_scheduler
from .deadline.backstop import fire_at_ns as backstop_fire_at
from .deadline.baton import Baton
from .deadline.clock import Clock
from .deadline.edf import SharedModel, Waiting
from .deadline.hygiene import GcPacer, LoopPriority, SwitchInterval
from .deadline.options import REALTIME_PRIORITY, DeadlineOptions, options_for_spec
from .deadline.reserve import Reserve
from .deadline.scheduler import ALREADY_DECIDED, InlineScheduler, ModelAnswer, Scheduler
from .deadline.silence import SilenceTimer
from .deadline.startup import StartupReport, check_budget, warm_up
from .deadline.watchdog import Pending, Watchdog
from .decide.decision import Decision, DecisionRule
from .decide.fallback import ConstantFallback, build_fallback, observes_model_actions
from .decide.reasons import Reason
from .frame import Frame
from .model.ahead import InputsAhead
from .model.batch import BatchEngine
from .model.engine import Engine
from .model.spec import ModelSpec
from .sinks.base import Sink
from .sinks.stats import RunStats
from .sources.arrival import ArrivalReader, Wake
from .sources.arrivals import Arrivals, StreamEnded
from .sources.base import EndOfStream, Source
from .sources.log_replay import LogSource
from .window import WindowBuffer

if TYPE_CHECKING:  # the service module imports metrics and config; the loop only calls its hooks
    from .service.hooks import ServiceHooks

#: How often a blocked source read wakes up to check for a stop request.
POLL_S = 0.1
#: Frames that have already arrived are taken this many at a time between two ticks.
DRAIN = 32
#: A deputy (a thread that runs the loop while an inline invoke overruns) waits for a frame at most this long per
#: turn: the thread back from the invoke gets the baton within that. (The baton wakes a live source's wait, but
#: only one already begun; a paced log's wait cannot be woken.)
DEPUTY_WAIT_S = 0.001


class Runtime:
    """One model, one source, any number of sinks."""

    def __init__(self, spec: ModelSpec, engine: Engine, source: Source, sinks: Sequence[Sink] = (),
                 scheduler: Optional[Scheduler] = None, clock: Optional[Clock] = None,
                 fallback: Optional[ConstantFallback] = None, options: Optional[DeadlineOptions] = None,
                 name: Optional[str] = None):
        """``name`` is the stream's, carried by every decision (default: the source's name)."""
        self.name = name or getattr(source, "name", None)
        self.spec = spec
        self.engine = engine
        self.source = source
        self.clock = clock or Clock()
        self.options = options or options_for_spec(spec)
        self.fallback = fallback or build_fallback(spec)
        self._tell_fallback = observes_model_actions(self.fallback)  # (the constant one: no call, no clock read)
        self.scheduler = scheduler or self._build_scheduler()  # last: it may start a thread or a process
        self.rule = DecisionRule(spec)
        self.guard = build_guard(spec, self.rule)  # input checks: docs/robustness.md
        #: Read ahead (a log: every frame is there already): its windows checked, and converted for the model
        #: (inline: the loop's thread owns the engine), a block at once, while the frames are the log's in order.
        self._log: Optional[np.ndarray] = None  # the log's frames, (frames, channels)
        self._inputs_ahead: Optional[InputsAhead] = None
        if isinstance(source, LogSource):
            self._log = source.values
            self.guard.read_ahead(source.rows)
            if self.scheduler.mode == "inline" and not isinstance(self.scheduler, SharedModel) and not source.paced:
                # (a shared model converts its batches; a paced replay lends the baton, and a lent invoke converts
                # its own copy of the window: InlineScheduler.use_baton)
                self._inputs_ahead = InputsAhead(engine, source.rows)
        self.window = WindowBuffer(spec.window, len(spec.channels), spec.hop)
        self.stats = RunStats(spec.budget_ms)
        self._sink_time = self.stats.sink_time
        #: Sinks that talk to a device: served first, and ``latency_us`` runs until they are done.
        self.device_sinks: List[Sink] = []
        #: The device sink whose native backstop sends the deadline fallback without the GIL (or None).
        self.backstop: Optional[Any] = None
        #: The fallback action each window waiting for its decision has with the backstop (reader thread writes).
        self._backstop_actions: Dict[int, Any] = {}
        self._backstop_lead_floor_ns = self.options.reserve_ns(spec.budget_ns)
        self._backstop_fire_last = 0
        self._arrived_in_window = 0  # frames since the last restart, counted on the reader's thread
        #: Decisions the backstop made (its fallback went out before the loop or the watchdog could send theirs).
        self.backstop_decisions = 0
        self.sinks: List[Sink] = [self.stats, *sinks]
        self._frame_sinks: List[Any] = []  # see _sinks_that_take_frames
        self._sinks_seen = -1
        self._budget_ns = spec.budget_ns
        #: The scheduler's reserve (learned, inline) and its model's recent p99: may a window still start?
        self._reserve: Reserve = (getattr(self.scheduler, "reserve", None)
                                  or Reserve(self.options.reserve_ns(spec.budget_ns)))
        period_ms = self._window_period_ms()
        self._period_ns = int(period_ms * 1e6) if period_ms else None
        #: A backlog of windows the model could decide within this long is caught up by the model.
        self._catch_up_ns = min(self._budget_ns, int(period_ms * 1e6)) if period_ms else self._budget_ns
        #: Where the loop takes frames from: a live source through its reader thread, a log directly.
        self.arrivals: Source = source
        if source.live:
            self.arrivals = reader = ArrivalReader(source)
            reader.restart_listeners.append(self.window.reset)
        self._last_frame: Optional[Frame] = None  # what the shutdown decision answers
        self.elapsed_s = 0.0
        self.startup: Optional[StartupReport] = None
        self._started = False
        self._gc = GcPacer()
        self._priority = LoopPriority()
        self._switch = SwitchInterval()
        self._silence: Optional[SilenceTimer] = None  # armed by start() if no_data is on
        #: Which thread runs the loop (:meth:`run`): lent around inline invokes when a deputy could decide windows
        #: meanwhile (frames come in real time: a live source, a paced replay), taken over while one overruns.
        wake = self.arrivals.wake.notify if isinstance(self.arrivals, ArrivalReader) else _nothing
        self.baton = Baton(self._turn, wake, self._priority.add_loop_thread)
        #: The scheduler that lends the baton (from :meth:`run` on: a frame given to :meth:`on_frame` directly
        #: is decided as without one), if it does.
        self._lender: Optional[InlineScheduler] = (self.scheduler if type(self.scheduler) is InlineScheduler
                                                   and source.paced else None)
        self._stop: Optional[threading.Event] = None
        self._hooks: Optional["ServiceHooks"] = None
        self._end_at: Optional[float] = None
        self._now = 0
        self._source_ended = False

    def _build_scheduler(self) -> Scheduler:
        budget_ns, options = self.spec.budget_ns, self.options
        return build_scheduler(options.mode, self.engine, self.clock, overload=options.overload,
                               admission=options.admission, reserve_ns=options.reserve_ns(budget_ns),
                               hang_limit_ns=options.hang_limit_ns(budget_ns), budget_ns=budget_ns)

    def run(self, duration_s: Optional[float] = None, stop: Optional[threading.Event] = None,
            hooks: Optional["ServiceHooks"] = None) -> Dict[str, Any]:
        """Decide until the source ends, ``duration_s`` passes or ``stop`` is set; return the summary.

        ``hooks`` (:mod:`edge_infer.service.hooks`: systemd notify, metrics) hear when the loop is ready, a tick
        at least every ``POLL_S`` whether frames come or not, and when it stops. Unless the source ended,
        the sinks get a last safe decision (:meth:`shutdown`) before they are flushed.

        This thread runs the loop's turns holding the :class:`~.deadline.baton.Baton`; while an inline invoke
        overruns, a deputy thread runs them (:meth:`_turn`). The summary and the closing are this thread's, once
        it is back (after a hung invoke returned, if one was hung when the run ended).
        """
        started = time.monotonic()
        self._end_at = None if duration_s is None else started + duration_s
        self._stop, self._hooks = stop, hooks
        baton = self.baton
        baton.hold()  # kept until close(): nothing decides after the sinks are closed
        if self._lender is not None:
            self._lender.use_baton(baton, (self.spec.window, len(self.spec.channels)))
        try:
            self.start()
            self._now = self.clock.now_ns()
            if hooks is not None:
                hooks.on_ready(self)
            baton.run_turns()
        finally:
            baton.finish()  # a deputy stops
            self.elapsed_s = time.monotonic() - started
            if hooks is not None:
                hooks.on_stop()
            if not self._source_ended:
                self.shutdown()
            self.close()
        return self.summary()

    def _turn(self) -> bool:
        """One turn of the loop (whichever thread holds the baton): wait for a frame (at most ``POLL_S``, until
        the next ``no_data`` or the end), take it and those already arrived, then what must happen on time
        anyway (:meth:`_tick`). False when the run is over.

        A deputy runs these turns while the first thread is inside an invoke whose window the watchdog has
        already decided (the scheduler's ``busy``: every window it completes falls back ``overrun`` at once).
        The sinks are never called by two threads at once: the first thread and a deputy exclude each other (the
        baton); the watchdog emits only the armed window, whose fallback has left the sinks before it calls the
        deputy (deadline/scheduler.py, ``InlineScheduler._lend``), and nothing else is armed until the first
        thread, back with the baton, invokes again.
        """
        stop, end_at = self._stop, self._end_at
        if stop is not None and stop.is_set():
            return False
        timeout = POLL_S if end_at is None else max(0.0, min(POLL_S, end_at - time.monotonic()))
        if self._silence is not None:  # wake up in time for the next no_data decision
            wait = (self._silence.next_due_ns - self._now) / 1e9
            if wait < timeout:
                timeout = wait if wait > 0.0 else 0.0
        inline = self._lender
        if inline is not None and inline.busy and timeout > DEPUTY_WAIT_S:  # a deputy's turn
            timeout = DEPUTY_WAIT_S
        try:
            frame = self.arrivals.recv(timeout)
            if frame is not None:
                self._drain(frame)
        except EndOfStream:
            self._source_ended = True
            return False
        self._now = now = self.clock.now_ns()
        self._tick(now)
        if self._hooks is not None:
            self._hooks.tick(now)
        return end_at is None or time.monotonic() < end_at

    def _drain(self, frame: Frame) -> None:
        """Take ``frame`` and up to ``DRAIN`` more that have already arrived, without the loop's timeout
        arithmetic in between (the ticks come after them: at most ``DRAIN`` frames apart)."""
        on_frame, recv = self.on_frame, self.arrivals.recv
        on_frame(frame)
        for _ in range(DRAIN):
            frame = recv(0.0)
            if frame is None:
                return
            on_frame(frame)

    def start(self) -> None:
        """Before the first frame (once): warm-up and budget check, CPU pinning/SCHED_FIFO, GC control, no_data.

        Raises :class:`~edge_infer.deadline.startup.BudgetError` if the warm-up p99 does not fit the budget and
        ``strict_budget`` is set.
        """
        if self._started:
            return
        self._started = True
        options, budget_ns = self.options, self._budget_ns
        if options.switch_interval_ms:  # before warm-up: it measures the model as the run will see it
            self._switch.apply(options.switch_interval_ms / 1000.0)
        if options.warmup > 0:
            self.startup = warm_up(self.scheduler, (self.spec.window, len(self.spec.channels)), options.warmup,
                                   self.spec.budget_ms, options.reserve_ns(budget_ns) / 1e6,
                                   options.hang_limit_ns(budget_ns), self.clock)
            check_budget(self.startup, self.scheduler.mode, options.strict_budget, self._window_period_ms())
        if options.cpu_affinity or options.realtime:
            self._priority.apply(options.cpu_affinity, REALTIME_PRIORITY if options.realtime else None,
                                   self.scheduler)
        if options.gc_control:
            self._gc.start()
        self.arm_silence()
        if self.backstop is not None:
            self._priority.add_waiter(self.backstop.backstop_thread_id)
        if isinstance(self.arrivals, ArrivalReader):
            self.arrivals.start()  # last: frames are stamped from now on
            self._priority.add_waiter(self.arrivals.native_id)

    def arm_silence(self) -> None:
        """Start the ``no_data`` timer, if the options want one (the gap counts from now)."""
        hop_period_ns = (None if not self.spec.sample_rate_hz
                         else int(self.window.hop / self.spec.sample_rate_hz * 1e9))
        gap_ns = self.options.no_data_ns(hop_period_ns)
        if gap_ns is not None and self.source.paced:  # an unpaced replay has no silence (Source.paced)
            self._silence = SilenceTimer(gap_ns, hop_period_ns or gap_ns, self.clock.now_ns())

    def _window_period_ms(self) -> Optional[float]:
        """How often windows come, in real time (:func:`window_period_ns`)."""
        period_ns = window_period_ns(self.spec, self.source)
        return None if period_ns is None else period_ns / 1e6

    def add_device_sink(self, sink: Sink) -> None:
        """A sink that talks to a device: it gets every decision before any other sink.

        The first device sink that can have a native backstop gets one (:mod:`.deadline.backstop`).
        """
        self.device_sinks.append(sink)
        enable = getattr(sink, "enable_backstop", None)
        reader = self.arrivals
        if (self.backstop is None and enable is not None and isinstance(reader, ArrivalReader)
                and not isinstance(self.scheduler, SharedModel) and enable()):
            self.backstop = sink
            reader.on_arrival = self._arm_backstop

    def source_restarted(self) -> None:
        """The source's stream restarted (reconnect, reboot): the next window needs a whole window of new frames.

        Called by the source; with a reader thread, the reset is queued in order with the frames and done on
        the loop's thread.
        """
        if isinstance(self.arrivals, ArrivalReader):
            self._arrived_in_window = 0  # (this is the reader's thread)
            self.arrivals.mark_restart()
        else:
            self.window.reset()
            self._stop_reading_ahead()  # the window no longer holds the rows read ahead

    def _tick(self, now_ns: int) -> None:
        """Called after every frame and at least every ``POLL_S`` without one: what must happen on time anyway.

        Collects late model answers (and kills a hung isolated model) and decides ``no_data`` when the
        source has been silent too long.
        """
        self.scheduler.poll(now_ns)
        silence = self._silence
        if silence is not None and now_ns >= silence.next_due_ns and not self.arrivals.backlog():
            # (frames that arrived and wait to be read are not silence, however old the last one read is)
            self._no_data(silence.take_due(now_ns), now_ns)  # type: ignore[arg-type]

    def _no_data(self, due_ns: int, now_ns: int) -> Decision:
        """The safe action for a silent source, with the seq and t of the last frame received (-1, 0.0 if none)."""
        frame = self._last_frame
        decision = Decision(seq=-1 if frame is None else frame.seq, t=0.0 if frame is None else frame.t,
                            action=self.fallback.action(Reason.NO_DATA, now_ns), source="fallback",
                            reason=Reason.NO_DATA, latency_us=0.0, invoke_us=None, output=None, label=None)
        self._emit(decision, due_ns)
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
        decision.stream = self.name
        for sink in [*self.device_sinks, *self.sinks]:
            try:
                sink.on_decision(decision)
            except Exception:  # one broken sink must not keep the device sink from sending the safe action
                logging.getLogger(__name__).exception("error while sending the shutdown decision to %r", sink)
        return decision

    def on_frame(self, frame: Frame) -> Optional[Decision]:
        """Take one frame; if it completes a window, decide it and hand the decision to the sinks.

        Returns the decision, or None if no window completed or the watchdog decided it.
        """
        if not self.take(frame):
            return None
        window = self.window
        deadline = frame.recv_ns + self._budget_ns
        waiting = self.arrivals.backlog()
        if waiting:  # (a window is at least one frame away: without a backlog nothing newer can be waiting)
            until = window.until_due()
            if waiting >= until and not self._can_catch_up(1 + (waiting - until) // window.hop):
                return self._overrun(frame)  # newer windows have arrived and the model cannot decide them all
        view = window.view()
        answer = self.guard.check_window(view)  # a failed input check: no invoke, fall back
        if answer is None:
            reserve = self._reserve
            fire_at = deadline - reserve.ns
            now = self.clock.now_ns()
            if now + reserve.invoke_ns >= fire_at and reserve.refuse(now, fire_at, frame.recv_ns, self._period_ns,
                                                                     self._budget_ns):
                return self._overrun(frame)  # it would not be done in time: never start a lost window
            if self._inputs_ahead is not None:
                self._inputs_ahead.prepare(frame.seq, view)
            answer = self.scheduler.run(view, deadline, Pending(fire_at, deadline, frame, self._late))
            if answer is ALREADY_DECIDED:  # the watchdog decided it at its deadline; the answer was dropped
                return None
        return self.finish(frame, answer)

    def take(self, frame: Frame) -> bool:
        """The stream's part of a frame: silence timer, sinks, input checks, window; True when a window is due."""
        self._last_frame = frame
        if self._silence is not None:
            self._silence.on_frame(frame.recv_ns)
        if self._sinks_seen != len(self.sinks) + len(self.device_sinks):  # a sink was attached since
            self._frame_sinks = self._sinks_that_take_frames()
        for take in self._frame_sinks:
            take(frame)
        self.guard.on_frame(frame)
        log = self._log
        if log is not None and (frame.seq != self.window.count or frame.values.base is not log):
            self._stop_reading_ahead()  # a frame not read from the log in its order (on_frame called directly)
        return self.window.push(frame.values)

    def _stop_reading_ahead(self) -> None:
        """Check and convert window by window from now on: the window may hold other frames than the log's rows."""
        self._log = None
        self._inputs_ahead = None
        self.guard.read_ahead(None)

    def finish(self, frame: Frame, answer: ModelAnswer, verdict: Optional[tuple] = None) -> Decision:
        """Decide the window that ended at ``frame`` from ``answer`` and hand the decision to the sinks.

        ``verdict`` is the input guard's for that window when later windows were checked since (see
        :meth:`~edge_infer.checks.guard.InputGuard.verdict`).
        """
        decision = self.guard.review(self._decide(frame, answer), verdict)
        self._emit(decision, frame.recv_ns)
        if self._gc.active:  # the slack after a decision: the next window is a hop away
            self._gc.slack()
        return decision

    def _sinks_that_take_frames(self) -> List[Any]:
        """The sinks' ``on_frame`` methods, leaving out the base class's no-op (one call per frame saved)."""
        every = [*self.device_sinks, *self.sinks]
        self._sinks_seen = len(every)
        return [sink.on_frame for sink in every if type(sink).on_frame is not Sink.on_frame]

    def _can_catch_up(self, newer: int) -> bool:
        """May the model take a window while ``newer`` newer windows have already arrived?

        Only if it can decide all of them within one window period (the recent p99 invoke, times the
        windows): a burst of frames (a USB packet, a loop that was briefly descheduled) costs no model
        decision a fast model could make, while a model slower than the windows come takes only the
        newest and the loop never falls behind. Without an estimate yet, the model tries; the watchdog
        still keeps the deadline.
        """
        estimate = self.scheduler.invoke_estimate_ns()
        return estimate is None or (newer + 1) * estimate <= self._catch_up_ns

    def _arm_backstop(self, frame: Frame) -> None:
        """On the reader's thread, as ``frame`` arrives: if it ends a window, the device's fallback for that window
        goes to the native backstop, to be sent just before its deadline unless the window is decided first.

        The reader counts windows as the loop's window buffer will (restarts included: both are told on this
        thread, in order with the frames). The fallback is the one due at that time (a held action may have
        expired by then); fire times never go back, so the backstop writes in arrival order.
        """
        self._arrived_in_window += 1
        if not self.window.ends_window(self._arrived_in_window):
            return
        fire_at = max(backstop_fire_at(frame.recv_ns + self._budget_ns, self._backstop_lead_floor_ns),
                      self._backstop_fire_last)
        self._backstop_fire_last = fire_at
        action = self.fallback.action(Reason.DEADLINE, fire_at)
        self._backstop_actions[frame.seq] = action
        self.backstop.arm_backstop(frame, fire_at, action)

    def _overrun(self, frame: Frame) -> Decision:
        """The window the model cannot take: a newer one is waiting, or its deadline has (nearly) passed."""
        return self._fall_back(frame, Reason.OVERRUN, self.clock.now_ns())

    def _late(self, pending: Pending, now_ns: int) -> None:
        """The watchdog's call (on its thread, the loop being inside the invoke): the fallback at the deadline."""
        self._fall_back(pending.frame, Reason.DEADLINE, now_ns)

    def _fall_back(self, frame: Frame, reason: Reason, now_ns: int) -> Decision:
        """Decide the window that ended at ``frame`` without the model, for ``reason``, and hand it on."""
        decision = Decision(seq=frame.seq, t=frame.t, action=self.fallback.action(reason, now_ns), source="fallback",
                            reason=reason, latency_us=0.0, invoke_us=None, output=None, label=frame.label)
        self._emit(decision, frame.recv_ns)
        return decision

    def _emit(self, decision: Decision, arrival_ns: int) -> None:
        """Hand ``decision`` to the device sinks, stamp its latency from ``arrival_ns``, then the other sinks.

        The time spent in all sinks is measured (``sink_us`` in the summary).
        """
        decision.stream = self.name
        now_ns = self.clock.now_ns
        start = now_ns()
        if self.device_sinks:
            self._to_device(decision, arrival_ns)
        else:  # (no device: handed to the sinks now, one clock read less per decision)
            decision.latency_us = (start - arrival_ns) / 1000.0
        for sink in self.sinks:
            sink.on_decision(decision)
        self._sink_time.add(now_ns() - start)

    def _to_device(self, decision: Decision, arrival_ns: int) -> None:
        """Hand ``decision`` to the device sinks, then stamp its latency: when it left them, or when the backstop
        sent the deadline fallback in its place."""
        for sink in self.device_sinks:
            sink.on_decision(decision)
        sent_ns = None
        if self.backstop is not None:
            sent_ns = self.backstop.backstop_sent(decision.seq)
            held = self._backstop_actions.pop(decision.seq, decision.action)
        if sent_ns is None:
            decision.latency_us = (self.clock.now_ns() - arrival_ns) / 1000.0
        else:  # the backstop sent the fallback at the deadline: that is what the device acts on, so it is the decision
            self._as_sent_by_backstop(decision, held, (sent_ns - arrival_ns) / 1000.0)

    def _as_sent_by_backstop(self, decision: Decision, action: Any, latency_us: float) -> None:
        """Make ``decision`` the deadline fallback (``action``) the backstop sent ``latency_us`` after the window
        arrived (the device sink sent nothing more for it)."""
        self.backstop_decisions += 1
        decision.action, decision.source, decision.reason = action, "fallback", Reason.DEADLINE
        decision.output = None
        decision.latency_us = latency_us

    def _decide(self, frame: Frame, answer: ModelAnswer) -> Decision:
        reason, values, invoke_ns = answer.reason, answer.output, answer.invoke_ns
        action = None
        output = None if values is None else values.tolist()
        if reason is None:
            action, reason = self.rule.decide(values)  # type: ignore[arg-type]
        fallback = self.fallback
        if reason is None:
            if self._tell_fallback:
                fallback.observe_model_action(action, self.clock.now_ns())
            source = "model"
        else:
            action = fallback.action(reason, self.clock.now_ns())
            source = "fallback"
        # positional, in the field order (seq, t, action, source, reason, latency_us, invoke_us, output, label):
        # keyword arguments cost twice as much, once per window
        return Decision(frame.seq, frame.t, action, source, reason, 0.0,
                        None if invoke_ns is None else invoke_ns / 1000.0, output, frame.label)

    def close(self) -> None:
        """Stop the scheduler, close every sink (flushing it) and the source. Errors in one do not skip the rest.
        The baton last (a deputy that would run the loop after that decides nothing: deadline/baton.py)."""
        self._gc.stop()
        self._priority.restore()
        self._switch.restore()
        closers = [self.arrivals.close, self.scheduler.close, *(s.close for s in self.device_sinks),
                   *(s.close for s in self.sinks), self.source.close, self.baton.close]
        for closer in closers:
            try:
                closer()
            except Exception:  # a sink failing to flush must not keep the others from flushing
                logging.getLogger(__name__).exception("error while closing %r", closer)

    def summary(self) -> Dict[str, Any]:
        """The JSON summary (README: "JSON summary")."""
        out = self.stats.to_dict()
        out["input_checks"] = self.guard.summary()
        out.update({
            "stream": self.name,
            "elapsed_s": round(self.elapsed_s, 3),
            "model": self.spec.name or self.spec.model_path.name,
            "backend": self.engine.backend.name,
            "backend_version": self.engine.backend_version,
            "source": self.arrivals.counters(),
            "scheduler": self.scheduler.counters(),
            "fallback": self.fallback.describe(),
            "deputy_takeovers": self.baton.takeovers,
            "startup": None if self.startup is None else self.startup.to_dict(),
            # windows whose deadline fallback the native backstop sent (None: no backstop, see deadline/backstop.py)
            "backstop_decisions": None if self.backstop is None else self.backstop_decisions,
        })
        return out


@dataclass
class StreamSetup:
    """One stream of a :class:`StreamsRuntime`: its source, the model it uses, its own sinks and settings.

    Streams whose ``engine`` is the same object share that model (docs/streams.md).
    """

    name: str
    spec: ModelSpec
    engine: Engine
    source: Source
    sinks: List[Sink] = field(default_factory=list)
    options: Optional[DeadlineOptions] = None
    fallback: Optional[ConstantFallback] = None


class StreamsRuntime:
    """Many streams, one loop: every stream keeps its own window, checks, fallback, silence timer and sinks,
    streams on one model share it (:class:`~edge_infer.deadline.edf.SharedModel`: earliest deadline first,
    batched), and a fault in one stream (an unplugged device, a schema mismatch, a log that ends) never stops
    the others.

    The loop waits in one place (:class:`~edge_infer.sources.arrivals.Arrivals`): for the next paced log frame,
    a live frame, a model worker that finished, the next deadline or ``no_data`` due, or ``POLL_S``. Then it
    takes every frame that arrived (each stamped with its arrival), queues every window that became due,
    starts the next batch of each model and decides whatever is due. ``sinks`` see every stream's decisions
    (a shared decision log); each stream's own sinks only its own.
    """

    def __init__(self, setups: Sequence[StreamSetup], sinks: Sequence[Sink] = (), clock: Optional[Clock] = None):
        if not setups:
            raise ValueError("a runtime needs at least one stream")
        names = [s.name for s in setups]
        if len(set(names)) != len(names):
            raise ValueError(f"stream names must differ: {names}")
        self.clock = clock or Clock()
        wake = Wake()  # the loop's one wake-up: live readers and model workers release it
        self.sinks: List[Sink] = list(sinks)
        self.options = setups[0].options or options_for_spec(setups[0].spec)
        self._priority = LoopPriority()
        #: Which thread runs the loop: lent around inline invokes, taken over while one overruns.
        self.baton = Baton(self._turn, wake.notify, self._priority.add_loop_thread)
        #: One watchdog for every inline invoke, whichever model it is of: calls a deputy when one runs too long.
        self.watchdog = Watchdog(self.clock)
        self.models: List[SharedModel] = []
        shared: Dict[int, SharedModel] = {}
        users = Counter(id(s.engine) for s in setups)
        takeover_ns = takeover_after_ns(setups)
        for setup in setups:
            if id(setup.engine) not in shared:
                options = setup.options or options_for_spec(setup.spec)
                budget_ns = setup.spec.budget_ns
                model = SharedModel(BatchEngine(setup.engine, max_batch=users[id(setup.engine)]), len(setups),
                                    self._answered, self.clock, reserve_ns=options.reserve_ns(budget_ns),
                                    hang_limit_ns=options.hang_limit_ns(budget_ns),
                                    threaded=options.mode == "thread", wake=wake.notify, watchdog=self.watchdog,
                                    users=users[id(setup.engine)], baton=self.baton, takeover_ns=takeover_ns)
                shared[id(setup.engine)] = model
                self.models.append(model)
        self.streams = [Runtime(s.spec, s.engine, s.source, s.sinks, scheduler=shared[id(s.engine)],
                                clock=self.clock, fallback=s.fallback, options=s.options, name=s.name)
                        for s in setups]
        for stream in self.streams:
            stream.sinks.extend(self.sinks)
        # a live source is read by its stream's ArrivalReader; a log is paced by the loop itself
        self.arrivals = Arrivals([s.arrivals for s in self.streams], self.clock, wake)
        self._budgets_ns = [s.spec.budget_ns for s in setups]
        #: per stream: "running", "ended" (its log is over) or "failed: <why>"
        self.states = ["running"] * len(setups)
        self.elapsed_s = 0.0
        self.startup: Dict[str, Any] = {}
        self._gc = GcPacer()
        self._stop: Optional[threading.Event] = None
        self._hooks: Optional["ServiceHooks"] = None
        self._end_ns: Optional[int] = None

    # --- what the service hooks read (edge_infer.service.hooks) -------------------------------------------------

    @property
    def stats(self) -> RunStats:
        return RunStats.total([s.stats for s in self.streams])

    def hung(self, now_ns: int) -> bool:
        """True while a shared model has been inside one invoke for longer than its hang limit."""
        return any(model.hung(now_ns) for model in self.models)

    def stream_states(self) -> Dict[str, str]:
        """Each stream's state by name: ``running``, ``no data`` (never sent a frame), ``ended`` or ``failed: ...``.

        Read by the summary, and by the MQTT sink's worker thread (a snapshot: each entry is one reference read).
        """
        return {stream.name: state if state != "running" or stream._last_frame is not None else "no data"
                for stream, state in zip(self.streams, self.states)}

    # --- sinks added after the streams were built (the MQTT sink: docs/fleet.md) --------------------------------

    def add_sink(self, sink: Sink) -> None:
        """A sink for every stream's decisions (as ``sinks`` given at construction): closed once, after the streams."""
        self.sinks.append(sink)
        for stream in self.streams:
            stream.sinks.append(sink)

    # --- the loop ------------------------------------------------------------------------------------------------

    def run(self, duration_s: Optional[float] = None, stop: Optional[threading.Event] = None,
            hooks: Optional["ServiceHooks"] = None) -> Dict[str, Any]:
        """Decide until every source ended, ``duration_s`` passed or ``stop`` is set; return the summary.

        This thread runs the loop's turns holding the :class:`~.deadline.baton.Baton`; while an inline invoke
        of it overruns, a deputy thread runs them. The summary and the closing are this thread's, once it is
        back (after a hung invoke returned, if one was hung when the run ended).
        """
        started = time.monotonic()
        self._end_ns = None if duration_s is None else self.clock.now_ns() + int(duration_s * 1e9)
        self._stop, self._hooks = stop, hooks
        arrivals, baton = self.arrivals, self.baton
        baton.hold()  # kept until close(): nothing decides after the sinks are closed
        try:
            self.start()
            if hooks is not None:
                hooks.on_ready(self)
            self._start_readers()
            baton.run_turns()
        finally:
            baton.finish()  # deputies stop; one back from an invoke from now on decides nothing
            self.elapsed_s = time.monotonic() - started
            if hooks is not None:
                hooks.on_stop()
            arrivals.close()
            for i, stream in enumerate(self.streams):
                if not arrivals.ended[i]:
                    stream.shutdown()
            self.close()
        return self.summary()

    def _turn(self) -> bool:
        """One turn of the loop (whichever thread holds the baton): take what arrived, dispatch every model,
        decide what is due, then sleep until the next thing is due. False when the run is over."""
        stop, arrivals, models, clock = self._stop, self.arrivals, self.models, self.clock
        if stop is not None and stop.is_set():
            return False
        now = clock.now_ns()
        busy = arrivals.take(now, self._take, self._ready)
        for ended in arrivals.take_ends():
            self._ended(ended)
        for model in models:
            model.dispatch(clock.now_ns())  # (an invoke of the one before may have taken long)
        now = clock.now_ns()
        self._tick(now)
        if self._hooks is not None:
            self._hooks.tick(now)
        if self._gc.active:  # the slack after this turn's decisions
            self._gc.slack()
        if self._end_ns is not None and now >= self._end_ns:
            return False
        if arrivals.all_ended() and not any(m.owes() for m in models):  # (a hung invoke owes nothing)
            return False
        if not busy:
            arrivals.wait(self._timeout_s(now, self._end_ns), self._reported)
        return True

    def start(self) -> None:
        """Warm every shared model up and check its budget, then OS hygiene once and each stream's ``no_data`` timer."""
        options = self.options
        for model in self.models:
            users = [s for s in self.streams if s.scheduler is model]
            spec, budget_ns = users[0].spec, min(s.spec.budget_ns for s in users)
            if options.warmup > 0:
                report = warm_up(model, (spec.window, len(spec.channels)), options.warmup, budget_ns / 1e6,
                                 options.reserve_ns(budget_ns) / 1e6, options.hang_limit_ns(budget_ns), self.clock)
                check_budget(report, model.mode, options.strict_budget, users[0]._window_period_ms())
                self.startup[spec.name or spec.model_path.name] = report.to_dict()
        if options.cpu_affinity or options.realtime:
            self._priority.apply(options.cpu_affinity, REALTIME_PRIORITY if options.realtime else None,
                                 *self.models)  # every model's worker, not just the first's
            self._priority.add_waiter(self.watchdog.native_id)
        if options.gc_control:
            self._gc.start()
        for stream in self.streams:
            stream.arm_silence()

    def _start_readers(self) -> None:
        """Start the live sources' readers (after warm-up: frames stamped earlier would only be old)."""
        self.arrivals.start()
        for stream in self.streams:
            if isinstance(stream.arrivals, ArrivalReader):
                self._priority.add_waiter(stream.arrivals.native_id)

    def _take(self, i: int, frame: Frame) -> None:
        """A frame of stream ``i`` arrived: into its window; a due window is checked, then queued for its model."""
        stream = self.streams[i]
        if not stream.take(frame):
            return
        model: SharedModel = stream.scheduler  # type: ignore[assignment]
        model.supersede(i)  # the model always takes the newest window: an older one still waiting falls back
        view = stream.window.view()
        failed = stream.guard.check_window(view)
        if failed is not None:
            stream.finish(frame, failed)
        else:
            model.add(i, frame, view, frame.recv_ns + self._budgets_ns[i], stream.guard.verdict())

    def _ready(self, i: int) -> bool:
        """Whether stream ``i`` may take its next frame now (an unpaced replay waits for its last window)."""
        return not self.streams[i].scheduler.holds(i)  # type: ignore[attr-defined]

    def _answered(self, waiting: Waiting, answer: ModelAnswer) -> None:
        """A shared model's outcome for a window (on whichever thread holds the baton: deadline/baton.py)."""
        self.streams[waiting.stream].finish(waiting.frame, answer, waiting.verdict)

    def _reported(self) -> bool:
        """Whether the loop's wait must end now: a model worker reported, or a thread wants the baton back."""
        return self.baton.wanted or any(model.reported() for model in self.models)

    def _ended(self, ended: StreamEnded) -> None:
        i = ended.stream
        if ended.error is None:
            self.states[i] = "ended"
            self.streams[i]._silence = None  # a log that ended is not a silent sensor
        else:
            self.states[i] = f"failed: {ended.error}"  # its no_data timer goes on: the device is unusable

    def _tick(self, now_ns: int) -> None:
        for stream in self.streams:
            silence = stream._silence
            if silence is not None and now_ns >= silence.next_due_ns:
                stream._no_data(silence.take_due(now_ns), now_ns)  # type: ignore[arg-type]

    def _timeout_s(self, now_ns: int, end_ns: Optional[int]) -> float:
        """How long the loop may sleep: until the next frame, deadline, no_data or end, at most ``POLL_S``."""
        wake = now_ns + int(POLL_S * 1e9)
        for due in (self.arrivals.next_due_ns(), end_ns, *(m.next_due_ns() for m in self.models)):
            if due is not None and due < wake:
                wake = due
        for stream in self.streams:
            silence = stream._silence
            if silence is not None and silence.next_due_ns < wake:
                wake = silence.next_due_ns
        return max(0.0, (wake - self.clock.now_ns()) / 1e9)

    def close(self) -> None:
        """Stop the model workers, then close every stream (its sinks and source); shared sinks once; the baton
        last (a deputy back from a hung invoke after that decides nothing: deadline/baton.py)."""
        self._gc.stop()
        self._priority.restore()
        shared = set(map(id, self.sinks))
        for model in self.models:
            model.close()
        self.watchdog.close()
        try:
            for stream in self.streams:
                stream.sinks = [s for s in stream.sinks if id(s) not in shared]
                stream.close()
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception:
                    logging.getLogger(__name__).exception("error while closing %r", sink)
        finally:
            self.baton.close()

    def summary(self) -> Dict[str, Any]:
        """Today's totals over every stream, plus ``streams``: each stream's own summary (README: "JSON summary")."""
        per_stream = []
        for stream, state in zip(self.streams, self.stream_states().values()):
            part = stream.summary()
            part["state"] = state
            part["elapsed_s"] = round(self.elapsed_s, 3)
            part["startup"] = None
            part["deputy_takeovers"] = None  # the runtime's baton's, in the total: a stream has none of its own
            per_stream.append(part)
        out = self.stats.to_dict()
        first = self.streams[0]
        out.update({
            "elapsed_s": round(self.elapsed_s, 3),
            "model": ", ".join(sorted({s.spec.name or s.spec.model_path.name for s in self.streams})),
            "backend": first.engine.backend.name,
            "backend_version": first.engine.backend_version,
            "scheduler": [model.counters() for model in self.models],
            "deputy_takeovers": self.baton.takeovers,
            "startup": self.startup or None,
            "streams": per_stream,
        })
        return out


def takeover_after_ns(setups: Sequence[StreamSetup]) -> int:
    """How long an inline invoke may hold a many-stream loop before a deputy runs the loop meanwhile
    (:mod:`.deadline.baton`): half the shortest window period, so that no stream's next window comes while
    the one before still waits for the loop, and at most half the shortest budget less its reserve, so that
    a window that arrives during the invoke still has time to be decided."""
    limits = []
    for setup in setups:
        options = setup.options or options_for_spec(setup.spec)
        budget_ns = setup.spec.budget_ns
        limits.append((budget_ns - options.reserve_ns(budget_ns)) // 2)
        period_ns = window_period_ns(setup.spec, setup.source)
        if period_ns is not None:
            limits.append(period_ns // 2)
    return max(1, min(limits))


def window_period_ns(spec: ModelSpec, source: Source) -> Optional[int]:
    """How often a stream's windows come, in real time: hop / (sample rate x the source's speed); None if the
    spec has no sample rate. A replay at full speed counts at its recorded rate (its frames come as fast as
    they are taken)."""
    rate = spec.sample_rate_hz
    if not rate:
        return None
    return int(spec.hop / (rate * (source.speed or 1.0)) * 1e9)


def _nothing() -> None:
    """The baton's wake-up for a loop whose wait nobody can wake (a log's: a deputy waits briefly instead)."""
