"""The fast versions of the ops in `ops.py` (Numba, BLAS), with the same signatures.

- `linear`: a few rows (a decoder step has one) go through the fused BF16 product
  of `_kernels.pyx` (Cython, ahead of time), which widens the weights in registers
  while streaming them from the mmap. Many rows (encoder, prefill) widen a block of
  weight rows into a reused float32 scratch buffer and hand it to BLAS (~80% of the
  machine's sgemm rate at 500 rows), or use a kept float32 copy (`keep_float32`).
- `rope`: interleaved rotation in one pass.
- `attention`: one query position reads the circular KV buffer in place (Numba,
  one task per KV head); a block of positions goes in chunks of queries, each scored
  by BLAS against the ring's visible slot ranges (in place) and the block's keys.
Numba compiles each kernel once and caches it on disk (`cache=True`).
"""
from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange

from . import ops
from .errors import VoxnpError
from .quant import QuantizedMatrix, fast_linear

try:
    from ._kernels import matmul_bf16
except ImportError:  # pragma: no cover - a source checkout that was never built
    raise VoxnpError("voxnp's compiled kernels are missing: install with `pip install .` "
                     "(or `pip install -e .` in a checkout)") from None

xp = np                   # activations are NumPy arrays
to_numpy = ops.to_numpy

# Up to this many rows, streaming BF16 weights through the Cython kernel beats widening
# them for BLAS (measured on [9216, 3072]: 4 rows 6.6 vs 9.4 ms; 16 rows 17 vs 13 ms).
FEW_ROWS = 8
# A kept float32 copy is made on the first product with at least this many rows (a
# short first run, e.g. the one that gives the first token, does not pay for it).
KEEP_MIN_ROWS = 64
# Weight rows widened per BLAS call: a 4 MiB float32 block stays in L3 (measured best).
SCRATCH_FLOATS = 1 << 20


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


# One loop, compiled twice. Blocks that alternate with BLAS calls are widened on one
# thread: two thread pools fighting over the cores cost more than the loop (measured:
# 38-row products 20% faster); whole tensors widened once use every core.
_widen_rows = njit(cache=True, nogil=True)(_widen_rows_py)
_widen_rows_parallel = njit(parallel=True, cache=True, nogil=True)(_widen_rows_py)


class _Scratch:
    buffer = np.empty(SCRATCH_FLOATS, dtype=np.float32)


def widen_into(w: np.ndarray, out: np.ndarray) -> np.ndarray:
    """float32(W) written into the front of `out`; returns that view, shaped like W."""
    flat = w.reshape(-1, w.shape[-1])
    _widen_rows_parallel(flat, 0, flat.shape[0], out)
    return out[:w.size].reshape(w.shape)


def widen(w: np.ndarray) -> np.ndarray:
    """A float32 copy of a BF16 tensor (any shape)."""
    return widen_into(w.reshape(1, -1) if w.ndim == 1 else w, np.empty(w.size, np.float32)).reshape(w.shape)


_kept: dict[int, list] = {}  # id(W) -> [W, float32 copy or None]


def keep_float32(weights) -> None:
    """Keep a float32 copy of these BF16 matrices once they are used with many rows.

    For the encoder's feed-forward matrices (model.encoder_matrices, 2.6 GB as
    float32 for the real model): widened once, every later block is a plain BLAS
    product at the machine's sgemm rate instead of re-widening each weight block.
    """
    for w in weights:
        _kept.setdefault(id(w), [w, None])


def linear(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """y = x @ W.T (+ b): x [..., in] float32, W [out, in] BF16 -> [..., out]."""
    if isinstance(w, QuantizedMatrix):  # a quantized weight: its format's kernel (_quant.h)
        return fast_linear(x, w, bias, get_num_threads())
    n_out, n_in = w.shape
    rows = x.reshape(-1, n_in)
    kept = _kept.get(id(w))
    if rows.shape[0] <= FEW_ROWS:
        y = np.empty((rows.shape[0], n_out), dtype=np.float32)
        matmul_bf16(w, np.ascontiguousarray(rows), y, get_num_threads())
    elif kept is not None and kept[0] is w and (kept[1] is not None or rows.shape[0] >= KEEP_MIN_ROWS):
        if kept[1] is None:
            kept[1] = widen(w)
        y = (kept[1] @ rows.T).T                                          # [T, out]
    else:
        # widen a block of weight rows into the scratch buffer, then BLAS (W_block @ x.T)
        yt = np.empty((n_out, rows.shape[0]), dtype=np.float32)          # [out, T]
        xt = np.ascontiguousarray(rows.T)                                 # [in, T]
        block = max(1, SCRATCH_FLOATS // n_in)
        scratch = _Scratch.buffer
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


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _attend_one(q, k_new, v_new, ring_k, ring_v, length, window, out):
    """One query at position `length` over the ring (positions < length) and itself.

    q [H, hd]; k_new, v_new [Hkv, hd]; ring_k, ring_v [Hkv, cap, hd]; out [H, hd].
    Each task is one KV head and the `group` query heads that share it, so every
    cached key and value is read once. Ring slots are visited in place: slot
    (length - 1 - i) % cap holds position length - 1 - i.
    """
    H, hd = q.shape
    Hkv = k_new.shape[0]
    group = H // Hkv
    cap = ring_k.shape[1]
    n_old = min(length, window - 1, cap)             # visible cached keys
    first = length - n_old                           # oldest visible position
    scale = np.float32(1.0 / np.sqrt(hd))
    for g in prange(Hkv):
        scores = np.empty((group, n_old + 1), np.float32)
        qg = q[g * group:(g + 1) * group] * scale                    # [group, hd]
        for i in range(n_old):
            key = ring_k[g, (first + i) % cap]
            for h in range(group):
                s = np.float32(0.0)
                for d in range(hd):
                    s += qg[h, d] * key[d]
                scores[h, i] = s
        for h in range(group):
            s = np.float32(0.0)
            for d in range(hd):
                s += qg[h, d] * k_new[g, d]
            scores[h, n_old] = s
        for h in range(group):                        # softmax over the visible keys
            best = scores[h].max()
            total = np.float32(0.0)
            for i in range(n_old + 1):
                e = np.exp(scores[h, i] - best)
                scores[h, i] = e
                total += e
            scores[h] *= np.float32(1.0) / total
        acc = np.zeros((group, hd), np.float32)
        for i in range(n_old):
            value = ring_v[g, (first + i) % cap]
            for h in range(group):
                p = scores[h, i]
                for d in range(hd):
                    acc[h, d] += p * value[d]
        for h in range(group):
            p = scores[h, n_old]
            for d in range(hd):
                out[g * group + h, d] = acc[h, d] + p * v_new[g, d]


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _attend_ring(q, ring_k, ring_v, length, window, out):
    """Queries of the last T positions, all already in the ring, over the ring in place.

    q [T, H, hd]; ring_k, ring_v [Hkv, cap, hd]; out [T, H, hd]. The query at
    p = length - T + t sees positions max(0, p - window + 1) .. p, oldest first, in
    slots pos % cap. One task per (query, KV head) and the `group` query heads that
    share it. A query's arithmetic does not depend on T or on the other queries, so
    T rows give bit for bit what T one-row calls give (exact speculation/batching).
    """
    T, H, hd = q.shape
    Hkv = ring_k.shape[0]
    group = H // Hkv
    cap = ring_k.shape[1]
    scale = np.float32(1.0 / np.sqrt(hd))
    for task in prange(T * Hkv):
        t, g = task // Hkv, task % Hkv
        p = length - T + t
        first = max(0, p - window + 1)
        n = p + 1 - first                                 # visible keys, the query's own included
        scores = np.empty((group, n), np.float32)
        qg = q[t, g * group:(g + 1) * group] * scale      # [group, hd]
        for i in range(n):
            key = ring_k[g, (first + i) % cap]
            for h in range(group):
                acc = np.float32(0.0)
                for d in range(hd):
                    acc += qg[h, d] * key[d]
                scores[h, i] = acc
        for h in range(group):                            # softmax over the visible keys
            best = scores[h].max()
            total = np.float32(0.0)
            for i in range(n):
                e = np.exp(scores[h, i] - best)
                scores[h, i] = e
                total += e
            scores[h] *= np.float32(1.0) / total
        acc_v = np.zeros((group, hd), np.float32)
        for i in range(n):
            value = ring_v[g, (first + i) % cap]
            for h in range(group):
                w = scores[h, i]
                for d in range(hd):
                    acc_v[h, d] += w * value[d]
        for h in range(group):
            for d in range(hd):
                out[t, g * group + h, d] = acc_v[h, d]


class _RingBefore:
    """The ring as it was before its last T positions were appended (read-only view)."""

    def __init__(self, cache, T):
        self.k, self.v, self.capacity, self.slot_runs = cache.k, cache.v, cache.capacity, cache.slot_runs
        self.length = cache.length - T


def attention_in_cache(q: np.ndarray, cache, window: int) -> np.ndarray:
    """Same contract as `ops.attention_in_cache`: q [T, H, hd] of the last T cached positions."""
    T, H, hd = q.shape
    if T <= FEW_ROWS:
        out = np.empty((T, H, hd), dtype=np.float32)
        _attend_ring(np.ascontiguousarray(q), cache.k, cache.v, cache.length, window, out)
        return out.reshape(T, H * hd)
    # many positions (the prompt): blocks scored by BLAS. Appended at once, they must not
    # have evicted a slot they see: T <= spare + 1, or no wrap-around yet
    if T > cache.spare + 1 and cache.length > cache.capacity:
        raise ValueError(f"{T} positions appended at once to a ring with {cache.spare} spare slots")
    slots = np.arange(cache.length - T, cache.length) % cache.capacity
    k = cache.k[:, slots].transpose(1, 0, 2)                                   # [T, Hkv, hd]
    v = cache.v[:, slots].transpose(1, 0, 2)
    return _attention_block(q, k, v, _RingBefore(cache, T), window)


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _shift_and_mask(scores, key_pos, first_pos, window):
    """In place, per row: subtract the row's visible maximum; hidden keys become -inf.

    scores [R, T, N]; key j is at position key_pos[j], ascending; query t at
    first_pos + t sees keys with pos - window < key_pos[j] <= pos, a run [lo, hi).
    """
    R, T, N = scores.shape
    for rt in prange(R * T):
        r, t = rt // T, rt % T
        pos = first_pos + t
        lo = np.searchsorted(key_pos, pos - window, side="right")
        hi = np.searchsorted(key_pos, pos, side="right")
        row = scores[r, t]
        row[lo:hi] -= row[lo:hi].max()
        row[:lo] = -np.inf
        row[hi:] = -np.inf


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _normalise_rows(p):
    """p [R, T, N] /= its row sums."""
    R, T, N = p.shape
    for rt in prange(R * T):
        row = p[rt // T, rt % T]
        row *= np.float32(1.0) / row.sum()


def _masked_softmax(scores, key_pos, first_pos, window):
    """Softmax of each row over the keys its query may see (causal sliding window), in
    place. The exponential is NumPy's (SIMD); the rest are parallel loops."""
    _shift_and_mask(scores, key_pos, first_pos, window)
    np.exp(scores, out=scores)
    _normalise_rows(scores)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, cache, window: int) -> np.ndarray:
    """Same contract as `ops.attention`: q [T, H, hd], k, v [T, Hkv, hd] -> [T, H*hd]."""
    T, H, hd = q.shape
    if T == 1:
        out = np.empty((H, hd), dtype=np.float32)
        _attend_one(np.ascontiguousarray(q[0]), np.ascontiguousarray(k[0]), np.ascontiguousarray(v[0]),
                    cache.k, cache.v, cache.length, window, out)
        return out.reshape(1, H * hd)
    return _attention_block(q, k, v, cache, window)


QUERY_CHUNK = 128  # queries per BLAS pass: each chunk scores only the keys it can see


def _attention_block(q, k, v, cache, window):
    """T > 1 positions, in chunks of queries. Each chunk gathers the keys inside its
    window into one contiguous array (the visible run of the ring, at most two slot
    ranges, then the block's own keys so far), is scored by BLAS, masked and
    softmaxed in place, and weighted by BLAS again. (NumPy's stacked matmul uses BLAS
    only on contiguous operands: on the ring's strided views it was ~30x slower.)"""
    T, H, hd = q.shape
    Hkv = k.shape[1]
    group = H // Hkv
    L, cap = cache.length, cache.capacity
    scale = np.float32(1.0 / np.sqrt(hd))
    kh = k.transpose(1, 0, 2)                                                # [Hkv, T, hd] views
    vh = v.transpose(1, 0, 2)
    out = np.empty((T, H, hd), np.float32)
    for c0 in range(0, T, QUERY_CHUNK):
        c1 = min(T, c0 + QUERY_CHUNK)
        C = c1 - c0
        first_old = max(L + c0 - window + 1, L - min(L, cap), 0)
        runs = [(cache.k[:, s0:s0 + n], cache.v[:, s0:s0 + n]) for _, s0, n in cache.slot_runs(first_old, L)]
        n0 = max(0, c0 - window + 1)
        keys = np.concatenate([kr for kr, _ in runs] + [kh[:, n0:c1]], axis=1)    # [Hkv, S, hd]
        values = np.concatenate([vr for _, vr in runs] + [vh[:, n0:c1]], axis=1)  # [Hkv, S, hd]
        key_pos = np.concatenate([np.arange(first_old, L), L + np.arange(n0, c1)])  # [S]
        qc = (q[c0:c1] * scale).transpose(1, 0, 2).reshape(Hkv, group * C, hd)    # [Hkv, g*C, hd]
        scores = qc @ keys.transpose(0, 2, 1)                                     # [Hkv, g*C, S]
        _masked_softmax(scores.reshape(Hkv * group, C, -1), key_pos, L + c0, window)
        o = scores @ values                                                       # [Hkv, g*C, hd]
        out[c0:c1] = o.reshape(Hkv, group, C, hd).transpose(2, 0, 1, 3).reshape(C, H, hd)
    return out.reshape(T, H * hd)


# Ops with no faster version than the plain one.
rms_norm = ops.rms_norm
gelu = ops.gelu
silu = ops.silu
embed = ops.embed
rope_frequencies = ops.rope_frequencies
