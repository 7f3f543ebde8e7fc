"""Independent float32 NumPy reference of Voxtral Realtime 4B (see SPEC.md).

This module is deliberately written from SPEC.md alone, without importing anything
from ``voxnp``, so that the tests can use it to catch bugs in the package. It favours
clarity over speed: full-sequence NumPy, explicit masks, one attention head at a time.

Public API
----------
load_model_dir(model_dir)            -> model dict (config + lazily converted weights)
prepare_audio(path)                  -> float32 mono 16 kHz, exactly as the reference pipeline
pad_audio(audio, model, delay)       -> offline-padded audio (SPEC §3.2)
slaney_mel_filters(n_mels, n_fft, sr)-> [n_fft//2+1, n_mels] (SPEC §3.4, ``mel = F.T @ power``)
log_mel(padded_audio, ...)           -> [n_mels, T] float32 (SPEC §3.3-3.6)
encode(model, mel)                   -> [T/2, enc_dim] (SPEC §4)
adapt(model, enc)                    -> [N, dim] audio_embeds (SPEC §5)
decoder_forward(model, x, start, cache, scales) -> logits for several positions (SPEC §6)
forward(model, audio_16k, delay_tokens=6, max_steps=None, teacher=None) -> dict (SPEC §3-§7)
decode_tokens(model, ids)            -> str (SPEC §9)
"""

from __future__ import annotations

import base64
import io
import json
import math
import struct
from pathlib import Path

import numpy as np
from scipy.special import erf, expit

BOS, EOS, STREAMING_PAD = 1, 2, 32  # SPEC §9
RIGHT_PAD_EXTRA_TOKENS = 1 + 10  # right padding = delay + 1 + 10 tokens (SPEC §3.2)

ENC = "mm_streams_embeddings.embedding_module.whisper_encoder."
TOK_EMB = "mm_streams_embeddings.embedding_module.tok_embeddings.weight"
PROJ = "mm_streams_embeddings.embedding_module.audio_language_projection."


# ----------------------------------------------------------------------------------------
# Checkpoint (SPEC §1, §2)
# ----------------------------------------------------------------------------------------

def bf16_bits_to_f32(u16: np.ndarray) -> np.ndarray:
    """BF16 is the upper half of an IEEE float32: f32 = uint32(bf16) << 16 (exact)."""
    return (np.asarray(u16, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 rounded to the nearest BF16 (ties to even), as float32 (finite inputs)."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return bits.astype(np.uint32).view(np.float32).reshape(np.shape(x))


def read_safetensors(path) -> dict:
    """name -> (dtype string, zero-copy numpy view of the raw data with the tensor's shape)."""
    path = Path(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
    data_start = 8 + n
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    raw_dtypes = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        shape = tuple(int(s) for s in info["shape"])
        dt = info["dtype"]
        if dt not in raw_dtypes:
            raise ValueError(f"unsupported dtype {dt} for {name}")
        buf = mm[data_start + begin : data_start + end]
        arr = buf.view(raw_dtypes[dt]).reshape(shape)
        out[name] = (dt, arr)
    return out


def load_model_dir(model_dir, cache_f32: bool = True) -> dict:
    """Parse params.json, tekken.json and consolidated.safetensors (SPEC §1).

    Weights stay memory-mapped as raw BF16 bits and are converted to float32 on first
    use by :func:`weight` (cached when ``cache_f32``)."""
    model_dir = Path(model_dir)
    params = json.loads((model_dir / "params.json").read_text())
    tekken = json.loads((model_dir / "tekken.json").read_text(encoding="utf-8"))
    wargs = params["multimodal"]["whisper_model_args"]
    eargs = wargs["encoder_args"]
    aargs = eargs["audio_encoding_args"]
    taudio = tekken.get("audio", {})

    cfg = {
        # decoder
        "dim": int(params["dim"]),
        "n_layers": int(params["n_layers"]),
        "head_dim": int(params["head_dim"]),
        "hidden_dim": int(params["hidden_dim"]),
        "n_heads": int(params["n_heads"]),
        "n_kv_heads": int(params["n_kv_heads"]),
        "vocab_size": int(params["vocab_size"]),
        "norm_eps": float(params["norm_eps"]),
        "rope_theta": float(params["rope_theta"]),
        "sliding_window": int(params["sliding_window"]),
        "tied_embeddings": bool(params.get("tied_embeddings", True)),
        "ada_rms_norm_t_cond": bool(params.get("ada_rms_norm_t_cond", False)),
        # encoder
        "enc": {
            "dim": int(eargs["dim"]),
            "n_layers": int(eargs["n_layers"]),
            "head_dim": int(eargs["head_dim"]),
            "hidden_dim": int(eargs["hidden_dim"]),
            "n_heads": int(eargs["n_heads"]),
            "n_kv_heads": int(eargs.get("n_kv_heads", eargs["n_heads"])),
            "rope_theta": float(eargs["rope_theta"]),
            "sliding_window": int(eargs["sliding_window"]),
            "norm_eps": float(eargs["norm_eps"]),
        },
        # audio front end
        "sampling_rate": int(aargs["sampling_rate"]),
        "frame_rate": float(aargs["frame_rate"]),
        "n_mels": int(aargs["num_mel_bins"]),
        "hop_length": int(aargs["hop_length"]),
        "window_size": int(aargs["window_size"]),
        "log_mel_max": float(aargs["global_log_mel_max"]),
        "downsample_factor": int(wargs["downsample_args"]["downsample_factor"]),
        # streaming settings from tekken.json
        "n_left_pad_tokens": int(taudio.get("streaming_n_left_pad_tokens", 32)),
        "n_special": int(tekken["config"]["default_num_special_tokens"]),
    }
    # one token = sampling_rate / frame_rate samples: 16000 / 12.5 = 1280
    cfg["samples_per_token"] = int(round(cfg["sampling_rate"] / cfg["frame_rate"]))

    return {
        "dir": model_dir,
        "params": params,
        "tekken": tekken,
        "cfg": cfg,
        "raw": read_safetensors(model_dir / "consolidated.safetensors"),
        "cache_f32": cache_f32,
        "_f32": {},
    }


def has_weight(model: dict, name: str) -> bool:
    return name in model["raw"]


def weight(model: dict, name: str) -> np.ndarray:
    """float32 copy of a checkpoint tensor."""
    if name in model["_f32"]:
        return model["_f32"][name]
    dt, arr = model["raw"][name]
    if dt == "BF16":
        w = bf16_bits_to_f32(arr)
    else:
        w = np.asarray(arr, dtype=np.float32)
    if model["cache_f32"]:
        model["_f32"][name] = w
    return w


# ----------------------------------------------------------------------------------------
# Audio front end (SPEC §3)
# ----------------------------------------------------------------------------------------

def prepare_audio(path, sampling_rate: int = 16000) -> np.ndarray:
    """SPEC §3.1: soundfile float32 read, channel mean, soxr HQ resample, 16-bit PCM round trip.

    The round trip is applied unconditionally (as the reference pipeline does); it is the
    identity for 16-bit PCM input."""
    import soundfile as sf

    x, sr = sf.read(path, dtype="float32")
    if x.ndim > 1:
        x = x.mean(axis=1)
    if sr != sampling_rate:
        import soxr

        x = soxr.resample(x, sr, sampling_rate, quality="HQ")
    buf = io.BytesIO()
    sf.write(buf, np.asarray(x, dtype=np.float32), sampling_rate, format="WAV", subtype="PCM_16")
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32")
    return np.ascontiguousarray(y, dtype=np.float32)


def pad_audio(audio: np.ndarray, model: dict, delay_tokens: int = 6) -> np.ndarray:
    """SPEC §3.2: left_pad tokens of zeros; zeros to the next token boundary; delay+1+10 tokens."""
    cfg = model["cfg"]
    spt = cfg["samples_per_token"]
    audio = np.asarray(audio, dtype=np.float32)
    n = audio.shape[0]
    left = cfg["n_left_pad_tokens"] * spt
    right = (-n) % spt + (delay_tokens + RIGHT_PAD_EXTRA_TOKENS) * spt
    return np.concatenate(
        [np.zeros(left, np.float32), audio, np.zeros(right, np.float32)]
    )


def hann_periodic(n: int) -> np.ndarray:
    k = np.arange(n, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * k / n)


def power_spectrogram(x: np.ndarray, n_fft: int = 400, hop: int = 160) -> np.ndarray:
    """Centred STFT (reflect pad n_fft/2), periodic Hann, |X|^2, LAST frame dropped.

    Returns float64 [n_fft//2 + 1, len(x)//hop]."""
    x = np.asarray(x, dtype=np.float64)
    pad = n_fft // 2
    xp = np.pad(x, (pad, pad), mode="reflect")
    n_frames = 1 + (xp.shape[0] - n_fft) // hop
    idx = np.arange(n_frames)[:, None] * hop + np.arange(n_fft)[None, :]  # [F, n_fft]
    frames = xp[idx] * hann_periodic(n_fft)[None, :]
    spec = np.fft.rfft(frames, axis=1)  # [F, n_fft//2+1]
    power = spec.real**2 + spec.imag**2
    return power[:-1].T  # drop the last frame -> [n_freq, F-1]


def hz_to_mel_slaney(f):
    """Slaney mel scale: linear 200/3 Hz per mel below 1000 Hz, log above (logstep ln(6.4)/27)."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3.0
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    with np.errstate(divide="ignore", invalid="ignore"):
        log_part = min_log_mel + np.log(np.maximum(f, 1e-300) / min_log_hz) / logstep
    return np.where(f >= min_log_hz, log_part, f / f_sp)


def mel_to_hz_slaney(m):
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3.0
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), m * f_sp)


def slaney_mel_filters(n_mels: int = 128, n_fft: int = 400, sr: int = 16000,
                       fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Triangular Slaney filters with area normalisation 2/(f[i+2]-f[i]).

    Returns float64 [n_fft//2 + 1, n_mels] so that ``mel = filters.T @ power``."""
    if fmax is None:
        fmax = sr / 2.0
    fft_freqs = np.linspace(0.0, sr / 2.0, n_fft // 2 + 1)  # [n_freq]
    mel_pts = np.linspace(hz_to_mel_slaney(fmin), hz_to_mel_slaney(fmax), n_mels + 2)
    f = mel_to_hz_slaney(mel_pts)  # [n_mels + 2] edges/centres in Hz
    filters = np.zeros((fft_freqs.shape[0], n_mels), dtype=np.float64)
    for i in range(n_mels):
        rising = (fft_freqs - f[i]) / (f[i + 1] - f[i])
        falling = (f[i + 2] - fft_freqs) / (f[i + 2] - f[i + 1])
        tri = np.maximum(0.0, np.minimum(rising, falling))
        filters[:, i] = tri * (2.0 / (f[i + 2] - f[i]))
    return filters


def log_mel(padded_audio: np.ndarray, n_mels: int = 128, hop: int = 160, n_fft: int = 400,
            log_mel_max: float = 1.5, sr: int = 16000) -> np.ndarray:
    """SPEC §3.3-3.6 -> float32 [n_mels, T], T = len // hop (first frame dropped if odd)."""
    power = power_spectrogram(padded_audio, n_fft=n_fft, hop=hop)  # [n_freq, T]
    mel = slaney_mel_filters(n_mels, n_fft, sr).T @ power  # [n_mels, T]
    logm = np.log10(np.maximum(mel, 1e-10))
    logm = np.maximum(logm, log_mel_max - 8.0)
    logm = (logm + 4.0) / 4.0
    if logm.shape[1] % 2 == 1:
        logm = logm[:, 1:]
    return logm.astype(np.float32)


# ----------------------------------------------------------------------------------------
# Shared ops
# ----------------------------------------------------------------------------------------

def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    ms = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    return (x / np.sqrt(ms + np.float32(eps)) * w).astype(np.float32)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU."""
    x = np.asarray(x, dtype=np.float32)
    return (0.5 * x * (1.0 + erf(x / np.float32(math.sqrt(2.0))))).astype(np.float32)


def silu(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return (x * expit(x)).astype(np.float32)


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    y = x @ w.T
    if b is not None:
        y = y + b
    return y.astype(np.float32)


def rope_cos_sin(positions: np.ndarray, head_dim: int, theta: float):
    """cos/sin tables [P, head_dim/2]: angle = pos * theta^(-2j/head_dim)."""
    j = np.arange(head_dim // 2, dtype=np.float64)
    inv_freq = theta ** (-2.0 * j / head_dim)
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def apply_rope_interleaved(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x [P, H, hd]; pairs (0,1), (2,3), ... of each head rotate by the tabled angle."""
    c = cos[:, None, :]
    s = sin[:, None, :]
    x0 = x[..., 0::2]
    x1 = x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x0 * s + x1 * c
    return out


def window_mask(q_pos: np.ndarray, k_pos: np.ndarray, window: int) -> np.ndarray:
    """[Pq, Pk] bool: key j visible to query i iff i - window < j <= i."""
    qi = np.asarray(q_pos)[:, None]
    kj = np.asarray(k_pos)[None, :]
    return (kj <= qi) & (kj > qi - window)


def attention(q, k, v, q_pos, k_pos, window):
    """q [Pq, H, hd], k/v [Pk, Hkv, hd] -> [Pq, H*hd]; GQA head h uses kv head h // (H/Hkv)."""
    n_q, n_heads, hd = q.shape
    n_kv = k.shape[1]
    group = n_heads // n_kv
    mask = window_mask(q_pos, k_pos, window)
    scale = np.float32(1.0 / math.sqrt(hd))
    out = np.zeros((n_q, n_heads, hd), dtype=np.float32)
    for h in range(n_heads):
        kh = h // group
        s = (q[:, h, :] @ k[:, kh, :].T) * scale  # [Pq, Pk]
        s = np.where(mask, s, -np.inf).astype(np.float32)
        s = s - s.max(axis=-1, keepdims=True)
        p = np.exp(s)
        p = p / p.sum(axis=-1, keepdims=True)
        out[:, h, :] = p @ v[:, kh, :]
    return out.reshape(n_q, n_heads * hd)


# ----------------------------------------------------------------------------------------
# Encoder (SPEC §4)
# ----------------------------------------------------------------------------------------

def causal_conv1d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """x [C_in, T], w [C_out, C_in, K] -> [C_out, T_out]; left pad K - stride zeros."""
    k_size = w.shape[2]
    left = k_size - stride  # 2 for (k=3, s=1), 1 for (k=3, s=2)
    xp = np.pad(x, ((0, 0), (left, 0)))
    t_out = (xp.shape[1] - k_size) // stride + 1
    y = np.zeros((w.shape[0], t_out), dtype=np.float32) + b[:, None]
    for k in range(k_size):
        cols = xp[:, k : k + stride * (t_out - 1) + 1 : stride]  # [C_in, T_out]
        y = y + w[:, :, k] @ cols
    return y.astype(np.float32)


def encoder_stem(model: dict, mel: np.ndarray) -> np.ndarray:
    """mel [n_mels, T] -> [T/2 (front-trimmed to a multiple of the downsample factor), enc_dim]."""
    mel = np.asarray(mel, dtype=np.float32)
    if mel.shape[1] % 2 == 1:
        mel = mel[:, 1:]
    x = gelu(causal_conv1d(mel, weight(model, ENC + "conv_layers.0.conv.weight"),
                           weight(model, ENC + "conv_layers.0.conv.bias"), stride=1))
    x = gelu(causal_conv1d(x, weight(model, ENC + "conv_layers.1.conv.weight"),
                           weight(model, ENC + "conv_layers.1.conv.bias"), stride=2))
    h = np.ascontiguousarray(x.T)  # [T/2, enc_dim]
    drop = h.shape[0] % model["cfg"]["downsample_factor"]
    return h[drop:]


def encoder_layers(model: dict, h: np.ndarray) -> np.ndarray:
    """Transformer layers + final norm on [P, enc_dim]; positions 0..P-1."""
    e = model["cfg"]["enc"]
    n_pos = h.shape[0]
    pos = np.arange(n_pos)
    cos, sin = rope_cos_sin(pos, e["head_dim"], e["rope_theta"])
    h = np.asarray(h, dtype=np.float32).copy()
    for i in range(e["n_layers"]):
        p = ENC + f"transformer.layers.{i}."
        w = lambda n: weight(model, p + n)  # noqa: E731
        x = rms_norm(h, w("attention_norm.weight"), e["norm_eps"])
        q = linear(x, w("attention.wq.weight"), w("attention.wq.bias")).reshape(n_pos, e["n_heads"], e["head_dim"])
        k = linear(x, w("attention.wk.weight")).reshape(n_pos, e["n_kv_heads"], e["head_dim"])
        v = linear(x, w("attention.wv.weight"), w("attention.wv.bias")).reshape(n_pos, e["n_kv_heads"], e["head_dim"])
        q = apply_rope_interleaved(q, cos, sin)
        k = apply_rope_interleaved(k, cos, sin)
        a = attention(q, k, v, pos, pos, e["sliding_window"])
        h = h + linear(a, w("attention.wo.weight"), w("attention.wo.bias"))
        x = rms_norm(h, w("ffn_norm.weight"), e["norm_eps"])
        ff = silu(linear(x, w("feed_forward.w1.weight"))) * linear(x, w("feed_forward.w3.weight"))
        h = h + linear(ff, w("feed_forward.w2.weight"), w("feed_forward.w2.bias"))
    return rms_norm(h, weight(model, ENC + "transformer.norm.weight"), e["norm_eps"])


def encode(model: dict, mel: np.ndarray) -> np.ndarray:
    return encoder_layers(model, encoder_stem(model, mel))


# ----------------------------------------------------------------------------------------
# Adapter (SPEC §5)
# ----------------------------------------------------------------------------------------

def adapt(model: dict, enc: np.ndarray) -> np.ndarray:
    ds = model["cfg"]["downsample_factor"]
    n = enc.shape[0] // ds
    g = enc[: n * ds].reshape(n, ds * enc.shape[1])  # row k = positions 4k..4k+3
    x = gelu(linear(g, weight(model, PROJ + "0.weight")))
    return linear(x, weight(model, PROJ + "2.weight"))


# ----------------------------------------------------------------------------------------
# Decoder (SPEC §6)
# ----------------------------------------------------------------------------------------

def t_cond(dim: int, delay_tokens: float) -> np.ndarray:
    half = dim // 2
    f = np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float64) / (dim / 2.0))
    return np.concatenate([np.cos(delay_tokens * f), np.sin(delay_tokens * f)]).astype(np.float32)


def ada_scales(model: dict, delay_tokens: int) -> list:
    """Per layer s = W_up @ gelu(W_down @ t_cond) [dim], or None without ada norm."""
    cfg = model["cfg"]
    if not cfg["ada_rms_norm_t_cond"]:
        return [None] * cfg["n_layers"]
    tc = t_cond(cfg["dim"], delay_tokens)
    out = []
    for i in range(cfg["n_layers"]):
        down = weight(model, f"layers.{i}.ada_rms_norm_t_cond.0.weight")  # [t_dim, dim]
        up = weight(model, f"layers.{i}.ada_rms_norm_t_cond.2.weight")  # [dim, t_dim]
        out.append((up @ gelu(down @ tc)).astype(np.float32))
    return out


def lm_head(model: dict) -> np.ndarray:
    if model["cfg"]["tied_embeddings"] or not has_weight(model, "output.weight"):
        return weight(model, TOK_EMB)
    return weight(model, "output.weight")


def new_cache(model: dict) -> list:
    """Per layer unbounded K/V (after RoPE): dict(k=[P, Hkv, hd], v=[P, Hkv, hd])."""
    cfg = model["cfg"]
    shape = (0, cfg["n_kv_heads"], cfg["head_dim"])
    return [{"k": np.zeros(shape, np.float32), "v": np.zeros(shape, np.float32)}
            for _ in range(cfg["n_layers"])]


def decoder_forward(model: dict, x: np.ndarray, start_pos: int, cache: list, scales: list) -> np.ndarray:
    """Run positions start_pos .. start_pos+P-1 (inputs x [P, dim]); returns logits [P, vocab]."""
    cfg = model["cfg"]
    n_pos = x.shape[0]
    assert cache[0]["k"].shape[0] == start_pos, "cache must hold exactly positions 0..start_pos-1"
    q_pos = start_pos + np.arange(n_pos)
    k_pos = np.arange(start_pos + n_pos)
    cos, sin = rope_cos_sin(q_pos, cfg["head_dim"], cfg["rope_theta"])
    eps = cfg["norm_eps"]
    h = np.asarray(x, dtype=np.float32).copy()
    for i in range(cfg["n_layers"]):
        p = f"layers.{i}."
        w = lambda n: weight(model, p + n)  # noqa: E731
        xn = rms_norm(h, w("attention_norm.weight"), eps)
        q = linear(xn, w("attention.wq.weight")).reshape(n_pos, cfg["n_heads"], cfg["head_dim"])
        k = linear(xn, w("attention.wk.weight")).reshape(n_pos, cfg["n_kv_heads"], cfg["head_dim"])
        v = linear(xn, w("attention.wv.weight")).reshape(n_pos, cfg["n_kv_heads"], cfg["head_dim"])
        q = apply_rope_interleaved(q, cos, sin)
        k = apply_rope_interleaved(k, cos, sin)
        if model.get("kv_bf16"):          # the int8/q4 engines keep keys and values in BF16
            k, v = round_to_bf16(k), round_to_bf16(v)
        cache[i]["k"] = np.concatenate([cache[i]["k"], k], axis=0)
        cache[i]["v"] = np.concatenate([cache[i]["v"], v], axis=0)
        a = attention(q, cache[i]["k"], cache[i]["v"], q_pos, k_pos, cfg["sliding_window"])
        h = h + linear(a, w("attention.wo.weight"))
        xn = rms_norm(h, w("ffn_norm.weight"), eps)
        if scales[i] is not None:
            xn = (xn * (np.float32(1.0) + scales[i])).astype(np.float32)
        ff = silu(linear(xn, w("feed_forward.w1.weight"))) * linear(xn, w("feed_forward.w3.weight"))
        h = h + linear(ff, w("feed_forward.w2.weight"))
    h = rms_norm(h, weight(model, "norm.weight"), eps)
    return (h @ lm_head(model).T).astype(np.float32)


# ----------------------------------------------------------------------------------------
# Offline schedule (SPEC §7)
# ----------------------------------------------------------------------------------------

def decode_schedule(model: dict, audio_embeds: np.ndarray, delay_tokens: int = 6,
                    max_steps: int | None = None, teacher=None):
    cfg = model["cfg"]
    emb = weight(model, TOK_EMB)
    n_rows = audio_embeds.shape[0]
    prompt = [BOS] + [STREAMING_PAD] * (cfg["n_left_pad_tokens"] + delay_tokens)
    L = len(prompt)
    n_steps = max(0, n_rows - L + 1)  # step i runs at position L-1+i
    if teacher is not None:
        teacher = np.asarray(teacher, dtype=np.int64)
        n_steps = min(n_steps, len(teacher))
    if max_steps is not None:
        n_steps = min(n_steps, int(max_steps))
    tokens, logits = [], []
    if n_steps <= 0:
        return np.zeros(0, np.int32), np.zeros((0, cfg["vocab_size"]), np.float32)

    scales = ada_scales(model, delay_tokens)
    cache = new_cache(model)
    x = audio_embeds[:L] + emb[np.array(prompt)]  # [L, dim]
    lg = decoder_forward(model, x, 0, cache, scales)[-1]
    for i in range(n_steps):
        if i > 0:
            pos = L - 1 + i
            prev = int(teacher[i - 1]) if teacher is not None else tokens[-1]
            x = (audio_embeds[pos] + emb[prev])[None, :]
            lg = decoder_forward(model, x, pos, cache, scales)[0]
        tok = int(np.argmax(lg))
        tokens.append(tok)
        logits.append(lg)
        if teacher is None and tok == EOS:
            break
    return np.array(tokens, dtype=np.int32), np.stack(logits).astype(np.float32)


def forward(model: dict, audio_16k: np.ndarray, delay_tokens: int = 6,
            max_steps: int | None = None, teacher=None) -> dict:
    cfg = model["cfg"]
    padded = pad_audio(audio_16k, model, delay_tokens)
    mel = log_mel(padded, n_mels=cfg["n_mels"], hop=cfg["hop_length"], n_fft=cfg["window_size"],
                  log_mel_max=cfg["log_mel_max"], sr=cfg["sampling_rate"])
    enc = encode(model, mel)
    audio_embeds = adapt(model, enc)
    tokens, logits = decode_schedule(model, audio_embeds, delay_tokens, max_steps, teacher)
    return {"mel": mel, "enc": enc, "audio_embeds": audio_embeds, "tokens": tokens, "logits": logits}


# ----------------------------------------------------------------------------------------
# Tokenizer (SPEC §9)
# ----------------------------------------------------------------------------------------

def token_bytes(model: dict, token_id: int) -> bytes:
    n_special = model["cfg"]["n_special"]
    if token_id < n_special:
        return b""
    return base64.b64decode(model["tekken"]["vocab"][token_id - n_special]["token_bytes"])


def decode_tokens(model: dict, ids) -> str:
    return b"".join(token_bytes(model, int(i)) for i in ids).decode("utf-8", errors="replace")
