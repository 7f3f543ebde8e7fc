"""The fast versions of the ops in `ops.py` (Numba, BLAS), with the same signatures.

- `linear`: up to 64 rows (a decoder step, speculative or batched rows, the prompt)
  go through the BF16 product of `_kernels.pyx` (Cython, ahead of time), which widens
  the weights in registers while streaming them from the mmap, once for all rows.
  Many rows (the encoder) widen whole matrices into a reused float32 scratch buffer
  and hand them to BLAS (~90-95% of the machine's sgemm rate at 500 rows). Quantized
  matrices go to their format's kernels (quant.fast_linear): the encoder's int8 GEMM
  in the int8 and q4 formats.
- `rope`: interleaved rotation in one pass.
- `attention_in_cache` (the decoder's steps): the queries read the circular KV buffer in
  place (att_ring in _attention.h: one task per KV head, each key and value read once for
  all the rows and the query heads that share it), every row exact and independent.
- `attention` (the encoder, a block of positions; the decoder's prompt): fused per
  (head, tile of 128 queries) in _attention.h: scores against the keys of the tile's
  window, masked softmax in place, weighted values, the scores staying in the cache.
Numba compiles each kernel once and caches it on disk (`cache=True`).
"""
from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange

from . import cpu, ops
from .quant import QuantizedMatrix, fast_linear

_compiled = cpu.compiled()                 # the kernel set: $VOXNP_CPU or the CPU's best
matmul_bf16, attention_window, attention_ring = (_compiled.matmul_bf16, _compiled.attention_window,
                                                 _compiled.attention_ring)

xp = np                   # activations are NumPy arrays
to_numpy = ops.to_numpy

# Queries up to this many rows attend one by one over the ring (the decoder's steps);
# more (the prompt, the encoder) go in blocks through the fused kernel.
FEW_ROWS = 8
# Up to this many rows a linear layer streams the BF16 weights through the Cython
# kernel, which widens them in registers once for all rows; more rows widen the matrix
# for BLAS. Measured on the decoder's matrices at 38 rows (the prompt): 119-160 GFLOP/s
# against 84-137 for widening + BLAS; at 128 rows they are level.
KERNEL_MAX_ROWS = 64
# Weights widened per BLAS call: a whole encoder matrix (<= 6.6 M weights). BLAS on a
# [1280, 5120] block runs at ~95% of its rate, on [204, 5120] blocks at ~70%; the
# widening itself costs ~5% (measured). So no float32 copy of the weights is kept.
SCRATCH_FLOATS = 1 << 23


# ---------------------------------------------------------------------------
# BF16 widening and linear layers


def _widen_rows_py(w, r0, r1, out):
    """out[:(r1-r0)*k] = float32(W[r0:r1]) for BF16 W [n, k] (uint16)."""
    bits = out.view(np.uint32)
    k = w.shape[1]
    for r in prange(r1 - r0):
        src = w[r0 + r]
        dst = bits[r * k:(r + 1) * k]
        for j in range(k):
            dst[j] = np.uint32(src[j]) << 16


# One loop, compiled twice. Matrices widened for BLAS right before the BLAS call are
# widened on one thread (two thread pools fighting over the cores cost more than the
# loop); a tensor widened on its own (`widen`: biases, dumps) uses every core.
_widen_rows = njit(cache=True, nogil=True)(_widen_rows_py)
_widen_rows_parallel = njit(parallel=True, cache=True, nogil=True)(_widen_rows_py)


class _Scratch:
    """The one reused float32 buffer that weight blocks are widened into (32 MiB)."""
    buffer = None

    @classmethod
    def get(cls) -> np.ndarray:
        if cls.buffer is None:
            cls.buffer = np.empty(SCRATCH_FLOATS, dtype=np.float32)
        return cls.buffer


def widen_into(w: np.ndarray, out: np.ndarray) -> np.ndarray:
    """float32(W) written into the front of `out`; returns that view, shaped like W."""
    flat = w.reshape(-1, w.shape[-1])
    _widen_rows_parallel(flat, 0, flat.shape[0], out)
    return out[:w.size].reshape(w.shape)


def widen(w: np.ndarray) -> np.ndarray:
    """A float32 copy of a BF16 tensor (any shape)."""
    return widen_into(w.reshape(1, -1) if w.ndim == 1 else w, np.empty(w.size, np.float32)).reshape(w.shape)


def linear(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """y = x @ W.T (+ b): x [..., in] float32, W [out, in] BF16 -> [..., out]."""
    if isinstance(w, QuantizedMatrix):  # a quantized weight: its format's kernel (_quant.h)
        return fast_linear(x, w, bias, get_num_threads())
    n_out, n_in = w.shape
    rows = x.reshape(-1, n_in)
    if rows.shape[0] <= KERNEL_MAX_ROWS:
        y = np.empty((rows.shape[0], n_out), dtype=np.float32)
        matmul_bf16(w, np.ascontiguousarray(rows), y, get_num_threads())
    elif n_out * n_in <= SCRATCH_FLOATS:
        # widen the whole matrix into the scratch buffer, then one BLAS product x @ W.T
        wf = _Scratch.get()[:n_out * n_in].reshape(n_out, n_in)
        _widen_rows(w, 0, n_out, wf.reshape(-1))
        y = rows @ wf.T                                                   # [T, out]
    else:
        # widen a block of weight rows into the scratch buffer, then BLAS (W_block @ x.T)
        yt = np.empty((n_out, rows.shape[0]), dtype=np.float32)          # [out, T]
        xt = np.ascontiguousarray(rows.T)                                 # [in, T]
        block = max(1, SCRATCH_FLOATS // n_in)
        scratch = _Scratch.get()
        for r0 in range(0, n_out, block):
            r1 = min(n_out, r0 + block)
            _widen_rows(w, r0, r1, scratch)
            np.matmul(scratch[:(r1 - r0) * n_in].reshape(r1 - r0, n_in), xt, out=yt[r0:r1])
        y = yt.T
    if bias is not None:
        y = y + widen(bias)
    return np.ascontiguousarray(y).reshape(*x.shape[:-1], n_out)


# ---------------------------------------------------------------------------
# RoPE


@njit(parallel=True, fastmath=False, cache=True, nogil=True)
def _rope(x, positions, inv_freq, out):
    T, H, hd = x.shape
    for t in prange(T):
        for j in range(hd // 2):
            angle = np.float64(positions[t]) * np.float64(inv_freq[j])
            c = np.float32(np.cos(angle))
            s = np.float32(np.sin(angle))
            for h in range(H):
                a = x[t, h, 2 * j]
                b = x[t, h, 2 * j + 1]
                out[t, h, 2 * j] = a * c - b * s
                out[t, h, 2 * j + 1] = a * s + b * c


def rope(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Interleaved RoPE, x [T, H, hd] -> [T, H, hd]."""
    out = np.empty_like(x)
    _rope(np.ascontiguousarray(x), positions.astype(np.int64), inv_freq, out)
    return out


# ---------------------------------------------------------------------------
# attention over the circular KV buffer


def attention_in_cache(q: np.ndarray, cache, window: int) -> np.ndarray:
    """Same contract as `ops.attention_in_cache`: q [T, H, hd] of the last T cached positions."""
    T, H, hd = q.shape
    if T <= FEW_ROWS:
        out = np.empty((T, H, hd), dtype=np.float32)
        attention_ring(np.ascontiguousarray(q), cache.k, cache.v, cache.length, window, out, get_num_threads())
        return out.reshape(T, H * hd)
    # many positions (the prompt): blocks scored by BLAS
    cache.check_last_visible(T)
    slots = np.arange(cache.length - T, cache.length) % cache.capacity
    k = cache.as_float32(cache.k[:, slots]).transpose(1, 0, 2)                 # [T, Hkv, hd]
    v = cache.as_float32(cache.v[:, slots]).transpose(1, 0, 2)
    return _attention_block(q, k, v, cache, window, cached=cache.length - T)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, cache, window: int) -> np.ndarray:
    """Same contract as `ops.attention`: q [T, H, hd], k, v [T, Hkv, hd] -> [T, H*hd]."""
    return _attention_block(q, k, v, cache, window)


QUERY_CHUNK = 128  # queries per tile: each tile scores only the keys its window can see


def _attention_block(q, k, v, cache, window, cached=None):
    """T > 1 positions: the keys and values of every position the block sees (the
    visible run of the ring, at most two slot ranges, then the block's own) gathered
    contiguously per KV head, then the fused kernel of _attention.h. cached: positions
    of the ring before the block (default cache.length: k, v not appended yet)."""
    T, H, hd = q.shape
    L, cap = cache.length if cached is None else cached, cache.capacity
    first_old = max(L - window + 1, L - min(L, cap), 0)
    runs = cache.slot_runs(first_old, L)
    keys = np.ascontiguousarray(np.concatenate([cache.as_float32(cache.k[:, s0:s0 + n]) for _, s0, n in runs]
                                               + [k.transpose(1, 0, 2)], axis=1))        # [Hkv, S, hd]
    values = np.ascontiguousarray(np.concatenate([cache.as_float32(cache.v[:, s0:s0 + n]) for _, s0, n in runs]
                                                 + [v.transpose(1, 0, 2)], axis=1))
    key_pos = np.concatenate([np.arange(first_old, L), L + np.arange(T)]).astype(np.int64)                # [S]
    qh = np.ascontiguousarray((q * np.float32(1.0 / np.sqrt(hd))).transpose(1, 0, 2))                    # [H, T, hd]
    out = np.empty((T, H, hd), np.float32)
    attention_window(qh, keys, values, key_pos, L, window, QUERY_CHUNK, out, get_num_threads())
    return out.reshape(T, H * hd)


def append_and_attend(q, k, v, caches, rows, window: int) -> np.ndarray:
    """Same contract as `ops.append_and_attend`, each sequence through `attention_in_cache`."""
    return ops.append_and_attend(q, k, v, caches, rows, window, attend=attention_in_cache)


# e^y = 2^k e^f with y = k ln2 + f, |f| <= ln2 / 2: Cephes' single-precision polynomial
# for e^f (relative error ~1e-7), the 2^k added to the float's exponent bits (the same
# polynomial as _attention.h's softmax).
LOG2E = np.float32(1.4426950408889634)
LN2_HI, LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)   # ln 2 = HI + LO
EXP_POLY = tuple(np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                         4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))


@njit(inline="always", fastmath=False)
def _silu_one(x):
    """x / (1 + e^-x) for one float32 x; e^y by the polynomial above (y clamped to [-87, 88])."""
    c0, c1, c2, c3, c4, c5 = EXP_POLY
    y = min(max(-x, np.float32(-87.0)), np.float32(88.0))
    k = np.floor(y * LOG2E + np.float32(0.5))
    f = y - k * LN2_HI - k * LN2_LO
    p = ((((c0 * f + c1) * f + c2) * f + c3) * f + c4) * f + c5
    e = p * f * f + f + np.float32(1.0)                           # e^f
    bits = np.int32(np.float32(e).view(np.int32)) + (np.int32(k) << 23)
    return x / (np.float32(1.0) + np.int32(bits).view(np.float32))


# Both loops are scalar code the compiler vectorises, without fast-math: every element is
# rounded the same way whether the compiler puts it in a vector lane or not (rows stay
# independent of their batch).
STEP = 16384                       # elements per parallel task


@njit(parallel=True, fastmath=False, cache=True, nogil=True)
def _silu(x, out):
    """out = silu(x) elementwise, x and out flat."""
    n = x.shape[0]
    for start in prange((n + STEP - 1) // STEP):
        for j in range(start * STEP, min(n, (start + 1) * STEP)):
            out[j] = _silu_one(x[j])


@njit(parallel=True, fastmath=False, cache=True, nogil=True)
def _swiglu(gate, up, out):
    """out = silu(gate) * up elementwise, all flat: one pass instead of two."""
    n = gate.shape[0]
    for start in prange((n + STEP - 1) // STEP):
        for j in range(start * STEP, min(n, (start + 1) * STEP)):
            out[j] = _silu_one(gate[j]) * up[j]


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x) (same contract as ops.silu), in one parallel pass."""
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.empty_like(flat)
    _silu(flat, out)
    return out.reshape(x.shape)


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up (same contract as ops.swiglu), in one parallel pass."""
    g = np.ascontiguousarray(gate, dtype=np.float32).reshape(-1)
    u = np.ascontiguousarray(np.broadcast_to(up, gate.shape), dtype=np.float32).reshape(-1)
    out = np.empty_like(g)
    _swiglu(g, u, out)
    return out.reshape(gate.shape)


# Ops with no faster version than the plain one.
rms_norm = ops.rms_norm
gelu = ops.gelu
embed = ops.embed
rope_frequencies = ops.rope_frequencies
