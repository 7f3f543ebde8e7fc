"""Model configuration: frozen dataclasses read from params.json and tekken.json.

Nothing here is hard-coded for the 4B model: every dimension comes from the model
directory, so the tiny test checkpoints run through exactly the same code.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import VoxnpError

# Special token ids of the Tekken vocabulary used by the model (SPEC §9).
BOS_ID = 1
EOS_ID = 2
STREAMING_PAD_ID = 32
STREAMING_WORD_ID = 33


@dataclass(frozen=True)
class AudioConfig:
    sampling_rate: int          # 16000
    frame_rate: float           # 12.5 tokens per second
    n_mels: int                 # 128
    hop_length: int             # 160 samples between mel frames
    window_size: int            # 400 = n_fft
    log_mel_max: float          # 1.5 (global clamp: log10 mel >= log_mel_max - 8)
    n_left_pad_tokens: int      # 32 tokens of silence before the audio
    default_delay_ms: int       # 480

    @property
    def samples_per_token(self) -> int:
        return int(round(self.sampling_rate / self.frame_rate))  # 16000 / 12.5 = 1280

    @property
    def frames_per_token(self) -> int:
        return self.samples_per_token // self.hop_length  # 1280 / 160 = 8

    @property
    def ms_per_token(self) -> float:
        return 1000.0 / self.frame_rate  # 80 ms

    def delay_tokens(self, delay_ms: float | None) -> int:
        """Delay in tokens (SPEC §7): 80 ms units, 1..30 (80..2400 ms)."""
        ms = self.default_delay_ms if delay_ms is None else delay_ms
        try:
            ms = float(ms)
            d = int(round(ms / self.ms_per_token))
        except (TypeError, ValueError, OverflowError):
            raise VoxnpError(f"delay must be a number of milliseconds, got {ms!r}") from None
        if not 1 <= d <= 30 or abs(d * self.ms_per_token - ms) > 1e-6:
            raise VoxnpError(
                f"delay {ms:g} ms is not a multiple of {self.ms_per_token:g} ms between "
                f"{self.ms_per_token:g} and {30 * self.ms_per_token:g} ms")
        return d

    def n_right_pad_tokens(self, delay: int) -> int:
        return delay + 1 + 10  # SPEC §3.2: 17 for the default 480 ms


@dataclass(frozen=True)
class EncoderConfig:
    dim: int            # 1280
    n_layers: int       # 32
    head_dim: int       # 64
    hidden_dim: int     # 5120
    n_heads: int        # 32
    n_kv_heads: int     # 32
    rope_theta: float   # 1e6
    sliding_window: int  # 750
    norm_eps: float     # 1e-5
    downsample_factor: int  # 4 encoder positions per token


@dataclass(frozen=True)
class DecoderConfig:
    dim: int            # 3072
    n_layers: int       # 26
    head_dim: int       # 128
    hidden_dim: int     # 9216
    n_heads: int        # 32
    n_kv_heads: int     # 8
    vocab_size: int     # 131072
    rope_theta: float   # 1e6
    sliding_window: int  # 8192
    norm_eps: float     # 1e-5
    ada_dim: int        # 32 (bottleneck of the delay-conditioning MLP)


@dataclass(frozen=True)
class ModelConfig:
    audio: AudioConfig
    encoder: EncoderConfig
    decoder: DecoderConfig
    n_special_tokens: int   # 1000: ids below this are control tokens


def _get(d: dict, key: str, where: str, path: Path):
    if not isinstance(d, dict):
        raise VoxnpError(f"{path}: '{where}' is not a JSON object")
    if key not in d:
        raise VoxnpError(f"{path}: missing key '{key}' in {where}")
    return d[key]


def read_json(path: Path) -> dict:
    """A JSON object from a file, or a one-line VoxnpError naming the file."""
    if not path.is_file():
        raise VoxnpError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VoxnpError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise VoxnpError(f"{path}: not a JSON object (got {type(obj).__name__})")
    return obj


def _section(d: dict, key: str, path: Path) -> dict:
    """An optional sub-object (`{}` when absent)."""
    value = d.get(key, {})
    if not isinstance(value, dict):
        raise VoxnpError(f"{path}: '{key}' is not a JSON object")
    return value


def _check_positive(cfg, fields: tuple[str, ...], where: str, path: Path) -> None:
    for name in fields:
        if not getattr(cfg, name) > 0:
            raise VoxnpError(f"{path}: invalid value {name}={getattr(cfg, name)} in {where} (must be positive)")


def _tekken_settings(tekken: dict, path: Path) -> tuple[int, int, int]:
    """tekken.json's left padding (tokens), default delay (ms) and number of special ids."""
    try:
        audio = _section(tekken, "audio", path)
        return (int(audio.get("streaming_n_left_pad_tokens", 32)),
                int(audio.get("transcription_delay_ms", 480)),
                int(_section(tekken, "config", path).get("default_num_special_tokens", 1000)))
    except (TypeError, ValueError, OverflowError) as e:
        raise VoxnpError(f"{path}: invalid value ({e})") from None


def load_config(model_dir: Path, tekken: dict) -> ModelConfig:
    """Build the config from params.json plus tekken.json's audio section."""
    path = model_dir / "params.json"
    p = read_json(path)
    n_left_pad, delay_ms, n_special = _tekken_settings(tekken, model_dir / "tekken.json")
    try:
        return _build_config(p, path, n_left_pad, delay_ms, n_special)
    except (TypeError, ValueError, OverflowError) as e:  # e.g. "dim": "abc" or null
        raise VoxnpError(f"{path}: invalid value ({e})") from None


def _build_config(p: dict, path: Path, n_left_pad: int, delay_ms: int, n_special: int) -> ModelConfig:
    if not p.get("tied_embeddings", True) or not p.get("ada_rms_norm_t_cond", True):
        raise VoxnpError(f"{path}: voxnp supports tied embeddings with ada-RMSNorm only")
    whisper = _get(_get(p, "multimodal", "params.json", path), "whisper_model_args", "multimodal", path)
    e = _get(whisper, "encoder_args", "whisper_model_args", path)
    a = _get(e, "audio_encoding_args", "encoder_args", path)
    audio = AudioConfig(
        sampling_rate=int(_get(a, "sampling_rate", "audio_encoding_args", path)),
        frame_rate=float(_get(a, "frame_rate", "audio_encoding_args", path)),
        n_mels=int(_get(a, "num_mel_bins", "audio_encoding_args", path)),
        hop_length=int(_get(a, "hop_length", "audio_encoding_args", path)),
        window_size=int(_get(a, "window_size", "audio_encoding_args", path)),
        log_mel_max=float(a.get("global_log_mel_max", 1.5)),
        n_left_pad_tokens=n_left_pad,
        default_delay_ms=delay_ms,
    )
    _check_positive(audio, ("sampling_rate", "frame_rate", "n_mels", "hop_length", "window_size"),
                    "audio_encoding_args", path)
    if audio.samples_per_token % audio.hop_length:
        raise VoxnpError(f"{path}: a token ({audio.samples_per_token} samples) is not a whole number of hops")
    encoder = EncoderConfig(
        dim=int(_get(e, "dim", "encoder_args", path)),
        n_layers=int(_get(e, "n_layers", "encoder_args", path)),
        head_dim=int(_get(e, "head_dim", "encoder_args", path)),
        hidden_dim=int(_get(e, "hidden_dim", "encoder_args", path)),
        n_heads=int(_get(e, "n_heads", "encoder_args", path)),
        n_kv_heads=int(e.get("n_kv_heads", e.get("n_heads"))),
        rope_theta=float(e.get("rope_theta", 1e6)),
        sliding_window=int(_get(e, "sliding_window", "encoder_args", path)),
        norm_eps=float(e.get("norm_eps", 1e-5)),
        downsample_factor=int(_section(whisper, "downsample_args", path).get("downsample_factor", 4)),
    )
    decoder = DecoderConfig(
        dim=int(_get(p, "dim", "params.json", path)),
        n_layers=int(_get(p, "n_layers", "params.json", path)),
        head_dim=int(_get(p, "head_dim", "params.json", path)),
        hidden_dim=int(_get(p, "hidden_dim", "params.json", path)),
        n_heads=int(_get(p, "n_heads", "params.json", path)),
        n_kv_heads=int(_get(p, "n_kv_heads", "params.json", path)),
        vocab_size=int(_get(p, "vocab_size", "params.json", path)),
        rope_theta=float(p.get("rope_theta", 1e6)),
        sliding_window=int(p.get("sliding_window") or 1 << 62),
        norm_eps=float(p.get("norm_eps", 1e-5)),
        ada_dim=int(_get(p, "ada_rms_norm_t_cond_dim", "params.json", path)),
    )
    for cfg, where in ((encoder, "encoder_args"), (decoder, "params.json")):
        _check_positive(cfg, ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads"), where, path)
        if cfg.n_heads % cfg.n_kv_heads or cfg.head_dim % 2:
            raise VoxnpError(f"{path}: n_heads must be a multiple of n_kv_heads and head_dim even")
    if decoder.vocab_size <= n_special:
        raise VoxnpError(f"{path}: vocab_size {decoder.vocab_size} leaves no room after {n_special} special ids")
    return ModelConfig(audio=audio, encoder=encoder, decoder=decoder, n_special_tokens=n_special)
