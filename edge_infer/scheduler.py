"""The deadline scheduler: get the model's answer for a window, or a reason why not, by a deadline.

A scheduler owns the :class:`~edge_infer.engine.Engine` (only it may call
the interpreter) and answers :meth:`Scheduler.run` with a
:class:`ModelAnswer`: the output if it came in time, else the reason the
decision stage must fall back.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .clock import Clock
from .engine import Engine
from .reasons import Reason


@dataclass
class ModelAnswer:
    """What the model stage produced for one window.

    ``output`` is a copy of the dequantized output (or None), ``reason`` is
    None when the answer is usable, ``invoke_ns`` the time inside the model.
    """

    output: Optional[np.ndarray]
    reason: Optional[Reason]
    invoke_ns: Optional[int]


class Scheduler(abc.ABC):
    """Runs windows through the model under a deadline."""

    @abc.abstractmethod
    def run(self, window: np.ndarray, deadline_ns: int) -> ModelAnswer:
        """The model's answer for ``window`` if it is ready by ``deadline_ns`` (monotonic ns)."""

    def close(self) -> None:
        """Stop any worker; called once when the loop ends."""


class InlineScheduler(Scheduler):
    """Invoke in the caller's thread, then judge: an answer after the deadline is discarded.

    This cannot decide *before* a slow invoke returns; it only guarantees that
    a late answer is never acted on.
    """

    def __init__(self, engine: Engine, clock: Optional[Clock] = None):
        self.engine = engine
        self.clock = clock or Clock()

    def run(self, window: np.ndarray, deadline_ns: int) -> ModelAnswer:
        start = self.clock.now_ns()
        try:
            output = self.engine.infer(window).copy()
        except Exception:  # the native runtime failing is a fallback, not a crash
            return ModelAnswer(None, Reason.MODEL_ERROR, self.clock.now_ns() - start)
        end = self.clock.now_ns()
        reason = Reason.DEADLINE if end > deadline_ns else None
        return ModelAnswer(output, reason, end - start)
