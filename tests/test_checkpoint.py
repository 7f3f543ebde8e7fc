"""Tests for voxnp.checkpoint: random-weight model directories in the published format.

The safetensors file is re-parsed here with struct + json only, independently of the
writer, and the full preset is checked against SPEC.md §2 without being written.
"""

import json
import math
import struct
import sys

import numpy as np
import pytest

from voxnp import bf16
from voxnp import checkpoint as ck

ENC = "mm_streams_embeddings.embedding_module.whisper_encoder."
EMB = "mm_streams_embeddings.embedding_module."


# ---------------------------------------------------------------------------
# helpers (independent of the writer)
# ---------------------------------------------------------------------------

def read_safetensors(path):
    """(header dict, data offset, file bytes) parsed with struct + json."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    return header, 8 + n, raw, n


def tensor(path, name):
    """One tensor as float32, decoded from its BF16 bits."""
    header, start, raw, _ = read_safetensors(path)
    info = header[name]
    b, e = info["data_offsets"]
    bits = np.frombuffer(raw[start + b:start + e], dtype="<u2")
    return (bits.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return ck.write_checkpoint(tmp_path_factory.mktemp("ck") / "tiny", "tiny", seed=0)


# ---------------------------------------------------------------------------
# safetensors layout
# ---------------------------------------------------------------------------

def test_safetensors_header_layout(tiny_dir):
    path = tiny_dir / "consolidated.safetensors"
    header, start, raw, n = read_safetensors(path)
    assert n % 8 == 0
    assert raw[8:8 + n].decode().rstrip(" ").endswith("}")
    assert header.pop("__metadata__") == {"format": "pt"}
    names = list(header)
    assert names == sorted(names)
    specs = ck.tensor_specs("tiny")
    assert [(k, tuple(v["shape"])) for k, v in header.items()] == [(nm, tuple(s)) for nm, s in specs]
    offset = 0
    for name, info in header.items():  # contiguous, in name order
        assert info["dtype"] == "BF16"
        b, e = info["data_offsets"]
        assert b == offset and e - b == 2 * math.prod(info["shape"]), name
        offset = e
    assert start + offset == len(raw) == ck.safetensors_size("tiny")


def test_tiny_shapes_follow_spec(tiny_dir):
    shapes = dict(ck.tensor_specs("tiny"))
    L = ENC + "transformer.layers.1."
    expected = {
        EMB + "tok_embeddings.weight": (4096, 64),
        ENC + "conv_layers.0.conv.weight": (48, 128, 3),
        ENC + "conv_layers.0.conv.bias": (48,),
        ENC + "conv_layers.1.conv.weight": (48, 48, 3),
        L + "attention.wq.weight": (48, 48), L + "attention.wq.bias": (48,),
        L + "attention.wk.weight": (48, 48),
        L + "attention.wv.weight": (48, 48), L + "attention.wv.bias": (48,),
        L + "attention.wo.weight": (48, 48), L + "attention.wo.bias": (48,),
        L + "feed_forward.w1.weight": (96, 48), L + "feed_forward.w3.weight": (96, 48),
        L + "feed_forward.w2.weight": (48, 96), L + "feed_forward.w2.bias": (48,),
        L + "attention_norm.weight": (48,), L + "ffn_norm.weight": (48,),
        ENC + "transformer.norm.weight": (48,),
        EMB + "audio_language_projection.0.weight": (64, 48 * 4),
        EMB + "audio_language_projection.2.weight": (64, 64),
        "layers.1.attention.wq.weight": (64, 64), "layers.1.attention.wk.weight": (32, 64),
        "layers.1.attention.wv.weight": (32, 64), "layers.1.attention.wo.weight": (64, 64),
        "layers.1.feed_forward.w1.weight": (160, 64), "layers.1.feed_forward.w2.weight": (64, 160),
        "layers.1.ada_rms_norm_t_cond.0.weight": (8, 64),
        "layers.1.ada_rms_norm_t_cond.2.weight": (64, 8),
        "norm.weight": (64,),
    }
    for name, shape in expected.items():
        assert shapes[name] == shape, name
    biases = {n for n in shapes if n.endswith(".bias")}
    assert all(n.startswith(ENC) for n in biases)  # the decoder has no biases
    assert not any(".wk.bias" in n or ".w1.bias" in n or ".w3.bias" in n for n in biases)
    assert len(shapes) == 2 * 11 + 2 * 13 + 9


def test_full_preset_counts_and_size_without_writing():
    specs = ck.tensor_specs("full")
    assert len(specs) == 711 == ck.FULL_TENSOR_COUNT
    shapes = dict(specs)
    assert shapes[EMB + "tok_embeddings.weight"] == (131072, 3072)
    assert shapes[ENC + "conv_layers.1.conv.weight"] == (1280, 1280, 3)
    assert shapes[ENC + "transformer.layers.31.attention.wq.weight"] == (2048, 1280)
    assert shapes[ENC + "transformer.layers.31.feed_forward.w2.weight"] == (1280, 5120)
    assert shapes[EMB + "audio_language_projection.0.weight"] == (3072, 5120)
    assert shapes["layers.25.attention.wk.weight"] == (1024, 3072)
    assert shapes["layers.25.attention.wo.weight"] == (3072, 4096)
    assert shapes["layers.25.ada_rms_norm_t_cond.0.weight"] == (32, 3072)
    # parameter count from SPEC §2 arithmetic
    enc_layer = (4 * 2048 * 1280  # wq, wk, wv, wo
                 + 2048 + 2048 + 1280 + 1280  # biases of wq, wv, wo, w2
                 + 2 * 1280  # attention_norm, ffn_norm
                 + 3 * 5120 * 1280)  # w1, w3, w2
    enc = 1280 * 128 * 3 + 1280 + 1280 * 1280 * 3 + 1280 + 32 * enc_layer + 1280
    dec_layer = 2 * 3072 + 3072 * (4096 + 1024 + 1024) + 4096 * 3072 + 3 * 9216 * 3072 + 2 * 32 * 3072
    dec = 131072 * 3072 + 26 * dec_layer + 3072
    adapter = 3072 * 5120 + 3072 * 3072
    n_params = sum(math.prod(s) for _, s in specs)
    assert n_params == enc + dec + adapter
    assert dec_layer == pytest.approx(116.4e6, rel=3e-3)  # SPEC §11 (rounded)
    size = ck.safetensors_size("full")
    header = size - 8 - 2 * n_params
    assert header % 8 == 0 and 0 < header < 200 * 711  # ~150 JSON bytes per tensor
    assert size == pytest.approx(8.86e9, rel=2e-3)


def test_tensor_specs_accepts_params_dict(tiny_dir):
    params = json.loads((tiny_dir / "params.json").read_text())
    assert ck.tensor_specs(params) == ck.tensor_specs("tiny")
    with pytest.raises(ValueError):
        ck.tensor_specs("huge")


# ---------------------------------------------------------------------------
# BF16
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("value, bits", [
    (1.0, 0x3F80),
    (1 + 2**-8, 0x3F80),  # tie, lower half even: stays
    (1 + 3 * 2**-8, 0x3F82),  # tie, lower half odd: rounds up to even
    (1 + 2**-8 + 2**-20, 0x3F81),  # just above the tie
    (-2.5, 0xC020),
    (0.0, 0x0000),
    (-0.0, 0x8000),
    (np.inf, 0x7F80),
    (-np.inf, 0xFF80),
    (np.finfo(np.float32).max, 0x7F80),  # overflows to inf
])
def test_bf16_rounding(value, bits):
    out = bf16.float32_to_bf16_bits(np.array([value], dtype=np.float32))
    assert out.dtype == np.uint16 and int(out[0]) == bits


def test_bf16_nan_and_roundtrip():
    out = bf16.float32_to_bf16_bits(np.array([np.nan, -np.nan], dtype=np.float32))
    assert np.isnan(bf16.bf16_bits_to_float32(out)).all()
    x = np.random.default_rng(0).standard_normal(10_000, dtype=np.float32)
    back = bf16.bf16_bits_to_float32(bf16.float32_to_bf16_bits(x))
    assert np.all(np.abs(back - x) <= np.abs(x) * 2**-8)  # half a bf16 ulp
    exact = back.copy()
    assert np.array_equal(bf16.bf16_bits_to_float32(bf16.float32_to_bf16_bits(exact)), exact)


# ---------------------------------------------------------------------------
# values, determinism
# ---------------------------------------------------------------------------

def test_weight_statistics(tiny_dir):
    path = tiny_dir / "consolidated.safetensors"
    emb = tensor(path, EMB + "tok_embeddings.weight")
    assert np.isfinite(emb).all()
    assert emb[:1000].std() == pytest.approx(0.5, rel=0.05)
    assert emb[1000:].std() == pytest.approx(1.0, rel=0.05)
    norm = tensor(path, "layers.0.attention_norm.weight")
    assert abs(norm.mean() - 1) < 0.05 and 0.05 < norm.std() < 0.15
    wq = tensor(path, "layers.0.attention.wq.weight")
    assert wq.std() == pytest.approx(1 / 8, rel=0.1)  # 1/sqrt(dim=64)


def test_deterministic_per_seed(tmp_path, tiny_dir):
    same = ck.write_checkpoint(tmp_path / "a", "tiny", seed=0)
    other = ck.write_checkpoint(tmp_path / "b", "tiny", seed=1)
    ref = (tiny_dir / "consolidated.safetensors").read_bytes()
    assert (same / "consolidated.safetensors").read_bytes() == ref
    assert (other / "consolidated.safetensors").read_bytes() != ref
    for name in ("params.json", "tekken.json"):
        assert (same / name).read_bytes() == (tiny_dir / name).read_bytes()


# ---------------------------------------------------------------------------
# params.json, tekken.json
# ---------------------------------------------------------------------------

def test_params_json(tmp_path, tiny_dir):
    p = json.loads((tiny_dir / "params.json").read_text())
    assert (p["dim"], p["n_layers"], p["head_dim"], p["n_heads"], p["n_kv_heads"]) == (64, 2, 16, 4, 2)
    assert (p["hidden_dim"], p["vocab_size"], p["sliding_window"]) == (160, 4096, 8192)
    assert p["tied_embeddings"] is True and p["ada_rms_norm_t_cond"] is True
    assert p["ada_rms_norm_t_cond_dim"] == 8 and p["use_biases"] is False
    wm = p["multimodal"]["whisper_model_args"]
    enc = wm["encoder_args"]
    assert (enc["dim"], enc["n_layers"], enc["head_dim"], enc["hidden_dim"]) == (48, 2, 12, 96)
    assert (enc["n_heads"], enc["n_kv_heads"], enc["sliding_window"]) == (4, 4, 750)
    assert enc["use_biases"] is True and enc["ffn_type"] == "swiglu"
    assert enc["audio_encoding_args"] == {"sampling_rate": 16000, "frame_rate": 12.5,
                                          "num_mel_bins": 128, "hop_length": 160,
                                          "window_size": 400, "global_log_mel_max": 1.5}
    assert wm["downsample_args"]["downsample_factor"] == 4
    w = ck.write_checkpoint(tmp_path / "w", "tiny-window")
    pw = json.loads((w / "params.json").read_text())
    assert pw["sliding_window"] == 20
    assert pw["multimodal"]["whisper_model_args"]["encoder_args"]["sliding_window"] == 12
    assert ck.tensor_specs("tiny-window") == ck.tensor_specs("tiny")
    full = ck.PRESETS["full"]
    assert (full["dim"], full["n_layers"], full["vocab_size"]) == (3072, 26, 131072)


def test_tekken_json(tiny_dir):
    t = json.loads((tiny_dir / "tekken.json").read_text(encoding="utf-8"))
    cfg = t["config"]
    assert cfg["default_vocab_size"] == 4096 and cfg["default_num_special_tokens"] == 1000
    assert cfg["version"] == "v7" and cfg["num_vocab_tokens"] == len(t["vocab"]) == 3096
    assert len(t["special_tokens"]) == 1000
    assert [s["rank"] for s in t["special_tokens"]] == list(range(1000))
    assert all(s["is_control"] for s in t["special_tokens"])
    names = {s["rank"]: s["token_str"] for s in t["special_tokens"]}
    assert (names[0], names[1], names[2]) == ("<unk>", "<s>", "</s>")
    assert (names[24], names[25]) == ("[AUDIO]", "[BEGIN_AUDIO]")
    assert (names[32], names[33]) == ("[STREAMING_PAD]", "[STREAMING_WORD]")
    assert names[999] == "<SPECIAL_999>"
    assert t["vocab"][0] == {"rank": 0, "token_bytes": "AA==", "token_str": "\x00"}
    assert [v["rank"] for v in t["vocab"]] == list(range(3096))
    audio = t["audio"]
    assert audio["audio_encoding_config"] == {"num_mel_bins": 128, "hop_length": 160, "window_size": 400}
    assert audio["transcription_delay_ms"] == 480 and audio["streaming_n_left_pad_tokens"] == 32
    assert audio["transcription_format"] == "streaming" and audio["frame_rate"] == 12.5


def test_tekken_json_loads_in_mistral_common(tiny_dir):
    tekken = pytest.importorskip("mistral_common.tokens.tokenizers.tekken")
    tok = tekken.Tekkenizer.from_file(tiny_dir / "tekken.json")
    assert tok.n_words == 4096 and tok.bos_id == 1 and tok.eos_id == 2
    assert tok.audio.get_num_delay_tokens() == 6


def test_missing_mistral_common_is_a_clear_error(tmp_path, monkeypatch):
    ck._tekken_source.cache_clear()
    monkeypatch.setitem(sys.modules, "mistral_common", None)
    try:
        with pytest.raises(RuntimeError, match="pip install mistral_common"):
            ck.write_checkpoint(tmp_path / "x", "tiny")
    finally:
        ck._tekken_source.cache_clear()
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------
# directory handling, progress, CLI
# ---------------------------------------------------------------------------

def test_refuses_non_empty_dir_and_leaves_no_temp_files(tmp_path):
    out = ck.write_checkpoint(tmp_path / "m", "tiny")
    with pytest.raises(FileExistsError):
        ck.write_checkpoint(out, "tiny")
    seen = []
    ck.write_checkpoint(out, "tiny", seed=2, overwrite=True, progress=lambda d, t: seen.append((d, t)))
    assert sorted(p.name for p in out.iterdir()) == ["consolidated.safetensors", "params.json", "tekken.json"]
    size = (out / "consolidated.safetensors").stat().st_size
    assert seen and seen[-1] == (size, size)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


def test_cli(tmp_path, capsys):
    ck.main([str(tmp_path / "c"), "--preset", "tiny-window", "--seed=3"])
    assert "tiny-window" in capsys.readouterr().out
    assert json.loads((tmp_path / "c" / "params.json").read_text())["sliding_window"] == 20
    with pytest.raises(SystemExit):
        ck.main([str(tmp_path / "d"), "--preset", "huge"])
    with pytest.raises(SystemExit):
        ck.main([str(tmp_path / "c")])  # not empty, no --overwrite
    with pytest.raises(SystemExit):
        ck.main([])
