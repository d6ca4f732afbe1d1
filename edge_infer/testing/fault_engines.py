"""Engines that crash or hang on purpose, for the isolated mode's tests and demonstrations.

The isolated mode promises that a segfault or a hang in the native runtime
costs fallbacks, not the service. Real interpreters do that rarely and
unpredictably, so these doubles wrap the real engine and fail on demand:
a window that contains a marker value makes the child process segfault
(a real invalid memory read, through ctypes), hang in native code, or raise.
They are meant to run *in the child process* (pass :func:`faulty_engine` as
``ProcessScheduler(engine_factory=...)``); every other window goes to the
real model. Warm-up windows are zeros, so the markers never fire there.
"""

from __future__ import annotations

import ctypes

import numpy as np

from ..deadline.isolated import ChildConfig, load_engine

#: A window containing this value segfaults the process that runs it.
SEGFAULT_MARKER = 9999.0
#: A window containing this value hangs (in native code, holding no Python lock) the thread that runs it.
HANG_MARKER = 7777.0
#: A window containing this value makes the model raise.
RAISE_MARKER = 5555.0


class FaultyEngine:
    """The real engine, except on windows with a marker value (see the module docstring)."""

    def __init__(self, engine: object):
        self.engine = engine

    def infer(self, window: np.ndarray) -> np.ndarray:
        if np.any(window == SEGFAULT_MARKER):
            ctypes.string_at(0)  # read address 0: SIGSEGV, as a crashing native kernel would
        if np.any(window == HANG_MARKER):
            ctypes.CDLL(None).pause()  # blocks in C until a signal kills the process
        if np.any(window == RAISE_MARKER):
            raise RuntimeError("FaultyEngine: the model raised on purpose")
        return self.engine.infer(window)  # type: ignore[attr-defined]


def faulty_engine(config: ChildConfig) -> FaultyEngine:
    """An engine factory for ``ProcessScheduler``: the configured model, wrapped in :class:`FaultyEngine`."""
    return FaultyEngine(load_engine(config))


def failing_engine(config: ChildConfig) -> FaultyEngine:
    """An engine factory whose model cannot be loaded: the child dies before it reports ready."""
    raise RuntimeError(f"failing_engine: refusing to load {config.model_path} on purpose")
