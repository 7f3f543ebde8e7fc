"""Random-weight model directories in the published Voxtral Realtime format.

The real weights (8.9 GB) cannot be downloaded everywhere voxnp is tested, so this
module writes checkpoints of its own that look exactly like
`mistralai/Voxtral-Mini-4B-Realtime-2602` (SPEC.md §1, §2, §9):

    out_dir/
      params.json                 the real layout; dims from a preset
      consolidated.safetensors    every tensor BF16, real names, sorted by name
      tekken.json                 the real Tekken vocabulary, truncated to the preset

Presets: "full" (the real dims, 711 tensors, ~8.86 GB), "tiny" (a model that runs in
milliseconds) and "tiny-window" (tiny with short sliding windows, so a few seconds of
audio wrap the KV caches).

The weights are random but scaled so that a forward pass stays finite and the logits
have clear top-1 margins (see `_tensor_plan`). Everything is deterministic per
(preset, seed). The safetensors writer is our own and streams tensor by tensor in
row chunks, so even the full preset is written with ~100 MB of memory.

    python -m voxnp.checkpoint OUT_DIR --preset tiny --seed 0 [--overwrite]
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import pathlib
import shutil
import struct
import sys
import zlib
from typing import Callable, Iterator, NamedTuple

import numpy as np

from .bf16 import float32_to_bf16_bits

# ----------------------------------------------------------------------------
# Presets: each one IS the params.json it writes (SPEC §1).
# ----------------------------------------------------------------------------

_FULL_PARAMS: dict = {
    "dim": 3072,
    "n_layers": 26,
    "head_dim": 128,
    "hidden_dim": 9216,  # 3 * 3072
    "n_heads": 32,
    "n_kv_heads": 8,
    "use_biases": False,
    "causal": True,
    "rope_theta": 1e6,
    "norm_eps": 1e-5,
    "vocab_size": 131072,  # 2**17
    "model_parallel": 1,
    "tied_embeddings": True,
    "sliding_window": 8192,
    "model_max_length": 131072,
    "multimodal": {
        "whisper_model_args": {
            "encoder_args": {
                "audio_encoding_args": {
                    "sampling_rate": 16000,
                    "frame_rate": 12.5,  # tokens per second: 1000 ms / 80 ms
                    "num_mel_bins": 128,
                    "hop_length": 160,  # 10 ms at 16 kHz
                    "window_size": 400,  # 25 ms at 16 kHz
                    "global_log_mel_max": 1.5,
                },
                "dim": 1280,
                "n_layers": 32,
                "head_dim": 64,
                "hidden_dim": 5120,  # 4 * 1280
                "n_heads": 32,
                "n_kv_heads": 32,
                "use_biases": True,
                "causal": True,
                "rope_theta": 1e6,
                "norm_eps": 1e-5,
                "sliding_window": 750,  # 15 s of encoder positions at 50 per second
                "ffn_type": "swiglu",
                "norm_type": "rms_norm",
                "pos_embed": "rope",
            },
            "downsample_args": {"downsample_factor": 4},  # 4 encoder positions per token
        }
    },
    "ada_rms_norm_t_cond": True,
    "ada_rms_norm_t_cond_dim": 32,
}


def _encoder_args(params: dict) -> dict:
    """The encoder section of params.json."""
    return params["multimodal"]["whisper_model_args"]["encoder_args"]


def _derive_params(base: dict, decoder: dict, encoder: dict) -> dict:
    """A copy of `base` params with decoder (top-level) and encoder keys replaced."""
    params = copy.deepcopy(base)
    params.update(decoder)
    _encoder_args(params).update(encoder)
    return params


_TINY_DECODER = dict(dim=64, n_layers=2, head_dim=16, n_heads=4, n_kv_heads=2,
                     hidden_dim=160, vocab_size=4096, sliding_window=8192,
                     ada_rms_norm_t_cond_dim=8)
_TINY_ENCODER = dict(dim=48, n_layers=2, head_dim=12, n_heads=4, n_kv_heads=4,
                     hidden_dim=96, sliding_window=750)

PRESETS: dict[str, dict] = {
    "tiny": _derive_params(_FULL_PARAMS, _TINY_DECODER, _TINY_ENCODER),
    # Short windows: ~1.6 s of decoder tokens (20 x 80 ms), 0.24 s of encoder positions.
    "tiny-window": _derive_params(_FULL_PARAMS, {**_TINY_DECODER, "sliding_window": 20},
                                  {**_TINY_ENCODER, "sliding_window": 12}),
    "full": copy.deepcopy(_FULL_PARAMS),
}

FULL_TENSOR_COUNT = 26 * 11 + 32 * 13 + 9  # decoder layers + encoder layers + rest = 711

# ----------------------------------------------------------------------------
# Tokenizer constants (SPEC §1, §9)
# ----------------------------------------------------------------------------

NUM_SPECIAL_TOKENS = 1000  # ids 0..999 are control tokens; id >= 1000 is vocab[id - 1000]
TEKKEN_SOURCE = "tekken_240911.json"  # the Tekken vocabulary shipped in mistral_common/data
TEKKEN_VERSION = "v7"
TRANSCRIPTION_DELAY_MS = 480  # 6 tokens x 80 ms, the default delay
STREAMING_N_LEFT_PAD_TOKENS = 32
STREAMING_LOOK_AHEAD_MS = 2.5  # 40 samples at 16 kHz: the mel look-ahead of SPEC §8
STREAMING_LOOK_BACK_MS = 52.5  # 840 samples at 16 kHz (value of the published file)
SPECIAL_TOKEN_TEMPLATE = "<SPECIAL_{id}>"  # mistral_common's filler name

# Real names of the special tokens: 0..19 are mistral_common's
# Tekkenizer.DEPRECATED_SPECIAL_TOKENS; the audio/streaming ranks are Voxtral's.
NAMED_SPECIAL_TOKENS: dict[int, str] = {
    0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]",
    5: "[AVAILABLE_TOOLS]", 6: "[/AVAILABLE_TOOLS]", 7: "[TOOL_RESULTS]",
    8: "[/TOOL_RESULTS]", 9: "[TOOL_CALLS]", 10: "[IMG]", 11: "<pad>",
    12: "[IMG_BREAK]", 13: "[IMG_END]", 14: "[PREFIX]", 15: "[MIDDLE]",
    16: "[SUFFIX]", 17: "[SYSTEM_PROMPT]", 18: "[/SYSTEM_PROMPT]",
    19: "[TOOL_CONTENT]", 24: "[AUDIO]", 25: "[BEGIN_AUDIO]",
    32: "[STREAMING_PAD]", 33: "[STREAMING_WORD]", 34: "[TRANSCRIBE]",
}

# ----------------------------------------------------------------------------
# Weight scaling
# ----------------------------------------------------------------------------

NORM_JITTER = 0.1  # RMSNorm weights ~ 1 + 0.1 N(0, 1)
BIAS_STD = 0.02  # biases ~ 0.02 N(0, 1)
ADA_OUT_STD = 0.1  # ada-norm scale s has std ~0.1, so (1 + s) stays near 1
SPECIAL_ROW_SCALE = 0.5  # rows 0..999 of tok_embeddings: the random model prefers text
# audio_embeds rms ~0.6 * gain. With tied random embeddings the previous token's own
# row dominates its logits (|e|^2 = dim), so at gain 1 the model just echoes its input;
# at gain 4 (audio rms ~2.5 vs 1 for a token row) the audio picks most tokens.
AUDIO_EMBED_GAIN = 4.0
CONV_KERNEL = 3  # both conv-stem layers (SPEC §4)

# ----------------------------------------------------------------------------
# safetensors constants
# ----------------------------------------------------------------------------

SAFETENSORS_NAME = "consolidated.safetensors"
BF16_BYTES = 2
HEADER_ALIGN = 8  # the JSON header is space-padded to a multiple of 8 bytes
CHUNK_VALUES = 8 << 20  # 8 Mi values per chunk: 32 MB float32 + 32 MB temp + 16 MB bf16
ENCODER_PREFIX = "mm_streams_embeddings.embedding_module.whisper_encoder."
EMBEDDING_PREFIX = "mm_streams_embeddings.embedding_module."


# ----------------------------------------------------------------------------
# The tensor plan: names, shapes and how each tensor is initialised (SPEC §2)
# ----------------------------------------------------------------------------

class _Tensor(NamedTuple):
    """One checkpoint tensor and its random initialisation."""

    name: str
    shape: tuple[int, ...]
    kind: str  # "normal": std * N;  "norm": 1 + std * N;  "embedding": N, special rows scaled
    std: float


def _linear(name: str, out_f: int, in_f: int, extra: float = 1.0) -> _Tensor:
    """A [out, in] linear weight ~ N(0, 1/in), times `extra`."""
    return _Tensor(name, (out_f, in_f), "normal", extra / math.sqrt(in_f))


def _bias(name: str, n: int) -> _Tensor:
    """A bias vector ~ BIAS_STD * N(0, 1)."""
    return _Tensor(name, (n,), "normal", BIAS_STD)


def _norm(name: str, n: int) -> _Tensor:
    """An RMSNorm weight ~ 1 + NORM_JITTER * N(0, 1)."""
    return _Tensor(name, (n,), "norm", NORM_JITTER)


def _residual_scale(n_layers: int) -> float:
    """Extra factor on output projections (wo, w2): 2 residual writes per layer."""
    return 1.0 / math.sqrt(2 * n_layers)


def _encoder_tensors(enc: dict) -> list[_Tensor]:
    """Conv stem, transformer layers and final norm of the whisper encoder."""
    d, h = enc["dim"], enc["hidden_dim"]
    q, kv = enc["n_heads"] * enc["head_dim"], enc["n_kv_heads"] * enc["head_dim"]
    n_mels = enc["audio_encoding_args"]["num_mel_bins"]
    out = _residual_scale(enc["n_layers"])
    tensors = []
    for i, c_in in enumerate((n_mels, d)):
        conv = f"{ENCODER_PREFIX}conv_layers.{i}.conv."
        tensors.append(_Tensor(conv + "weight", (d, c_in, CONV_KERNEL), "normal",
                               1.0 / math.sqrt(c_in * CONV_KERNEL)))
        tensors.append(_bias(conv + "bias", d))
    for i in range(enc["n_layers"]):
        p = f"{ENCODER_PREFIX}transformer.layers.{i}."
        a, f = p + "attention.", p + "feed_forward."
        tensors += [
            _norm(p + "attention_norm.weight", d),
            _linear(a + "wq.weight", q, d), _bias(a + "wq.bias", q),
            _linear(a + "wk.weight", kv, d),
            _linear(a + "wv.weight", kv, d), _bias(a + "wv.bias", kv),
            _linear(a + "wo.weight", d, q, out), _bias(a + "wo.bias", d),
            _norm(p + "ffn_norm.weight", d),
            _linear(f + "w1.weight", h, d),
            _linear(f + "w3.weight", h, d),
            _linear(f + "w2.weight", d, h, out), _bias(f + "w2.bias", d),
        ]
    tensors.append(_norm(ENCODER_PREFIX + "transformer.norm.weight", d))
    return tensors


def _adapter_tensors(params: dict) -> list[_Tensor]:
    """audio_language_projection: Linear(enc_dim * downsample -> dim), GELU, Linear(dim -> dim)."""
    d = params["dim"]
    factor = params["multimodal"]["whisper_model_args"]["downsample_args"]["downsample_factor"]
    d_in = _encoder_args(params)["dim"] * factor  # 1280 * 4 = 5120
    p = EMBEDDING_PREFIX + "audio_language_projection."
    return [_linear(p + "0.weight", d, d_in), _linear(p + "2.weight", d, d, AUDIO_EMBED_GAIN)]


def _decoder_tensors(params: dict) -> list[_Tensor]:
    """Token embeddings (tied LM head), decoder layers with ada-norm, final norm."""
    d, h, hd = params["dim"], params["hidden_dim"], params["head_dim"]
    q, kv = params["n_heads"] * hd, params["n_kv_heads"] * hd
    ada = params["ada_rms_norm_t_cond_dim"]
    out = _residual_scale(params["n_layers"])
    tensors = [_Tensor(EMBEDDING_PREFIX + "tok_embeddings.weight",
                       (params["vocab_size"], d), "embedding", 1.0)]
    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        a, f, t = p + "attention.", p + "feed_forward.", p + "ada_rms_norm_t_cond."
        tensors += [
            _norm(p + "attention_norm.weight", d),
            _linear(a + "wq.weight", q, d),
            _linear(a + "wk.weight", kv, d),
            _linear(a + "wv.weight", kv, d),
            _linear(a + "wo.weight", d, q, out),
            _norm(p + "ffn_norm.weight", d),
            _linear(f + "w1.weight", h, d),
            _linear(f + "w3.weight", h, d),
            _linear(f + "w2.weight", d, h, out),
            _linear(t + "0.weight", ada, d),  # t_cond entries are cos/sin: rms ~0.7
            _linear(t + "2.weight", d, ada, ADA_OUT_STD),
        ]
    tensors.append(_norm("norm.weight", d))
    return tensors


def _resolve_params(preset_or_params: str | dict) -> dict:
    """A preset name or a params.json-shaped dict -> params dict."""
    if isinstance(preset_or_params, str):
        if preset_or_params not in PRESETS:
            raise ValueError(f"unknown preset {preset_or_params!r}; choose from {sorted(PRESETS)}")
        return PRESETS[preset_or_params]
    return preset_or_params


def _tensor_plan(preset_or_params: str | dict) -> list[_Tensor]:
    """Every tensor of the checkpoint, sorted by name (the order in the file).

    Scaling keeps a random forward pass finite with clear top-1 logit margins:
    linear weights ~ N(0, 1/in) (output projections wo/w2 also / sqrt(2 n_layers)),
    norm weights ~ 1 + 0.1 N, biases ~ 0.02 N, conv weights ~ N(0, 1/(in*k)),
    ada-norm up-projection small (s ~ 0.1), the adapter's last layer times
    AUDIO_EMBED_GAIN (so the audio, not the echoed previous token, decides), token
    embeddings ~ N(0, 1) with the special-token rows halved; after the final norm
    the tied LM head gives logits of std ~ sqrt(dim).
    """
    params = _resolve_params(preset_or_params)
    tensors = (_encoder_tensors(_encoder_args(params)) + _adapter_tensors(params)
               + _decoder_tensors(params))
    return sorted(tensors, key=lambda t: t.name)


def tensor_specs(preset_or_dims: str | dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor, in file order, for a preset name or params dict."""
    return [(t.name, t.shape) for t in _tensor_plan(preset_or_dims)]


# ----------------------------------------------------------------------------
# Random tensor data, chunk by chunk
# ----------------------------------------------------------------------------

def _tensor_rng(name: str, seed: int) -> np.random.Generator:
    """An independent generator per (seed, tensor name), so tensors need no order."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _init_chunk(x: np.ndarray, t: _Tensor, row0: int, row_size: int) -> None:
    """Turn standard normals `x` (rows row0.. of tensor t, flattened) into weights, in place."""
    if t.kind == "normal":
        x *= t.std
    elif t.kind == "norm":
        x *= t.std
        x += 1.0
    elif t.kind == "embedding":
        n_special = max(0, min(NUM_SPECIAL_TOKENS - row0, x.size // row_size))
        x[: n_special * row_size] *= SPECIAL_ROW_SCALE
    else:
        raise ValueError(f"unknown init kind {t.kind!r}")


def _bf16_chunks(t: _Tensor, seed: int) -> Iterator[np.ndarray]:
    """Yield the BF16 bits (little-endian uint16) of tensor t in row chunks."""
    rng = _tensor_rng(t.name, seed)
    rows, row_size = t.shape[0], math.prod(t.shape[1:])
    step = max(1, CHUNK_VALUES // row_size)  # rows per chunk
    for row0 in range(0, rows, step):
        n_rows = min(step, rows - row0)
        x = rng.standard_normal(n_rows * row_size, dtype=np.float32)
        _init_chunk(x, t, row0, row_size)
        yield float32_to_bf16_bits(x).astype("<u2", copy=False)


# ----------------------------------------------------------------------------
# Writers (all atomic: temp file in the same directory, then rename)
# ----------------------------------------------------------------------------

@contextlib.contextmanager
def _atomic_open(path: pathlib.Path, mode: str = "wb"):
    """Open a temp file next to `path`; rename it onto `path` only on success."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _safetensors_header(tensors: list[_Tensor]) -> tuple[bytes, int]:
    """The space-padded JSON header and the total data size in bytes."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        n_bytes = math.prod(t.shape) * BF16_BYTES
        header[t.name] = {"dtype": "BF16", "shape": list(t.shape),
                          "data_offsets": [offset, offset + n_bytes]}
        offset += n_bytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % HEADER_ALIGN)
    return raw, offset


def safetensors_size(preset_or_params: str | dict) -> int:
    """Size in bytes of the consolidated.safetensors file a preset produces."""
    header, data = _safetensors_header(_tensor_plan(preset_or_params))
    return 8 + len(header) + data


def _write_safetensors(path: pathlib.Path, tensors: list[_Tensor], seed: int,
                       progress: Callable[[int, int], None] | None) -> None:
    """Stream every tensor to `path`: u64 LE header length, JSON header, BF16 data."""
    header, data_bytes = _safetensors_header(tensors)
    total = 8 + len(header) + data_bytes
    free = shutil.disk_usage(path.parent).free
    if free < total:
        raise OSError(f"{path.parent}: {total / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free")
    with _atomic_open(path) as fh:
        fh.write(struct.pack("<Q", len(header)))
        fh.write(header)
        done = 8 + len(header)
        for t in tensors:
            for bits in _bf16_chunks(t, seed):
                fh.write(bits.data)
                done += bits.nbytes
                if progress is not None:
                    progress(done, total)
        if done != total:
            raise AssertionError(f"wrote {done} bytes, header promised {total}")


def _write_json(path: pathlib.Path, obj: dict) -> None:
    """Write `obj` as indented JSON, atomically."""
    with _atomic_open(path, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.write("\n")


@functools.lru_cache(maxsize=1)
def _tekken_source() -> dict:
    """The Tekken vocabulary file shipped with mistral_common (read once)."""
    try:
        import mistral_common  # a test/bench-only dependency
    except ImportError as exc:
        raise RuntimeError("writing tekken.json needs the real Tekken vocabulary: "
                           "pip install mistral_common") from exc
    path = pathlib.Path(mistral_common.__file__).parent / "data" / TEKKEN_SOURCE
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _special_tokens() -> list[dict]:
    """All NUM_SPECIAL_TOKENS control tokens, real names where known."""
    return [{"rank": i,
             "token_str": NAMED_SPECIAL_TOKENS.get(i, SPECIAL_TOKEN_TEMPLATE.format(id=i)),
             "is_control": True}
            for i in range(NUM_SPECIAL_TOKENS)]


def tekken_json(params: dict) -> dict:
    """The tekken.json content for a params dict: real vocabulary, cut to vocab_size."""
    source = _tekken_source()
    n_vocab = params["vocab_size"] - NUM_SPECIAL_TOKENS  # 131072 - 1000 = 130072
    if not 0 < n_vocab <= len(source["vocab"]):
        raise ValueError(f"vocab_size {params['vocab_size']} needs 1..{len(source['vocab'])} "
                         f"regular tokens after {NUM_SPECIAL_TOKENS} special ones")
    mel = _encoder_args(params)["audio_encoding_args"]
    return {
        "config": {
            "pattern": source["config"]["pattern"],
            "num_vocab_tokens": n_vocab,
            "default_vocab_size": params["vocab_size"],
            "default_num_special_tokens": NUM_SPECIAL_TOKENS,
            "version": TEKKEN_VERSION,
        },
        "vocab": source["vocab"][:n_vocab],
        "special_tokens": _special_tokens(),
        "audio": {
            "sampling_rate": mel["sampling_rate"],
            "frame_rate": mel["frame_rate"],
            "audio_encoding_config": {key: mel[key] for key in
                                      ("num_mel_bins", "hop_length", "window_size")},
            "transcription_delay_ms": TRANSCRIPTION_DELAY_MS,
            "streaming_look_ahead_ms": STREAMING_LOOK_AHEAD_MS,
            "streaming_look_back_ms": STREAMING_LOOK_BACK_MS,
            "streaming_n_left_pad_tokens": STREAMING_N_LEFT_PAD_TOKENS,
            "transcription_format": "streaming",
        },
    }


def _prepare_dir(out_dir: pathlib.Path, overwrite: bool) -> None:
    """Create `out_dir`; refuse a non-empty one unless overwrite."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} is not empty (pass overwrite=True / --overwrite)")
    out_dir.mkdir(parents=True, exist_ok=True)


def write_checkpoint(out_dir, preset: str = "tiny", seed: int = 0, overwrite: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> pathlib.Path:
    """Write a random-weight model directory; returns its path.

    `progress(done_bytes, total_bytes)` is called as consolidated.safetensors grows.
    params.json is written last, so a directory that has it is complete.
    """
    params = _resolve_params(preset)
    tensors = _tensor_plan(params)
    if preset == "full" and len(tensors) != FULL_TENSOR_COUNT:
        raise AssertionError(f"full preset has {len(tensors)} tensors, expected {FULL_TENSOR_COUNT}")
    tekken = tekken_json(params)  # fails early if mistral_common is missing
    out_dir = pathlib.Path(out_dir)
    _prepare_dir(out_dir, overwrite)
    _write_json(out_dir / "tekken.json", tekken)
    _write_safetensors(out_dir / SAFETENSORS_NAME, tensors, seed, progress)
    _write_json(out_dir / "params.json", params)
    return out_dir


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------

USAGE = ("usage: python -m voxnp.checkpoint OUT_DIR [--preset "
         + "|".join(PRESETS) + "] [--seed N] [--overwrite]")


def _parse_args(argv: list[str]) -> dict:
    """Plain argv parsing: OUT_DIR, --preset X / --preset=X, --seed N, --overwrite."""
    opts = {"out_dir": None, "preset": "tiny", "seed": 0, "overwrite": False}
    args = list(argv)
    while args:
        arg = args.pop(0)
        key, eq, value = arg.partition("=")
        if arg in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        if arg == "--overwrite":
            opts["overwrite"] = True
        elif key in ("--preset", "--seed"):
            if not eq:
                if not args:
                    raise SystemExit(f"{key} needs a value\n{USAGE}")
                value = args.pop(0)
            opts[key[2:]] = value
        elif arg.startswith("-") or opts["out_dir"] is not None:
            raise SystemExit(f"unexpected argument {arg!r}\n{USAGE}")
        else:
            opts["out_dir"] = arg
    if opts["out_dir"] is None:
        raise SystemExit(USAGE)
    if opts["preset"] not in PRESETS:
        raise SystemExit(f"unknown preset {opts['preset']!r}\n{USAGE}")
    try:
        opts["seed"] = int(opts["seed"])
    except ValueError:
        raise SystemExit(f"--seed must be an integer\n{USAGE}") from None
    return opts


PROGRESS_MIN_BYTES = 100 * 10**6  # smaller files are written too fast to need a meter


def _print_progress() -> Callable[[int, int], None]:
    """A progress callback that prints to stderr at every whole percent (large files only)."""
    last = [-1]

    def report(done: int, total: int) -> None:
        if total < PROGRESS_MIN_BYTES:
            return
        percent = done * 100 // total
        if percent != last[0]:
            last[0] = percent
            print(f"\r{done / 1e9:6.2f} / {total / 1e9:.2f} GB ({percent}%)",
                  end="\n" if done == total else "", file=sys.stderr, flush=True)

    return report


def main(argv: list[str] | None = None) -> None:
    """`python -m voxnp.checkpoint OUT_DIR --preset tiny --seed 0 [--overwrite]`."""
    opts = _parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out = write_checkpoint(opts["out_dir"], opts["preset"], opts["seed"],
                               opts["overwrite"], progress=_print_progress())
    except (FileExistsError, RuntimeError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    n_bytes = (out / SAFETENSORS_NAME).stat().st_size
    print(f"wrote {out} ({opts['preset']}, seed {opts['seed']}, "
          f"{len(tensor_specs(opts['preset']))} tensors, {n_bytes / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
