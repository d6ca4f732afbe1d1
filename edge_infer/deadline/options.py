"""How the loop keeps its deadlines: the ``[deadline]`` spec keys and their command-line overrides.

The budget itself lives in :class:`~edge_infer.model.spec.ModelSpec`; everything
about *how* the budget is enforced (which scheduler mode, what to do while
the model is still busy, when a silent source counts as ``no_data``, the
start-up check and the loop's tail-latency hygiene) is gathered here, so the
spec parser, the command line, the service config and the runtime share one
definition and one set of defaults. See README ("Model spec", "Command
line") and docs/deadlines.md.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence

from ..decide.fallback import build_fallback
from ..errors import SpecError
from ..model.spec import ModelSpec
from ..settings import values
from ..settings.argtypes import milliseconds, milliseconds_or_zero, of

MODES = ("inline", "thread", "process")
OVERLOAD_POLICIES = ("busy", "latest")
#: Windows run through the model at start to warm it up and measure it.
DEFAULT_WARMUP = 20
#: Time kept back from the budget for deciding and handing the decision to the sinks (capped at budget/4).
#: It must cover the loop thread waking up late: up to ~0.9 ms measured here under SCHED_FIFO, ~1.2 ms
#: max on a stock Raspberry Pi kernel (cyclictest; docs/performance.md).
DEFAULT_RESERVE_MS = 1.0
#: An invoke running this long (or 10 budgets, if longer) counts as hung.
DEFAULT_HANG_LIMIT_MS = 1000.0
#: Without frames for this many hop periods the source counts as silent.
NO_DATA_HOPS = 3
#: The GIL switch interval while the loop runs (CPython's default is 5 ms; docs/performance.md).
DEFAULT_SWITCH_INTERVAL_MS = 0.5
#: SCHED_FIFO priority for ``--realtime`` (ros2_control's default).
REALTIME_PRIORITY = 50

#: The ``[deadline]`` keys this module reads (``budget_ms`` is read by the spec itself).
DEADLINE_KEYS = ("mode", "overload", "admission", "hang_limit_ms", "no_data_ms", "reserve_ms", "warmup")


@dataclass(frozen=True)
class DeadlineOptions:
    """Resolved settings; ``None`` means "derive from the budget and the spec" (see the ``*_ns`` helpers)."""

    mode: str = "inline"
    overload: str = "busy"
    admission: bool = False
    hang_limit_ms: Optional[float] = None
    #: None: the default (3 hop periods if the sample rate is known, else off); 0: off.
    no_data_ms: Optional[float] = None
    reserve_ms: Optional[float] = None
    warmup: int = DEFAULT_WARMUP
    strict_budget: bool = False
    cpu_affinity: Optional[List[int]] = None
    realtime: bool = False
    #: gc.freeze() after warm-up, automatic collection off in the hot path, collect in slack time.
    gc_control: bool = True
    #: sys.setswitchinterval while the loop runs (0: leave the interpreter's); see deadline/hygiene.py.
    switch_interval_ms: float = DEFAULT_SWITCH_INTERVAL_MS

    def reserve_ns(self, budget_ns: int) -> int:
        """How long before the deadline the scheduler stops waiting for the model."""
        reserve = DEFAULT_RESERVE_MS if self.reserve_ms is None else self.reserve_ms
        return min(int(reserve * 1e6), budget_ns // 4)

    def hang_limit_ns(self, budget_ns: int) -> int:
        if self.hang_limit_ms is not None:
            return int(self.hang_limit_ms * 1e6)
        return max(int(DEFAULT_HANG_LIMIT_MS * 1e6), 10 * budget_ns)

    def no_data_ns(self, hop_period_ns: Optional[int]) -> Optional[int]:
        """The silence after which ``no_data`` decisions start, or None when off."""
        if self.no_data_ms is not None:
            return int(self.no_data_ms * 1e6) if self.no_data_ms > 0 else None
        return None if hop_period_ns is None else NO_DATA_HOPS * hop_period_ns


def parse_deadline_table(table: Dict[str, Any], where: str) -> DeadlineOptions:
    """Options from a spec's ``[deadline]`` table (unknown keys were already refused by the spec parser)."""
    def fail(key: str, problem: str) -> SpecError:
        return SpecError(f"spec {where}: [deadline].{key} {problem}")

    def choice(key: str, choices: Sequence[str], default: str) -> str:
        value = table.get(key, default)
        if value not in choices:
            raise fail(key, f"must be one of {', '.join(repr(c) for c in choices)}, not {value!r}")
        return value

    def number(key: str, rule: values.Number) -> Optional[float]:
        value = table.get(key)
        if value is None:
            return None
        try:
            return rule.check(value)
        except values.ValueProblem as exc:
            raise fail(key, str(exc)) from None

    admission = table.get("admission", False)
    if not isinstance(admission, bool):
        raise fail("admission", f"must be true or false, not {admission!r}")
    warmup = number("warmup", values.WARMUP)
    return DeadlineOptions(mode=choice("mode", MODES, "inline"), overload=choice("overload", OVERLOAD_POLICIES, "busy"),
                           admission=admission, hang_limit_ms=number("hang_limit_ms", values.MILLISECONDS),
                           no_data_ms=number("no_data_ms", values.MILLISECONDS_OR_ZERO),
                           reserve_ms=number("reserve_ms", values.MILLISECONDS_OR_ZERO),
                           warmup=DEFAULT_WARMUP if warmup is None else int(warmup))


def options_for_spec(spec: ModelSpec) -> DeadlineOptions:
    """The options the spec's ``[deadline]`` table sets (defaults for a bare model)."""
    return parse_deadline_table(spec.raw_tables.get("deadline", {}), str(spec.spec_path or spec.model_path))


def runtime_options(spec: ModelSpec, args: argparse.Namespace) -> Dict[str, Any]:
    """Keyword arguments for :class:`~edge_infer.runtime.Runtime`: the spec's options under the command line's."""
    return {"options": options_from_args(options_for_spec(spec), args),
            "fallback": build_fallback(spec, getattr(args, "hold_ms", None))}


def add_deadline_options(parser: argparse.ArgumentParser) -> None:
    """The command-line overrides of ``run`` and ``replay`` (README: "Options of run and replay")."""
    group = parser.add_argument_group("deadline and fallback", "how the budget is kept (docs/deadlines.md)")
    group.add_argument("--mode", choices=MODES,
                       help="where the model runs: inline on the loop's thread with a watchdog that decides at the "
                            "deadline if an invoke overruns (default), a worker thread, or an isolated child process")
    group.add_argument("--overload", choices=OVERLOAD_POLICIES,
                       help="a window that arrives while the model is still busy: fall back at once "
                            "(busy, default) or wait for the model if it can still finish in time (latest)")
    group.add_argument("--admission", action="store_true", default=None,
                       help="fall back at once when the model's recent p99 does not fit in the time left")
    group.add_argument("--hang-limit-ms", type=milliseconds, metavar="N",
                       help="an invoke running longer is hung; the process mode kills and restarts the model")
    group.add_argument("--no-data-ms", type=milliseconds_or_zero, metavar="N",
                       help="after N ms without frames, decide 'no_data' every hop period (0: off; "
                            "default: 3 hop periods when the sample rate is known)")
    group.add_argument("--hold-ms", type=milliseconds, metavar="N",
                       help="fall back to the last model action while it is at most N ms old, then to the "
                            "safe action (fallback strategy hold_last)")
    group.add_argument("--warmup", type=of(values.WARMUP), metavar="N",
                       help=f"warm-up windows at start (default {DEFAULT_WARMUP})")
    group.add_argument("--strict-budget", action="store_true",
                       help="refuse to start if the model's warm-up p99 exceeds the budget")
    group.add_argument("--cpu-affinity", type=_cpu_list, metavar="CPU[,CPU...]",
                       help="pin the process (and the model's worker) to these CPUs")
    group.add_argument("--realtime", action="store_true",
                       help=f"run the decision loop's thread under SCHED_FIFO priority {REALTIME_PRIORITY}, so it "
                            "wakes at its deadlines on a loaded machine; a long invoke runs at nice -20, the "
                            "model's worker at nice -10 (needs CAP_SYS_NICE)")


def options_from_args(base: DeadlineOptions, args: argparse.Namespace) -> DeadlineOptions:
    """``base`` (from the spec) with the command-line options that were given applied on top."""
    given = {key: getattr(args, key, None) for key in ("mode", "overload", "admission", "hang_limit_ms",
                                                        "no_data_ms", "warmup", "cpu_affinity")}
    changes: Dict[str, Any] = {key: value for key, value in given.items() if value is not None}
    if getattr(args, "strict_budget", False):
        changes["strict_budget"] = True
    if getattr(args, "realtime", False):
        changes["realtime"] = True
    return replace(base, **changes)


def _cpu_list(text: str) -> List[int]:
    try:
        cpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be CPU numbers separated by commas, not {text!r}") from None
    if not cpus or min(cpus) < 0:
        raise argparse.ArgumentTypeError(f"must be CPU numbers separated by commas, not {text!r}")
    return cpus
