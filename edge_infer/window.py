"""The window ring buffer: the last ``window`` frames, contiguous, without copying.

Each frame is written twice, at ``i`` and ``i + window`` of a buffer twice
the window's length (a "mirrored" ring), so the newest ``window`` frames are
always one contiguous slice: the interpreter stage reads it directly, and
pushing a frame is one row copy into memory allocated at start.
"""

from __future__ import annotations

import numpy as np


class WindowBuffer:
    """Collects frames and says when a window is due: after the first ``window``
    frames, then every ``hop`` frames."""

    def __init__(self, window: int, channels: int, hop: int):
        if window < 1 or channels < 1 or hop < 1:
            raise ValueError("window, channels and hop must be at least 1")
        self.window = window
        self.channels = channels
        self.hop = hop
        self._data = np.zeros((2 * window, channels), dtype=np.float32)
        #: Per slot, a view of its two rows (``i`` and ``i + window``), made once: a frame is written to both in one
        #: assignment (measured: 0.56 -> 0.33 us per push; indexing the buffer anew costs more than the copy).
        self._slots = [self._data[i::window] for i in range(window)]
        self._next = 0  # slot the next frame goes to
        self.count = 0  # frames pushed since the last reset

    def push(self, values: np.ndarray) -> bool:
        """Add one frame; True when a window ends at this frame and should be decided."""
        slot = self._next
        self._slots[slot][...] = values
        self._next = slot + 1 if slot + 1 < self.window else 0
        self.count += 1
        return self.ends_window(self.count)

    def ends_window(self, count: int) -> bool:
        """Does the ``count``-th frame since the last reset end a window? (The reader thread counts by it too, to
        arm the backstop as a window's last frame arrives: runtime.py.)"""
        return count >= self.window and (count - self.window) % self.hop == 0

    def until_due(self) -> int:
        """How many more frames until the next window is due (1 if the next frame completes one).

        The loop compares it with the frames that already arrived and wait to be read: a window
        for which a newer one is already waiting is not given to the model (docs/deadlines.md).
        """
        count, window = self.count, self.window
        if count < window:
            return window - count
        return self.hop - (count - window) % self.hop

    def view(self) -> np.ndarray:
        """The newest ``window`` frames, oldest first, as a (window, channels) view (not a copy)."""
        return self._data[self._next:self._next + self.window]

    def reset(self) -> None:
        """Forget all frames (after a reconnect, say): the next window needs ``window`` new frames."""
        self._next = 0
        self.count = 0
