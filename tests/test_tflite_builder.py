"""The test-model builder writes models LiteRT loads, and they compute what they claim to.

The numpy reference reads the weights and quantization back out of the
flatbuffer with the schema's reader classes, so it checks the file as written,
and evaluates the same math in float64, rounding activations where the
quantized kernels round them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pytest
import tflite
from ai_edge_litert.interpreter import Interpreter

from edge_infer.testing.tflite_builder import MACS_PER_MS, PRESETS, dense_model, main, slow_model, write_model

DTYPES = ["int8", "uint8", "float32"]
#: (window, channels, outputs, hidden)
SHAPES = [(16, 3, 5, None), (40, 2, 3, None), (16, 3, 5, 12), (40, 2, 3, 32)]
_NUMPY_TYPES = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.INT32: np.int32,
                tflite.TensorType.INT8: np.int8, tflite.TensorType.UINT8: np.uint8}
Quant = Optional[Tuple[float, int]]


def _interpreter(model: bytes) -> Interpreter:
    interpreter = Interpreter(model_content=model, num_threads=1)
    interpreter.allocate_tensors()
    return interpreter


def _invoke_each(interpreter: Interpreter, inputs: np.ndarray) -> np.ndarray:
    """The raw output for each input window, one invoke per window."""
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    outputs = []
    for window in inputs:
        interpreter.set_tensor(input_index, window[np.newaxis])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(output_index)[0].copy())
    return np.stack(outputs)


def _typical_inputs(dtype: str, window: int, channels: int, count: int = 32, seed: int = 7) -> np.ndarray:
    """Windows spread over the whole quantized input range (or standard normal floats)."""
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        return rng.normal(size=(count, window, channels)).astype(np.float32)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, (count, window, channels), endpoint=True).astype(dtype)


def _quant(tensor) -> Quant:
    params = tensor.Quantization()
    if params is None or params.ScaleLength() == 0:
        return None
    return float(params.Scale(0)), int(params.ZeroPoint(0))


def _stored(model, tensor) -> np.ndarray:
    data = model.Buffers(tensor.Buffer()).DataAsNumpy()
    return data.view(_NUMPY_TYPES[tensor.Type()]).reshape(tensor.ShapeAsNumpy())


def _dequantize(raw: np.ndarray, quant: Quant) -> np.ndarray:
    values = np.asarray(raw, dtype=np.float64)
    return values if quant is None else (values - quant[1]) * quant[0]


def _fake_quantize(values: np.ndarray, quant: Quant, dtype: np.dtype) -> np.ndarray:
    """The real values a quantized tensor can hold closest to ``values`` (identity for float)."""
    if quant is None:
        return values
    info = np.iinfo(dtype)
    return _dequantize(np.clip(np.rint(values / quant[0]) + quant[1], info.min, info.max), quant)


def _fully_connected_layers(model_bytes: bytes) -> List[Tuple[np.ndarray, np.ndarray, int, Quant]]:
    """(real weights, real bias, fused activation, output quantization) of each FULLY_CONNECTED, in order."""
    model = tflite.Model.GetRootAs(model_bytes)
    graph = model.Subgraphs(0)
    layers = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if model.OperatorCodes(op.OpcodeIndex()).BuiltinCode() != tflite.BuiltinOperator.FULLY_CONNECTED:
            continue
        options = tflite.FullyConnectedOptions()
        options.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
        assert not options.KeepNumDims()
        weights, bias, out = (graph.Tensors(op.Inputs(1)), graph.Tensors(op.Inputs(2)), graph.Tensors(op.Outputs(0)))
        layers.append((_dequantize(_stored(model, weights), _quant(weights)),
                       _dequantize(_stored(model, bias), _quant(bias)), options.FusedActivationFunction(), _quant(out)))
    return layers


def _reference(model_bytes: bytes, inputs: np.ndarray) -> np.ndarray:
    """Real output values the dense model should produce for raw ``inputs``, computed in float64."""
    graph = tflite.Model.GetRootAs(model_bytes).Subgraphs(0)
    values = _dequantize(inputs.reshape(len(inputs), -1), _quant(graph.Tensors(graph.Inputs(0))))
    for weights, bias, activation, quant in _fully_connected_layers(model_bytes):
        values = values @ weights.T + bias
        if activation == tflite.ActivationFunctionType.RELU:
            values = np.maximum(values, 0.0)
        values = _fake_quantize(values, quant, inputs.dtype)
    return values


def _fully_connected_macs(interpreter: Interpreter) -> Tuple[int, int]:
    """(number of FULLY_CONNECTED ops, their multiply-accumulates per invoke), from the interpreter's graph."""
    shapes = {detail["index"]: detail["shape"] for detail in interpreter.get_tensor_details()}
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
    macs = sum(int(np.prod(shapes[op["inputs"][0]][:-1])) * int(np.prod(shapes[op["inputs"][1]])) for op in ops)
    return len(ops), macs


def _tile_rows(interpreter: Interpreter) -> int:
    shapes = {detail["index"]: detail["shape"] for detail in interpreter.get_tensor_details()}
    (tile,) = [op for op in interpreter._get_ops_details() if op["op_name"] == "TILE"]
    return int(shapes[tile["outputs"][0]][0])


# --- dense_model ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("window,channels,outputs,hidden", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_model_input_and_output_details(dtype, window, channels, outputs, hidden):
    interpreter = _interpreter(dense_model(window, channels, outputs, dtype=dtype, hidden=hidden))
    (input_detail,), (output_detail,) = interpreter.get_input_details(), interpreter.get_output_details()

    assert input_detail["dtype"] == output_detail["dtype"] == np.dtype(dtype)
    assert list(input_detail["shape"]) == [1, window, channels]
    assert list(output_detail["shape"]) == [1, outputs]
    if dtype == "float32":
        assert input_detail["quantization"] == output_detail["quantization"] == (0.0, 0)
    else:
        expected_zero_point = {"int8": 0, "uint8": 128}[dtype]
        assert input_detail["quantization"] == pytest.approx((0.05, expected_zero_point))
        scale, zero_point = output_detail["quantization"]
        assert scale > 0 and np.iinfo(dtype).min <= zero_point <= np.iinfo(dtype).max


@pytest.mark.parametrize("window,channels,outputs,hidden", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_model_matches_numpy_reference(dtype, window, channels, outputs, hidden):
    model = dense_model(window, channels, outputs, dtype=dtype, hidden=hidden, seed=3)
    interpreter = _interpreter(model)
    inputs = _typical_inputs(dtype, window, channels)

    raw = _invoke_each(interpreter, inputs)
    expected = _reference(model, inputs)

    activations = [activation for _, _, activation, _ in _fully_connected_layers(model)]
    relu, none = tflite.ActivationFunctionType.RELU, tflite.ActivationFunctionType.NONE
    assert activations == ([relu, none] if hidden else [none])
    if dtype == "float32":
        np.testing.assert_allclose(raw, expected, rtol=1e-4, atol=1e-4)
    else:
        scale, zero_point = interpreter.get_output_details()[0]["quantization"]
        steps = np.abs(_dequantize(raw, (scale, zero_point)) - expected) / scale
        assert steps.max() <= 2.0 + 1e-6, f"off by {steps.max():.2f} quantization steps"


@pytest.mark.parametrize("window,channels,outputs,hidden", SHAPES)
@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_dense_model_output_range_fits_typical_inputs(dtype, window, channels, outputs, hidden):
    interpreter = _interpreter(dense_model(window, channels, outputs, dtype=dtype, hidden=hidden))
    raw = _invoke_each(interpreter, _typical_inputs(dtype, window, channels, count=64)).astype(int)
    info = np.iinfo(dtype)

    assert raw.min() > info.min and raw.max() < info.max, "outputs saturate"
    assert raw.max() - raw.min() > 64, "outputs use only a small part of the range"


def test_dense_model_keeps_given_quantization():
    interpreter = _interpreter(dense_model(8, 2, 3, dtype="int8", input_scale=0.1, input_zero_point=-20,
                                           output_scale=0.25, output_zero_point=10))
    assert interpreter.get_input_details()[0]["quantization"] == pytest.approx((0.1, -20))
    assert interpreter.get_output_details()[0]["quantization"] == pytest.approx((0.25, 10))

    only_zero_point = _interpreter(dense_model(8, 2, 3, dtype="uint8", output_zero_point=40))
    scale, zero_point = only_zero_point.get_output_details()[0]["quantization"]
    assert zero_point == 40 and scale > 0


@pytest.mark.parametrize("dtype,weight_type,weight_zero_point",
                         [("int8", tflite.TensorType.INT8, 0), ("uint8", tflite.TensorType.UINT8, 128)])
def test_dense_model_quantizes_like_the_converter(dtype, weight_type, weight_zero_point):
    model = tflite.Model.GetRootAs(dense_model(16, 3, 5, dtype=dtype, hidden=8))
    graph = model.Subgraphs(0)
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if model.OperatorCodes(op.OpcodeIndex()).BuiltinCode() != tflite.BuiltinOperator.FULLY_CONNECTED:
            continue
        x, weights, bias = (graph.Tensors(op.Inputs(j)) for j in range(3))
        assert weights.Type() == weight_type and _quant(weights)[1] == weight_zero_point
        assert bias.Type() == tflite.TensorType.INT32 and _quant(bias)[1] == 0
        assert _quant(bias)[0] == pytest.approx(_quant(x)[0] * _quant(weights)[0], rel=1e-6)


def test_dense_model_is_deterministic_per_seed():
    assert dense_model(16, 3, 5, seed=1) == dense_model(16, 3, 5, seed=1)
    assert dense_model(16, 3, 5, seed=1) != dense_model(16, 3, 5, seed=2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_model_file_follows_the_schema(dtype):
    model_bytes = dense_model(16, 3, 5, dtype=dtype, hidden=8)
    model = tflite.Model.GetRootAs(model_bytes)
    base = np.frombuffer(model_bytes, dtype=np.uint8).ctypes.data

    assert model_bytes[4:8] == b"TFL3" and model.Version() == 3
    assert model.Buffers(0).DataLength() == 0, "buffer 0 must be the empty sentinel"
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        assert code.DeprecatedBuiltinCode() == min(code.BuiltinCode(), 127)
    for i in range(1, model.BuffersLength()):
        data = model.Buffers(i).DataAsNumpy()
        assert (data.ctypes.data - base) % 16 == 0, f"buffer {i} is not 16-byte aligned"


@pytest.mark.parametrize("kwargs", [dict(dtype="int16"), dict(window=0), dict(hidden=0),
                                    dict(input_zero_point=200), dict(input_scale=0.0), dict(output_scale=-1.0)])
def test_dense_model_rejects_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        dense_model(**{"window": 8, "channels": 2, "outputs": 3, **kwargs})


# --- slow_model -----------------------------------------------------------------------------------------------

SMALL_SLOW = dict(window=8, channels=2, outputs=3, width=32, rows=4)


def test_slow_model_runs():
    interpreter = _interpreter(slow_model(**SMALL_SLOW, layers=3))
    (output_detail,) = interpreter.get_output_details()
    outputs = _invoke_each(interpreter, _typical_inputs("float32", 8, 2, count=4))

    op_names = [op["op_name"] for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    assert op_names == ["RESHAPE", "FULLY_CONNECTED", "TILE", *["FULLY_CONNECTED", "TANH"] * 3, "MEAN",
                        "FULLY_CONNECTED"]
    assert list(output_detail["shape"]) == [1, 3] and output_detail["dtype"] == np.float32
    assert np.isfinite(outputs).all() and np.ptp(outputs, axis=0).max() > 0, "output ignores the input"


def test_slow_model_cost_grows_with_layers():
    counts, macs = zip(*(_fully_connected_macs(_interpreter(slow_model(**SMALL_SLOW, layers=layers)))
                         for layers in (1, 2, 4)))
    per_layer = SMALL_SLOW["rows"] * SMALL_SLOW["width"] ** 2
    embed_and_head = 8 * 2 * 32 + 32 * 3

    assert counts == (3, 4, 6)  # embed, the shared layers, head
    assert macs == tuple(per_layer * layers + embed_and_head for layers in (1, 2, 4))


def test_slow_model_layers_share_one_weight_tensor():
    interpreter = _interpreter(slow_model(**SMALL_SLOW, layers=4))
    fully_connected = [op for op in interpreter._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
    assert len({int(op["inputs"][1]) for op in fully_connected[1:-1]}) == 1
    # So more layers add operators, not weights: the file grows by far less than one [32, 32] float matrix.
    assert len(slow_model(**SMALL_SLOW, layers=8)) - len(slow_model(**SMALL_SLOW, layers=4)) < 32 * 32 * 4


def test_slow_model_output_does_not_depend_on_rows():
    """TILE repeats one row and MEAN averages the equal rows back, so rows only change the cost."""
    inputs = _typical_inputs("float32", 8, 2, count=2)
    one_row = _invoke_each(_interpreter(slow_model(**{**SMALL_SLOW, "rows": 1})), inputs)
    many_rows = _invoke_each(_interpreter(slow_model(**{**SMALL_SLOW, "rows": 6})), inputs)
    np.testing.assert_allclose(one_row, many_rows, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target_ms", [1.0, 4.0])
def test_slow_model_target_ms_sets_the_cost(target_ms):
    width, layers = 64, 2
    interpreter = _interpreter(slow_model(width=width, layers=layers, target_ms=target_ms))
    stack_macs = _tile_rows(interpreter) * width * width * layers
    assert stack_macs == pytest.approx(target_ms * MACS_PER_MS, rel=0.01)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_models_that_run(name):
    interpreter = _interpreter(slow_model(**PRESETS[name]))
    outputs = _invoke_each(interpreter, _typical_inputs("float32", 32, 6, count=1))
    assert outputs.shape == (1, 4) and np.isfinite(outputs).all()
    assert _tile_rows(interpreter) == PRESETS[name]["rows"]


def test_slow_model_rejects_invalid_arguments():
    with pytest.raises(ValueError):
        slow_model(layers=0)
    with pytest.raises(ValueError):
        slow_model(target_ms=0)


# --- write_model and the command line -------------------------------------------------------------------------

def test_write_model_creates_the_directory(tmp_path):
    path = write_model(tmp_path / "new" / "model.tflite", b"TFL3 bytes")
    assert path == tmp_path / "new" / "model.tflite" and path.read_bytes() == b"TFL3 bytes"


def test_cli_writes_a_dense_model(tmp_path, capsys):
    out = tmp_path / "dense.tflite"
    assert main(["dense", str(out), "--window", "10", "--channels", "4", "--outputs", "2", "--dtype", "uint8"]) == 0

    assert capsys.readouterr().out.strip() == f"{out} {out.stat().st_size} bytes"
    (input_detail,) = _interpreter(out.read_bytes()).get_input_details()
    assert list(input_detail["shape"]) == [1, 10, 4] and input_detail["dtype"] == np.uint8


def test_cli_slow_preset_with_override(tmp_path, capsys):
    out = tmp_path / "slow.tflite"
    assert main(["slow", str(out), "--preset", "1ms", "--layers", "2"]) == 0

    interpreter = _interpreter(out.read_bytes())
    assert _fully_connected_macs(interpreter)[0] == 4
    assert _tile_rows(interpreter) == PRESETS["1ms"]["rows"]


def test_cli_dense_needs_a_shape(tmp_path):
    with pytest.raises(SystemExit):
        main(["dense", str(tmp_path / "m.tflite"), "--window", "10"])


def test_cli_runs_as_a_module(tmp_path):
    out = tmp_path / "m.tflite"
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "edge_infer.testing.tflite_builder", "slow", str(out),
                             "--width", "16", "--rows", "2", "--layers", "1"],
                            capture_output=True, text=True, check=True, env=env)
    assert result.stdout.startswith(str(out)) and out.read_bytes()[4:8] == b"TFL3"
