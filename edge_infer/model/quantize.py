"""Affine quantization, done for the user: ``real = scale * (q - zero_point)``.

The TFLite Python interpreter leaves this to its caller, and getting it wrong
(casting floats to int8, forgetting to dequantize outputs, uint8 overflow) is
the most common bug in hand-written edge loops. Here a tensor's dtype, scale
and zero point are read once and every conversion writes into a buffer that
was allocated up front.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: dtypes the runtime accepts for model inputs and outputs.
SUPPORTED_DTYPES = (np.int8, np.uint8, np.float32)


@dataclass(frozen=True)
class QuantParams:
    """How one tensor stores real numbers. ``scale == 0`` means not quantized (float)."""

    dtype: type
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0

    @property
    def qmin(self) -> int:
        return int(np.iinfo(self.dtype).min)

    @property
    def qmax(self) -> int:
        return int(np.iinfo(self.dtype).max)


def quantize(x: np.ndarray, params: QuantParams) -> np.ndarray:
    """Quantize real values: round to nearest, then clip to the dtype's range."""
    if not params.quantized:
        return np.asarray(x, dtype=params.dtype)
    q = np.rint(np.asarray(x, dtype=np.float64) / params.scale) + params.zero_point
    return np.clip(q, params.qmin, params.qmax).astype(params.dtype)


def dequantize(q: np.ndarray, params: QuantParams) -> np.ndarray:
    """Real values of a tensor's raw contents, as float32."""
    if not params.quantized:
        return np.asarray(q, dtype=np.float32)
    return ((np.asarray(q, dtype=np.float32) - params.zero_point) * np.float32(params.scale)).astype(np.float32)


class InputConverter:
    """Normalise and quantize a window into the input tensor's dtype, in place.

    The spec's per-channel normalisation ``(x - offset) / scale`` and the
    tensor's quantization ``x / s + zp`` fold into one affine map per channel,
    ``x * gain + bias``, computed once; converting a window is then a
    multiply-add, a round and a clip into pre-allocated buffers.
    """

    def __init__(self, params: QuantParams, shape: "tuple[int, ...]", offset: np.ndarray, scale: np.ndarray):
        self.params = params
        inv = 1.0 / (np.asarray(scale, dtype=np.float64) * (params.scale if params.quantized else 1.0))
        self._gain = inv.astype(np.float32)
        bias = -np.asarray(offset, dtype=np.float64) * inv + (params.zero_point if params.quantized else 0.0)
        self._bias = bias.astype(np.float32)
        self._work = np.zeros(shape, dtype=np.float32)
        self.buffer = np.zeros(shape, dtype=params.dtype)
        # Read once: np.iinfo and np.clip's Python wrapper cost more than the arithmetic on a small window.
        self._bounds = (np.float32(params.qmin), np.float32(params.qmax)) if params.quantized else None

    def convert(self, window: np.ndarray) -> np.ndarray:
        """Write the converted window into :attr:`buffer` and return it. ``window`` is (frames, channels)."""
        work, buffer = self._work, self.buffer
        if window.shape != work.shape:
            work, buffer = work.reshape(window.shape), buffer.reshape(window.shape)
        np.multiply(window, self._gain, out=work)
        np.add(work, self._bias, out=work)
        if self._bounds is not None:
            np.rint(work, out=work)
            np.maximum(work, self._bounds[0], out=work)
            np.minimum(work, self._bounds[1], out=work)
        np.copyto(buffer, work, casting="unsafe")
        return self.buffer


class OutputConverter:
    """Dequantize an output tensor into a pre-allocated float32 vector."""

    def __init__(self, params: QuantParams, size: int):
        self.params = params
        self.values = np.zeros(size, dtype=np.float32)

    def convert(self, raw: np.ndarray) -> np.ndarray:
        flat = raw.reshape(-1)
        if self.params.quantized:
            np.subtract(flat, self.params.zero_point, out=self.values, dtype=np.float32)
            np.multiply(self.values, np.float32(self.params.scale), out=self.values)
        else:
            np.copyto(self.values, flat, casting="unsafe")
        return self.values
