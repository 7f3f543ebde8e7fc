"""Tier 3: the tiny models end to end against the independent float32 reference (tests/reference.py)."""
import numpy as np
import pytest
import soundfile as sf

import reference
import voxnp
from voxnp.audio import load_audio
from voxnp.dump import dump_arrays

TOL = 2e-3  # of the reference's largest magnitude (issue #2)


def assert_matches(ours, ref, tol=TOL):
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err < tol, f"max error {err:.2e} of the largest magnitude"


@pytest.fixture(scope="module")
def ref_models(tiny_dir, window_dir):
    return {"tiny": reference.load_model_dir(tiny_dir), "window": reference.load_model_dir(window_dir)}


@pytest.mark.parametrize("which", ["tiny", "window"])
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_dump_matches_reference(which, backend, request, ref_models, speech):
    model = voxnp.load(request.getfixturevalue(f"{'tiny' if which == 'tiny' else 'window'}_dir"), backend=backend)
    ours = dump_arrays(model, speech)
    ref = reference.forward(ref_models[which], speech)
    np.testing.assert_allclose(ours["mel"], ref["mel"], atol=5e-4, rtol=0)
    assert_matches(ours["enc"], ref["enc"])
    assert_matches(ours["audio_embeds"], ref["audio_embeds"])
    np.testing.assert_array_equal(ours["tokens"], ref["tokens"])
    assert_matches(ours["logits"], ref["logits"])
    # N = 32 + ceil(n / 1280) + 17 tokens, 8 mel frames and 4 encoder positions each
    n_tokens = 32 + -(-len(speech) // 1280) + 17
    assert ours["mel"].shape[1] == 8 * n_tokens and ours["enc"].shape[0] == 4 * n_tokens
    assert ours["audio_embeds"].shape[0] == n_tokens


def test_teacher_forcing_matches_reference(tiny_model, ref_models, speech):
    teacher = np.random.default_rng(5).integers(1000, 4096, 30)
    ours = dump_arrays(tiny_model, speech, teacher=teacher)
    ref = reference.forward(ref_models["tiny"], speech, teacher=teacher)
    assert len(ours["tokens"]) == 30
    np.testing.assert_array_equal(ours["tokens"], ref["tokens"])
    assert_matches(ours["logits"], ref["logits"])
    # feeding other tokens must change the logits (the decoder does read its input)
    greedy = dump_arrays(tiny_model, speech, steps=30)
    assert np.abs(greedy["logits"][1:] - ours["logits"][1:]).max() > 1e-2


@pytest.mark.parametrize("delay_ms", [80, 960, 2400])
def test_other_delays_match_reference(tiny_model, ref_models, speech, delay_ms):
    ours = dump_arrays(tiny_model, speech[:20000], delay_ms=delay_ms)
    ref = reference.forward(ref_models["tiny"], speech[:20000], delay_tokens=delay_ms // 80)
    np.testing.assert_array_equal(ours["tokens"], ref["tokens"])
    assert_matches(ours["logits"], ref["logits"])


def test_steps_limit(tiny_model, speech):
    out = dump_arrays(tiny_model, speech, steps=4)
    assert out["tokens"].shape == (4,) and out["logits"].shape == (4, 4096)
    none = dump_arrays(tiny_model, speech, steps=0)
    assert none["tokens"].shape == (0,) and none["logits"].shape == (0, 4096)
    assert none["audio_embeds"].shape == out["audio_embeds"].shape   # the encoder still ran
    empty = dump_arrays(tiny_model, speech, teacher=np.zeros(0, np.int64))
    assert empty["tokens"].shape == (0,)


@pytest.mark.parametrize("rate,channels,subtype", [(44100, 2, "PCM_16"), (8000, 1, "PCM_16"),
                                                   (22050, 1, "FLOAT"), (16000, 1, "FLOAT")])
def test_resampled_input_matches_reference(tmp_path, tiny_model, ref_models, rate, channels, subtype):
    t = np.arange(int(rate * 1.3)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 3 * t)
    x = np.stack([x, 0.5 * np.roll(x, 7)], axis=1)[:, :channels]
    path = tmp_path / f"in_{rate}.wav"
    sf.write(path, x, rate, subtype=subtype)
    ours = load_audio(path)
    expect = reference.prepare_audio(path)
    np.testing.assert_array_equal(ours, expect)
    a, b = dump_arrays(tiny_model, ours, steps=8), reference.forward(ref_models["tiny"], expect, max_steps=8)
    np.testing.assert_allclose(a["mel"], b["mel"], atol=5e-4, rtol=0)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])


def test_sixteen_bit_input_passes_unchanged(tmp_path):
    pcm = np.random.default_rng(1).integers(-32768, 32767, 5000).astype(np.int16)
    sf.write(tmp_path / "a.wav", pcm, 16000, subtype="PCM_16")
    np.testing.assert_array_equal(load_audio(tmp_path / "a.wav"), pcm / np.float32(32768))


def test_transcribe_api_on_path_and_array(tiny_model, tiny_dir, speech, tmp_path):
    path = tmp_path / "s.wav"
    sf.write(path, speech, 16000, subtype="PCM_16")
    ref = reference.forward(reference.load_model_dir(tiny_dir), speech)
    expect = reference.decode_tokens(reference.load_model_dir(tiny_dir), ref["tokens"])
    assert tiny_model.transcribe(speech) == expect
    assert tiny_model.transcribe(str(path)) == expect
    assert voxnp.transcribe(str(path), model_dir=tiny_dir) == expect
