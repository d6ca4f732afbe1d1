"""The rules for configuration values: one place for the spec, the service config, the checks and the flags.

A number reaches edge-infer from four readers -- the model spec, the service
config, a spec's ``[checks]``/``[ood]`` tables and the command line -- and
each used to check it its own way: ``value > 0`` lets ``inf`` through, and
``int(inf * 1e6)`` then ended a service in a traceback, restarted by systemd
in a loop, while ``check-config`` called the same file valid. Here each kind
of value is one :class:`Number` rule (finite, within bounds, an integer or
not, with a unit), and every reader applies the same rule and adds the name
of the key or option to the one-line message.

Durations have an upper bound as well as a lower one: a time budget of
1e308 ms is finite, but turned into nanoseconds it overflows, and a timeout
of years is never what an operator meant. The bounds are generous (a day for
millisecond settings, ten years for second settings) and named below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Union

Num = Union[int, float]

#: The longest millisecond setting (budget, hang limit, hold, silence): one day.
MAX_MS = 86_400_000.0
#: The longest second setting (--duration, metric and log intervals): ten years.
MAX_S = 315_360_000.0
#: Replay pace bounds: 1000x slower than real time to a million times faster.
MIN_SPEED, MAX_SPEED = 0.001, 1_000_000.0
#: The largest count setting (hop, warm-up windows, bench runs).
MAX_COUNT = 100_000_000
#: Warm-up windows at start: each is one invoke before the loop starts; more is a typo, not a warm-up.
MAX_WARMUP = 10_000
#: Interpreter threads: more than this on a small board is a typo.
MAX_THREADS = 64
#: The largest recording part, in MB (a terabyte).
MAX_MB = 1_000_000.0


class ValueProblem(ValueError):
    """What is wrong with one value, without naming it: the reader adds the key or the option."""


def _text(value: float) -> str:
    return f"{value:.12g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Number:
    """A finite number (or integer) within bounds.

    ``above``/``minimum``: strictly greater than / at least; ``below``/``maximum``: strictly less than / at
    most. ``unit`` is said in the message ("ms", "s"). :meth:`check` takes a parsed value (TOML),
    :meth:`parse` a command-line string.
    """

    minimum: Optional[float] = None
    above: Optional[float] = None
    maximum: Optional[float] = None
    below: Optional[float] = None
    integer: bool = False
    unit: str = ""

    def describe(self) -> str:
        """The rule in words, e.g. 'a number greater than 0 and at most 86400000 (ms)'."""
        kind = "a whole number" if self.integer else "a number"
        bounds = []
        if self.above is not None:
            bounds.append(f"greater than {_text(self.above)}")
        if self.minimum is not None:
            bounds.append(f"at least {_text(self.minimum)}")
        if self.maximum is not None:
            bounds.append(f"at most {_text(self.maximum)}")
        if self.below is not None:
            bounds.append(f"below {_text(self.below)}")
        unit = f" ({self.unit})" if self.unit else ""
        return f"{kind} {' and '.join(bounds)}{unit}".rstrip() if bounds else f"{kind}{unit}"

    def check(self, value: Any) -> Num:
        """``value`` as an int (integer rules) or a float; :class:`ValueProblem` if it breaks the rule."""
        wrong_type = isinstance(value, bool) or not isinstance(value, (int, float))
        if wrong_type or (self.integer and isinstance(value, float)):
            raise ValueProblem(f"must be {self.describe()}, not {value!r}")
        if not math.isfinite(value) or not self._within(value):
            raise ValueProblem(f"must be {self.describe()}, not {_text(value)}")
        return int(value) if self.integer else float(value)

    def parse(self, text: str) -> Num:
        """A command-line value: the same rule, after reading the text as a number."""
        try:
            value: Num = int(text.strip()) if self.integer else float(text)
        except ValueError:
            raise ValueProblem(f"must be {self.describe()}, not {text!r}") from None
        return self.check(value)

    def _within(self, value: Num) -> bool:
        return ((self.above is None or value > self.above) and (self.minimum is None or value >= self.minimum)
                and (self.maximum is None or value <= self.maximum) and (self.below is None or value < self.below))


# --- the kinds of values, by what they hold ---------------------------------------------------------------

#: Any finite number (offsets, range limits, OOD means).
FINITE = Number()
POSITIVE = Number(above=0.0)
NON_NEGATIVE = Number(minimum=0.0)
#: A share, 0 to 1 inclusive (min_confidence, min_fresh_fraction).
FRACTION = Number(minimum=0.0, maximum=1.0)
#: A duration in ms that must be set to something (budget, hang limit, hold, reserve > 0).
MILLISECONDS = Number(above=0.0, maximum=MAX_MS, unit="ms")
#: A duration in ms where 0 means "off" (no_data_ms) or "none" (reserve_ms).
MILLISECONDS_OR_ZERO = Number(minimum=0.0, maximum=MAX_MS, unit="ms")
#: A duration or interval in seconds (--duration, metrics interval, log repeat interval).
SECONDS = Number(above=0.0, maximum=MAX_S, unit="s")
#: A replay pace, a factor of real time.
SPEED = Number(minimum=MIN_SPEED, maximum=MAX_SPEED)
#: A sample rate in Hz.
RATE_HZ = Number(above=0.0, maximum=1_000_000.0, unit="Hz")
#: Megabytes (recording part size).
MEGABYTES = Number(above=0.0, maximum=MAX_MB, unit="MB")
#: Warm-up windows.
WARMUP = Number(minimum=0, maximum=MAX_WARMUP, integer=True)
#: Interpreter threads.
THREADS = Number(minimum=1, maximum=MAX_THREADS, integer=True)


def count(minimum: int = 1, maximum: int = MAX_COUNT) -> Number:
    """A whole number from ``minimum`` to ``maximum`` (window, hop, warm-up, runs...)."""
    return Number(minimum=minimum, maximum=maximum, integer=True)


def ms_to_ns(ms: float) -> int:
    """A checked millisecond setting in nanoseconds; refuses what no rule above lets through.

    The conversion the loop relies on: a value that reached it without a rule is a bug, said loudly here
    instead of as an ``OverflowError`` in the deadline code.
    """
    if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) or not 0 <= ms <= MAX_MS:
        raise ValueProblem(f"must be {MILLISECONDS_OR_ZERO.describe()}, not {ms!r}")
    return int(round(ms * 1e6))
