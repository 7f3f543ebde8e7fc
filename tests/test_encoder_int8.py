"""The encoder's int8 format (quant.Int8Rows, issue #17): the quantizer, every kernel set
of _igemm.h against the NumPy definition (bit for bit), the packing, bad input, and the
quantized models' encoder plan."""
import numpy as np
import pytest

import voxnp
from voxnp import cpu, kernels, ops, quant
from voxnp._kernels import matmul_i8rows

F = quant.INT8_ROWS
SETS = cpu.available()                 # every kernel set this CPU runs (_igemm.h has 4 variants)
rng = np.random.default_rng(17)


def run(m, x, kernel_set, threads=2):
    y = np.full((x.shape[0], m.shape[0]), np.nan, np.float32)
    with cpu.using(kernel_set):
        m.format.kernel(m, np.ascontiguousarray(x), y, threads)
    return y


@pytest.mark.parametrize("shape", [(1, 1), (7, 50), (48, 48), (130, 1031), (64, 2048)])
def test_quantizer_error_is_at_most_half_a_step_and_packing_round_trips(shape):
    w = rng.standard_t(3, size=shape).astype(np.float32) * 0.02
    m = quant.quantize(w, F)
    npad, kp = m.arrays["q"].shape
    assert npad % 16 == 0 and kp % 4 == 0 and npad - 16 < shape[0] <= npad and kp - 4 < shape[1] <= kp
    err = np.abs(w.astype(np.float64) - quant.dequantize(m))
    assert np.all(err <= m.arrays["scale"][:shape[0], None].astype(np.float64) / 2 * (1 + 1e-6))
    plain = F.unpack(m.arrays["q"])
    np.testing.assert_array_equal(F._pack(plain), m.arrays["q"])
    np.testing.assert_array_equal(m.arrays["qsum"], plain.sum(axis=1))
    assert np.all(plain[shape[0]:] == 0) and np.all(plain[:, shape[1]:] == 0)


def test_activation_quantization_per_row():
    x = np.array([[0.5, -1.0, 0.25, 0.0], [np.nan, 1, 1, 1], [1e-31] * 4, [0.0] * 4, [3.0, -np.inf, 0, 0]],
                 np.float32)
    xq, xs = F.quantize_activations(x)
    assert xq[0].tolist() == [64, -127, 32, 0] and xs[0] == np.float32(1 / 127)
    assert np.isnan(xs[1]) and np.isnan(xs[4]) and np.all(xq[1] == 0)
    assert xs[2] == 0 and xs[3] == 0 and np.all(xq[2:4] == 0)


@pytest.mark.parametrize("kernel_set", SETS)
@pytest.mark.parametrize("n,k", [(1, 5), (16, 4), (48, 48), (70, 130), (200, 1280), (64, 5120)])
def test_every_kernel_set_gives_the_definition_bit_for_bit(kernel_set, n, k):
    m = quant.quantize(rng.standard_t(3, size=(n, k)).astype(np.float32) * 0.02, F)
    x = rng.standard_normal((45, k)).astype(np.float32)
    x[:, :3] *= 40                                                # outlier channels
    want = F.product(x, m)
    for rows in (1, 2, 5, 6, 7, 13, 23, 45):                      # tiles of 6 (and 2, and AMX's 32) rows plus leftovers
        for threads in (1, 2):
            np.testing.assert_array_equal(run(m, x[:rows], kernel_set, threads), want[:rows])


@pytest.mark.parametrize("kernel_set", SETS)
def test_integer_sums_are_exact_at_the_largest_values(kernel_set):
    """Every weight and activation at +-127: the sums reach 127 * 127 * k (and the unsigned
    form 255 * 127 * k) with no overflow or saturation (AVX2's maddubs would saturate)."""
    n, k = 32, 5120
    w = rng.choice([-1.0, 1.0], (n, k)).astype(np.float32)
    w[:3] = 1.0
    x = rng.choice([-1.0, 1.0], (7, k)).astype(np.float32)
    x[0] = 1.0
    m = quant.quantize(w, F)
    exact = x.astype(np.float64) @ w.T.astype(np.float64)        # scales are 1/127 each way
    got = run(m, x, kernel_set)
    np.testing.assert_array_equal(got, F.product(x, m))
    np.testing.assert_allclose(got, exact, rtol=1e-6)
    assert m.arrays["qsum"][0] == 127 * k                        # row 0 x row 0: 127 * 127 * k


@pytest.mark.parametrize("kernel_set", SETS)
def test_nan_zero_and_tiny_rows(kernel_set):
    m = quant.quantize(rng.standard_normal((40, 64)).astype(np.float32), F)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    x[1, 5] = np.nan
    x[2] = 0
    x[3] = 1e-31
    y = run(m, x, kernel_set)
    assert np.all(np.isfinite(y[0])) and np.all(np.isnan(y[1])) and np.all(y[2:] == 0)


def test_kernels_linear_uses_the_int8_product_for_any_row_count():
    m = quant.quantize(rng.standard_normal((96, 200)).astype(np.float32), F)
    bias = rng.standard_normal(96).astype(np.float32).view(np.uint32)
    bias = (bias >> 16).astype(np.uint16)                         # BF16 bits
    for rows in (1, 9, 300):
        x = rng.standard_normal((rows, 200)).astype(np.float32)
        np.testing.assert_array_equal(kernels.linear(x, m, bias), ops.linear(x, m, bias))
    assert kernels.linear(rng.standard_normal((2, 3, 200)).astype(np.float32), m).shape == (2, 3, 96)


def test_bad_shapes_are_refused():
    m = quant.quantize(rng.standard_normal((32, 64)).astype(np.float32), F)
    a = m.arrays
    with pytest.raises(ValueError):
        matmul_i8rows(a["q"], a["scale"], a["qsum"], np.zeros((2, 60), np.float32), np.zeros((2, 32), np.float32))
    with pytest.raises(ValueError):
        matmul_i8rows(a["q"], a["scale"], a["qsum"], np.zeros((2, 64), np.float32), np.zeros((2, 50), np.float32))
    with pytest.raises(ValueError):
        matmul_i8rows(a["q"], a["scale"][:16], a["qsum"], np.zeros((2, 64), np.float32), np.zeros((2, 32), np.float32))


@pytest.mark.parametrize("fmt", ["int8", "q4"])
def test_quantized_models_run_the_encoder_layers_in_int8(tiny_dir, fmt):
    bf16, m = voxnp.load(tiny_dir), voxnp.load(tiny_dir, weights=fmt)
    for field in quant.ENCODER_PLAN:
        w = getattr(m.weights.encoder.layers[1], field)
        assert w.format is F
        ref = getattr(bf16.weights.encoder.layers[1], field)
        np.testing.assert_array_equal(quant.dequantize(w), quant.dequantize(quant.quantize(ref, F)))
    for kept in ("conv1", "conv2"):                              # the stem and the adapter stay BF16
        assert getattr(m.weights.encoder, kept).dtype == np.uint16
    assert m.weights.adapter.w_in.dtype == np.uint16 and m.weights.encoder.layers[0].wq_bias.dtype == np.uint16
