"""The audio front end (SPEC §3): offline padding, Slaney filters, incremental log-mel vs tests/reference.py."""
from __future__ import annotations

import numpy as np
import pytest

import reference
from conftest import shared_audio
from voxnp.audio import load_audio, pad_offline
from voxnp.config import AudioConfig
from voxnp.mel import LogMel, hz_to_mel, mel_to_hz, slaney_filters

CFG = AudioConfig(sampling_rate=16000, frame_rate=12.5, n_mels=128, hop_length=160, window_size=400,
                  log_mel_max=1.5, n_left_pad_tokens=32, default_delay_ms=480)  # the real model
SPT = CFG.samples_per_token  # 1280
LEFT, RIGHT = 32, 6 + 1 + 10  # tokens of padding at the default 480 ms delay (SPEC §3.2)


def one_shot(signal: np.ndarray) -> np.ndarray:
    m = LogMel(CFG)
    return np.concatenate([m.feed(signal), m.finish()], axis=1)


@pytest.fixture(scope="module")
def jfk_padded() -> np.ndarray:
    return pad_offline(load_audio(shared_audio("jfk.wav")), SPT, LEFT, RIGHT)


def test_log_mel_matches_reference(jfk_padded):
    ours = one_shot(jfk_padded)
    ref = reference.log_mel(jfk_padded)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=5e-4, rtol=0)
    assert ours.max() > 0.5 and ours.min() == pytest.approx(-0.625)  # speech and padding both there


def test_frame_counts(jfk_padded):
    """T = padded samples / 160: 8 frames per 80 ms token."""
    n_tokens = len(jfk_padded) // SPT
    assert len(jfk_padded) == n_tokens * SPT
    assert one_shot(jfk_padded).shape == (128, len(jfk_padded) // 160) == (128, 8 * n_tokens)
    for n in (400, 1280, 1600, 3 * 1280):  # short signals too (longer than the 200-sample reflection)
        assert one_shot(np.zeros(n, np.float32)).shape == (128, n // 160)


def test_slaney_filters_match_reference():
    for n_mels, n_fft, rate in [(128, 400, 16000), (80, 400, 16000), (64, 512, 22050)]:
        ours = slaney_filters(n_mels, n_fft, rate)
        ref = reference.slaney_mel_filters(n_mels, n_fft, rate).T  # reference is [n_fft/2+1, n_mels]
        assert ours.shape == (n_mels, n_fft // 2 + 1)
        np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-15)


def test_mel_scale():
    assert hz_to_mel(1000.0) == pytest.approx(15.0)          # 1000 / (200/3)
    assert hz_to_mel(500.0) == pytest.approx(7.5)            # linear below 1 kHz
    assert hz_to_mel(6400.0) == pytest.approx(15.0 + 27.0)   # 27 mels per factor 6.4
    f = np.array([0.0, 100.0, 999.0, 1000.0, 4321.0, 8000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f)), f, rtol=1e-12, atol=1e-9)


def test_chunked_equals_one_shot(jfk_padded):
    """LogMel fed in random chunks, 0- and 1-sample chunks included, gives the one-shot frames."""
    signal = jfk_padded[:LEFT * SPT + 3 * 16000]  # 32 tokens of silence, then 3 s of speech
    expected = one_shot(signal)
    rng = np.random.default_rng(0)
    sizes = [0, 1, 2, 159, 160, 161, 199, 200, 201, 399, 400, 401, 1280, 5000]
    for trial in range(3):
        m, parts, i = LogMel(CFG), [], 0
        if trial == 0:
            parts += [m.feed(signal[:0]), m.feed(signal[:1])]  # 0 then 1 sample before anything else
            i = 1
        while i < len(signal):
            k = int(rng.choice(sizes))
            parts.append(m.feed(signal[i:i + k]))
            i += k
        parts.append(m.finish())
        got = np.concatenate(parts, axis=1)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_frames_come_out_as_soon_as_their_window_is_complete():
    """Frame t needs samples up to t*160 + 199 (frame 0 also sample 200, its reflection of sample -200)."""
    m = LogMel(CFG)
    x = np.random.default_rng(1).standard_normal(4000).astype(np.float32) * 0.1
    total = 0
    for n in range(0, 4000, 37):
        total += m.feed(x[n:n + 37]).shape[1]
        fed = min(n + 37, 4000)
        assert total == (0 if fed <= 200 else (fed - 200) // 160 + 1)
    assert total + m.finish().shape[1] == 4000 // 160


@pytest.mark.parametrize("n", [1, 100, 1279, 1280, 1281, 2560, 16000, 17 * 1280])
def test_pad_offline_lengths(n):
    """N = 32 + ceil(n / 1280) + 17 tokens, the audio right after the 32 tokens of silence."""
    audio = np.random.default_rng(n).uniform(-1, 1, n).astype(np.float32)
    out = pad_offline(audio, SPT, LEFT, RIGHT)
    n_tokens = LEFT + -(-n // SPT) + RIGHT
    assert out.dtype == np.float32 and len(out) == n_tokens * SPT
    start = LEFT * SPT
    np.testing.assert_array_equal(out[start:start + n], audio)
    assert not out[:start].any() and not out[start + n:].any()


def test_pad_offline_exact_multiples():
    assert len(pad_offline(np.ones(1280, np.float32), SPT, LEFT, RIGHT)) == (32 + 1 + 17) * 1280
    assert len(pad_offline(np.ones(1281, np.float32), SPT, LEFT, RIGHT)) == (32 + 2 + 17) * 1280
    assert len(pad_offline(np.ones(1, np.float32), SPT, LEFT, RIGHT)) == (32 + 1 + 17) * 1280


def test_silence():
    """log10 floors at 1.5 - 8 = -6.5, so silence is (-6.5 + 4) / 4 = -0.625 everywhere."""
    mel = one_shot(pad_offline(np.zeros(1, np.float32), SPT, LEFT, RIGHT))
    assert mel.shape == (128, 8 * 50)
    assert np.all(mel == np.float32(-0.625))
