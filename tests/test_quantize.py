import numpy as np
import pytest

from edge_infer.model.quantize import InputConverter, OutputConverter, QuantParams, dequantize, quantize

INT8 = QuantParams(np.int8, 0.05, -3)
UINT8 = QuantParams(np.uint8, 0.1, 128)
FLOAT = QuantParams(np.float32, 0.0, 0)


@pytest.mark.parametrize("params", [INT8, UINT8])
def test_round_trip_is_within_half_a_step(params):
    x = np.linspace(-5.0, 5.0, 201)
    back = dequantize(quantize(x, params), params)
    inside = (x >= dequantize(np.array([params.qmin]), params)[0]) & (x <= dequantize(np.array([params.qmax]), params)[0])
    assert np.all(np.abs(back[inside] - x[inside]) <= params.scale / 2 + 1e-6)


@pytest.mark.parametrize("params", [INT8, UINT8])
def test_quantize_clips_to_the_dtype_range_instead_of_wrapping(params):
    q = quantize(np.array([1e6, -1e6]), params)
    assert q.dtype == params.dtype
    assert q.tolist() == [params.qmax, params.qmin]


def test_quantize_rounds_to_nearest():
    params = QuantParams(np.int8, 1.0, 0)
    assert quantize(np.array([0.4, 0.6, -0.6, 2.5]), params).tolist() == [0, 1, -1, 2]  # half to even, as np.rint


def test_float_tensors_pass_through():
    x = np.array([1.5, -2.25], dtype=np.float32)
    assert quantize(x, FLOAT).tolist() == x.tolist()
    assert dequantize(x, FLOAT).tolist() == x.tolist()


@pytest.mark.parametrize("params", [INT8, UINT8, FLOAT])
def test_input_converter_folds_normalisation_into_quantization(params):
    rng = np.random.default_rng(1)
    window = rng.normal(3.0, 2.0, size=(8, 3)).astype(np.float32)
    offset = np.array([3.0, 1.0, -1.0])
    scale = np.array([2.0, 0.5, 4.0])
    conv = InputConverter(params, (1, 8, 3), offset, scale)
    got = conv.convert(window)
    expected = quantize((window - offset) / scale, params).reshape(1, 8, 3)
    assert got.dtype == params.dtype
    # float32 folding may land on the other side of a .5 boundary: at most one step apart
    assert np.max(np.abs(got.astype(np.int64) - expected.astype(np.int64))) <= (1 if params.quantized else 1e-5)
    assert got is conv.buffer  # written into the pre-allocated buffer


@pytest.mark.parametrize("params", [INT8, UINT8, FLOAT])
def test_output_converter_dequantizes_into_a_reused_buffer(params):
    raw = quantize(np.array([[0.5, -1.0, 2.0]]), params)
    conv = OutputConverter(params, 3)
    values = conv.convert(raw)
    assert values is conv.values
    np.testing.assert_allclose(values, dequantize(raw, params).reshape(-1), rtol=0, atol=1e-6)


def _converted_the_plain_way(params, window, offset, scale):
    """The conversion written out as the loop did it before its operands were stored in full shape."""
    inv = 1.0 / (np.asarray(scale, dtype=np.float64) * (params.scale if params.quantized else 1.0))
    bias = -np.asarray(offset, dtype=np.float64) * inv + (params.zero_point if params.quantized else 0.0)
    work = np.multiply(window, inv.astype(np.float32))
    np.add(work, bias.astype(np.float32), out=work)
    if params.quantized:
        np.rint(work, out=work)
        work = np.minimum(np.maximum(work, np.float32(params.qmin)), np.float32(params.qmax))
    out = np.zeros(window.shape, dtype=params.dtype)
    np.copyto(out, work, casting="unsafe")
    return out


@pytest.mark.parametrize("params", [INT8, UINT8, FLOAT, QuantParams(np.int8, 1.0, 0)])
def test_input_converter_is_bit_identical_to_the_plain_conversion(params):
    """Full-shape operands, a rounding in place and a casting assignment change the cost, not one value:
    ties (x.5), values beyond the dtype's range and infinities included."""
    rng = np.random.default_rng(7)
    for trial in range(100):
        window = (rng.normal(0.0, 10.0, size=(32, 6)) * rng.choice([0.1, 1.0, 100.0])).astype(np.float32)
        if trial % 2:
            window = np.round(window * 2.0) / 2.0
        window[0, 0], window[1, 1] = np.inf, -np.inf
        offset, scale = rng.normal(size=6), rng.uniform(0.1, 5.0, size=6)
        got = InputConverter(params, (1, 32, 6), offset, scale).convert(window)
        assert np.array_equal(got.reshape(32, 6), _converted_the_plain_way(params, window, offset, scale))


@pytest.mark.parametrize("params", [INT8, UINT8])
def test_output_converter_table_is_bit_identical_to_dequantize(params):
    codes = np.arange(params.qmin, params.qmax + 1).astype(params.dtype).reshape(1, -1)
    expected = dequantize(codes, params).reshape(-1).tobytes()
    assert OutputConverter(params, codes.size).convert(codes).tobytes() == expected
    assert OutputConverter(params, codes.size, codes.shape).convert(codes).tobytes() == expected  # the tensor's shape
