"""Argument types for command-line options: a bad value is a one-line usage error naming the option.

The rules themselves are in :mod:`.values`, shared with the spec and the service config, so a value the
command line refuses is refused in a file too (and ``check-config`` says so before the service starts).
"""

from __future__ import annotations

import argparse
from typing import Callable, Optional

from . import values
from .values import Num, Number, ValueProblem


def of(rule: Number) -> Callable[[str], Num]:
    """An argparse ``type=`` applying ``rule``; argparse puts the option's name before the message."""
    def parse(text: str) -> Num:
        try:
            return rule.parse(text)
        except ValueProblem as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = "number"  # argparse names the type in some messages
    return parse


#: A finite number > 0 / >= 0 with no unit of its own (the names options used before the rules had units).
positive_float = of(values.POSITIVE)
non_negative_float = of(values.NON_NEGATIVE)
milliseconds = of(values.MILLISECONDS)
milliseconds_or_zero = of(values.MILLISECONDS_OR_ZERO)
seconds = of(values.SECONDS)
megabytes = of(values.MEGABYTES)
threads = of(values.THREADS)


def count(minimum: int = 1) -> Callable[[str], Num]:
    return of(values.count(minimum))


def speed(text: str) -> Optional[float]:
    """A replay pace: ``max`` (None: as fast as possible) or a factor of real time."""
    if text == "max":
        return None
    try:
        return values.SPEED.parse(text)
    except ValueProblem as exc:
        raise argparse.ArgumentTypeError(f"must be 'max' or {str(exc)[len('must be '):]}") from None


def action(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must name an action, not an empty string")
    return text
