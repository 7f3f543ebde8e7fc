"""Tier 1: every fast kernel against its plain NumPy twin, on odd sizes."""
import numpy as np
import pytest

from voxnp import kernels, ops
from voxnp._kernels import matmul_bf16
from voxnp.kv_cache import KVCache
from voxnp.weights import bf16_to_f32

rng = np.random.default_rng(0)


def bf16(shape, scale=1.0):
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    return (x.view(np.uint32) >> 16).astype(np.uint16)


def close(a, b, tol=2e-5):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=tol * max(1.0, float(np.abs(b).max())), rtol=0)


def test_bf16_widening_is_exact():
    bits = np.array([0x3F80, 0xBF80, 0x7F80, 0x0001, 0x4049, 0x0000], dtype=np.uint16)
    expect = np.array([1.0, -1.0, np.inf, 9.183549615799121e-41, 3.140625, 0.0], dtype=np.float32)
    np.testing.assert_array_equal(bf16_to_f32(bits), expect)
    np.testing.assert_array_equal(kernels.widen(bits), expect)
    w = bf16((37, 53))
    np.testing.assert_array_equal(kernels.widen(w), bf16_to_f32(w))


@pytest.mark.parametrize("n,k", [(1, 1), (37, 53), (130, 7), (64, 256), (1000, 3), (515, 1031)])
@pytest.mark.parametrize("M", [1, 3, 8])
def test_matmul_bf16(n, k, M):
    w, x = bf16((n, k)), rng.standard_normal((M, k)).astype(np.float32)
    y = np.full((M, n), np.nan, np.float32)
    matmul_bf16(w, x, y, 2)
    close(y, x @ bf16_to_f32(w).T)


def test_matmul_bf16_rejects_wrong_sizes():
    with pytest.raises(ValueError):
        matmul_bf16(bf16((4, 5)), np.zeros((1, 6), np.float32), np.zeros((1, 4), np.float32))


@pytest.mark.parametrize("rows", [1, 2, 8, 9, 39, 300])
@pytest.mark.parametrize("n_out,n_in", [(37, 53), (515, 1031)])
def test_linear(rows, n_out, n_in):
    x = rng.standard_normal((rows, n_in)).astype(np.float32)
    w, b = bf16((n_out, n_in), 0.1), bf16((n_out,))
    close(kernels.linear(x, w, b), ops.linear(x, w, b))
    close(kernels.linear(x, w), ops.linear(x, w))


def test_linear_large_weight_uses_several_scratch_blocks():
    n_in = 4099
    w = bf16((kernels.SCRATCH_FLOATS // n_in * 2 + 5, n_in), 0.05)
    x = rng.standard_normal((3, n_in)).astype(np.float32)
    close(kernels.linear(x, w), ops.linear(x, w))


@pytest.mark.parametrize("T,H,hd", [(1, 3, 6), (7, 5, 10), (40, 2, 64)])
def test_rope(T, H, hd):
    x = rng.standard_normal((T, H, hd)).astype(np.float32)
    pos = rng.integers(0, 200000, T)
    inv = ops.rope_frequencies(hd, 1e6)
    close(kernels.rope(x, pos, inv), ops.rope(x, pos, inv))


def test_rope_rotates_interleaved_pairs():
    x = np.zeros((1, 1, 4), np.float32)
    x[0, 0, 0] = 1.0                                 # pair (0, 1) = (1, 0)
    inv = ops.rope_frequencies(4, 1e6)
    y = ops.rope(x, np.array([3]), inv)
    np.testing.assert_allclose(y[0, 0, :2], [np.cos(3.0), np.sin(3.0)], atol=1e-6)
    np.testing.assert_array_equal(y[0, 0, 2:], [0, 0])


def filled_cache(n_old, capacity, Hkv, hd):
    """A cache that has seen n_old positions (wrapped when n_old > capacity) and the full history."""
    cache = KVCache(capacity, Hkv, hd)
    k_all = rng.standard_normal((n_old, Hkv, hd)).astype(np.float32)
    v_all = rng.standard_normal((n_old, Hkv, hd)).astype(np.float32)
    for start in range(0, n_old, 5):                 # appended in uneven pieces
        cache.append(k_all[start:start + 5], v_all[start:start + 5])
    return cache, k_all, v_all


def masked_full_attention(q, k_all, v_all, q_pos, window, group):
    """Attention over the whole history with an explicit window mask (no ring)."""
    T, H, hd = q.shape
    out = np.zeros((T, H, hd), np.float32)
    for t in range(T):
        for h in range(H):
            keys = np.arange(len(k_all))
            ok = (keys <= q_pos[t]) & (keys > q_pos[t] - window)
            s = k_all[ok, h // group] @ q[t, h] / np.sqrt(hd)
            p = np.exp(s - s.max())
            out[t, h] = (p / p.sum()) @ v_all[ok, h // group]
    return out.reshape(T, H * hd)


@pytest.mark.parametrize("n_old,T,window", [(0, 1, 8), (3, 1, 8), (29, 1, 8), (29, 6, 8),
                                            (8, 11, 8), (50, 3, 7), (0, 20, 9)])
@pytest.mark.parametrize("impl", [ops.attention, kernels.attention])
def test_attention_over_wrapped_ring_equals_full_masked_attention(impl, n_old, T, window):
    H, Hkv, hd = 6, 2, 10
    cache, k_old, v_old = filled_cache(n_old, window, Hkv, hd)
    q = rng.standard_normal((T, H, hd)).astype(np.float32)
    k = rng.standard_normal((T, Hkv, hd)).astype(np.float32)
    v = rng.standard_normal((T, Hkv, hd)).astype(np.float32)
    expect = masked_full_attention(q, np.concatenate([k_old, k]), np.concatenate([v_old, v]),
                                   n_old + np.arange(T), window, H // Hkv)
    close(impl(q, k, v, cache, window), expect, 1e-5)


def test_kv_cache_never_reallocates_and_keeps_last_window():
    cache = KVCache(5, 1, 2)
    k_buffer = cache.k
    for p in range(13):
        cache.append(np.full((1, 1, 2), p, np.float32), np.full((1, 1, 2), -p, np.float32))
    assert cache.k is k_buffer and cache.length == 13
    k, v, pos = cache.ordered()
    np.testing.assert_array_equal(pos, [8, 9, 10, 11, 12])
    np.testing.assert_array_equal(k[0, :, 0], [8, 9, 10, 11, 12])
    np.testing.assert_array_equal(sorted(cache.slot_positions()), [8, 9, 10, 11, 12])
    cache.append(np.arange(14, dtype=np.float32).reshape(7, 1, 2), np.zeros((7, 1, 2), np.float32))
    assert cache.length == 20 and cache.k is k_buffer


def test_gelu_silu_reference_values():
    x = np.array([-3.0, -1.0, 0.0, 0.5, 2.0], np.float32)
    np.testing.assert_allclose(ops.gelu(x), [-0.0040496, -0.1586553, 0.0, 0.3457312, 1.9544997], atol=1e-6)
    np.testing.assert_allclose(ops.silu(x), x / (1 + np.exp(-x)), atol=1e-7)
