"""Several positions per weight read (scheduler.py): exact speculation and batching.

Tiers: the few-row kernel's rows equal 1-row calls bit for bit; the KV ring's spare
slots and truncate; attention over appended rows equals one row at a time; then the
whole model: every drafter and every K gives exactly the K=0 tokens, times,
alternatives and dump arrays, offline, streaming and live; batched streams give
exactly what each gives alone.
"""
import math

import numpy as np
import pytest

from voxnp import kernels, ops
from voxnp._kernels import matmul_bf16
from voxnp.config import STREAMING_PAD_ID
from voxnp.dump import dump_arrays
from voxnp.kv_cache import KVCache
from voxnp.scheduler import Scheduler, share_rows
from voxnp.stream import Stream, transcribe, transcribe_many

rng = np.random.default_rng(11)


def bf16(shape):
    return (rng.standard_normal(shape, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


# -- the few-row kernel ------------------------------------------------------------

@pytest.mark.parametrize("n,k", [(37, 13), (8, 8), (64, 3072 // 32), (9, 1), (300, 257), (1024, 520)])
@pytest.mark.parametrize("threads", [1, 2])
def test_rows_are_bit_identical_to_one_row_calls(n, k, threads):
    w = bf16((n, k))
    x = rng.standard_normal((8, k), dtype=np.float32)
    one = np.empty((8, n), np.float32)
    for m in range(8):
        y1 = np.empty((1, n), np.float32)
        matmul_bf16(w, x[m:m + 1].copy(), y1, 1)
        one[m] = y1[0]
    np.testing.assert_allclose(one, ops.linear(x, w), rtol=1e-5, atol=1e-5 * np.sqrt(k))
    for T in range(1, 9):
        y = np.empty((T, n), np.float32)
        matmul_bf16(w, x[:T].copy(), y, threads)
        np.testing.assert_array_equal(y, one[:T])


def test_linear_uses_the_exact_kernel_up_to_eight_rows():
    w = bf16((96, 40))
    x = rng.standard_normal((8, 40), dtype=np.float32)
    alone = np.concatenate([kernels.linear(x[m:m + 1], w) for m in range(8)])
    np.testing.assert_array_equal(kernels.linear(x, w), alone)


# -- the ring with spare slots --------------------------------------------------

def test_truncate_after_wraparound_forgets_drafts():
    window, spare, Hkv, hd = 5, 3, 2, 4
    cache = KVCache(window, Hkv, hd, spare=spare)
    kv = rng.standard_normal((40, Hkv, hd)).astype(np.float32)
    for p in range(23):                                   # wraps the 8 slots several times
        cache.append(kv[p:p + 1], kv[p:p + 1])
    cache.append(kv[23:26] + 100, kv[23:26] + 100)        # three drafts, then rejected
    cache.truncate(23)
    cache.append(kv[23:26], kv[23:26])                    # the real ones
    keys, _, pos = cache.ordered()
    np.testing.assert_array_equal(pos, np.arange(26 - 8, 26))
    np.testing.assert_array_equal(keys.transpose(1, 0, 2)[-window:], kv[26 - window:26])
    with pytest.raises(ValueError):
        cache.truncate(26 - spare - 1)                    # further back than the spare slots
    with pytest.raises(ValueError):
        cache.truncate(27)                                # past the last append
    cache.truncate(24)
    cache.truncate(26)                                    # forward again: the slots still hold it
    assert cache.length == 26


@pytest.mark.parametrize("n_old", [0, 3, 11, 30])
@pytest.mark.parametrize("T", [1, 2, 5, 8])
def test_attention_in_cache_rows_equal_one_at_a_time(n_old, T):
    window, H, Hkv, hd = 9, 6, 2, 16
    q = rng.standard_normal((T, H, hd)).astype(np.float32)
    kv = rng.standard_normal((n_old + T, Hkv, hd)).astype(np.float32)

    def ring():
        cache = KVCache(window, Hkv, hd, spare=8)
        for p in range(n_old):
            cache.append(kv[p:p + 1], kv[p:p + 1])
        return cache

    together = ring()
    together.append(kv[n_old:], kv[n_old:])
    fast = kernels.attention_in_cache(q, together, window)
    np.testing.assert_allclose(fast, ops.attention_in_cache(q, together, window), rtol=1e-5, atol=1e-6)
    single = ring()
    for t in range(T):
        single.append(kv[n_old + t:n_old + t + 1], kv[n_old + t:n_old + t + 1])
        np.testing.assert_array_equal(kernels.attention_in_cache(q[t:t + 1], single, window), fast[t:t + 1])


def test_share_rows():
    assert share_rows([3, 1, 2], 8) == [3, 1, 2]
    assert share_rows([4, 4, 4], 8) == [3, 3, 2]
    assert share_rows([1] * 10, 8) == [1] * 8 + [0, 0]
    assert share_rows([8, 1], 3) == [2, 1]


# -- the model: speculation is exact ------------------------------------------------

def token_view(tokens):
    return [(t.id, t.text, t.time, t.position, t.alternatives) for t in tokens]


class Oracle:
    """Drafts the tokens a K=0 run emitted (right every time, or wrong every time)."""

    def __init__(self, ids, wrong=False, vocab=None):
        self.ids, self.wrong, self.vocab = list(ids), wrong, vocab
        self.calls = 0

    def __call__(self, tokens, k):
        self.calls += 1
        nxt = self.ids[len(tokens):len(tokens) + k]
        nxt += [STREAMING_PAD_ID] * (k - len(nxt))
        return [(t + 1) % self.vocab for t in nxt] if self.wrong else nxt


def random_drafter(vocab, seed):
    r = np.random.default_rng(seed)
    return lambda tokens, k: [int(t) for t in r.choice([STREAMING_PAD_ID, int(r.integers(vocab)), *tokens[-3:]], k)]


@pytest.mark.parametrize("which", ["tiny_model", "window_model"])
def test_speculation_equals_greedy_offline(request, which, speech):
    model = request.getfixturevalue(which)
    vocab = model.config.decoder.vocab_size
    audio = np.concatenate([speech, speech[::-1]]) if which == "window_model" else speech  # many wraps
    base = dump_arrays(model, audio)
    plain = transcribe(model, audio, alt=0.9)
    ids = [int(t) for t in base["tokens"]]
    for K in (1, 3, 7):
        for name, drafter in [("right", Oracle(ids, vocab=vocab)), ("wrong", Oracle(ids, True, vocab)),
                              ("random", random_drafter(vocab, K)), ("pad", None)]:
            got = dump_arrays(model, audio, speculate=K, drafter=drafter)
            for key in base:
                np.testing.assert_array_equal(got[key], base[key], err_msg=f"{key} K={K} {name}")
            t = transcribe(model, audio, alt=0.9, speculate=K, drafter=drafter)
            assert token_view(t.tokens) == token_view(plain.tokens), (K, name)
    # the right drafter does save passes
    s = transcribe(model, audio, speculate=3, drafter=Oracle(ids, vocab=vocab))
    assert s.timings.decoder_passes < 0.5 * s.timings.decoder_steps


def streamed(model, audio, seed, **opts):
    """A stream fed in random chunks (the same ones for the same seed)."""
    s = Stream(model, interval=0.0, record=True, **opts)
    r = np.random.default_rng(seed)
    i = 0
    while i < len(audio):
        n = int(r.integers(1, 6000))
        s.feed(audio[i:i + n])
        i += n
    s.finish()
    return s


def test_speculation_equals_greedy_streaming_with_teacher_and_delays(window_model, speech):
    vocab = window_model.config.decoder.vocab_size
    for delay in (80, 960):
        base = streamed(window_model, speech, delay, delay_ms=delay)
        offline = dump_arrays(window_model, speech, delay_ms=delay)
        assert [t.id for t in base.tokens] == list(offline["tokens"])
        teacher = rng.integers(0, vocab, len(base.tokens))
        forced = dump_arrays(window_model, speech, delay_ms=delay, teacher=teacher)
        for K in (2, 5):
            s = streamed(window_model, speech, delay, delay_ms=delay, speculate=K,
                         drafter=random_drafter(vocab, delay))
            assert token_view(s.tokens) == token_view(base.tokens)
            np.testing.assert_array_equal(np.stack(s.record.logits), np.stack(base.record.logits))
            got = dump_arrays(window_model, speech, delay_ms=delay, teacher=teacher, speculate=K)
            np.testing.assert_array_equal(got["logits"], forced["logits"])
            np.testing.assert_array_equal(got["tokens"], forced["tokens"])


def test_speculation_equals_greedy_live_with_restarts(tiny_model, speech, monkeypatch):
    monkeypatch.setattr(Stream, "LIVE_IDLE_S", 0.0)          # a restart after every token
    vocab = tiny_model.config.decoder.vocab_size
    runs = []
    for K, drafter in [(0, None), (3, random_drafter(vocab, 5)), (7, None)]:
        s = Stream(tiny_model, live=True, interval=0.3, speculate=K, drafter=drafter)
        out = []
        for i in range(0, len(speech), 7000):
            s.feed(speech[i:i + 7000])
            out += s.get(with_tokens=True)
        s.finish()
        out += s.get(with_tokens=True)
        runs.append((token_view(out), s.restarts))
    assert runs[0][1] > 2
    assert runs[1] == runs[0] and runs[2] == runs[0]


def test_bad_speculation_options(tiny_model, speech):
    for bad in (-1, 8, 2.5, "2", True):
        with pytest.raises(ValueError, match="speculate"):
            Stream(tiny_model, speculate=bad)
    with pytest.raises(ValueError, match="drafter"):
        Stream(tiny_model, speculate=2, drafter="pad")
    for drafter, what in [(lambda t, k: [32] * (k + 1), "returned 3 token ids, 2"),
                          (lambda t, k: [10 ** 9] * k, "outside the vocabulary"),
                          (lambda t, k: [-1] * k, "outside the vocabulary")]:
        with pytest.raises(ValueError, match=what):
            transcribe(tiny_model, speech, speculate=2, drafter=drafter)


# -- batching: many streams share passes, each exactly as alone ------------------------

def test_scheduler_streams_equal_each_alone(tiny_model, window_model, speech):
    for model in (tiny_model, window_model):
        clips = [speech, speech[:20000], speech[::-1], 0.3 * speech[5000:], speech[:3000]]
        delays = [480, 80, 960, 480, 2400]
        specs = [0, 2, 0, 1, 3]
        r = np.random.default_rng(2)
        bounds = [np.unique(np.r_[0, r.integers(0, len(c), 6), len(c)]) for c in clips]  # same pieces twice

        def make(d, k, scheduled):
            return Stream(model, delay_ms=d, interval=math.inf, alt=0.9, scheduled=scheduled, speculate=k)

        alone = []
        for c, d, b in zip(clips, delays, bounds):
            s = make(d, 0, False)
            for lo, hi in zip(b, b[1:]):
                s.feed(c[lo:hi])
                s.flush_pending()
            s.finish()
            alone.append(token_view(s.tokens))
        streams = [make(d, k, True) for d, k in zip(delays, specs)]
        sched = Scheduler(model, max_rows=4)                 # fewer rows than streams: turns
        for round_ in range(max(len(b) for b in bounds)):
            for s, c, b in zip(streams, clips, bounds):
                if round_ + 1 < len(b):
                    s.feed(c[b[round_]:b[round_ + 1]])
                    s.flush_pending()
                else:
                    s.finish()
            sched.run(streams)
        assert all(s.complete for s in streams)
        assert [token_view(s.tokens) for s in streams] == alone
        assert sched.rows > sched.passes                     # rows did share passes


def test_transcribe_many_in_order_with_a_bad_input(tiny_model, speech, tmp_path):
    from voxnp.errors import VoxnpError

    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    inputs = [speech, speech[:16000], junk, speech[::-1], speech[8000:]]
    alone = [transcribe(tiny_model, x) for x in inputs if x is not junk]
    for batch in (1, 3, 8):
        got = list(transcribe_many(tiny_model, inputs, batch=batch))
        assert isinstance(got[2], VoxnpError) and "junk.wav" in str(got[2])
        del got[2]
        assert [token_view(g.tokens) for g in got] == [token_view(a.tokens) for a in alone]
    for bad in (0, 9, 1.5):
        with pytest.raises(ValueError, match="batch"):
            list(transcribe_many(tiny_model, inputs, batch=bad))


def test_draft_length_follows_the_acceptance():
    from voxnp.scheduler import DraftLength

    right, wrong = DraftLength(4), DraftLength(4)
    assert right.next() >= 1                               # the prior: drafts usually right
    for _ in range(30):
        right.record(accepted=right.next(), rejected=False)
        wrong.record(accepted=0, rejected=True)
    assert right.next() == 4
    ks = []
    for _ in range(16):
        ks.append(wrong.next())
        wrong.record(accepted=0, rejected=ks[-1] > 0)
    assert ks.count(0) >= 12 and 1 in ks                   # off, but probing now and then
    assert DraftLength(0).next() == 0


def test_wrong_drafts_cost_few_rows(tiny_model, speech):
    vocab = tiny_model.config.decoder.vocab_size
    base = transcribe(tiny_model, speech, speculate=0)
    ids = [t.id for t in base.tokens]
    t = transcribe(tiny_model, speech, speculate=4, drafter=Oracle(ids, True, vocab))
    assert [x.id for x in t.tokens] == ids
    assert t.timings.decoder_passes > 0.9 * t.timings.decoder_steps   # one token per pass
