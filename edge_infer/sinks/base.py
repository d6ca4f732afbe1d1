"""The abstract sink: the last stage of the data path.

Like python-can's ``Listener``: the loop hands every decision (and, for
sinks that record raw data, every frame) to each sink in turn. A sink must
be quick — it runs after the decision was made, but before the next frame is
read — and must flush what it holds on :meth:`close`, so that a stop never
loses data.
"""

from __future__ import annotations

import abc

from ..decide.decision import Decision
from ..frame import Frame


class Sink(abc.ABC):
    """Receives decisions (and optionally frames) from the decision loop."""

    @abc.abstractmethod
    def on_decision(self, decision: Decision) -> None:
        """Called once per decided window, in order."""

    def on_frame(self, frame: Frame) -> None:
        """Called for every frame the source delivered (recorders override this)."""

    def close(self) -> None:
        """Flush and release. Called once when the loop stops, however it stops."""
