"""Several windows in one invoke: the same model, its input resized to a batch of windows.

Streams that share a model often have windows due at the same moment (eight
motors sampled by one clock). One invoke of a batch of ``k`` windows costs
less than ``k`` invokes (here: 5 us per window at 32 against 23 us alone,
docs/streams.md), because the interpreter's fixed cost per call and the
Python around it are paid once.

A TFLite model converted from Keras usually cannot simply be resized: its
RESHAPE operators carry their target shape as a constant whose first
dimension is the batch, 1. :func:`batchable_model_bytes` makes the batch
variant of a model by turning that leading 1 into -1 ("whatever is left"),
in a copy of the bytes the engine already verified (the file is not read
again, so the model that runs batched is the one whose hash was checked).
The variant must answer every window exactly as the model does alone;
:class:`BatchEngine` checks that on a probe window before it is used, and a
model that cannot be batched is simply run one window at a time.

One interpreter per batch size (``resize_tensor_input`` + ``allocate_tensors``
once each, at start): resizing on the fly would allocate in the hot path.
A batch of ``k`` windows runs on the smallest size that holds it; the rest
of that batch is zeros and its answers are ignored.
"""

from __future__ import annotations

import struct
from typing import Dict, List, Optional, Sequence

import numpy as np

from .backends import resolve_backend
from .engine import Engine, _native_stderr_filtered
from .quantize import InputConverter, OutputConverter

#: TFLite's builtin operator code for RESHAPE (schema.fbs).
_RESHAPE = 22
#: Batch sizes tried by default: powers of two (a few interpreters cover any number of streams).
DEFAULT_SIZES = (1, 2, 4, 8, 16, 32, 64)


class _Table:
    """Just enough of a flatbuffer table reader for the TFLite schema fields this module needs."""

    def __init__(self, buf: "bytes | bytearray", pos: int):
        self.buf = buf
        self.pos = pos
        self._vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self._vsize = struct.unpack_from("<H", buf, self._vtable)[0]

    def _field(self, index: int) -> int:
        """The absolute position of field ``index``, or 0 if absent."""
        entry = 4 + 2 * index
        if entry >= self._vsize:
            return 0
        offset = struct.unpack_from("<H", self.buf, self._vtable + entry)[0]
        return self.pos + offset if offset else 0

    def scalar(self, index: int, fmt: str, default: int = 0) -> int:
        at = self._field(index)
        return struct.unpack_from(fmt, self.buf, at)[0] if at else default

    def _vector(self, index: int) -> "tuple[int, int]":
        """(position of the first element, length) of a vector field; (0, 0) if absent."""
        at = self._field(index)
        if not at:
            return 0, 0
        start = at + struct.unpack_from("<I", self.buf, at)[0]
        return start + 4, struct.unpack_from("<I", self.buf, start)[0]

    def tables(self, index: int) -> List["_Table"]:
        start, length = self._vector(index)
        return [_Table(self.buf, start + 4 * i + struct.unpack_from("<I", self.buf, start + 4 * i)[0])
                for i in range(length)]

    def ints(self, index: int) -> List[int]:
        start, length = self._vector(index)
        return list(struct.unpack_from(f"<{length}i", self.buf, start)) if length else []

    def bytes_at(self, index: int) -> "tuple[int, int]":
        return self._vector(index)


def batchable_model_bytes(model_bytes: bytes) -> Optional[bytes]:
    """The model with every RESHAPE's constant leading batch dimension 1 turned into -1; None if it cannot be.

    None when a RESHAPE's target shape is not a constant tensor in the file, or does not start with 1 (the
    batch would be folded into another dimension), or the model has more than one subgraph.
    """
    data = bytearray(model_bytes)
    model = _Table(data, struct.unpack_from("<I", data, 0)[0])
    codes = [max(code.scalar(0, "<b"), code.scalar(3, "<i")) for code in model.tables(1)]
    subgraphs = model.tables(2)
    if len(subgraphs) != 1:
        return None
    tensors, buffers = subgraphs[0].tables(0), model.tables(4)
    for op in subgraphs[0].tables(3):
        if codes[op.scalar(0, "<I")] != _RESHAPE:
            continue
        inputs = op.ints(1)
        if len(inputs) < 2 or inputs[1] < 0:
            return None  # the shape is only in the options: rare; run such a model one window at a time
        start, length = buffers[tensors[inputs[1]].scalar(2, "<I")].bytes_at(0)
        if length < 4 or struct.unpack_from("<i", data, start)[0] not in (1, -1):
            return None
        struct.pack_into("<i", data, start, -1)
    return bytes(data)


class BatchEngine:
    """Runs ``k`` windows of one model in one invoke, on interpreters made once per batch size.

    ``sizes`` are the batch sizes to build (1 is always there: it is the
    engine itself). Not thread-safe, like :class:`Engine`: one thread invokes.
    """

    def __init__(self, engine: Engine, sizes: Sequence[int] = DEFAULT_SIZES, max_batch: Optional[int] = None):
        self.engine = engine
        self.window_shape = (engine.window, engine.channels)
        self.output_size = engine.output_size
        wanted = sorted({s for s in sizes if s >= 1 and (max_batch is None or s <= max_batch)} | {1})
        if max_batch is not None and max_batch > 1 and max_batch not in wanted:
            wanted.append(max_batch)  # exactly N streams: no padding when all of them are due
        self._runners: Dict[int, "_Runner"] = {}
        variant = batchable_model_bytes(engine.model_bytes) if wanted[-1] > 1 else None
        if variant is not None:
            _, interpreter_class = resolve_backend(engine.backend.name)
            for size in wanted[1:]:
                runner = _Runner(engine, interpreter_class, variant, size)
                if not runner.agrees_with(engine):
                    break  # the variant answers differently: never batch this model
                self._runners[size] = runner
        #: the batch sizes this model runs at, ascending (just (1,) for a model that cannot be batched)
        self.sizes = (1, *sorted(self._runners))
        self._staging = np.zeros((self.sizes[-1], *self.window_shape), dtype=np.float32)
        self._single_out = np.zeros((1, self.output_size), dtype=np.float32)

    @property
    def max_batch(self) -> int:
        return self.sizes[-1]

    def size_for(self, k: int) -> int:
        """The smallest batch size that holds ``k`` windows."""
        for size in self.sizes:
            if size >= k:
                return size
        raise ValueError(f"{k} windows do not fit the largest batch ({self.sizes[-1]})")

    def staging(self) -> np.ndarray:
        """The (max_batch, window, channels) buffer windows are copied into before :meth:`infer_batch`."""
        return self._staging

    def infer_batch(self, k: int) -> np.ndarray:
        """Answer the first ``k`` windows of :meth:`staging`: a (k, outputs) view of a reused buffer."""
        if k == 1:
            self._single_out[0] = self.engine.infer(self._staging[0])
            return self._single_out
        return self._runners[self.size_for(k)].infer(self._staging, k)


class _Runner:
    """One interpreter resized to ``size`` windows, with its conversion buffers."""

    def __init__(self, engine: Engine, interpreter_class: type, variant: bytes, size: int):
        self.size = size
        with _native_stderr_filtered():
            self._interpreter = interpreter_class(model_content=variant, num_threads=engine.num_threads)
            index = engine.input_detail["index"]
            self._interpreter.resize_tensor_input(index, [size, engine.window, engine.channels]
                                                  + [1] * (len(engine.input_detail["shape"]) - 3))
            self._interpreter.allocate_tensors()
        self._input_index = index
        offset, scale = engine.normalization
        self._in = InputConverter(engine.input_params, (size, engine.window, engine.channels), offset, scale)
        self._input_shaped = self._in.buffer.reshape(self._interpreter.get_input_details()[0]["shape"])
        output = self._interpreter.get_output_details()[0]
        self._output_view = self._interpreter.tensor(output["index"])
        self._out = OutputConverter(engine.output_params, size * engine.output_size, tuple(output["shape"]))
        self._outputs = self._out.values.reshape(size, engine.output_size)

    def infer(self, staging: np.ndarray, k: int) -> np.ndarray:
        self._in.convert(staging[:self.size] if k == self.size else _padded(staging, k, self.size))
        self._interpreter.set_tensor(self._input_index, self._input_shaped)
        self._interpreter.invoke()
        view = self._output_view()
        self._out.convert(view)
        del view
        return self._outputs[:k]

    def agrees_with(self, engine: Engine) -> bool:
        """Whether the batched interpreter answers a probe batch exactly as the model does one window at a time."""
        rng = np.random.default_rng(0)
        probe = rng.normal(size=(self.size, engine.window, engine.channels)).astype(np.float32)
        probe = probe * engine.normalization[1] + engine.normalization[0]
        batched = self.infer(probe, self.size).copy()
        return all(np.array_equal(batched[i], engine.infer(probe[i])) for i in range(self.size))


def _padded(staging: np.ndarray, k: int, size: int) -> np.ndarray:
    """The first ``size`` rows of ``staging`` with rows ``k..size`` zeroed: stale windows are not re-run."""
    staging[k:size] = 0.0
    return staging[:size]
