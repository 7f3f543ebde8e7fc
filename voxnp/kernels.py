"""The fast versions of the ops in `ops.py` (Numba, BLAS), with the same signatures.

- `linear`: one row (a decoder step) is the fused BF16 matrix-vector product of
  `_kernels.pyx` (Cython, ahead of time), which widens the weights in registers
  while streaming them from the mmap; many rows
  (encoder, prefill) widen a block of weight rows into a reused float32 scratch
  buffer and hand it to BLAS.
- `rope`: interleaved rotation in one pass.
- `attention`: one query position reads the circular KV buffer in place (Numba);
  a block of positions uses batched BLAS over the ring's slots with a window mask.
Numba compiles each kernel once and caches it on disk (`cache=True`).
"""
from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange

from . import ops
from .errors import VoxnpError

try:
    from ._kernels import matvec_bf16
except ImportError:  # pragma: no cover - a source checkout that was never built
    raise VoxnpError("voxnp's compiled kernels are missing: install with `pip install .` "
                     "(or `pip install -e .` in a checkout)") from None

# Weight rows widened per BLAS call: a 4 MiB float32 block stays in L2/L3.
SCRATCH_FLOATS = 1 << 20


# ---------------------------------------------------------------------------
# BF16 widening and linear layers


@njit(parallel=True, cache=True, nogil=True)
def _widen_rows(w, r0, r1, out):
    """out[:r1-r0] = float32(W[r0:r1]) for BF16 W [n, k] (uint16)."""
    bits = out.view(np.uint32)
    k = w.shape[1]
    for r in prange(r1 - r0):
        src = w[r0 + r]
        dst = bits[r * k:(r + 1) * k]
        for j in range(k):
            dst[j] = np.uint32(src[j]) << 16


class _Scratch:
    buffer = np.empty(SCRATCH_FLOATS, dtype=np.float32)


def widen(w: np.ndarray) -> np.ndarray:
    """A float32 copy of a BF16 tensor (any shape)."""
    flat = w.reshape(-1, w.shape[-1]) if w.ndim > 1 else w.reshape(1, -1)
    out = np.empty(flat.size, dtype=np.float32)
    _widen_rows(flat, 0, flat.shape[0], out)
    return out.reshape(w.shape)


def linear(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """y = x @ W.T (+ b): x [..., in] float32, W [out, in] BF16 -> [..., out]."""
    n_out, n_in = w.shape
    rows = x.reshape(-1, n_in)
    if rows.shape[0] == 1:
        y = np.empty((1, n_out), dtype=np.float32)
        matvec_bf16(w, np.ascontiguousarray(rows[0]), y[0], get_num_threads())
    else:
        y = np.empty((rows.shape[0], n_out), dtype=np.float32)
        block = max(1, SCRATCH_FLOATS // n_in)
        scratch = _Scratch.buffer
        for r0 in range(0, n_out, block):
            r1 = min(n_out, r0 + block)
            _widen_rows(w, r0, r1, scratch)
            y[:, r0:r1] = rows @ scratch[:(r1 - r0) * n_in].reshape(r1 - r0, n_in).T
    if bias is not None:
        y += widen(bias)
    return y.reshape(*x.shape[:-1], n_out)


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
    """
    H, hd = q.shape
    group = H // k_new.shape[0]
    cap = ring_k.shape[1]
    n_old = min(length, window - 1, cap)             # visible cached keys, newest first
    scale = np.float32(1.0 / np.sqrt(hd))
    for h in prange(H):
        g = h // group
        scores = np.empty(n_old + 1, np.float32)
        best = np.float32(0.0)
        for i in range(n_old + 1):
            key = k_new[g] if i == n_old else ring_k[g, (length - 1 - i) % cap]
            s = np.float32(0.0)
            for d in range(hd):
                s += q[h, d] * key[d]
            s *= scale
            scores[i] = s
            if i == 0 or s > best:
                best = s
        total = np.float32(0.0)
        for i in range(n_old + 1):
            scores[i] = np.exp(scores[i] - best)
            total += scores[i]
        for d in range(hd):
            out[h, d] = np.float32(0.0)
        for i in range(n_old + 1):
            value = v_new[g] if i == n_old else ring_v[g, (length - 1 - i) % cap]
            p = scores[i] / total
            for d in range(hd):
                out[h, d] += p * value[d]


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, cache, window: int) -> np.ndarray:
    """Same contract as `ops.attention`: q [T, H, hd], k, v [T, Hkv, hd] -> [T, H*hd]."""
    T, H, hd = q.shape
    if T == 1:
        out = np.empty((H, hd), dtype=np.float32)
        _attend_one(q[0], k[0], v[0], cache.k, cache.v, cache.length, window, out)
        return out.reshape(1, H * hd)
    return _attention_block(q, k, v, cache, window)


def _attention_block(q, k, v, cache, window):
    """T > 1 positions: batched BLAS over all ring slots and the new keys, masked."""
    T, H, hd = q.shape
    Hkv = k.shape[1]
    group = H // Hkv
    S = cache.n_valid()
    q_pos = cache.length + np.arange(T)                                       # [T]
    old_pos = cache.slot_positions()[:S]                                      # [S]
    old_visible = old_pos[None, :] > q_pos[:, None] - window                  # [T, S]
    rel = np.arange(T)
    new_visible = (rel[None, :] <= rel[:, None]) & (rel[None, :] > rel[:, None] - window)  # [T, T]
    scale = np.float32(1.0 / np.sqrt(hd))
    qh = q.transpose(1, 0, 2).reshape(Hkv, group * T, hd) * scale            # [Hkv, g*T, hd]
    s_old = (qh @ cache.k[:, :S, :].transpose(0, 2, 1)).reshape(Hkv, group, T, S)
    s_new = (qh @ k.transpose(1, 2, 0)).reshape(Hkv, group, T, T)
    s_old = np.where(old_visible, s_old, np.float32(-np.inf))
    s_new = np.where(new_visible, s_new, np.float32(-np.inf))
    top = np.maximum(s_old.max(axis=-1, initial=-np.inf), s_new.max(axis=-1))[..., None]
    p_old = np.exp(s_old - top)
    p_new = np.exp(s_new - top)
    total = p_old.sum(axis=-1, keepdims=True) + p_new.sum(axis=-1, keepdims=True)
    out = (p_old.reshape(Hkv, group * T, S) @ cache.v[:, :S, :]
           + p_new.reshape(Hkv, group * T, T) @ v.transpose(1, 0, 2))          # [Hkv, g*T, hd]
    out = out.reshape(Hkv, group, T, hd) / total
    return np.ascontiguousarray(out.transpose(2, 0, 1, 3)).reshape(T, H * hd)


# Ops with no faster version than the plain one.
rms_norm = ops.rms_norm
gelu = ops.gelu
silu = ops.silu
embed = ops.embed
rope_frequencies = ops.rope_frequencies
