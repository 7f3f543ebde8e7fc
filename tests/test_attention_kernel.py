"""The fused windowed attention of _attention.h (issue #17): every kernel set, the vector
tiles (head sizes 64 and 128, as the encoder and the decoder's prompt) and the plain C
tile (other head sizes), against ops.attention over a wrapped ring."""
import numpy as np
import pytest

from voxnp import cpu, kernels, ops
from voxnp.bf16 import bf16_bits_to_float32, float32_to_bf16_bits
from voxnp._kernels import attention_window
from voxnp.kv_cache import KVCache

rng = np.random.default_rng(170)


def case(n_old, T, H, Hkv, hd, window):
    cache = KVCache(window, Hkv, hd)
    for start in range(0, n_old, 37):                         # appended in pieces: the ring wraps
        n = min(37, n_old - start)
        cache.append(rng.standard_normal((n, Hkv, hd), dtype=np.float32),
                     rng.standard_normal((n, Hkv, hd), dtype=np.float32))
    q = rng.standard_normal((T, H, hd), dtype=np.float32) * 2
    k = rng.standard_normal((T, Hkv, hd), dtype=np.float32)
    v = rng.standard_normal((T, Hkv, hd), dtype=np.float32)
    return q, k, v, cache


@pytest.mark.parametrize("kernel_set", cpu.available())
@pytest.mark.parametrize("n_old,T,H,Hkv,hd,window", [
    (0, 300, 4, 4, 64, 750), (1000, 200, 4, 4, 64, 750), (90, 130, 8, 2, 128, 100),
    (40, 9, 4, 2, 128, 8192), (7, 150, 3, 3, 12, 20), (0, 2, 2, 1, 16, 5)])
def test_every_kernel_set_matches_the_definition(kernel_set, n_old, T, H, Hkv, hd, window):
    q, k, v, cache = case(n_old, T, H, Hkv, hd, window)
    want = ops.attention(q, k, v, cache, window)
    with cpu.using(kernel_set):
        got = kernels.attention(q, k, v, cache, window)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("kernel_set", cpu.available())
def test_peaked_scores_flush_only_what_float32_cannot_see(kernel_set):
    """Scores 30x the unit scale (a softmax tail of subnormal weights, which the kernels
    flush to zero) still match the definition, on the window and on the ring, and the
    caller's float state is back afterwards: subnormal results are not flushed."""
    q, k, v, cache = case(700, 120, 4, 2, 64, 750)
    q *= 30
    want = ops.attention(q, k, v, cache, 750)
    with cpu.using(kernel_set):
        got = kernels.attention(q, k, v, cache, 750)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())
    cache.append(k[:1], v[:1])
    want = ops.attention_in_cache(q[:1], cache, 750)
    with cpu.using(kernel_set):
        got = kernels.attention_in_cache(q[:1], cache, 750)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())
    tiny = np.full(16, 1e-38, np.float32)
    assert np.all(tiny * np.float32(0.5) > 0)                   # still subnormal, not zero


def test_queries_far_apart_see_only_their_window():
    """A value that only the first positions see must not leak into later rows."""
    T, window = 400, 16
    q = np.zeros((T, 1, 64), np.float32)
    k = np.zeros((T, 1, 64), np.float32)
    v = np.zeros((T, 1, 64), np.float32)
    v[0] = 1000.0
    out = kernels.attention(q, k, v, KVCache(window, 1, 64), window).reshape(T, 64)
    assert np.all(out[window:] == 0) and np.allclose(out[:window, 0], 1000.0 / np.arange(1, window + 1))


def test_bad_shapes_are_refused():
    q = np.zeros((2, 5, 64), np.float32)
    kv = np.zeros((1, 7, 64), np.float32)
    with pytest.raises(ValueError):
        attention_window(q, kv, kv, np.arange(6), 2, 10, 128, np.zeros((5, 2, 64), np.float32))
    with pytest.raises(ValueError):
        attention_window(q, kv, kv, np.arange(7), 2, 10, 128, np.zeros((5, 3, 64), np.float32))


def test_silu_kernel_matches_the_definition_and_is_the_same_per_row():
    x = (rng.standard_normal((37, 1000)) * 6).astype(np.float32)
    x[0, :5] = [0.0, -80.0, 100.0, 1e-30, -1e-30]
    got = kernels.silu(x)
    np.testing.assert_allclose(got, ops.silu(x), rtol=2e-6, atol=1e-30)
    for r in (0, 5, 36):                                      # a row alone: the same bits (exact speculation)
        np.testing.assert_array_equal(kernels.silu(x[r:r + 1, :333]), got[r:r + 1, :333])


@pytest.mark.parametrize("kernel_set", cpu.available())
@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("n_old,T,window,spare,hd", [(0, 1, 16, 8, 128), (5, 3, 16, 8, 128), (70, 5, 16, 8, 64),
                                                      (200, 8, 50, 8, 128), (33, 8, 8192, 8, 128), (90, 4, 20, 8, 12)])
def test_few_rows_over_the_ring_equal_one_row_calls(kernel_set, bf16, n_old, T, window, spare, hd):
    """The decoder's steps (T <= 8: speculative drafts, batched rows; _attention.h att_ring)
    read each key once for all rows; every row must still be bit for bit a one-row call,
    over a wrapped ring (float32, or BF16 as for int8/q4), on every kernel set (hd 12: the
    plain C twin)."""
    H, Hkv = 8, 2
    cache = KVCache(window, Hkv, hd, spare=spare, bf16=bf16)
    q = rng.standard_normal((T, H, hd), dtype=np.float32) * 2
    for start in range(0, n_old + T, 37):                   # wraps when n_old + T > window + spare
        n = min(37, n_old + T - start)
        cache.append(rng.standard_normal((n, Hkv, hd), dtype=np.float32),
                     rng.standard_normal((n, Hkv, hd), dtype=np.float32))
    want = ops.attention_in_cache(q, cache, window)
    with cpu.using(kernel_set):
        together = kernels.attention_in_cache(q, cache, window)                    # [T, H * hd]
        np.testing.assert_allclose(together, want, rtol=0, atol=2e-5 * np.abs(want).max())
        for t in range(T):                                   # row t alone: the ring as it was then
            cache.truncate(n_old + t + 1)
            alone = kernels.attention_in_cache(q[t:t + 1], cache, window)
            assert np.array_equal(alone[0], together[t]), f"row {t} of {T}"


@pytest.mark.parametrize("kernel_set", cpu.available())
@pytest.mark.parametrize("T", [1, 4, 8, 20])
def test_bf16_ring_is_a_float32_ring_of_the_rounded_values(kernel_set, T):
    """The int8/q4 decoders keep keys and values as BF16 (half the bytes a step reads):
    appends round them, and attention computes bit for bit as over a float32 ring holding
    the rounded values (the step's kernel, and more rows than it takes: the prompt's path)."""
    H, Hkv, hd, window = 8, 2, 128, 50
    half = KVCache(window, Hkv, hd, spare=24, bf16=True)
    full = KVCache(window, Hkv, hd, spare=24)
    for start in range(0, 130, 37):                          # wraps: capacity 74
        n = min(37, 130 - start)
        k = rng.standard_normal((n, Hkv, hd), dtype=np.float32)
        v = rng.standard_normal((n, Hkv, hd), dtype=np.float32)
        half.append(k, v)
        full.append(bf16_bits_to_float32(float32_to_bf16_bits(k)), bf16_bits_to_float32(float32_to_bf16_bits(v)))
    assert half.k.dtype == np.uint16 and 2 * half.k.nbytes == full.k.nbytes
    got_k, got_v, _ = half.ordered()
    want_k, want_v, _ = full.ordered()
    assert np.array_equal(got_k, want_k) and np.array_equal(got_v, want_v)
    q = rng.standard_normal((T, H, hd), dtype=np.float32) * 2
    with cpu.using(kernel_set):
        assert np.array_equal(kernels.attention_in_cache(q, half, window), kernels.attention_in_cache(q, full, window))
    snap = half.snapshot()                                   # a restart's snapshot: float32, exact
    restored = KVCache(window, Hkv, hd, spare=24, bf16=True)
    restored.restore(snap)
    assert np.array_equal(restored.ordered()[0], want_k) and np.array_equal(restored.ordered()[1], want_v)


def test_ring_attention_refuses_keys_the_ring_no_longer_holds():
    from voxnp._kernels import attention_ring

    ring = np.zeros((2, 10, 16), np.float32)
    q, out = np.zeros((2, 4, 16), np.float32), np.zeros((2, 4, 16), np.float32)
    attention_ring(q, ring, ring, 20, 9, out)                # oldest key 10: still in 10 slots
    with pytest.raises(ValueError):
        attention_ring(q, ring, ring, 20, 10, out)           # oldest key 9: overwritten by 19
