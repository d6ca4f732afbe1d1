"""Argument types for numeric options: a bad value is a one-line usage error naming the option."""

from __future__ import annotations

import argparse
from typing import Optional


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
    return value


def speed(text: str) -> Optional[float]:
    """A replay pace: ``max`` (None: as fast as possible) or a positive factor of real time."""
    return None if text == "max" else positive_float(text)


def action(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must name an action, not an empty string")
    return text
