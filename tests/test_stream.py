"""Tier 4: the streaming session equals offline transcription for any chunking."""
import numpy as np
import pytest

from voxnp.dump import dump_arrays
from voxnp.stream import Stream


def run_stream(model, audio, chunks, interval=0.0, **opts):
    s = Stream(model, interval=interval, record=True, **opts)
    i = 0
    for n in chunks:
        s.feed(audio[i:i + n])
        i += n
    s.feed(audio[i:])
    s.finish()
    return s


def record_arrays(s):
    r = s.record
    return {"mel": np.concatenate(r.mel, 1), "enc": np.concatenate(r.enc),
            "audio_embeds": np.concatenate(r.audio_embeds), "logits": np.stack(r.logits),
            "tokens": np.array([t.id for t in s.tokens])}


def random_chunks(n, seed, high=5000):
    rng = np.random.default_rng(seed)
    out = []
    while sum(out) < n:
        out.append(int(rng.integers(0, high)))
    return out


@pytest.mark.parametrize("which", ["tiny_model", "window_model"])
@pytest.mark.parametrize("chunking", ["random", "one_block", "tiny_pieces", "interval"])
def test_chunked_feeding_equals_offline(request, which, chunking, speech):
    model = request.getfixturevalue(which)
    offline = dump_arrays(model, speech)
    chunks, interval = {"random": (random_chunks(len(speech), 1), 0.0),
                        "one_block": ([len(speech)], 0.0),
                        "tiny_pieces": ([1, 0, 1, 2, 3, 157, 1, 1] * 40, 0.0),
                        "interval": (random_chunks(len(speech), 2, 900), 0.37)}[chunking]
    s = run_stream(model, speech, chunks, interval)
    got = record_arrays(s)
    np.testing.assert_array_equal(got["tokens"], offline["tokens"])
    for key in ("mel", "enc", "audio_embeds", "logits"):
        np.testing.assert_allclose(got[key], offline[key], atol=1e-5 * np.abs(offline[key]).max(), rtol=0)


def test_one_sample_at_a_time(window_model, speech):
    audio = speech[:6000]
    offline = dump_arrays(window_model, audio)
    s = run_stream(window_model, audio, [1] * len(audio))
    np.testing.assert_array_equal([t.id for t in s.tokens], offline["tokens"])


def test_long_audio_wraps_every_ring(window_model):
    """12 s through windows of 12 (encoder) and 20 (decoder) positions: many wrap-arounds."""
    rng = np.random.default_rng(3)
    audio = (0.1 * rng.standard_normal(12 * 16000)).astype(np.float32)
    offline = dump_arrays(window_model, audio)
    s = run_stream(window_model, audio, random_chunks(len(audio), 4, 20000))
    assert s._enc.caches[0].length > 10 * s._enc.caches[0].capacity
    assert s._dec.caches[0].length > 3 * s._dec.caches[0].capacity   # window + prompt-sized spare
    np.testing.assert_array_equal([t.id for t in s.tokens], offline["tokens"])


def test_get_returns_each_token_once_and_times_increase(tiny_model, speech):
    s = Stream(tiny_model, interval=0.5)
    texts = []
    for i in range(0, len(speech), 4000):
        s.feed(speech[i:i + 4000])
        texts += s.get()
    s.finish()
    texts += list(s)
    assert "".join(texts) == s.text
    assert s.get() == []
    times = [t.time for t in s.tokens]
    assert times == sorted(times) and times[-1] <= len(speech) / 16000 + 17 * 0.08 + 1e-9


def test_interval_defers_work(tiny_model, speech):
    s = Stream(tiny_model, interval=2.0)
    ready = s._dec.n_positions                # the left padding is done at the start
    s.feed(speech[:16000])
    assert s._dec.n_positions == ready        # 1 s < 2 s: nothing run yet
    s.feed(speech[16000:40000])
    assert s._dec.n_positions > ready


def test_flush_then_continue(tiny_model, speech):
    s = Stream(tiny_model, interval=10.0)
    s.feed(speech[:20000])
    s.flush()
    n = len(s.tokens)
    assert n > 0 and not s.finished
    s.feed(speech[20000:])
    s.finish()
    assert len(s.tokens) > n


@pytest.mark.parametrize("bad,msg", [(np.array([0.1, np.nan], np.float32), "NaN"),
                                     (np.zeros((10, 2), np.float32), "1-D"),
                                     (np.zeros(10, np.int16), "dtype")])
def test_feed_rejects_bad_input(tiny_model, bad, msg):
    with pytest.raises(ValueError, match=msg):
        Stream(tiny_model).feed(bad)


def test_alternatives_follow_the_cutoff(tiny_model, speech):
    s = Stream(tiny_model, alt=0.999, alt_count=3)
    s.feed(speech)
    s.finish()
    for t in s.tokens:
        ratios = [p for _, p in t.alternatives]
        assert ratios[0] == 1.0 and all(1 - p <= 0.999 for p in ratios) and ratios == sorted(ratios, reverse=True)


def test_left_padding_state_is_reused_exactly(tiny_dir, speech):
    """The state after the left padding is computed once per model and delay; a stream
    that starts from the copy gives the tokens of one that computed it."""
    import voxnp

    model = voxnp.load(tiny_dir)
    first = Stream(model)                                  # computes and keeps the state
    assert set(model.left_padding) == {first.delay}
    second = Stream(model)                                 # starts from the copy
    for s in (first, second):
        s.feed(speech)
        s.finish()
    assert [t.id for t in first.tokens] == [t.id for t in second.tokens]
    assert first._dec.caches[0].k is not second._dec.caches[0].k
    np.testing.assert_array_equal(first._enc.caches[0].k, second._enc.caches[0].k)
    other_delay = Stream(model, delay_ms=960)
    assert set(model.left_padding) == {first.delay, other_delay.delay}


def test_left_padding_state_survives_a_new_process(tiny_dir, speech, tmp_path, monkeypatch):
    import voxnp
    from voxnp import padcache

    monkeypatch.setenv("VOXNP_CACHE_DIR", str(tmp_path))
    first = voxnp.load(tiny_dir)
    a = Stream(first)
    path = padcache.cache_file(first.file.path, a.delay)
    assert path.exists()
    fresh = voxnp.load(tiny_dir)                           # a new process would start like this
    assert fresh.left_padding == {}
    b = Stream(fresh)
    assert set(fresh.left_padding) == {a.delay}            # read from the file, not recomputed
    for s in (a, b):
        s.feed(speech)
        s.finish()
    assert [t.id for t in a.tokens] == [t.id for t in b.tokens]
    path.write_bytes(b"damaged")                           # a damaged file is ignored
    c = Stream(voxnp.load(tiny_dir))
    c.feed(speech)
    c.finish()
    assert [t.id for t in c.tokens] == [t.id for t in a.tokens]
    monkeypatch.setenv("VOXNP_CACHE_DIR", "")
    assert padcache.cache_file(first.file.path, a.delay) is None


def test_a_stream_with_nothing_to_decode_leaves_the_shared_state_alone(tiny_dir, speech, tmp_path, monkeypatch):
    import voxnp

    monkeypatch.setenv("VOXNP_CACHE_DIR", str(tmp_path))
    model = voxnp.load(tiny_dir)
    Stream(model, max_tokens=0)                            # decodes nothing, prefills nothing
    assert model.left_padding == {} and list(tmp_path.iterdir()) == []
    a = Stream(model)
    b = Stream(voxnp.load(tiny_dir), record=True)          # computes everything itself
    for s in (a, b):
        s.feed(speech)
        s.finish()
    assert [t.id for t in a.tokens] == [t.id for t in b.tokens]
