"""The language decoder (SPEC §6): 26 layers of GQA attention and a SwiGLU FFN whose
input norm is scaled by the transcription delay (ada-RMSNorm), then the tied LM head.

Each position's input is the sum of an audio embedding and a token embedding. The
decoder runs several positions at once for the prompt (prefill) and one position
per 80 ms token afterwards; every layer keeps its keys and values in a circular
buffer the size of its sliding window.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ModelConfig
from .kv_cache import KVCache
from .weights import DecoderLayerWeights, DecoderWeights

TIME_EMBEDDING_BASE = 10000.0  # SPEC §6.5: f_j = base^(-j / (D/2))


@dataclass
class DecoderState:
    caches: list[KVCache]     # one per layer, capacity = sliding window
    ffn_scales: np.ndarray    # [n_layers, dim]  (1 + s) of ada-RMSNorm, fixed for the session
    n_positions: int = 0      # positions decoded so far

    def snapshot(self) -> dict:
        return {"n_positions": self.n_positions, "caches": [c.snapshot() for c in self.caches]}

    def restore(self, snap: dict) -> None:
        self.n_positions = snap["n_positions"]
        for cache, c in zip(self.caches, snap["caches"]):
            cache.restore(c)


def time_embedding(delay_tokens: int, dim: int) -> np.ndarray:
    """t_cond = concat(cos(d f), sin(d f)), f_j = exp(-ln(10000) j / (dim/2)).  -> [dim]"""
    half = dim // 2
    freqs = np.exp(-np.log(TIME_EMBEDDING_BASE) * np.arange(half, dtype=np.float64) / half)
    angle = delay_tokens * freqs
    return np.concatenate([np.cos(angle), np.sin(angle)]).astype(np.float32)


def new_decoder_state(cfg: ModelConfig, w: DecoderWeights, delay_tokens: int, ops) -> DecoderState:
    """Empty caches plus the per-layer ada-RMSNorm scales for this delay (computed once)."""
    d = cfg.decoder
    t_cond = time_embedding(delay_tokens, d.dim)[None, :]                          # [1, 3072]
    scales = np.stack([
        1.0 + ops.linear(ops.gelu(ops.linear(t_cond, layer.ada_down)), layer.ada_up)[0]  # [3072]
        for layer in w.layers]).astype(np.float32)                                   # [26, 3072]
    caches = [KVCache(d.sliding_window, d.n_kv_heads, d.head_dim) for _ in range(d.n_layers)]
    return DecoderState(caches=caches, ffn_scales=scales)


def decoder_layer(h: np.ndarray, w: DecoderLayerWeights, cache: KVCache, positions: np.ndarray,
                  ffn_scale: np.ndarray, cfg: ModelConfig, ops, inv_freq: np.ndarray) -> np.ndarray:
    """SPEC §6.1-6.6 for T positions. h [T, 3072] -> [T, 3072]."""
    d = cfg.decoder
    T = h.shape[0]
    # 1-4. attention with grouped KV heads: h += wo(attn(rope(q), rope(k), v))
    x = ops.rms_norm(h, w.attention_norm, d.norm_eps)                        # [T, 3072]
    q = ops.linear(x, w.wq).reshape(T, d.n_heads, d.head_dim)               # [T, 32, 128]
    k = ops.linear(x, w.wk).reshape(T, d.n_kv_heads, d.head_dim)            # [T, 8, 128]
    v = ops.linear(x, w.wv).reshape(T, d.n_kv_heads, d.head_dim)            # [T, 8, 128]
    q = ops.rope(q, positions, inv_freq)
    k = ops.rope(k, positions, inv_freq)
    a = ops.attention(q, k, v, cache, d.sliding_window)                      # [T, 4096]
    cache.append(k, v)
    h = h + ops.linear(a, w.wo)                                              # [T, 3072]
    # 5-6. feed-forward on the delay-scaled norm: h += w2(silu(w1 x) * w3 x)
    x = ops.rms_norm(h, w.ffn_norm, d.norm_eps) * ffn_scale                  # [T, 3072]
    gate = ops.silu(ops.linear(x, w.w1))                                     # [T, 9216]
    up = ops.linear(x, w.w3)                                                 # [T, 9216]
    return h + ops.linear(gate * up, w.w2)                                   # [T, 3072]


def decode(inputs: np.ndarray, state: DecoderState, w: DecoderWeights, cfg: ModelConfig, ops,
           inv_freq: np.ndarray) -> np.ndarray:
    """Run T new positions (inputs [T, 3072]); returns the logits of the last one [vocab]."""
    T = inputs.shape[0]
    positions = state.n_positions + np.arange(T)
    h = inputs
    for layer, cache, scale in zip(w.layers, state.caches, state.ffn_scales):
        h = decoder_layer(h, layer, cache, positions, scale, cfg, ops, inv_freq)
    state.n_positions += T
    last = ops.rms_norm(h[-1:], w.norm, cfg.decoder.norm_eps)                 # [1, 3072]
    return ops.linear(last, w.lm_head)[0]                                    # [131072] tied head
