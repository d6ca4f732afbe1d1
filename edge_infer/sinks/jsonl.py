"""Decision log: one JSON object per line, one line per decision."""

from __future__ import annotations

import json
from pathlib import Path

from ..decide.decision import Decision
from ..errors import EdgeInferError
from .base import Sink


class JsonLinesSink(Sink):
    """Writes :meth:`Decision.to_record` lines to a file, line-buffered so a crash loses at most one line."""

    def __init__(self, path: "str | Path"):
        self.path = Path(path)
        try:
            self._file = self.path.open("w", encoding="utf-8", buffering=1)
        except OSError as exc:
            raise EdgeInferError(f"cannot write decision log {self.path}: {exc.strerror or exc}") from None

    def on_decision(self, decision: Decision) -> None:
        self._file.write(json.dumps(decision.to_record(), separators=(",", ":")) + "\n")

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()
