"""The device sink: every decision goes back to the sensor board as an ACTION frame.

PROTOCOL.md section 5.3: the ACTION carries an index into the model's output
labels, or -1 for "go to your own safe state"; who decided (model or
fallback), the reason code, the sequence number of the SENSOR frame it
answers, and the action's name for the device's logs. The fallback action is
usually not one of the model's labels ("idle" for a classifier of motions):
it goes out as -1, so the firmware, not the host, decides what safe means.
A fallback that *is* a label (or ``hold_last`` repeating a model action)
goes out as that label's index. When the runtime stops, the device gets -1
with reason ``shutdown``; if the loop never handed over a shutdown decision
(a caller that does not use :meth:`Runtime.run`), :meth:`DeviceSink.close`
sends it.

Heartbeats between decisions are the serial source's job: it is the part of
the loop that runs when no decision does.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from firmware_bridge.protocol import SAFE_ACTION, ActionSource

from ..decide.decision import Decision
from ..decide.reasons import Reason
from ..frame import Frame
from ..model.spec import Action, ModelSpec
from ..sources.serial_link import SerialSource
from .base import Sink

_MAX_ACTION = 0x7FFF  # the ACTION field is an i16


class DeviceSink(Sink):
    """Writes one ACTION per decision through the serial source's link."""

    def __init__(self, link: SerialSource, spec: ModelSpec):
        self._link = link
        self._codes: Dict[Any, int] = {label: i for i, label in enumerate(spec.labels or ())}
        self._last_frame: Optional[Frame] = None
        self._shutdown_sent = False

    def action_code(self, action: Action, reason: Optional[Reason]) -> int:
        """The ACTION's ``action`` field: a label's index, a bare model's class index, else -1 (safe)."""
        if reason is Reason.SHUTDOWN:
            return SAFE_ACTION
        if isinstance(action, str):
            return self._codes.get(action, SAFE_ACTION)
        if isinstance(action, int) and 0 <= action <= _MAX_ACTION:
            return action
        return SAFE_ACTION

    def on_frame(self, frame: Frame) -> None:
        self._last_frame = frame

    def on_decision(self, decision: Decision) -> None:
        reason = decision.reason
        if reason is Reason.SHUTDOWN:
            self._shutdown_sent = True
        self._link.send_action(self.action_code(decision.action, reason),
                               ActionSource.FALLBACK if decision.is_fallback else ActionSource.MODEL,
                               int(reason) if reason is not None else int(Reason.NONE), decision.seq,
                               str(decision.action))

    # --- the backstop (edge_infer/deadline/backstop.py): the runtime's calls, inline -------------------

    def enable_backstop(self) -> bool:
        """True if the link has a native backstop now (built at install: setup.py)."""
        return self._link.enable_backstop()

    @property
    def backstop_thread_id(self) -> Optional[int]:
        return self._link.backstop_thread_id

    def arm_backstop(self, frame: Frame, fire_at_ns: int, action: Action) -> None:
        """Unless settled first, the backstop sends ``action`` (the deadline fallback) for ``frame`` at ``fire_at_ns``."""
        self._link.arm_backstop(frame.seq, fire_at_ns, self.action_code(action, Reason.DEADLINE),
                                int(Reason.DEADLINE), str(action))

    def backstop_sent(self, seq: int) -> Optional[int]:
        """After frame ``seq``'s decision: when the backstop had sent the window's fallback instead, else None."""
        return self._link.backstop_sent(seq)

    def close(self) -> None:
        """Leave the device safe: the shutdown ACTION, unless the loop's shutdown decision already went out."""
        frame = self._last_frame
        if not self._shutdown_sent and frame is not None:
            self._shutdown_sent = True
            self._link.send_action(SAFE_ACTION, ActionSource.FALLBACK, int(Reason.SHUTDOWN), frame.seq, "shutdown")


def attach_device(runtime: Any) -> DeviceSink:
    """Connect a runtime whose source is a :class:`SerialSource` to its device.

    Adds the device sink (served before every other sink: the device is
    waiting), and resets the runtime's window whenever the device's stream
    restarts (reconnect, reboot), so that no window mixes samples from before
    and after a gap of unknown length.
    """
    source = runtime.source
    if not isinstance(source, SerialSource):
        raise TypeError(f"attach_device needs a SerialSource, not {type(source).__name__}")
    sink = DeviceSink(source, runtime.spec)
    runtime.add_device_sink(sink)
    source.restart_listeners.append(runtime.source_restarted)
    return sink
