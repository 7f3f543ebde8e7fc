"""The checkpoint: safetensors header, zero-copy BF16 views, weight dataclasses.

`consolidated.safetensors` is memory-mapped once; every tensor is a `uint16` NumPy
view into the map (a BF16 value is the upper half of a float32, SPEC §1), so opening
the 8.9 GB model reads only the JSON header. Pages are read from disk the first time
a kernel touches them. This is the only module that knows the tensor names.
"""
from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DecoderConfig, EncoderConfig, ModelConfig
from .errors import VoxnpError

WEIGHTS_FILE = "consolidated.safetensors"
MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit on the JSON header
ENC = "mm_streams_embeddings.embedding_module.whisper_encoder."
ADAPTER = "mm_streams_embeddings.embedding_module.audio_language_projection."
TOK_EMBEDDINGS = "mm_streams_embeddings.embedding_module.tok_embeddings.weight"

# ---------------------------------------------------------------------------
# safetensors file


@dataclass(frozen=True)
class Header:
    """A safetensors header, read without mapping the data."""
    entries: dict        # name -> {"dtype", "shape", "data_offsets"} (no "__metadata__")
    metadata: dict
    data_start: int      # 8 + header length: where offset 0 of the data lies
    data_end: int        # the largest end offset: the data size the header promises
    file_size: int


def read_header(path: Path) -> Header:
    """Parse the 8-byte length and the JSON header of a safetensors file (SPEC §1)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            head = f.read(8)
            if len(head) < 8:
                raise VoxnpError(f"{path}: truncated safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, MAX_HEADER_BYTES):
                raise VoxnpError(f"{path}: truncated or corrupt safetensors header "
                                 f"({n} header bytes announced, file has {size})")
            raw = f.read(n)
    except OSError as e:
        raise VoxnpError(f"{path}: cannot read ({e.strerror})") from None
    try:
        entries = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise VoxnpError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(entries, dict):
        raise VoxnpError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = entries.pop("__metadata__", None) or {}
    ends = [e["data_offsets"][1] for e in entries.values() if _is_entry(e)]
    return Header(entries=entries, metadata=metadata, data_start=8 + n,
                  data_end=max(ends, default=0), file_size=size)


class SafetensorsFile:
    """A memory-mapped safetensors file whose BF16 tensors are read as uint16 views."""

    def __init__(self, path: Path):
        self.path = path
        header = read_header(path)
        data_len = header.file_size - header.data_start
        for name, e in header.entries.items():
            if not _is_entry(e):
                raise VoxnpError(f"{path}: corrupt safetensors header: bad entry for tensor '{name}'")
            begin, end = e["data_offsets"]
            if end > data_len:
                raise VoxnpError(f"{path}: truncated: tensor '{name}' ends at byte {end} "
                                 f"of the data but the file holds only {data_len}")
        self.entries: dict[str, dict] = header.entries
        self._data_start = header.data_start
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._buffer = np.frombuffer(self._map, dtype=np.uint8)

    def tensor(self, name: str) -> np.ndarray:
        """The named BF16 tensor as a read-only uint16 view into the map."""
        e = self.entries.get(name)
        if e is None:
            raise VoxnpError(f"{self.path}: missing tensor '{name}'")
        if e["dtype"] != "BF16":
            raise VoxnpError(f"{self.path}: tensor '{name}' is {e['dtype']}, expected BF16")
        begin, end = e["data_offsets"]
        shape = tuple(e["shape"])
        if end - begin != 2 * int(np.prod(shape)):
            raise VoxnpError(f"{self.path}: tensor '{name}' has {end - begin} bytes for shape {list(shape)}")
        raw = self._buffer[self._data_start + begin:self._data_start + end]
        return raw.view(np.uint16).reshape(shape)


def _is_entry(e) -> bool:
    """{"dtype": str, "shape": [n, ...], "data_offsets": [begin, end]} with 0 <= begin <= end."""
    def ints(v):
        return isinstance(v, list) and all(type(i) is int and i >= 0 for i in v)

    return (isinstance(e, dict) and isinstance(e.get("dtype"), str) and ints(e.get("shape"))
            and ints(e.get("data_offsets")) and len(e["data_offsets"]) == 2
            and e["data_offsets"][0] <= e["data_offsets"][1])


def bf16_to_f32(x: np.ndarray) -> np.ndarray:
    """Exact widening of BF16 bits (uint16) to float32: f32 = bits << 16."""
    return (x.astype(np.uint32) << 16).view(np.float32)


# ---------------------------------------------------------------------------
# weight dataclasses (each field is a uint16 view; shapes as in SPEC §2)


@dataclass(frozen=True)
class EncoderLayerWeights:
    attention_norm: np.ndarray  # [1280]
    wq: np.ndarray              # [2048, 1280]
    wq_bias: np.ndarray         # [2048]
    wk: np.ndarray              # [2048, 1280]
    wv: np.ndarray              # [2048, 1280]
    wv_bias: np.ndarray         # [2048]
    wo: np.ndarray              # [1280, 2048]
    wo_bias: np.ndarray         # [1280]
    ffn_norm: np.ndarray        # [1280]
    w1: np.ndarray              # [5120, 1280]
    w3: np.ndarray              # [5120, 1280]
    w2: np.ndarray              # [1280, 5120]
    w2_bias: np.ndarray         # [1280]


@dataclass(frozen=True)
class EncoderWeights:
    conv1: np.ndarray           # [1280, 128 * 3]  the [1280, 128, 3] kernel as a matrix (tap fastest)
    conv1_bias: np.ndarray      # [1280]
    conv2: np.ndarray           # [1280, 1280 * 3] the [1280, 1280, 3] kernel as a matrix
    conv2_bias: np.ndarray      # [1280]
    layers: tuple[EncoderLayerWeights, ...]
    norm: np.ndarray            # [1280]


@dataclass(frozen=True)
class AdapterWeights:
    w_in: np.ndarray            # [3072, 5120]  audio_language_projection.0
    w_out: np.ndarray           # [3072, 3072]  audio_language_projection.2


@dataclass(frozen=True)
class DecoderLayerWeights:
    attention_norm: np.ndarray  # [3072]
    wq: np.ndarray              # [4096, 3072]
    wk: np.ndarray              # [1024, 3072]
    wv: np.ndarray              # [1024, 3072]
    wo: np.ndarray              # [3072, 4096]
    ffn_norm: np.ndarray        # [3072]
    w1: np.ndarray              # [9216, 3072] gate
    w3: np.ndarray              # [9216, 3072] up
    w2: np.ndarray              # [3072, 9216] down
    ada_down: np.ndarray        # [32, 3072]   ada_rms_norm_t_cond.0
    ada_up: np.ndarray          # [3072, 32]   ada_rms_norm_t_cond.2


@dataclass(frozen=True)
class DecoderWeights:
    tok_embeddings: np.ndarray  # [131072, 3072] BF16: the embedding table
    layers: tuple[DecoderLayerWeights, ...]
    norm: np.ndarray            # [3072]
    lm_head: object = None      # [131072, 3072] the tied LM head: tok_embeddings itself for
                                # BF16, a quantized copy for int8/q4 (see quant.py)
    kv_bf16: bool = False       # the KV rings store BF16 (int8/q4, quant_file.py); float32 for BF16

    def __post_init__(self):
        if self.lm_head is None:
            object.__setattr__(self, "lm_head", self.tok_embeddings)


@dataclass(frozen=True)
class Weights:
    encoder: EncoderWeights
    adapter: AdapterWeights
    decoder: DecoderWeights


# ---------------------------------------------------------------------------
# names and expected shapes (the one place the checkpoint's key strings live)


def _encoder_layer_names(i: int, c: EncoderConfig) -> dict[str, tuple[str, tuple]]:
    p = f"{ENC}transformer.layers.{i}."
    qkv = c.n_heads * c.head_dim
    kv = c.n_kv_heads * c.head_dim
    return {
        "attention_norm": (p + "attention_norm.weight", (c.dim,)),
        "wq": (p + "attention.wq.weight", (qkv, c.dim)),
        "wq_bias": (p + "attention.wq.bias", (qkv,)),
        "wk": (p + "attention.wk.weight", (kv, c.dim)),
        "wv": (p + "attention.wv.weight", (kv, c.dim)),
        "wv_bias": (p + "attention.wv.bias", (kv,)),
        "wo": (p + "attention.wo.weight", (c.dim, qkv)),
        "wo_bias": (p + "attention.wo.bias", (c.dim,)),
        "ffn_norm": (p + "ffn_norm.weight", (c.dim,)),
        "w1": (p + "feed_forward.w1.weight", (c.hidden_dim, c.dim)),
        "w3": (p + "feed_forward.w3.weight", (c.hidden_dim, c.dim)),
        "w2": (p + "feed_forward.w2.weight", (c.dim, c.hidden_dim)),
        "w2_bias": (p + "feed_forward.w2.bias", (c.dim,)),
    }


def _decoder_layer_names(i: int, c: DecoderConfig) -> dict[str, tuple[str, tuple]]:
    p = f"layers.{i}."
    q = c.n_heads * c.head_dim
    kv = c.n_kv_heads * c.head_dim
    return {
        "attention_norm": (p + "attention_norm.weight", (c.dim,)),
        "wq": (p + "attention.wq.weight", (q, c.dim)),
        "wk": (p + "attention.wk.weight", (kv, c.dim)),
        "wv": (p + "attention.wv.weight", (kv, c.dim)),
        "wo": (p + "attention.wo.weight", (c.dim, q)),
        "ffn_norm": (p + "ffn_norm.weight", (c.dim,)),
        "w1": (p + "feed_forward.w1.weight", (c.hidden_dim, c.dim)),
        "w3": (p + "feed_forward.w3.weight", (c.hidden_dim, c.dim)),
        "w2": (p + "feed_forward.w2.weight", (c.dim, c.hidden_dim)),
        "ada_down": (p + "ada_rms_norm_t_cond.0.weight", (c.ada_dim, c.dim)),
        "ada_up": (p + "ada_rms_norm_t_cond.2.weight", (c.dim, c.ada_dim)),
    }


def expected_tensors(cfg: ModelConfig) -> dict[str, tuple]:
    """Every tensor name the model needs, with the shape params.json implies."""
    e, d = cfg.encoder, cfg.decoder
    out = {
        f"{ENC}conv_layers.0.conv.weight": (e.dim, cfg.audio.n_mels, 3),
        f"{ENC}conv_layers.0.conv.bias": (e.dim,),
        f"{ENC}conv_layers.1.conv.weight": (e.dim, e.dim, 3),
        f"{ENC}conv_layers.1.conv.bias": (e.dim,),
        f"{ENC}transformer.norm.weight": (e.dim,),
        f"{ADAPTER}0.weight": (d.dim, e.dim * e.downsample_factor),
        f"{ADAPTER}2.weight": (d.dim, d.dim),
        TOK_EMBEDDINGS: (d.vocab_size, d.dim),
        "norm.weight": (d.dim,),
    }
    for i in range(e.n_layers):
        out.update(dict(_encoder_layer_names(i, e).values()))
    for i in range(d.n_layers):
        out.update(dict(_decoder_layer_names(i, d).values()))
    return out


def validate(st: SafetensorsFile, cfg: ModelConfig) -> list[str]:
    """Problems that make the file unusable with this params.json (empty = fine)."""
    problems = []
    for name, shape in expected_tensors(cfg).items():
        e = st.entries.get(name)
        if e is None:
            problems.append(f"missing tensor '{name}'")
        elif tuple(e["shape"]) != shape:
            problems.append(f"tensor '{name}' has shape {list(e['shape'])}, "
                            f"params.json implies {list(shape)}")
        elif e["dtype"] != "BF16":
            problems.append(f"tensor '{name}' is {e['dtype']}, expected BF16")
    return problems


def _as_matrix(kernel: np.ndarray) -> np.ndarray:
    """A conv kernel [out, in, taps] as the matrix [out, in * taps] of a linear layer."""
    return kernel.reshape(kernel.shape[0], -1)


def load_weights(st: SafetensorsFile, cfg: ModelConfig) -> Weights:
    """Check every tensor against the config, then build the views (reads no data)."""
    problems = validate(st, cfg)
    expected = expected_tensors(cfg)
    problems += [f"unexpected tensor '{name}'" for name in st.entries if name not in expected]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        mismatch = any(w in p for p in problems for w in ("shape", "missing", "unexpected"))
        hint = "; params.json disagrees with the weights" if mismatch else ""
        raise VoxnpError(f"{st.path}: {problems[0]}{more}{hint}")

    def build(cls, names):
        return cls(**{field: st.tensor(names[field][0]) for field in names})

    encoder = EncoderWeights(
        conv1=_as_matrix(st.tensor(f"{ENC}conv_layers.0.conv.weight")),
        conv1_bias=st.tensor(f"{ENC}conv_layers.0.conv.bias"),
        conv2=_as_matrix(st.tensor(f"{ENC}conv_layers.1.conv.weight")),
        conv2_bias=st.tensor(f"{ENC}conv_layers.1.conv.bias"),
        layers=tuple(build(EncoderLayerWeights, _encoder_layer_names(i, cfg.encoder))
                     for i in range(cfg.encoder.n_layers)),
        norm=st.tensor(f"{ENC}transformer.norm.weight"),
    )
    adapter = AdapterWeights(w_in=st.tensor(f"{ADAPTER}0.weight"), w_out=st.tensor(f"{ADAPTER}2.weight"))
    decoder = DecoderWeights(
        tok_embeddings=st.tensor(TOK_EMBEDDINGS),
        layers=tuple(build(DecoderLayerWeights, _decoder_layer_names(i, cfg.decoder))
                     for i in range(cfg.decoder.n_layers)),
        norm=st.tensor("norm.weight"),
    )
    return Weights(encoder=encoder, adapter=adapter, decoder=decoder)


def component_of(name: str) -> str:
    """Which part of the model a tensor belongs to (for `voxnp inspect`)."""
    if name == TOK_EMBEDDINGS:
        return "embeddings"
    if name.startswith(ENC):
        return "encoder"
    if name.startswith(ADAPTER):
        return "adapter"
    return "decoder"

