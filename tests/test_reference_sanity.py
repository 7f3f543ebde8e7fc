"""Sanity checks of tests/reference.py itself, on hand-derived values and a tiny random model.

The tiny checkpoint writer lives here on purpose: the reference must not depend on voxnp.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference as ref  # noqa: E402

# ----------------------------------------------------------------------------------------
# tiny checkpoint
# ----------------------------------------------------------------------------------------

TINY = dict(dim=64, n_layers=2, head_dim=16, hidden_dim=96, n_heads=4, n_kv_heads=2,
            vocab_size=1040, sliding_window=16, t_dim=8,
            enc_dim=32, enc_layers=2, enc_head_dim=8, enc_hidden=48, enc_heads=4,
            enc_window=24, n_mels=128)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bf16 bits."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def write_safetensors(path: Path, tensors: dict) -> None:
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        bits = f32_to_bf16_bits(arr)
        data = bits.tobytes()
        header[name] = {"dtype": "BF16", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header).encode()
    hb += b" " * ((-len(hb)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def tiny_tensors(seed: int = 0) -> dict:
    c = TINY
    rng = np.random.default_rng(seed)

    def lin(out, inp):
        return (rng.standard_normal((out, inp)) / math.sqrt(inp)).astype(np.float32)

    def vec(n, base=0.0, s=0.1):
        return (base + s * rng.standard_normal(n)).astype(np.float32)

    E = ref.ENC
    t = {}
    D, ED = c["dim"], c["enc_dim"]
    t[ref.TOK_EMB] = (rng.standard_normal((c["vocab_size"], D))).astype(np.float32)
    t[E + "conv_layers.0.conv.weight"] = (rng.standard_normal((ED, c["n_mels"], 3)) / math.sqrt(3 * c["n_mels"])).astype(np.float32)
    t[E + "conv_layers.0.conv.bias"] = vec(ED)
    t[E + "conv_layers.1.conv.weight"] = (rng.standard_normal((ED, ED, 3)) / math.sqrt(3 * ED)).astype(np.float32)
    t[E + "conv_layers.1.conv.bias"] = vec(ED)
    eq = c["enc_heads"] * c["enc_head_dim"]
    for i in range(c["enc_layers"]):
        p = E + f"transformer.layers.{i}."
        t[p + "attention.wq.weight"] = lin(eq, ED)
        t[p + "attention.wq.bias"] = vec(eq)
        t[p + "attention.wk.weight"] = lin(eq, ED)
        t[p + "attention.wv.weight"] = lin(eq, ED)
        t[p + "attention.wv.bias"] = vec(eq)
        t[p + "attention.wo.weight"] = lin(ED, eq)
        t[p + "attention.wo.bias"] = vec(ED)
        t[p + "attention_norm.weight"] = vec(ED, 1.0)
        t[p + "ffn_norm.weight"] = vec(ED, 1.0)
        t[p + "feed_forward.w1.weight"] = lin(c["enc_hidden"], ED)
        t[p + "feed_forward.w3.weight"] = lin(c["enc_hidden"], ED)
        t[p + "feed_forward.w2.weight"] = lin(ED, c["enc_hidden"])
        t[p + "feed_forward.w2.bias"] = vec(ED)
    t[E + "transformer.norm.weight"] = vec(ED, 1.0)
    t[ref.PROJ + "0.weight"] = lin(D, 4 * ED)
    t[ref.PROJ + "2.weight"] = lin(D, D)
    q, kv = c["n_heads"] * c["head_dim"], c["n_kv_heads"] * c["head_dim"]
    for i in range(c["n_layers"]):
        p = f"layers.{i}."
        t[p + "attention_norm.weight"] = vec(D, 1.0)
        t[p + "ffn_norm.weight"] = vec(D, 1.0)
        t[p + "attention.wq.weight"] = lin(q, D)
        t[p + "attention.wk.weight"] = lin(kv, D)
        t[p + "attention.wv.weight"] = lin(kv, D)
        t[p + "attention.wo.weight"] = lin(D, q)
        t[p + "feed_forward.w1.weight"] = lin(c["hidden_dim"], D)
        t[p + "feed_forward.w3.weight"] = lin(c["hidden_dim"], D)
        t[p + "feed_forward.w2.weight"] = lin(D, c["hidden_dim"])
        t[p + "ada_rms_norm_t_cond.0.weight"] = lin(c["t_dim"], D)
        t[p + "ada_rms_norm_t_cond.2.weight"] = lin(D, c["t_dim"])
    t["norm.weight"] = vec(D, 1.0)
    return t


def tiny_params() -> dict:
    c = TINY
    return {
        "dim": c["dim"], "n_layers": c["n_layers"], "head_dim": c["head_dim"],
        "hidden_dim": c["hidden_dim"], "n_heads": c["n_heads"], "n_kv_heads": c["n_kv_heads"],
        "vocab_size": c["vocab_size"], "norm_eps": 1e-5, "rope_theta": 1e6,
        "sliding_window": c["sliding_window"], "tied_embeddings": True,
        "ada_rms_norm_t_cond": True, "ada_rms_norm_t_cond_dim": c["t_dim"], "use_biases": False,
        "multimodal": {"whisper_model_args": {
            "encoder_args": {
                "dim": c["enc_dim"], "n_layers": c["enc_layers"], "head_dim": c["enc_head_dim"],
                "hidden_dim": c["enc_hidden"], "n_heads": c["enc_heads"], "n_kv_heads": c["enc_heads"],
                "rope_theta": 1e6, "sliding_window": c["enc_window"], "norm_eps": 1e-5,
                "ffn_type": "swiglu", "norm_type": "rms_norm", "pos_embed": "rope", "causal": True,
                "audio_encoding_args": {"sampling_rate": 16000, "frame_rate": 12.5,
                                        "num_mel_bins": c["n_mels"], "hop_length": 160,
                                        "window_size": 400, "global_log_mel_max": 1.5},
            },
            "downsample_args": {"downsample_factor": 4},
        }},
    }


TOKEN_TEXTS = [b"he", b"llo", b" w", b"orld", "é".encode()[:1], "é".encode()[1:]]


def tiny_tekken() -> dict:
    vocab = []
    for r in range(TINY["vocab_size"] - 1000):
        tb = TOKEN_TEXTS[r] if r < len(TOKEN_TEXTS) else f"<{r}>".encode()
        vocab.append({"rank": r, "token_bytes": base64.b64encode(tb).decode(), "token_str": None})
    specials = [{"rank": i, "token_str": f"<SPECIAL_{i}>", "is_control": True} for i in range(1000)]
    return {
        "config": {"pattern": "", "num_vocab_tokens": len(vocab), "default_vocab_size": TINY["vocab_size"],
                   "default_num_special_tokens": 1000, "version": "v7"},
        "vocab": vocab,
        "special_tokens": specials,
        "audio": {"sampling_rate": 16000, "frame_rate": 12.5,
                  "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
                  "transcription_delay_ms": 480, "streaming_n_left_pad_tokens": 32,
                  "transcription_format": "streaming"},
    }


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_voxtral")
    (d / "params.json").write_text(json.dumps(tiny_params()))
    (d / "tekken.json").write_text(json.dumps(tiny_tekken()))
    tensors = tiny_tensors()
    write_safetensors(d / "consolidated.safetensors", tensors)
    return d, tensors


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    return ref.load_model_dir(tiny_dir[0])


# ----------------------------------------------------------------------------------------
# checkpoint
# ----------------------------------------------------------------------------------------

def test_bf16_conversion_exact():
    x = np.array([1.0, -2.5, 3.140625, 0.0, -0.0, 65280.0, 1e-3], np.float32)
    bits = f32_to_bf16_bits(x)
    back = ref.bf16_bits_to_f32(bits)
    assert back[0] == 1.0 and back[1] == -2.5 and back[2] == 3.140625 and back[5] == 65280.0
    assert abs(back[6] - 1e-3) < 1e-5


def test_load_model_dir(tiny_dir, tiny_model):
    _, tensors = tiny_dir
    m = tiny_model
    assert m["cfg"]["samples_per_token"] == 1280
    assert m["cfg"]["n_left_pad_tokens"] == 32 and m["cfg"]["n_special"] == 1000
    assert m["cfg"]["enc"]["dim"] == TINY["enc_dim"] and m["cfg"]["downsample_factor"] == 4
    assert set(m["raw"]) == set(tensors)
    for name, arr in tensors.items():
        assert m["raw"][name][0] == "BF16"
        w = ref.weight(m, name)
        assert w.dtype == np.float32 and w.shape == arr.shape
        np.testing.assert_array_equal(w, ref.bf16_bits_to_f32(f32_to_bf16_bits(arr)))


# ----------------------------------------------------------------------------------------
# audio front end
# ----------------------------------------------------------------------------------------

def test_slaney_filters_hand_values():
    F = ref.slaney_mel_filters(128, 400, 16000)  # [201, 128]
    assert F.shape == (201, 128)
    # mel(8000) = 15 + 27 ln(8) / ln(6.4); 130 equally spaced points from 0
    mel_max = 15.0 + 27.0 * math.log(8.0) / math.log(6.4)
    step = mel_max / 129.0
    # filter 0: edges 0, step, 2*step mel, all in the linear region (200/3 Hz per mel)
    f0, f1, f2 = 0.0, step * 200 / 3, 2 * step * 200 / 3
    bin1 = 40.0  # fft bin 1 at 16000/400 Hz
    assert f1 < bin1 < f2
    expect = (f2 - bin1) / (f2 - f1) * 2.0 / (f2 - f0)
    assert F[1, 0] == pytest.approx(expect, rel=1e-12)
    assert F[0, 0] == 0.0 and F[2, 0] == 0.0
    # filter 100: log region, f = 1000 exp(ln(6.4)/27 (m - 15))
    hz = [1000.0 * math.exp(math.log(6.4) / 27.0 * ((100 + k) * step - 15.0)) for k in range(3)]
    for b in range(201):
        fb = 40.0 * b
        tri = max(0.0, min((fb - hz[0]) / (hz[1] - hz[0]), (hz[2] - fb) / (hz[2] - hz[1])))
        assert F[b, 100] == pytest.approx(tri * 2.0 / (hz[2] - hz[0]), rel=1e-9, abs=1e-15)
    assert (F[:, 100] > 0).sum() >= 2
    # the last filter ends exactly at 8000 Hz
    assert F[200, 127] == pytest.approx(0.0, abs=1e-12)
    # every filter has some support
    assert (F.max(axis=0) > 0).all()


def test_mel_scale_roundtrip_and_knee():
    f = np.array([0.0, 200.0, 999.0, 1000.0, 1234.5, 8000.0])
    np.testing.assert_allclose(ref.mel_to_hz_slaney(ref.hz_to_mel_slaney(f)), f, rtol=1e-12, atol=1e-9)
    assert ref.hz_to_mel_slaney(1000.0) == pytest.approx(15.0)
    assert ref.hz_to_mel_slaney(6400.0) == pytest.approx(42.0)  # 15 + 27


def test_log_mel_sine_peak_and_shape():
    sr = 16000
    n = 16 * 1280
    x = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(n) / sr).astype(np.float32)
    m = ref.log_mel(x)
    assert m.shape == (128, n // 160) and m.dtype == np.float32
    F = ref.slaney_mel_filters()
    expected_bin = int(np.argmax(F[25]))  # 1000 Hz = fft bin 25
    assert expected_bin in (41, 42)
    prof = m[:, 4:-4].mean(axis=1)
    assert int(np.argmax(prof)) == expected_bin
    # floor: log10 clamp at 1.5 - 8 -> (-6.5 + 4) / 4
    z = ref.log_mel(np.zeros(2560, np.float32))
    np.testing.assert_allclose(z, (-6.5 + 4.0) / 4.0)


def test_power_spectrogram_matches_direct_dft():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1600)
    P = ref.power_spectrogram(x, 400, 160)
    assert P.shape == (201, 10)  # 11 centred frames, last dropped
    xp = np.pad(x, 200, mode="reflect")
    w = 0.5 * (1 - np.cos(2 * np.pi * np.arange(400) / 400))
    for t in (0, 3, 9):
        seg = xp[t * 160 : t * 160 + 400] * w
        k = np.arange(201)[:, None]
        X = (seg[None, :] * np.exp(-2j * np.pi * k * np.arange(400)[None, :] / 400)).sum(axis=1)
        np.testing.assert_allclose(P[:, t], np.abs(X) ** 2, rtol=1e-9, atol=1e-9)
    assert xp[199] == x[1] and xp[200] == x[0]  # reflect (not symmetric) padding


def test_pad_audio(tiny_model):
    for n, d in [(0, 6), (1, 6), (1280, 6), (3000, 2)]:
        p = ref.pad_audio(np.ones(n, np.float32), tiny_model, d)
        n_tok = 32 + -(-n // 1280) + d + 11
        assert p.shape[0] == n_tok * 1280
        assert p[: 32 * 1280].sum() == 0 and p.sum() == n


def test_prepare_audio(tmp_path):
    import soundfile as sf

    rng = np.random.default_rng(2)
    pcm = rng.integers(-20000, 20000, 16000).astype(np.int16)
    sf.write(tmp_path / "a.wav", pcm, 16000, subtype="PCM_16")
    y = ref.prepare_audio(tmp_path / "a.wav")
    np.testing.assert_array_equal(y, pcm.astype(np.float32) / 32768.0)
    # stereo 8 kHz float: channel mean, resample (x2 length), values on the int16 grid
    st = (0.3 * rng.standard_normal((8000, 2))).clip(-1, 1).astype(np.float32)
    sf.write(tmp_path / "b.wav", st, 8000, subtype="FLOAT")
    y = ref.prepare_audio(tmp_path / "b.wav")
    assert y.dtype == np.float32 and y.shape == (16000,)
    assert np.array_equal(y * 32768.0, np.round(y * 32768.0))


# ----------------------------------------------------------------------------------------
# ops and masks
# ----------------------------------------------------------------------------------------

def test_window_mask():
    m = ref.window_mask(np.arange(5, 9), np.arange(9), 3)
    for a, i in enumerate(range(5, 9)):
        for j in range(9):
            assert m[a, j] == (i - 3 < j <= i)


def test_rope_interleaved_pairs():
    x = np.zeros((1, 1, 4), np.float32)
    x[0, 0] = [1.0, 0.0, 1.0, 0.0]
    cos, sin = ref.rope_cos_sin(np.array([3]), 4, 100.0)
    y = ref.apply_rope_interleaved(x, cos, sin)[0, 0]
    a0, a1 = 3.0, 3.0 * 100.0 ** (-0.5)
    np.testing.assert_allclose(y, [math.cos(a0), math.sin(a0), math.cos(a1), math.sin(a1)], rtol=1e-6)


def test_t_cond():
    tc = ref.t_cond(8, 6)
    f = [math.exp(-math.log(10000) * j / 4) for j in range(4)]
    np.testing.assert_allclose(tc, [math.cos(6 * v) for v in f] + [math.sin(6 * v) for v in f], rtol=1e-6)


def test_causal_conv_stride2():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    w = rng.standard_normal((2, 3, 3)).astype(np.float32)
    b = np.array([0.5, -1.0], np.float32)
    y = ref.causal_conv1d(x, w, b, stride=2)
    assert y.shape == (2, 4)
    xp = np.concatenate([np.zeros((3, 1)), x], axis=1)
    for t in range(4):
        np.testing.assert_allclose(y[:, t], np.einsum("oik,ik->o", w, xp[:, 2 * t : 2 * t + 3]) + b, rtol=1e-5)


# ----------------------------------------------------------------------------------------
# tiny model
# ----------------------------------------------------------------------------------------

def test_encoder_causal_prefix(tiny_model):
    rng = np.random.default_rng(4)
    mel = rng.uniform(-0.6, 1.0, (128, 96)).astype(np.float32)
    full = ref.encode(tiny_model, mel)
    assert full.shape == (48, TINY["enc_dim"])
    part = ref.encode(tiny_model, mel[:, :64])
    np.testing.assert_allclose(part, full[:32], rtol=1e-5, atol=1e-5)


def test_encoder_window_boundary(tiny_model):
    rng = np.random.default_rng(5)
    W, n_layers = TINY["enc_window"], TINY["enc_layers"]
    h = rng.standard_normal((64, TINY["enc_dim"])).astype(np.float32)
    out = ref.encoder_layers(tiny_model, h)
    h2 = h.copy()
    h2[0] += 1.0
    out2 = ref.encoder_layers(tiny_model, h2)
    reach = n_layers * (W - 1)  # last position position 0 can influence
    assert np.abs(out2[reach] - out[reach]).max() > 1e-4
    np.testing.assert_array_equal(out2[reach + 1 :], out[reach + 1 :])


def test_decoder_prefill_equals_single_steps(tiny_model):
    rng = np.random.default_rng(6)
    P = 39
    x = rng.standard_normal((P, TINY["dim"])).astype(np.float32)
    scales = ref.ada_scales(tiny_model, 6)
    c1 = ref.new_cache(tiny_model)
    multi = ref.decoder_forward(tiny_model, x, 0, c1, scales)
    c2 = ref.new_cache(tiny_model)
    single = np.stack([ref.decoder_forward(tiny_model, x[p : p + 1], p, c2, scales)[0] for p in range(P)])
    np.testing.assert_allclose(multi, single, rtol=1e-4, atol=1e-4)
    # mixed chunking too
    c3 = ref.new_cache(tiny_model)
    a = ref.decoder_forward(tiny_model, x[:20], 0, c3, scales)
    b = ref.decoder_forward(tiny_model, x[20:], 20, c3, scales)
    np.testing.assert_allclose(np.concatenate([a, b]), multi, rtol=1e-4, atol=1e-4)


def test_decoder_window_boundary(tiny_model):
    rng = np.random.default_rng(7)
    W, n_layers = TINY["sliding_window"], TINY["n_layers"]
    x = rng.standard_normal((40, TINY["dim"])).astype(np.float32)
    scales = ref.ada_scales(tiny_model, 6)
    out = ref.decoder_forward(tiny_model, x, 0, ref.new_cache(tiny_model), scales)
    x2 = x.copy()
    x2[0] += 1.0
    out2 = ref.decoder_forward(tiny_model, x2, 0, ref.new_cache(tiny_model), scales)
    reach = n_layers * (W - 1)
    assert np.abs(out2[reach] - out[reach]).max() > 1e-4
    np.testing.assert_array_equal(out2[reach + 1 :], out[reach + 1 :])


def test_ada_scale_applied(tiny_model):
    """delay changes s (SPEC §6.5): different delays give different logits for equal inputs."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, TINY["dim"])).astype(np.float32)
    a = ref.decoder_forward(tiny_model, x, 0, ref.new_cache(tiny_model), ref.ada_scales(tiny_model, 6))
    b = ref.decoder_forward(tiny_model, x, 0, ref.new_cache(tiny_model), ref.ada_scales(tiny_model, 3))
    assert np.abs(a - b).max() > 1e-4


def test_forward_end_to_end(tiny_model):
    rng = np.random.default_rng(9)
    audio = (0.1 * rng.standard_normal(8000)).astype(np.float32)
    out = ref.forward(tiny_model, audio)
    N = 32 + 7 + 17
    assert out["mel"].shape == (128, N * 8)
    assert out["enc"].shape == (N * 4, TINY["enc_dim"])
    assert out["audio_embeds"].shape == (N, TINY["dim"])
    toks, lg = out["tokens"], out["logits"]
    assert toks.dtype == np.int32 and lg.dtype == np.float32
    L = 33 + 6
    assert 1 <= len(toks) <= N - L + 1 and lg.shape == (len(toks), TINY["vocab_size"])
    np.testing.assert_array_equal(toks, lg.argmax(axis=1))
    assert (toks[:-1] != ref.EOS).all()
    # teacher forcing with its own tokens reproduces the greedy run
    tf = ref.forward(tiny_model, audio, teacher=toks)
    np.testing.assert_array_equal(tf["tokens"], toks)
    np.testing.assert_allclose(tf["logits"], lg, rtol=1e-5, atol=1e-5)
    # max_steps caps; a long teacher runs all available positions
    assert len(ref.forward(tiny_model, audio, max_steps=2)["tokens"]) == min(2, len(toks))
    long = ref.forward(tiny_model, audio, teacher=np.full(100, 1005))
    assert len(long["tokens"]) == N - L + 1
    # a different delay changes prompt length and right padding
    d2 = ref.forward(tiny_model, audio, delay_tokens=2, max_steps=1)
    assert d2["audio_embeds"].shape[0] == 32 + 7 + 13


def test_decode_tokens(tiny_model):
    assert ref.decode_tokens(tiny_model, [1, 1000, 1001, 32, 1002, 1003, 2]) == "hello world"
    assert ref.decode_tokens(tiny_model, [1004, 1005]) == "é"
    assert ref.decode_tokens(tiny_model, [1004]) == "\ufffd"
