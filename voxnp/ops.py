"""Every op the model uses, in plain NumPy: the readable definition.

These are the twins of the fast kernels in `kernels.py` (same signatures, same
results up to float32 rounding); the tests hold the two to each other. Weights
arrive as BF16 bits in `uint16` arrays and are widened exactly to float32.
"""
from __future__ import annotations

import numpy as np

from .quant import QuantizedMatrix, reference_linear
from .weights import bf16_to_f32

xp = np  # the array namespace activations live in (the cupy backend's is cupy)


def to_numpy(a) -> np.ndarray:
    """An array as a host NumPy array (here activations already are)."""
    return np.asarray(a)


def linear(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """y = x @ W.T (+ b): x [..., in] float32, W [out, in] BF16 -> [..., out]."""
    if isinstance(w, QuantizedMatrix):  # a quantized weight: its format's readable product
        return reference_linear(x, w, bias)
    y = x @ bf16_to_f32(w).T
    if bias is not None:
        y = y + bf16_to_f32(bias)
    return y.astype(np.float32, copy=False)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * w over the last axis, in float32."""
    ms = np.mean(np.square(x), axis=-1, keepdims=True)
    return (x / np.sqrt(ms + np.float32(eps)) * bf16_to_f32(weight)).astype(np.float32)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU: x * Phi(x) = x/2 * (1 + erf(x / sqrt 2))."""
    from scipy.special import erf  # imported on first use: it costs ~0.2 s at start-up

    return (0.5 * x * (1.0 + erf(x * np.float32(1 / np.sqrt(2))))).astype(np.float32)


def silu(x: np.ndarray) -> np.ndarray:
    return (x / (1.0 + np.exp(-x))).astype(np.float32)


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """The SwiGLU product of the feed-forward: silu(gate) * up."""
    return silu(gate) * up


def embed(table: np.ndarray, ids) -> np.ndarray:
    """Rows of a BF16 embedding table [vocab, dim] -> float32 [n, dim]."""
    return bf16_to_f32(table[np.asarray(ids, dtype=np.int64)])


def rope_frequencies(head_dim: int, theta: float) -> np.ndarray:
    """theta^(-2j/head_dim) for each rotated pair j < head_dim/2."""
    return (1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)).astype(np.float32)


def rope(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, xp=np) -> np.ndarray:
    """Interleaved RoPE: pairs (0,1), (2,3), ... of each head rotate by pos * inv_freq[j].

    x [T, H, hd], positions [T] -> [T, H, hd]; xp: the namespace of x (numpy or cupy).
    """
    angle = positions.astype(np.float64)[:, None] * inv_freq.astype(np.float64)[None, :]  # [T, hd/2]
    cos = xp.cos(angle).astype(np.float32)[:, None, :]                                # [T, 1, hd/2]
    sin = xp.sin(angle).astype(np.float32)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]                                              # [T, H, hd/2]
    out = xp.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, cache, window: int) -> np.ndarray:
    """Causal sliding-window GQA attention of T new positions over the cache and themselves.

    q [T, H, hd]; k, v [T, Hkv, hd] are the new positions, which follow the
    `cache.length` positions already cached. Query i sees keys j with
    i - window < j <= i (SPEC §4.3, §6.3). Returns [T, H * hd]. Does not append.
    """
    T, H, hd = q.shape
    Hkv = k.shape[1]
    old_k, old_v, old_pos = cache.ordered()                        # [Hkv, S, hd], [S]
    keys = np.concatenate([old_k, k.transpose(1, 0, 2)], axis=1)   # [Hkv, S+T, hd]
    values = np.concatenate([old_v, v.transpose(1, 0, 2)], axis=1)
    key_pos = np.concatenate([old_pos, cache.length + np.arange(T)])
    q_pos = cache.length + np.arange(T)
    visible = (key_pos[None, :] <= q_pos[:, None]) & (key_pos[None, :] > q_pos[:, None] - window)  # [T, S+T]
    group = H // Hkv
    out = np.empty((T, H, hd), dtype=np.float32)
    for h in range(H):
        scores = q[:, h, :] @ keys[h // group].T / np.float32(np.sqrt(hd))   # [T, S+T]
        scores = np.where(visible, scores, -np.inf)
        p = np.exp(scores - scores.max(axis=1, keepdims=True))
        out[:, h, :] = (p / p.sum(axis=1, keepdims=True)) @ values[h // group]
    return out.reshape(T, H * hd)


def append_and_attend(q, k, v, caches, rows: list[slice], window: int, attend=None):
    """The decoder's attention for several sequences in one pass.

    rows[s] are sequence s's new positions in q [R, H, hd] and k, v [R, Hkv, hd]: their
    keys and values are appended to its ring caches[s], then each of its rows attends
    over that ring (`attention_in_cache`, or the backend's `attend`). -> [R, H * hd]
    """
    attend = attend or attention_in_cache
    R, H, hd = q.shape
    out = np.empty((R, H * hd), np.float32)
    for cache, r in zip(caches, rows):
        cache.append(k[r], v[r])
        out[r] = attend(q[r], cache, window)
    return out


def attention_in_cache(q: np.ndarray, cache, window: int) -> np.ndarray:
    """Causal sliding-window GQA attention of the last T positions already in the cache.

    q [T, H, hd] are the queries of positions cache.length - T .. cache.length - 1,
    whose keys and values were just appended. Query at p sees keys j with
    p - window < j <= p. Returns [T, H * hd].
    """
    T, H, hd = q.shape
    keys, values, key_pos = cache.ordered()                        # [Hkv, S, hd], [S]
    q_pos = cache.length - T + np.arange(T)
    visible = (key_pos[None, :] <= q_pos[:, None]) & (key_pos[None, :] > q_pos[:, None] - window)  # [T, S]
    group = H // keys.shape[0]
    out = np.empty((T, H, hd), dtype=np.float32)
    for h in range(H):
        scores = q[:, h, :] @ keys[h // group].T / np.float32(np.sqrt(hd))   # [T, S]
        scores = np.where(visible, scores, -np.inf)
        p = np.exp(scores - scores.max(axis=1, keepdims=True))
        out[:, h, :] = (p / p.sum(axis=1, keepdims=True)) @ values[h // group]
    return out.reshape(T, H * hd)
