"""The closed set of reasons a decision did not come from the model.

Every fallback (and every flagged model decision) carries exactly one of
these codes. The numeric values are part of the wire protocol (the ACTION
frame's ``reason`` byte, see ``firmware_bridge/PROTOCOL.md``): append new
codes, never renumber.
"""

from __future__ import annotations

import enum


class Reason(enum.IntEnum):
    """Why a decision is not (only) the model's answer."""

    NONE = 0  #: a model decision: no reason
    DEADLINE = 1  #: the model did not answer within the time budget
    BUSY = 2  #: the model was still busy with an earlier window
    MODEL_ERROR = 3  #: the interpreter raised, crashed or hung
    NO_DATA = 4  #: the source went silent for longer than the allowed gap
    LOW_CONFIDENCE = 5  #: the model's top probability was below the minimum
    NON_FINITE = 6  #: NaN or Inf in the window
    OUT_OF_RANGE = 7  #: a value outside the channel's physical range
    SATURATED = 8  #: samples pinned at the channel's range limit
    STUCK = 9  #: a channel did not move over the window
    GAP = 10  #: missing, duplicated or backwards samples in the window
    STALE = 11  #: too few fresh samples in the window
    OUT_OF_DISTRIBUTION = 12  #: the window does not look like the training data
    SHUTDOWN = 13  #: the runtime is stopping; the device is told to go safe
    OVERRUN = 14  #: the model could not take this window: a newer one had arrived, or its deadline had passed

    @property
    def code(self) -> str:
        """The snake_case name used in decision records and summaries."""
        return self.name.lower()

    @classmethod
    def from_code(cls, code: str) -> "Reason":
        """Parse a snake_case reason name (as written in specs and records)."""
        try:
            return cls[code.upper()]
        except KeyError:
            known = ", ".join(r.code for r in cls if r is not cls.NONE)
            raise ValueError(f"unknown reason {code!r} (known: {known})") from None
