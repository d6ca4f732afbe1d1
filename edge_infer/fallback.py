"""The safe default action: what the runtime does when it cannot trust or wait for the model."""

from __future__ import annotations

from .reasons import Reason
from .spec import Action


class ConstantFallback:
    """Always the spec's safe action, whatever the reason."""

    def __init__(self, action: Action):
        self.safe_action = action

    def action(self, reason: Reason, now_ns: int) -> Action:
        return self.safe_action

    def observe_model_action(self, action: Action, now_ns: int) -> None:
        """Told of every model decision (strategies that hold the last action use it)."""
