"""Write real TFLite models from numpy weights, without TensorFlow.

The runtime's tests and benchmarks need models the bundled one cannot provide:
other window shapes, each input dtype the engine supports (int8, uint8,
float32), and models that are deliberately slow per invoke. Converting such
models with TensorFlow would make TensorFlow a test dependency, so this module
writes the flatbuffer directly, with the schema's generated builder functions
(the ``tflite`` package) on a ``flatbuffers.Builder``.

Two families:

* :func:`dense_model` -- RESHAPE -> FULLY_CONNECTED [-> FULLY_CONNECTED], a
  small classifier head, quantized the way the TFLite converter quantizes.
* :func:`slow_model` -- a float model whose cost per invoke is set by its
  parameters, for deadline and scheduler tests; :data:`PRESET_1MS` and
  :data:`PRESET_SLOW` are measured settings.

From the command line (prints the path and size)::

    python -m edge_infer.testing.tflite_builder dense OUT.tflite --window 16 --channels 3 --outputs 5 --dtype uint8
    python -m edge_infer.testing.tflite_builder slow OUT.tflite --preset 1ms

The quantization arithmetic here is deliberately independent of
:mod:`edge_infer.model.quantize`: these models are the oracle the runtime's
quantization is tested against, so they must not share its bugs.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import flatbuffers
import numpy as np
import tflite

# --- Measured presets for slow_model --------------------------------------------------------------------------
# Measured on 2026-11-26 on the shared dev machine (2 vCPU Intel Xeon x86_64, ai-edge-litert 2.3.0 with its
# default XNNPACK delegate, Interpreter(num_threads=1), median of 50 invokes after 5 warm-up invokes, medians of
# repeated runs differing by up to ~30%). These are measurements, not guarantees: other machines, loads and LiteRT
# versions differ, so tests must never assert on timing with them. Re-measure before relying on them elsewhere.

#: slow_model kwargs measured at 1.05 ms per invoke, 0.9-1.35 ms over runs (63 M multiply-accumulates).
PRESET_1MS: Dict[str, int] = {"width": 512, "rows": 30, "layers": 8}
#: slow_model kwargs measured at 30 ms per invoke, 29-37 ms over runs (2.3 G multiply-accumulates).
PRESET_SLOW: Dict[str, int] = {"width": 512, "rows": 1120, "layers": 8}
#: The presets by the names the command line accepts.
PRESETS: Dict[str, Dict[str, int]] = {"1ms": PRESET_1MS, "slow": PRESET_SLOW}
#: Multiply-accumulates per millisecond of slow_model's layer stack in the same measurement (55-80 M across
#: sizes and runs); what ``slow_model(target_ms=...)`` uses to choose ``rows``. The default slow_model
#: (rows=128) measured 3.5-3.9 ms.
MACS_PER_MS = 70_000_000

# --- Model constants ------------------------------------------------------------------------------------------

#: Schema version of the TFLite format written (``Model.version``).
SCHEMA_VERSION = 3
#: The flatbuffer file identifier TFLite expects.
FILE_IDENTIFIER = b"TFL3"
#: dense_model dtypes, as the numpy dtype of the input, output and weights.
DTYPES: Dict[str, np.dtype] = {name: np.dtype(name) for name in ("int8", "uint8", "float32")}

_TENSOR_TYPES = {
    np.dtype(np.float32): tflite.TensorType.FLOAT32,
    np.dtype(np.int32): tflite.TensorType.INT32,
    np.dtype(np.int8): tflite.TensorType.INT8,
    np.dtype(np.uint8): tflite.TensorType.UINT8,
}
#: Random inputs used to choose activation ranges, and the headroom added on top of the range they reach,
#: so that other inputs of the same kind do not saturate the output.
_CALIBRATION_SAMPLES = 1024
_HEADROOM = 1.25
#: Buffer data is aligned like the converter aligns it, so kernels may read it in place.
_BUFFER_ALIGNMENT = 16

_Activation = int  # a tflite.ActivationFunctionType value
_OptionsWriter = Callable[[flatbuffers.Builder], int]
_NO_OPTIONS: Tuple[int, Optional[_OptionsWriter]] = (tflite.BuiltinOptions.NONE, None)


@dataclass(frozen=True)
class _Quant:
    """Per-tensor affine quantization, ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int

    def quantize(self, x: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """Round to nearest and clip to the dtype, as the TFLite kernels do."""
        info = np.iinfo(dtype)
        q = np.rint(np.asarray(x, dtype=np.float64) / self.scale) + self.zero_point
        return np.clip(q, info.min, info.max).astype(dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (np.asarray(q, dtype=np.float64) - self.zero_point) * self.scale


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: Tuple[int, ...]
    dtype: np.dtype
    buffer: int  # 0 (the empty buffer) for tensors computed at run time
    quant: Optional[_Quant]


@dataclass(frozen=True)
class _Operator:
    opcode: int
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]
    options_type: int
    options: Optional[_OptionsWriter]


class _Graph:
    """One subgraph being assembled, serialized to a whole model at the end.

    Everything is kept as plain Python until :meth:`serialize`, because a
    flatbuffer must be written children first (vectors and strings before the
    tables that point to them), which is awkward while the graph still grows.
    Tensors are referred to by their index, as in the schema.
    """

    def __init__(self) -> None:
        self._buffers: List[bytes] = [b""]  # buffer 0: the empty sentinel the schema requires
        self._tensors: List[_Tensor] = []
        self._opcodes: List[Tuple[int, int]] = []  # (builtin code, version)
        self._operators: List[_Operator] = []

    def tensor(self, index: int) -> _Tensor:
        return self._tensors[index]

    def constant(self, name: str, array: np.ndarray, quant: Optional[_Quant] = None) -> int:
        """A tensor whose contents are stored in the model (weights, biases, shapes)."""
        array = np.asarray(array)
        self._buffers.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())  # TFLite is LE
        return self._add(_Tensor(name, array.shape, array.dtype, len(self._buffers) - 1, quant))

    def activation(self, name: str, shape: Sequence[int], dtype: np.dtype, quant: Optional[_Quant] = None) -> int:
        """A tensor computed at run time (graph input or an operator's output)."""
        return self._add(_Tensor(name, tuple(int(d) for d in shape), np.dtype(dtype), 0, quant))

    def operator(self, builtin: int, inputs: Sequence[int], outputs: Sequence[int],
                 options: Tuple[int, Optional[_OptionsWriter]] = _NO_OPTIONS, version: int = 1) -> None:
        if (builtin, version) not in self._opcodes:
            self._opcodes.append((builtin, version))
        options_type, write_options = options
        self._operators.append(_Operator(self._opcodes.index((builtin, version)), tuple(inputs), tuple(outputs),
                                         options_type, write_options))

    def serialize(self, inputs: Sequence[int], outputs: Sequence[int], description: str) -> bytes:
        """The finished ``.tflite`` file: one subgraph, with the given input and output tensors."""
        b = flatbuffers.Builder(sum(len(data) for data in self._buffers) + 4096)
        buffers = [_write_buffer(b, data) for data in self._buffers]
        tensors = [_write_tensor(b, tensor) for tensor in self._tensors]
        operators = [_write_operator(b, op) for op in self._operators]
        opcodes = [_write_opcode(b, code, version) for code, version in self._opcodes]

        tensors_vector = _offset_vector(b, tensors)
        inputs_vector, outputs_vector = _int_vector(b, inputs), _int_vector(b, outputs)
        operators_vector = _offset_vector(b, operators)
        name = b.CreateString("main")
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, tensors_vector)
        tflite.SubGraphAddInputs(b, inputs_vector)
        tflite.SubGraphAddOutputs(b, outputs_vector)
        tflite.SubGraphAddOperators(b, operators_vector)
        tflite.SubGraphAddName(b, name)
        subgraph = tflite.SubGraphEnd(b)

        opcodes_vector = _offset_vector(b, opcodes)
        subgraphs_vector = _offset_vector(b, [subgraph])
        description_string = b.CreateString(description)
        buffers_vector = _offset_vector(b, buffers)
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, SCHEMA_VERSION)
        tflite.ModelAddOperatorCodes(b, opcodes_vector)
        tflite.ModelAddSubgraphs(b, subgraphs_vector)
        tflite.ModelAddDescription(b, description_string)
        tflite.ModelAddBuffers(b, buffers_vector)
        b.Finish(tflite.ModelEnd(b), file_identifier=FILE_IDENTIFIER)
        return bytes(b.Output())

    def _add(self, tensor: _Tensor) -> int:
        self._tensors.append(tensor)
        return len(self._tensors) - 1


# --- Flatbuffer writers (children first, then the table) ------------------------------------------------------

def _int_vector(b: flatbuffers.Builder, values: Sequence[int]) -> int:
    return b.CreateNumpyVector(np.asarray(values, dtype=np.int32))


def _offset_vector(b: flatbuffers.Builder, offsets: Sequence[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return b.EndVector()


def _write_buffer(b: flatbuffers.Builder, data: bytes) -> int:
    data_vector = None
    if data:
        b.Prep(_BUFFER_ALIGNMENT, len(data))  # the bytes will start on an aligned offset
        data_vector = b.CreateByteVector(data)
    tflite.BufferStart(b)
    if data_vector is not None:
        tflite.BufferAddData(b, data_vector)
    return tflite.BufferEnd(b)


def _write_tensor(b: flatbuffers.Builder, tensor: _Tensor) -> int:
    shape = _int_vector(b, tensor.shape)
    name = b.CreateString(tensor.name)
    quant = None
    if tensor.quant is not None:
        scale = b.CreateNumpyVector(np.array([tensor.quant.scale], dtype=np.float32))
        zero_point = b.CreateNumpyVector(np.array([tensor.quant.zero_point], dtype=np.int64))
        tflite.QuantizationParametersStart(b)
        tflite.QuantizationParametersAddScale(b, scale)
        tflite.QuantizationParametersAddZeroPoint(b, zero_point)
        quant = tflite.QuantizationParametersEnd(b)
    tflite.TensorStart(b)
    tflite.TensorAddShape(b, shape)
    tflite.TensorAddType(b, _TENSOR_TYPES[tensor.dtype])
    tflite.TensorAddBuffer(b, tensor.buffer)
    tflite.TensorAddName(b, name)
    if quant is not None:
        tflite.TensorAddQuantization(b, quant)
    return tflite.TensorEnd(b)


def _write_operator(b: flatbuffers.Builder, op: _Operator) -> int:
    inputs, outputs = _int_vector(b, op.inputs), _int_vector(b, op.outputs)
    options = op.options(b) if op.options is not None else None
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, op.opcode)
    tflite.OperatorAddInputs(b, inputs)
    tflite.OperatorAddOutputs(b, outputs)
    if options is not None:
        tflite.OperatorAddBuiltinOptionsType(b, op.options_type)
        tflite.OperatorAddBuiltinOptions(b, options)
    return tflite.OperatorEnd(b)


def _write_opcode(b: flatbuffers.Builder, builtin: int, version: int) -> int:
    tflite.OperatorCodeStart(b)
    # The int8 field predates builtin codes above 127, which it stores as the placeholder 127.
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(builtin, 127))
    tflite.OperatorCodeAddBuiltinCode(b, builtin)
    tflite.OperatorCodeAddVersion(b, version)
    return tflite.OperatorCodeEnd(b)


# --- Layers ---------------------------------------------------------------------------------------------------

def _reshape(g: _Graph, x: int, shape: Sequence[int], name: str, new_shape: Optional[Sequence[int]] = None) -> int:
    """RESHAPE, with the shape both as a constant input and in ReshapeOptions, as the converter writes it.

    ``new_shape`` (default ``shape``) may hold a -1 where the converter keeps a dynamic batch axis: the model
    then runs a batch of windows when its input is resized (``Engine.resize_batch``)."""
    new_shape = shape if new_shape is None else new_shape
    source = g.tensor(x)
    out = g.activation(name, shape, source.dtype, source.quant)  # RESHAPE requires the same quantization

    def options(b: flatbuffers.Builder) -> int:
        shape_vector = _int_vector(b, new_shape)
        tflite.ReshapeOptionsStart(b)
        tflite.ReshapeOptionsAddNewShape(b, shape_vector)
        return tflite.ReshapeOptionsEnd(b)

    shape_tensor = g.constant(f"{name}/shape", np.asarray(new_shape, dtype=np.int32))
    g.operator(tflite.BuiltinOperator.RESHAPE, [x, shape_tensor], [out],
               (tflite.BuiltinOptions.ReshapeOptions, options))
    return out


def _fully_connected(g: _Graph, x: int, weights: int, bias: int, name: str, activation: _Activation,
                     quant: Optional[_Quant] = None) -> int:
    """FULLY_CONNECTED with keep_num_dims=False: [batch..., in] x [out, in] -> [prod(batch), out]."""
    source = g.tensor(x)
    shape = (math.prod(source.shape[:-1]), g.tensor(weights).shape[0])
    out = g.activation(name, shape, source.dtype, quant)

    def options(b: flatbuffers.Builder) -> int:
        tflite.FullyConnectedOptionsStart(b)
        tflite.FullyConnectedOptionsAddFusedActivationFunction(b, activation)
        tflite.FullyConnectedOptionsAddKeepNumDims(b, False)
        return tflite.FullyConnectedOptionsEnd(b)

    # Version 4 is what the converter writes for int8 kernels; float and uint8 are version 1.
    version = 4 if source.dtype == np.int8 else 1
    g.operator(tflite.BuiltinOperator.FULLY_CONNECTED, [x, weights, bias], [out],
               (tflite.BuiltinOptions.FullyConnectedOptions, options), version)
    return out


def _tile(g: _Graph, x: int, multiples: Sequence[int], name: str) -> int:
    source = g.tensor(x)
    shape = [d * m for d, m in zip(source.shape, multiples)]
    out = g.activation(name, shape, source.dtype, source.quant)

    def options(b: flatbuffers.Builder) -> int:
        tflite.TileOptionsStart(b)
        return tflite.TileOptionsEnd(b)

    multiples_tensor = g.constant(f"{name}/multiples", np.asarray(multiples, dtype=np.int32))
    g.operator(tflite.BuiltinOperator.TILE, [x, multiples_tensor], [out], (tflite.BuiltinOptions.TileOptions, options))
    return out


def _tanh(g: _Graph, x: int, name: str) -> int:
    source = g.tensor(x)
    out = g.activation(name, source.shape, source.dtype)
    g.operator(tflite.BuiltinOperator.TANH, [x], [out])
    return out


def _mean(g: _Graph, x: int, axis: int, name: str) -> int:
    """MEAN over one axis, keeping it (size 1)."""
    source = g.tensor(x)
    shape = [1 if i == axis else d for i, d in enumerate(source.shape)]
    out = g.activation(name, shape, source.dtype, source.quant)

    def options(b: flatbuffers.Builder) -> int:
        tflite.ReducerOptionsStart(b)
        tflite.ReducerOptionsAddKeepDims(b, True)
        return tflite.ReducerOptionsEnd(b)

    axis_tensor = g.constant(f"{name}/axis", np.asarray([axis], dtype=np.int32))
    g.operator(tflite.BuiltinOperator.MEAN, [x, axis_tensor], [out], (tflite.BuiltinOptions.ReducerOptions, options))
    return out


# --- Weights and quantization ---------------------------------------------------------------------------------

def _random_layer(rng: np.random.Generator, n_in: int, n_out: int) -> Tuple[np.ndarray, np.ndarray]:
    """Float weights [n_out, n_in] scaled by 1/sqrt(n_in), so activations keep their size layer after layer."""
    return rng.normal(0.0, 1.0 / math.sqrt(n_in), (n_out, n_in)), rng.normal(0.0, 0.1, n_out)


def _midpoint(dtype: np.dtype) -> int:
    """The zero point that centres the integer range: 0 for int8, 128 for uint8."""
    info = np.iinfo(dtype)
    return (int(info.min) + int(info.max) + 1) // 2


def _layer_constants(g: _Graph, name: str, weights: np.ndarray, bias: np.ndarray, dtype: np.dtype,
                     input_quant: Optional[_Quant]) -> Tuple[int, int, np.ndarray, np.ndarray]:
    """Add a layer's weights and bias as constant tensors; return their indices and the real values stored.

    Quantized like the converter does: per-tensor weights of the model dtype with scale max|w|/127 and the
    dtype's mid-point as zero point (so int8 weights are symmetric, zero point 0, as the int8 kernels
    require; uint8 weights use 128), and an int32 bias with scale input_scale * weight_scale, zero point 0,
    so the kernel can add it straight to the integer accumulator. Without ``input_quant`` (float model) the
    weights are stored as float32.
    """
    if input_quant is None:
        weights, bias = weights.astype(np.float32), bias.astype(np.float32)
        return g.constant(f"{name}/weights", weights), g.constant(f"{name}/bias", bias), weights, bias
    weights_quant = _Quant(float(np.abs(weights).max()) / 127.0, _midpoint(dtype))
    bias_quant = _Quant(input_quant.scale * weights_quant.scale, 0)
    q_weights, q_bias = weights_quant.quantize(weights, dtype), bias_quant.quantize(bias, np.dtype(np.int32))
    return (g.constant(f"{name}/weights", q_weights, weights_quant), g.constant(f"{name}/bias", q_bias, bias_quant),
            weights_quant.dequantize(q_weights), bias_quant.dequantize(q_bias))


def _checked_quant(scale: float, zero_point: int, dtype: np.dtype, role: str) -> _Quant:
    info = np.iinfo(dtype)
    if not scale > 0 or not info.min <= zero_point <= info.max:
        raise ValueError(f"{role} quantization (scale {scale}, zero point {zero_point}) is not valid for {dtype}")
    return _Quant(float(scale), int(zero_point))


def _range_quant(values: np.ndarray, dtype: np.dtype, scale: Optional[float] = None,
                 zero_point: Optional[int] = None) -> _Quant:
    """Quantization covering the range ``values`` reach plus headroom; given scale or zero point are kept.

    The range always includes 0, which TFLite requires to be exactly representable (zero padding, ReLU).
    """
    info = np.iinfo(dtype)
    low = min(float(values.min()), 0.0) * _HEADROOM
    high = max(float(values.max()), 0.0) * _HEADROOM
    if scale is None:
        if zero_point is None:
            scale = (high - low) / (int(info.max) - int(info.min))
        else:
            scale = max(high / (info.max - zero_point) if zero_point < info.max else 0.0,
                        low / (info.min - zero_point) if zero_point > info.min else 0.0)
        scale = scale or 1.0  # all zeros (dead ReLUs): any scale represents them
    if zero_point is None:
        zero_point = int(np.clip(np.rint(info.min - low / scale), info.min, info.max))
    return _checked_quant(scale, zero_point, dtype, "output")


def _positive(**sizes: Optional[int]) -> None:
    for name, size in sizes.items():
        if size is not None and size < 1:
            raise ValueError(f"{name} must be a positive integer, got {size}")


# --- Public API -----------------------------------------------------------------------------------------------

def dense_model(window: int, channels: int, outputs: int, dtype: str = "int8", seed: int = 0,
                hidden: Optional[int] = None, input_scale: float = 0.05, input_zero_point: Optional[int] = None,
                output_scale: Optional[float] = None, output_zero_point: Optional[int] = None) -> bytes:
    """A small dense classifier head of the given shape and dtype, as ``.tflite`` bytes.

    Input [1, window, channels] -> RESHAPE [1, window*channels] -> FULLY_CONNECTED (+RELU) to ``hidden``
    units if given -> FULLY_CONNECTED -> output [1, outputs]; input and output have dtype ``dtype``
    (int8, uint8 or float32), and so do the weights.

    Weights are random but fixed by ``seed``, and the same seed gives the same float weights for every
    dtype, so the quantized models approximate the float one. Quantized models are quantized the way the
    TFLite converter does it (see :func:`_layer_constants`). The input zero point defaults to the middle of
    the dtype's range (0 for int8, 128 for uint8). Hidden and output scales and zero points not given are
    chosen from the float computation on random inputs spread over the whole input range, plus 25%
    headroom, so typical inputs neither saturate the output nor waste its resolution.
    The quantization arguments are ignored for float32.
    """
    _positive(window=window, channels=channels, outputs=outputs, hidden=hidden)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    model_dtype = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    sizes = [window * channels, *([hidden] if hidden else []), outputs]
    layers = [_random_layer(rng, n_in, n_out) for n_in, n_out in zip(sizes, sizes[1:])]

    quant: Optional[_Quant] = None
    # Quantized models only: the real values each layer's input takes on random inputs, to choose its output range.
    calibration: Optional[np.ndarray] = None
    if model_dtype != np.float32:
        zero_point = _midpoint(model_dtype) if input_zero_point is None else input_zero_point
        quant = _checked_quant(input_scale, zero_point, model_dtype, "input")
        info = np.iinfo(model_dtype)
        # A separate generator, so the weights do not depend on how the model is calibrated.
        calibration_rng = np.random.default_rng([seed, 1])
        calibration = quant.dequantize(
            calibration_rng.integers(info.min, info.max, (_CALIBRATION_SAMPLES, sizes[0]), endpoint=True))

    g = _Graph()
    x = g.activation("input", (1, window, channels), model_dtype, quant)
    x = _reshape(g, x, (1, sizes[0]), "flatten", new_shape=(-1, sizes[0]))  # batchable, as the converter writes it
    for i, (weights, bias) in enumerate(layers):
        last = i == len(layers) - 1
        name = "output" if last else f"hidden{i}"
        activation = tflite.ActivationFunctionType.NONE if last else tflite.ActivationFunctionType.RELU
        weights_tensor, bias_tensor, weights, bias = _layer_constants(g, name, weights, bias, model_dtype, quant)
        if quant is not None:
            calibration = calibration @ weights.T + bias
            if not last:
                calibration = np.maximum(calibration, 0.0)
            quant = (_range_quant(calibration, model_dtype, output_scale, output_zero_point) if last
                     else _range_quant(calibration, model_dtype))
            calibration = quant.dequantize(quant.quantize(calibration, model_dtype))  # what the next layer will see
        x = _fully_connected(g, x, weights_tensor, bias_tensor, name, activation, quant)
    return g.serialize([0], [x], f"edge_infer.testing.tflite_builder.dense_model {dtype}")


def slow_model(window: int = 32, channels: int = 6, outputs: int = 4, target_ms: Optional[float] = None,
               width: int = 512, rows: int = 128, layers: int = 8, seed: int = 0) -> bytes:
    """A float32 model that is deliberately expensive per invoke, as ``.tflite`` bytes.

    Input [1, window, channels] -> RESHAPE -> FULLY_CONNECTED to [1, width] -> TILE to [rows, width] ->
    ``layers`` x (FULLY_CONNECTED [rows, width] x [width, width] -> TANH) -> MEAN over the rows (kept as
    [1, width]) -> FULLY_CONNECTED to [1, outputs].

    The cost is about ``rows * width * width * layers`` multiply-accumulates per invoke, while the file stays
    small: all ``layers`` share ONE [width, width] weight tensor, and TILE makes the rows at run time. TANH
    keeps the values bounded however deep the stack. All rows are equal, so the output does not depend on
    ``rows`` (nor on ``target_ms``), only on the weights.

    ``target_ms`` replaces ``rows`` by the row count that should cost about that many milliseconds, from
    :data:`MACS_PER_MS` measured on the dev machine; it is an estimate, and the presets
    :data:`PRESET_1MS` / :data:`PRESET_SLOW` are the measured settings.
    """
    if target_ms is not None:
        if not target_ms > 0:
            raise ValueError(f"target_ms must be positive, got {target_ms}")
        rows = max(1, round(target_ms * MACS_PER_MS / (width * width * layers)))
    _positive(window=window, channels=channels, outputs=outputs, width=width, rows=rows, layers=layers)
    rng = np.random.default_rng(seed)
    dtype = np.dtype(np.float32)

    g = _Graph()
    x = g.activation("input", (1, window, channels), dtype)
    x = _reshape(g, x, (1, window * channels), "flatten")
    embed_weights, embed_bias, _, _ = _layer_constants(g, "embed", *_random_layer(rng, window * channels, width),
                                                       dtype, None)
    x = _fully_connected(g, x, embed_weights, embed_bias, "embed", tflite.ActivationFunctionType.NONE)
    x = _tile(g, x, (rows, 1), "tile")
    shared_weights, shared_bias, _, _ = _layer_constants(g, "shared", *_random_layer(rng, width, width), dtype, None)
    for i in range(layers):
        x = _fully_connected(g, x, shared_weights, shared_bias, f"layer{i}", tflite.ActivationFunctionType.NONE)
        x = _tanh(g, x, f"layer{i}/tanh")
    x = _mean(g, x, 0, "mean")
    head_weights, head_bias, _, _ = _layer_constants(g, "output", *_random_layer(rng, width, outputs), dtype, None)
    x = _fully_connected(g, x, head_weights, head_bias, "output", tflite.ActivationFunctionType.NONE)
    return g.serialize([0], [x], "edge_infer.testing.tflite_builder.slow_model")


def write_model(path: "str | Path", model_bytes: bytes) -> Path:
    """Write a model file, creating its directory; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model_bytes)
    return path


# --- Command line ---------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edge_infer.testing.tflite_builder",
                                     description="Write a test TFLite model and print its path and size.")
    kinds = parser.add_subparsers(dest="kind", required=True)
    dense = kinds.add_parser("dense", help="quantized (or float) dense classifier head, see dense_model()")
    slow = kinds.add_parser("slow", help="float model that is expensive per invoke, see slow_model()")
    for kind, required in ((dense, True), (slow, False)):
        kind.add_argument("out", type=Path, help="the .tflite file to write")
        kind.add_argument("--window", type=int, required=required, help="frames per window")
        kind.add_argument("--channels", type=int, required=required, help="sensor channels per frame")
        kind.add_argument("--outputs", type=int, required=required, help="output values (classes)")
        kind.add_argument("--seed", type=int, help="weights seed")
    dense.add_argument("--dtype", choices=list(DTYPES), help="input, output and weights dtype (default int8)")
    dense.add_argument("--hidden", type=int, help="units of an optional hidden RELU layer")
    slow.add_argument("--preset", choices=list(PRESETS), help="measured settings; other options override them")
    slow.add_argument("--layers", type=int, help="FULLY_CONNECTED layers sharing one weight tensor")
    slow.add_argument("--rows", type=int, help="rows each layer multiplies")
    slow.add_argument("--width", type=int, help="units per layer")
    slow.add_argument("--target-ms", type=float, help="choose --rows for about this many ms per invoke")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = vars(_parser().parse_args(argv))
    kind, out, preset = args.pop("kind"), args.pop("out"), args.pop("preset", None)
    given: Dict[str, Any] = {name: value for name, value in args.items() if value is not None}
    model = dense_model(**given) if kind == "dense" else slow_model(**{**PRESETS.get(preset, {}), **given})
    path = write_model(out, model)
    print(f"{path} {len(model)} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
