"""The safe default action: what the runtime does when it cannot trust or wait for the model.

Two strategies, chosen by the spec's ``[fallback].strategy``:

* ``constant`` (default) — always the spec's safe action.
* ``hold_last`` — repeat the last *model* action for at most ``hold_ms`` after
  it was decided, then the safe action. A single missed deadline in a stream
  of "walking" then does not flip the device to "idle" and back; a model that
  stays silent still ends in the safe action after a bounded time.

Whatever the strategy, ``shutdown`` always gets the safe action: a stopping
runtime must leave the device safe, not in its last state.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from ..errors import SpecError
from ..model.spec import Action, ModelSpec
from ..settings.values import MILLISECONDS, ValueProblem
from .reasons import Reason

STRATEGIES = ("constant", "hold_last")


class ConstantFallback:
    """Always the spec's safe action, whatever the reason."""

    def __init__(self, action: Action):
        self.safe_action = action

    def action(self, reason: Reason, now_ns: int) -> Action:
        return self.safe_action

    def observe_model_action(self, action: Action, now_ns: int) -> None:
        """Told of every model decision (strategies that hold the last action use it; the loop tells, and reads
        the clock for, only a strategy that overrides this: :func:`observes_model_actions`)."""

    def describe(self) -> Dict[str, Any]:
        """The strategy for the run summary."""
        return {"strategy": "constant", "action": self.safe_action}


class HoldLastFallback(ConstantFallback):
    """The last model action while it is at most ``hold_ns`` old, then the safe action."""

    def __init__(self, action: Action, hold_ns: int):
        super().__init__(action)
        self.hold_ns = hold_ns
        self._last: Optional[Action] = None
        self._last_ns = 0

    def action(self, reason: Reason, now_ns: int) -> Action:
        if self._last is None or reason is Reason.SHUTDOWN or now_ns - self._last_ns > self.hold_ns:
            return self.safe_action
        return self._last

    def observe_model_action(self, action: Action, now_ns: int) -> None:
        self._last = action
        self._last_ns = now_ns

    def describe(self) -> Dict[str, Any]:
        return {"strategy": "hold_last", "action": self.safe_action, "hold_ms": self.hold_ns / 1e6}


def build_fallback(spec: ModelSpec, hold_ms: Optional[float] = None) -> ConstantFallback:
    """The strategy the spec's ``[fallback]`` table names; ``hold_ms`` (``--hold-ms``) forces hold_last."""
    table = spec.raw_tables.get("fallback", {})
    where = spec.spec_path or spec.model_path
    strategy = table.get("strategy", "constant")
    if strategy not in STRATEGIES:
        raise SpecError(f"spec {where}: [fallback].strategy must be one of "
                        f"{', '.join(repr(s) for s in STRATEGIES)}, not {strategy!r}")
    if "hold_ms" in table and strategy != "hold_last":
        raise SpecError(f"spec {where}: [fallback].hold_ms needs strategy = 'hold_last'")
    if strategy == "hold_last":
        try:
            spec_hold = MILLISECONDS.check(table.get("hold_ms"))
        except ValueProblem as exc:
            raise SpecError(f"spec {where}: [fallback].hold_ms {exc} (strategy 'hold_last' needs it)") from None
        hold_ms = spec_hold if hold_ms is None else hold_ms
    if hold_ms is None:
        return ConstantFallback(spec.fallback_action)
    return HoldLastFallback(spec.fallback_action, int(hold_ms * 1e6))


def observes_model_actions(fallback: Any) -> bool:
    """Does ``fallback`` want to hear of model decisions? Any strategy whose ``observe_model_action`` is not the
    constant one's no-op (a duck-typed one included)."""
    observe = getattr(type(fallback), "observe_model_action", None)
    return observe is not None and observe is not ConstantFallback.observe_model_action
