"""Affine quantization, done for the user: ``real = scale * (q - zero_point)``.

The TFLite Python interpreter leaves this to its caller, and getting it wrong
(casting floats to int8, forgetting to dequantize outputs, uint8 overflow) is
the most common bug in hand-written edge loops. Here a tensor's dtype, scale
and zero point are read once and every conversion writes into a buffer that
was allocated up front.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

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
    multiply-add, a round and a clip into pre-allocated buffers. Every operand
    is stored in the window's full shape (at the first window of a shape): on
    a window of a few hundred values, numpy's broadcasting of a per-channel row
    costs more than the arithmetic (docs/performance.md), and the result is the
    same element by element.
    """

    def __init__(self, params: QuantParams, shape: "tuple[int, ...]", offset: np.ndarray, scale: np.ndarray):
        self.params = params
        self._normalization = (offset, scale)
        inv = 1.0 / (np.asarray(scale, dtype=np.float64) * (params.scale if params.quantized else 1.0))
        self._gain = inv.astype(np.float32)
        bias = -np.asarray(offset, dtype=np.float64) * inv + (params.zero_point if params.quantized else 0.0)
        self._bias = bias.astype(np.float32)
        self._work = np.zeros(shape, dtype=np.float32)
        self.buffer = np.zeros(shape, dtype=params.dtype)
        # Read once: np.iinfo and np.clip's Python wrapper cost more than the arithmetic on a small window.
        self._bounds = (np.float32(params.qmin), np.float32(params.qmax)) if params.quantized else None
        self._operands: "Optional[Tuple[Any, ...]]" = None  # for the shape converted last (_full_shape)

    def with_shape(self, shape: "Tuple[int, ...]") -> "InputConverter":
        """A converter for another shape that computes every value exactly as this one (same normalisation)."""
        return InputConverter(self.params, shape, *self._normalization)

    def convert(self, window: np.ndarray) -> np.ndarray:
        """Write the converted window into :attr:`buffer` and return it. ``window`` is (frames, channels)."""
        operands = self._operands
        if operands is None or operands[0] != window.shape:
            operands = self._operands = self._full_shape(window.shape)
        _, work, buffer, gain, bias, low, high = operands
        np.multiply(window, gain, out=work)
        if low is None:
            np.add(work, bias, out=buffer)
            return self.buffer
        np.add(work, bias, out=work)
        np.rint(work, out=work)
        np.maximum(work, low, out=work)
        np.minimum(work, high, out=work)
        buffer[...] = work  # an assignment casts as copyto(casting="unsafe") does, at half its call cost
        return self.buffer

    def _full_shape(self, shape: "Tuple[int, ...]") -> "Tuple[Any, ...]":
        """The buffers as ``shape`` and every operand broadcast to it (a ValueError if the window's channels
        are not the normalisation's, as numpy's broadcasting would raise)."""
        def full(row: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(np.broadcast_to(row, shape))
        bounds = self._bounds
        return (shape, self._work.reshape(shape), self.buffer.reshape(shape), full(self._gain), full(self._bias),
                None if bounds is None else full(bounds[0]), None if bounds is None else full(bounds[1]))


class OutputConverter:
    """Dequantize an output tensor into a pre-allocated float32 vector.

    A quantized tensor has at most 256 codes: their real values are computed once, by the very
    arithmetic :func:`dequantize` does (float32), into a table, and converting an output is one
    ``take`` from it (a third of the two-operation conversion's cost on a few outputs). An int8 code
    indexes the table from its end when negative, which is where its value is stored; the take wraps
    indices (``mode="wrap"``): the same entry for every code of the dtype, and without the bounds check
    that makes numpy buffer the output (measured: 0.70 -> 0.48 us per output of the bundled model).

    ``shape`` is the tensor's: :meth:`convert` then writes into :attr:`values` through a view of that
    shape, so a tensor read in its own shape needs no reshape first (once per window).
    """

    def __init__(self, params: QuantParams, size: int, shape: "Optional[Tuple[int, ...]]" = None):
        self.params = params
        self.values = np.zeros(size, dtype=np.float32)
        self._shaped = None if shape is None else self.values.reshape(shape)
        self._table = None
        if params.quantized:
            codes = np.arange(256, dtype=np.uint8).view(params.dtype)  # position k holds the code whose bits are k
            self._table = ((codes.astype(np.float32) - np.float32(params.zero_point))
                           * np.float32(params.scale)).astype(np.float32)

    def convert(self, raw: np.ndarray) -> np.ndarray:
        """The real values of ``raw`` (the tensor's codes: in its ``shape`` if one was given, else any shape of
        ``size`` elements) in :attr:`values`, which is returned."""
        if self._shaped is not None:
            out, codes = self._shaped, raw
        else:
            out, codes = self.values, raw.reshape(-1)
        if self._table is not None:
            self._table.take(codes, out=out, mode="wrap")
        else:
            np.copyto(out, codes, casting="unsafe")
        return self.values
