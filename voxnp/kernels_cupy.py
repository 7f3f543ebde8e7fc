"""NVIDIA GPU versions of the heavy ops (CuPy), with the signatures of `ops.py`.

Arrays go in and come out as NumPy, so the model code is the same for every backend;
what is big lives on the GPU. Each weight matrix is uploaded once and widened from
BF16 to float32 on the device (17.7 GB for the real model), and each KV cache gets a
device mirror that this module's attention appends to as it goes (uploaded whole
only when the host cache changed otherwise: a restart or a restored state). The light ops (norms, activations, RoPE, embedding rows)
stay on the host: they move kilobytes per step.

    voxnp speech.wav --backend cupy        # pip install "voxnp[gpu]" (CuPy for CUDA 12)
"""
from __future__ import annotations

import numpy as np

from . import ops
from .errors import VoxnpError

try:
    import cupy as cp
except ImportError:
    raise VoxnpError("the cupy backend needs CuPy and an NVIDIA GPU: pip install \"voxnp[gpu]\"") from None

_weights: dict[int, tuple] = {}   # id(host view) -> (host view, device float32)
_rings: dict[int, list] = {}      # id(KVCache) -> [cache, device k, device v, device length]


def _on_device(w: np.ndarray):
    """The device float32 copy of a BF16 weight (uploaded and widened on first use)."""
    entry = _weights.get(id(w))
    if entry is None or entry[0] is not w:
        bits = cp.asarray(np.ascontiguousarray(w)).astype(cp.uint32)
        entry = (w, (bits << 16).view(cp.float32))
        _weights[id(w)] = entry
    return entry[1]


def linear(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """y = x @ W.T (+ b) on the GPU: x [..., in] float32, W [out, in] BF16 -> [..., out]."""
    y = cp.asarray(x, dtype=cp.float32) @ _on_device(w).T
    if bias is not None:
        y += _on_device(bias)
    return cp.asnumpy(y)


def keep_float32(weights) -> None:
    """Every weight is kept as float32 on the device anyway."""


def _ring(cache):
    """The device mirror of a host KVCache; uploaded again if the host cache changed
    behind its back (a reset, or a state restored from a snapshot)."""
    entry = _rings.get(id(cache))
    if entry is None or entry[0] is not cache:
        entry = [cache, cp.zeros(cache.k.shape, cp.float32), cp.zeros(cache.v.shape, cp.float32), 0]
        _rings[id(cache)] = entry
    if entry[3] != cache.length:
        entry[1][...] = cp.asarray(cache.k)
        entry[2][...] = cp.asarray(cache.v)
        entry[3] = cache.length
    return entry


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, cache, window: int) -> np.ndarray:
    """Same contract as `ops.attention`; keys and values are appended to the device ring."""
    T, H, hd = q.shape
    Hkv = k.shape[1]
    group = H // Hkv
    entry = _ring(cache)
    _, ring_k, ring_v, length = entry
    S = min(length, cache.capacity)
    slots = np.arange(S)
    old_pos = cp.asarray(length - 1 - ((length - 1 - slots) % cache.capacity))          # [S]
    q_pos = cp.asarray(length + np.arange(T))                                           # [T]
    key_pos = cp.concatenate([old_pos, q_pos])                                          # [S+T]
    kd = cp.asarray(k).transpose(1, 0, 2)                                               # [Hkv, T, hd]
    vd = cp.asarray(v).transpose(1, 0, 2)
    keys = cp.concatenate([ring_k[:, :S], kd], axis=1)                                  # [Hkv, S+T, hd]
    values = cp.concatenate([ring_v[:, :S], vd], axis=1)
    qd = cp.asarray(q).transpose(1, 0, 2).reshape(Hkv, group * T, hd) / np.float32(np.sqrt(hd))
    scores = (qd @ keys.transpose(0, 2, 1)).reshape(Hkv, group, T, S + T)
    visible = (key_pos[None, :] <= q_pos[:, None]) & (key_pos[None, :] > q_pos[:, None] - window)
    scores = cp.where(visible, scores, -cp.inf)
    scores = cp.exp(scores - scores.max(axis=-1, keepdims=True))
    scores /= scores.sum(axis=-1, keepdims=True)
    out = scores.reshape(Hkv, group * T, S + T) @ values                                # [Hkv, g*T, hd]
    first = max(0, T - cache.capacity)                                                  # append, as the host does
    new_slots = cp.asarray((length + np.arange(first, T)) % cache.capacity)
    ring_k[:, new_slots] = kd[:, first:]
    ring_v[:, new_slots] = vd[:, first:]
    entry[3] = length + T
    out = out.reshape(Hkv, group, T, hd).transpose(2, 0, 1, 3).reshape(T, H * hd)
    return cp.asnumpy(out)


def attention_in_cache(q: np.ndarray, cache, window: int) -> np.ndarray:
    """Same contract as `ops.attention_in_cache`. The device ring is brought up to date
    with the positions the host appended since (a reset or restore uploads it whole)."""
    T, H, hd = q.shape
    entry = _rings.get(id(cache))
    if entry is None or entry[0] is not cache or entry[4] != cache.generation:
        entry = [cache, cp.asarray(cache.k), cp.asarray(cache.v), cache.length, cache.generation]
        _rings[id(cache)] = entry
    _, ring_k, ring_v, synced, _ = entry
    new = np.arange(min(synced, cache.length - T), cache.length)
    slots = new % cache.capacity
    ring_k[:, slots] = cp.asarray(cache.k[:, slots])
    ring_v[:, slots] = cp.asarray(cache.v[:, slots])
    entry[3] = cache.length
    Hkv = ring_k.shape[0]
    group = H // Hkv
    S = min(cache.length, cache.capacity)
    key_pos = cp.asarray(cache.length - 1 - ((cache.length - 1 - np.arange(S)) % cache.capacity))  # [S]
    q_pos = cp.asarray(cache.length - T + np.arange(T))                                 # [T]
    qd = cp.asarray(q).transpose(1, 0, 2).reshape(Hkv, group * T, hd) / np.float32(np.sqrt(hd))
    scores = (qd @ ring_k[:, :S].transpose(0, 2, 1)).reshape(Hkv, group, T, S)
    visible = (key_pos[None, :] <= q_pos[:, None]) & (key_pos[None, :] > q_pos[:, None] - window)
    scores = cp.where(visible, scores, -cp.inf)
    scores = cp.exp(scores - scores.max(axis=-1, keepdims=True))
    scores /= scores.sum(axis=-1, keepdims=True)
    out = scores.reshape(Hkv, group * T, S) @ ring_v[:, :S]                             # [Hkv, g*T, hd]
    return cp.asnumpy(out.reshape(Hkv, group, T, hd).transpose(2, 0, 1, 3).reshape(T, H * hd))


rms_norm = ops.rms_norm
gelu = ops.gelu
silu = ops.silu
embed = ops.embed
rope = ops.rope
rope_frequencies = ops.rope_frequencies
