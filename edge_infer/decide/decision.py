"""The decision stage: turn the model's output, or its absence, into an action with a reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..model.spec import Action, ModelSpec
from .reasons import Reason


@dataclass(init=False)
class Decision:
    """One decision record: what was done for the window that ended at frame ``seq``.

    ``source`` is ``"model"`` or ``"fallback"``; ``reason`` is None for a
    plain model decision, else a :class:`Reason` code. ``latency_us`` runs
    from the receipt of the window's last frame to the hand-off to the sinks.
    ``output`` is the dequantized output vector (None when the model gave none).
    ``ood_score`` is not a constructor argument: the input guard sets it on windows it scored.
    ``stream`` is not one either: the runtime sets the name of the stream the window came from.
    """

    __slots__ = ("seq", "t", "action", "source", "reason", "latency_us", "invoke_us", "output", "label", "ood_score",
                 "stream")

    seq: int
    t: float
    action: Action
    source: str
    reason: Optional[Reason]
    latency_us: float
    invoke_us: Optional[float]
    output: Optional[List[float]]
    label: Optional[str]

    def __init__(self, seq: int, t: float, action: Action, source: str, reason: Optional[Reason], latency_us: float,
                 invoke_us: Optional[float], output: Optional[List[float]], label: Optional[str]):
        # written out rather than generated: the generated one calls __post_init__ for the two fields without an
        # argument, a second call per decision
        self.seq = seq
        self.t = t
        self.action = action
        self.source = source
        self.reason = reason
        self.latency_us = latency_us
        self.invoke_us = invoke_us
        self.output = output
        self.label = label
        #: the window's out-of-distribution score, set by the input guard (edge_infer/checks) where it scores
        self.ood_score: Optional[float] = None
        #: the stream's name (by default its source), set by the runtime
        self.stream: Optional[str] = None

    @property
    def is_fallback(self) -> bool:
        return self.source == "fallback"

    def to_record(self) -> Dict[str, Any]:
        """The JSON-lines record (README: "Decision record")."""
        return {
            "seq": self.seq,
            "t": self.t,
            "action": self.action,
            "source": self.source,
            "reason": self.reason.code if self.reason is not None else None,
            "latency_us": round(self.latency_us, 1),
            "invoke_us": None if self.invoke_us is None else round(self.invoke_us, 1),
            "output": self.output,
            "label": self.label,
            "ood_score": None if self.ood_score is None else round(self.ood_score, 3),
            "stream": self.stream,
        }


class DecisionRule:
    """The spec's rule: argmax of the output, with an optional minimum confidence."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.min_confidence = spec.min_confidence

    def decide(self, output: np.ndarray) -> "tuple[Action, Optional[Reason]]":
        """The action for an output vector, and LOW_CONFIDENCE if its top value is below the minimum."""
        index = int(output.argmax())  # the method: np.argmax's Python wrapper costs more than the search
        if self.min_confidence > 0.0 and float(output[index]) < self.min_confidence:
            return self.spec.action_for(index), Reason.LOW_CONFIDENCE
        return self.spec.action_for(index), None

    def decide_many(self, outputs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """:meth:`decide` for every row of ``(n, outputs)`` at once (``eval``): the argmax indices, and a mask of
        the rows whose top value is below the minimum confidence (compared in float64, as :meth:`decide` does)."""
        index = outputs.argmax(axis=1)
        if self.min_confidence <= 0.0:
            return index, np.zeros(len(index), dtype=bool)
        top = outputs[np.arange(len(index)), index].astype(np.float64)
        return index, top < self.min_confidence
