"""The audio encoder (SPEC §4) and the adapter (SPEC §5), run incrementally.

log-mel frames -> causal conv stem -> 32 causal transformer layers -> final norm
-> groups of 4 positions -> adapter MLP -> one audio embedding per 80 ms token.

Everything is causal, so the encoder is fed mel frames as they arrive and keeps
only what the future needs: the conv stem's last input frames, each layer's KV
cache (its sliding window), and up to 3 positions waiting for a group of 4. A
whole file is simply one big feed, processed in blocks so memory stays bounded.
Activations and caches are arrays of the backend's namespace `ops.xp` (NumPy, or
CuPy on a GPU): the same code runs on every backend.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ModelConfig
from .kv_cache import KVCache
from .weights import AdapterWeights, EncoderLayerWeights, EncoderWeights

BLOCK_POSITIONS = 512  # encoder positions per block (bounds the attention scores' memory)


@dataclass
class EncoderState:
    mel_tail: np.ndarray     # [2, n_mels]  last two mel frames (conv 1's left context)
    conv1_tail: np.ndarray   # [c, dim]     conv 1 outputs from index 2i-1 on, i = next position
    caches: list[KVCache]    # one per layer, capacity = sliding window
    ungrouped: np.ndarray    # [<4, dim]    encoder outputs waiting for a full group
    n_positions: int = 0     # encoder positions produced so far
    xp: object = np          # the backend's array namespace the arrays above live in

    def snapshot(self) -> dict:
        return {"mel_tail": self.mel_tail.copy(), "conv1_tail": self.conv1_tail.copy(),
                "ungrouped": self.ungrouped.copy(), "n_positions": self.n_positions,
                "caches": [c.snapshot() for c in self.caches]}

    def restore(self, snap: dict) -> None:
        xp = self.xp
        self.mel_tail, self.conv1_tail = xp.array(snap["mel_tail"]), xp.array(snap["conv1_tail"])
        self.ungrouped, self.n_positions = xp.array(snap["ungrouped"]), snap["n_positions"]
        for cache, c in zip(self.caches, snap["caches"]):
            cache.restore(c)


def new_encoder_state(cfg: ModelConfig, ops=None) -> EncoderState:
    """Empty state; its arrays in the namespace of the backend `ops` (NumPy without one)."""
    e, xp = cfg.encoder, (ops.xp if ops is not None else np)
    return EncoderState(
        mel_tail=xp.zeros((2, cfg.audio.n_mels), np.float32),     # conv 1 pads 2 zero frames
        conv1_tail=xp.zeros((1, e.dim), np.float32),              # conv 2 pads 1 zero frame
        caches=[KVCache(e.sliding_window, e.n_kv_heads, e.head_dim, xp=xp) for _ in range(e.n_layers)],
        ungrouped=xp.zeros((0, e.dim), np.float32),
        xp=xp,
    )


def conv_stem(mel: np.ndarray, state: EncoderState, w: EncoderWeights, ops) -> np.ndarray:
    """SPEC §4.1: mel frames [k, n_mels] -> new encoder inputs [P, dim] (P = 2 frames each).

    Both convolutions are linear layers over stacked neighbouring frames: the kernel
    [out, in, 3] is the matrix [out, in * 3], and tap t multiplies frame (i - 2 + t).
    """
    xp = ops.xp
    k, n_mels = mel.shape
    dim = w.conv1.shape[0]
    x = xp.concatenate([state.mel_tail, mel])                           # [k+2, 128]
    state.mel_tail = x[-2:]
    taps = xp.stack([x[:-2], x[1:-1], x[2:]], axis=-1)                  # [k, 128, 3]
    c1 = ops.gelu(ops.linear(taps.reshape(k, n_mels * 3), w.conv1,
                             w.conv1_bias))                             # [k, 1280]
    y = xp.concatenate([state.conv1_tail, c1])                          # starts at index 2i-1
    P = (len(y) - 1) // 2                                               # stride 2
    taps = xp.stack([y[0:2 * P:2], y[1:2 * P + 1:2], y[2:2 * P + 2:2]], axis=-1)  # [P, 1280, 3]
    state.conv1_tail = y[2 * P:]
    return ops.gelu(ops.linear(taps.reshape(P, dim * 3), w.conv2,
                               w.conv2_bias))                           # [P, 1280]


def encoder_layer(h: np.ndarray, w: EncoderLayerWeights, cache: KVCache, positions: np.ndarray,
                  cfg: ModelConfig, ops, inv_freq: np.ndarray) -> np.ndarray:
    """SPEC §4.2-4.4: one pre-norm layer over P new positions. h [P, 1280] -> [P, 1280]."""
    e = cfg.encoder
    P = h.shape[0]
    # 1. attention: h += wo(attn(rope(q), rope(k), v)) + b
    x = ops.rms_norm(h, w.attention_norm, e.norm_eps)                          # [P, 1280]
    q = ops.linear(x, w.wq, w.wq_bias).reshape(P, e.n_heads, e.head_dim)      # [P, 32, 64]
    k = ops.linear(x, w.wk).reshape(P, e.n_kv_heads, e.head_dim)              # [P, 32, 64]
    v = ops.linear(x, w.wv, w.wv_bias).reshape(P, e.n_kv_heads, e.head_dim)   # [P, 32, 64]
    q = ops.rope(q, positions, inv_freq)
    k = ops.rope(k, positions, inv_freq)
    a = ops.attention(q, k, v, cache, e.sliding_window)                        # [P, 2048]
    cache.append(k, v)
    h = h + ops.linear(a, w.wo, w.wo_bias)                                     # [P, 1280]
    # 2. SwiGLU feed-forward: h += w2(silu(w1 x) * w3 x) + b2
    x = ops.rms_norm(h, w.ffn_norm, e.norm_eps)                                # [P, 1280]
    gated = ops.swiglu(ops.linear(x, w.w1), ops.linear(x, w.w3))              # [P, 5120]
    return h + ops.linear(gated, w.w2, w.w2_bias)                              # [P, 1280]


def encode(mel: np.ndarray, state: EncoderState, w: EncoderWeights, cfg: ModelConfig, ops,
           inv_freq: np.ndarray) -> np.ndarray:
    """New mel frames [k, n_mels] -> new encoder outputs [P, 1280] (after the final norm)."""
    h = conv_stem(mel, state, w, ops)                                          # [P, 1280]
    outputs = []
    for start in range(0, h.shape[0], BLOCK_POSITIONS):
        block = h[start:start + BLOCK_POSITIONS]                               # [B, 1280]
        positions = state.n_positions + ops.xp.arange(block.shape[0])
        for layer, cache in zip(w.layers, state.caches):
            block = encoder_layer(block, layer, cache, positions, cfg, ops, inv_freq)
        state.n_positions += block.shape[0]
        outputs.append(ops.rms_norm(block, w.norm, cfg.encoder.norm_eps))       # SPEC §4.5
    return ops.xp.concatenate(outputs) if outputs else ops.xp.zeros((0, cfg.encoder.dim), np.float32)


def adapt(enc: np.ndarray, state: EncoderState, w: AdapterWeights, cfg: ModelConfig, ops) -> np.ndarray:
    """SPEC §5: encoder outputs [P, 1280] -> audio embeddings [P', 3072], one per 4 positions."""
    xp = ops.xp
    factor = cfg.encoder.downsample_factor
    pending = xp.concatenate([state.ungrouped, enc])                           # [n, 1280]
    n_groups = len(pending) // factor
    state.ungrouped = pending[n_groups * factor:]
    x = pending[:n_groups * factor].reshape(n_groups, factor * cfg.encoder.dim)  # [N, 5120]
    if n_groups == 0:
        return xp.zeros((0, cfg.decoder.dim), np.float32)
    return ops.linear(ops.gelu(ops.linear(x, w.w_in)), w.w_out)                # [N, 3072]
