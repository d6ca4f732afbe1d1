"""The abstract frame source: the first stage of the data path.

Shaped like python-can's ``BusABC.recv``: one blocking call with a timeout,
so the decision loop can notice silence (no frame by a deadline) without
threads of its own.
"""

from __future__ import annotations

import abc
from typing import Dict, Optional

from ..frame import Frame


class EndOfStream(Exception):
    """Raised by :meth:`Source.recv` when a finite source (a log) is exhausted."""


class Source(abc.ABC):
    """Produces :class:`Frame` objects in the model's channel order."""

    #: Channel names in the order of ``Frame.values``.
    channels: "list[str]"
    #: Frames arrive in real time (a device, a paced replay), so a long wait for one means the sensor went
    #: quiet and the loop decides ``no_data``. A replay at full speed is not paced: a pause there is the
    #: host's (a busy machine), never the sensor's, and deciding ``no_data`` would make a replay's decisions
    #: depend on the machine's load.
    paced: bool = True
    #: A live source (a device) is read by a thread of its own, so that frames are stamped when they
    #: arrive, not when the loop gets round to reading (:mod:`.arrival`).
    live = False
    #: How many times faster than recorded the frames come: 1 for a device, the factor of a paced replay, None
    #: for a replay at full speed (the spec's sample rate divided by it is the rate they really come at).
    speed: Optional[float] = 1.0

    @abc.abstractmethod
    def recv(self, timeout: Optional[float] = None) -> Optional[Frame]:
        """Return the next frame, or None if none arrived within ``timeout`` seconds.

        ``timeout=None`` waits as long as it takes. Raises :class:`EndOfStream`
        when a finite source has no more frames.
        """

    def backlog(self) -> int:
        """How many frames have already arrived and wait to be read (0 if the source cannot say)."""
        return 0

    def counters(self) -> Dict[str, int]:
        """Link or reader counters for the summary (bad rows, CRC errors, ...)."""
        return {}

    def close(self) -> None:
        """Release the underlying file or port. Safe to call twice."""

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
