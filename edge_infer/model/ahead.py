"""The model's input for a log's windows, converted a block of frames at once.

Normalising and quantizing a window is six numpy calls, each costing more in
overhead than in arithmetic on a few hundred values (docs/performance.md).
The conversion is element by element (:meth:`~.engine.Engine.convert_frames`),
so a window cut from frames converted ahead holds exactly what converting the
window would give: for a recorded log, whose frames are all there, the loop
converts :data:`READ_AHEAD` frames in one go and hands the engine each window's
slice (:meth:`~.engine.Engine.prepare_input`).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .engine import Engine

#: Frames whose conversions are made at once: this many windows at hop 1, ``READ_AHEAD / hop`` at a larger hop
#: (the cost, tens of microseconds, falls on one window in that many).
READ_AHEAD = 512


class InputsAhead:
    """Converted frames of a log for the windows the loop decides; ``rows(start, stop)`` reads the log's frames.

    It converts with the engine's normalisation as it was when this was made (the runtime's engine keeps
    the spec's for the whole run).
    """

    def __init__(self, engine: Engine, rows: Callable[[int, int], np.ndarray]):
        self.engine = engine
        self._rows = rows
        self._shape = (engine.window, engine.channels)
        self._tensor_shape = tuple(engine.input_shape)
        self._first = 0  # log row of the converted block's first frame
        self._windows: Optional[np.ndarray] = None  # the block's windows, each in the input tensor's shape
        self._block = engine.frames_converter(READ_AHEAD + engine.window - 1)  # its buffers serve every full block

    def prepare(self, newest: int, window: np.ndarray) -> None:
        """``window`` holds the log's frames up to ``newest``: the engine is to take them converted ahead."""
        start = newest - self._shape[0] + 1
        windows = self._windows
        if windows is None or not 0 <= start - self._first < len(windows):
            if start < 0:
                return
            windows = self._convert(start, newest + READ_AHEAD)
        self.engine.prepare_input(window, windows[start - self._first])

    def _convert(self, start: int, stop: int) -> np.ndarray:
        """Convert frames ``start`` to ``stop - 1`` (fewer at the log's end); every window of them, each in the
        input tensor's shape, as one strided view (a window is then one indexing away)."""
        frames = self._rows(start, stop)
        block = self._block if len(frames) == len(self._block.buffer) else self.engine.frames_converter(len(frames))
        converted = block.convert(frames)
        count = len(frames) - self._shape[0] + 1
        row = converted.strides[0]
        shape = (count, *self._tensor_shape)  # (windows, [1,] window, channels[, 1])
        strides = (row, *np.empty(self._tensor_shape, dtype=converted.dtype).strides)
        self._windows = np.lib.stride_tricks.as_strided(converted, shape, strides, writeable=False)
        self._first = start
        return self._windows
