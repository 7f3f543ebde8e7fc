"""The language decoder (SPEC §6): 26 layers of GQA attention and a SwiGLU FFN whose
input norm is scaled by the transcription delay (ada-RMSNorm), then the tied LM head.

Each position's input is the sum of an audio embedding and a token embedding. The
decoder runs several positions at once for the prompt (prefill) and one position
per 80 ms token afterwards; every layer keeps its keys and values in a circular
buffer the size of its sliding window. Activations, the delay scales and the rings are
arrays of the backend's namespace `ops.xp` (NumPy, or CuPy on a GPU); what comes back
from a pass is the logits, left where they were computed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ModelConfig
from .kv_cache import KVCache
from .weights import DecoderLayerWeights, DecoderWeights

TIME_EMBEDDING_BASE = 10000.0  # SPEC §6.5: f_j = base^(-j / (D/2))


MAX_ROWS = 8  # decoder rows per pass beyond the prompt: speculative positions and streams


@dataclass
class DecoderState:
    caches: list[KVCache]     # one per layer, capacity = sliding window + spare slots
    ffn_scales: np.ndarray    # [n_layers, dim]  (1 + s) of ada-RMSNorm, fixed for the session
    n_positions: int = 0      # positions decoded so far

    def truncate(self, n_positions: int) -> None:
        """Take back the positions from n_positions on (rejected speculative drafts)."""
        for cache in self.caches:
            cache.truncate(n_positions)
        self.n_positions = n_positions

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
    """Empty caches (BF16 rings for the int8 and q4 weights: w.kv_bf16) plus the per-layer
    ada-RMSNorm scales for this delay (computed once)."""
    d = cfg.decoder
    xp = ops.xp
    t_cond = xp.asarray(time_embedding(delay_tokens, d.dim)[None, :])              # [1, 3072]
    scales = xp.stack([
        1.0 + ops.linear(ops.gelu(ops.linear(t_cond, layer.ada_down)), layer.ada_up)[0]  # [3072]
        for layer in w.layers]).astype(np.float32)                                   # [26, 3072]
    # keys are appended before attention reads them, so a pass of n rows needs n spare
    # slots beyond the window: MAX_ROWS for steps, the prompt's L - 1 for the prefill
    spare = max(MAX_ROWS, cfg.audio.n_left_pad_tokens + delay_tokens)
    caches = [KVCache(d.sliding_window, d.n_kv_heads, d.head_dim, spare=spare, xp=xp, bf16=w.kv_bf16)
              for _ in range(d.n_layers)]
    return DecoderState(caches=caches, ffn_scales=scales)


def decoder_layer(h: np.ndarray, w: DecoderLayerWeights, i: int, states: list[DecoderState],
                  rows: list[slice], positions: np.ndarray, ffn_scales: np.ndarray, cfg: ModelConfig,
                  ops, inv_freq: np.ndarray) -> np.ndarray:
    """SPEC §6.1-6.6 for layer i over R rows: rows[s] are sequence s's new positions.

    The linear layers see all rows at once (one read of the weights); each sequence's
    rows attend over its own ring, and each row's norm is scaled by its sequence's
    delay (ffn_scales [R, n_layers, 3072]). h [R, 3072] -> [R, 3072].
    """
    d = cfg.decoder
    R = h.shape[0]
    # 1-4. attention with grouped KV heads: h += wo(attn(rope(q), rope(k), v))
    x = ops.rms_norm(h, w.attention_norm, d.norm_eps)                        # [R, 3072]
    q = ops.linear(x, w.wq).reshape(R, d.n_heads, d.head_dim)               # [R, 32, 128]
    k = ops.linear(x, w.wk).reshape(R, d.n_kv_heads, d.head_dim)            # [R, 8, 128]
    v = ops.linear(x, w.wv).reshape(R, d.n_kv_heads, d.head_dim)            # [R, 8, 128]
    q = ops.rope(q, positions, inv_freq)
    k = ops.rope(k, positions, inv_freq)
    caches = [state.caches[i] for state in states]                           # each sequence its own ring
    a = ops.append_and_attend(q, k, v, caches, rows, d.sliding_window)       # [R, 4096]
    h = h + ops.linear(a, w.wo)                                              # [R, 3072]
    # 5-6. feed-forward on the delay-scaled norm: h += w2(silu(w1 x) * w3 x)
    x = ops.rms_norm(h, w.ffn_norm, d.norm_eps) * ffn_scales[:, i]           # [R, 3072], (1 + ada(t_cond))
    gated = ops.swiglu(ops.linear(x, w.w1), ops.linear(x, w.w3))            # [R, 9216]
    return h + ops.linear(gated, w.w2)                                       # [R, 3072]


def decode(inputs: np.ndarray, state: DecoderState, w: DecoderWeights, cfg: ModelConfig, ops,
           inv_freq: np.ndarray, all_logits: bool = False) -> np.ndarray:
    """Run T new positions of one sequence (inputs [T, 3072]); returns the logits of the
    last one [vocab], or of every one [T, vocab] with all_logits."""
    logits = decode_rows(inputs, [state], [len(inputs)], w, cfg, ops, inv_freq, all_logits)
    return logits if all_logits else logits[0]


def decode_rows(inputs: np.ndarray, states: list[DecoderState], counts: list[int], w: DecoderWeights,
                cfg: ModelConfig, ops, inv_freq: np.ndarray, all_logits: bool = True) -> np.ndarray:
    """One decoder pass over several sequences: counts[s] new positions of states[s],
    their rows stacked in `inputs` [R, 3072]. Returns the logits of every row [R, vocab]
    (or of each sequence's last row [S, vocab] without all_logits)."""
    ends = np.cumsum(counts)
    rows = [slice(e - n, e) for n, e in zip(counts, ends)]
    positions = ops.xp.asarray(np.concatenate([s.n_positions + np.arange(n)
                                               for s, n in zip(states, counts)]))  # [R]
    ffn_scales = ops.xp.concatenate([ops.xp.broadcast_to(s.ffn_scales, (n,) + s.ffn_scales.shape)
                                     for s, n in zip(states, counts)])       # [R, 26, 3072]
    h = inputs
    for i, layer in enumerate(w.layers):
        h = decoder_layer(h, layer, i, states, rows, positions, ffn_scales, cfg, ops, inv_freq)
    for state, n in zip(states, counts):
        state.n_positions += n
    if not all_logits:
        h = h[ops.xp.asarray(ends - 1)]                                      # [S, 3072]
    last = ops.rms_norm(h, w.norm, cfg.decoder.norm_eps)                     # [R or S, 3072]
    return ops.linear(last, w.lm_head)                                       # [R or S, 131072] tied head
