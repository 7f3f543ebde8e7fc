"""The streaming session (SPEC §8): feed audio, get tokens as they are decoded.

One pipeline, run incrementally:
  samples -> LogMel -> encoder (conv stem + layers, KV rings) -> adapter
          -> one decoder step per audio embedding -> tokens -> text
Offline transcription is this same session fed the whole file and finished, so a
stream fed in any chunking gives the offline tokens.

Decoder schedule (SPEC §7): the prompt is [BOS] + [STREAMING_PAD] * (32 + d).
Positions 0..L-2 are prefilled with audio_embeds[p] + emb(prompt[p]); position L-1
gives the first token; every later position p feeds audio_embeds[p] + emb(previous
token). A token emitted at position p describes audio ending near
(p + 1 - 32 - d) * 80 ms.

Audio and the log-mel stay on the host; from the encoder on, activations are arrays
of the backend's namespace (`model.ops.xp`: NumPy, or CuPy on a GPU). What comes back
from a decoder pass is each row's token id (and the few alternatives with `alt`).
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import BOS_ID, EOS_ID, STREAMING_PAD_ID
from .decoder import MAX_ROWS, decode, new_decoder_state
from .encoder import adapt, encode, new_encoder_state
from .mel import LogMel
from .scheduler import DEFAULT_SPECULATE, DraftLength, Scheduler, StepPlan, pad_drafter, rows_option
from .tokenizer import TextDecoder


@dataclass
class Token:
    id: int
    text: str                   # text this token completes ("" for control tokens)
    time: float                 # seconds of the original audio at which it ends (SPEC §9)
    position: int               # decoder position that produced it
    alternatives: list = field(default_factory=list)  # [(text, probability)] best first


@dataclass
class Timings:
    encoder_s: float = 0.0
    prefill_s: float = 0.0
    decoder_s: float = 0.0
    decoder_steps: int = 0      # positions decoded after the prompt (one token each)
    decoder_passes: int = 0     # decoder passes they took (fewer with speculation)
    audio_s: float = 0.0


@dataclass
class Record:
    """Intermediate values kept for `voxnp dump` (only when asked: they grow)."""
    mel: list = field(default_factory=list)
    enc: list = field(default_factory=list)
    audio_embeds: list = field(default_factory=list)
    logits: list = field(default_factory=list)


class Stream:
    """A streaming transcription session.

    feed(samples)  float32 mono 16 kHz, any length (0 and 1 sample included)
    get()          token strings decoded since the last get()
    flush()        push everything buffered through (pads with silence), keep going
    finish()       end of audio: right padding, decode to the end
    Options: delay_ms (80..2400, default from tekken.json), interval (seconds of new
    audio between runs of the network, default 2.0; 0 = every feed), alt (cutoff c
    of SPEC §10, None = off) and alt_count, max_tokens, teacher (ids fed as the
    previous tokens instead of the argmax), record (keep intermediates for dumps).

    speculate=k verifies up to k drafted tokens per decoder pass (0 = off; default
    scheduler.DEFAULT_SPECULATE; fewer while drafts are refused, see DraftLength); drafter is a
    callable (tokens so far, k) -> k token ids, default: k x [STREAMING_PAD] (the
    tokens are the stream's own list, at least the latest 256 when live: read only). The
    tokens are exactly those of speculate=0. scheduled=True: feed/flush/finish only
    run the encoder, and a `scheduler.Scheduler` decodes (many streams sharing passes).

    live=True is for endless input (stdin, microphone): the session keeps no token
    history (memory stays flat for hours; take tokens with get() or on_token), and
    the decoder restarts -- keeping the audio context -- when it emits EOS before
    finish(), or when it makes no progress: only control tokens for `LIVE_IDLE_S`
    seconds of audio.
    """

    LIVE_IDLE_S = 30.0

    def __init__(self, model, delay_ms: float | None = None, interval: float = 2.0,
                 alt: float | None = None, alt_count: int = 3, max_tokens: int | None = None,
                 teacher=None, record: bool = False, on_token=None, live: bool = False,
                 speculate: int = DEFAULT_SPECULATE, drafter=None, scheduled: bool = False):
        cfg = model.config
        if drafter is not None and not callable(drafter):
            raise ValueError("drafter must be a callable (tokens so far, k) -> k token ids")
        self.speculate = rows_option("speculate", speculate, 0, MAX_ROWS - 1)
        self._draft_length = DraftLength(self.speculate)
        self.drafter = drafter or pad_drafter
        self.scheduled = scheduled
        self.model = model
        self.cfg = cfg
        self.delay = cfg.audio.delay_tokens(delay_ms)
        self.prompt = [BOS_ID] + [STREAMING_PAD_ID] * (cfg.audio.n_left_pad_tokens + self.delay)
        if interval is None or interval < 0:
            raise ValueError(f"interval must be >= 0 seconds, got {interval}")
        self.interval_samples = interval * cfg.audio.sampling_rate  # may be inf (only finish() runs)
        self.alt = alt
        self.alt_count = alt_count
        self.max_tokens = max_tokens
        self.teacher = None if teacher is None else [int(t) for t in teacher]
        # decoding ended (EOS, max_tokens, teacher); nothing to decode: the encoder still runs
        self.done = max_tokens == 0 or (self.teacher is not None and not self.teacher)
        self.record = Record() if record else None
        self.on_token = on_token
        self.timings = Timings()
        self.live = live
        self.tokens: list[Token] = []            # every token emitted (not kept when live)
        self._queue: deque[Token] = deque()      # emitted, not yet taken by get()
        self.n_tokens = 0                        # tokens emitted so far
        self._recent: list[int] = []             # token ids for the drafter (live: the latest 256-512)
        self._text_closed = False
        self.restarts = 0                        # live decoder restarts
        self._history: deque[np.ndarray] = deque(maxlen=len(self.prompt) - 1)  # last embeds decoded
        self._first_embed = 0                    # audio-embed index of decoder position 0
        self._idle_steps = 0                     # steps since the last text token
        self._text = TextDecoder(model.tokenizer)
        self._mel = LogMel(cfg.audio)
        self._enc = new_encoder_state(cfg, model.ops)
        self._dec = new_decoder_state(cfg, model.weights.decoder, self.delay, model.ops)
        self._embeds = model.ops.xp.zeros((0, cfg.decoder.dim), np.float32)  # audio embeds not yet decoded
        self._pending: list[np.ndarray] = []     # samples fed since the network last ran
        self._n_pending = 0
        self._new_audio = 0                      # user samples since the network last ran
        self._n_samples = 0                      # samples of the padded signal fed to LogMel
        self._n_audio = 0                        # user samples fed
        self._prev_token = None
        self.finished = False                    # finish() called: no more audio
        self._finishing = False                  # inside finish(): EOS is final
        self._start_with_left_padding()

    def _start_with_left_padding(self) -> None:
        """Run the 32 tokens of silence every stream starts with (SPEC §3.2, §8).

        Their result depends only on the model and the delay, so it is computed once
        per model and delay (and kept on disk, see padcache.py) and copied into later
        streams: the encoder over the padding and 31 of the 38 prefill positions are
        then free (a dump, which records every intermediate, always computes them).
        """
        from . import padcache

        cfg = self.cfg
        # a dump records the padding's intermediates; a stream with nothing to decode
        # (max_tokens=0, empty teacher) never prefills: neither may use or fill the cache
        shareable = self.record is None and not self.done
        if shareable:
            cached = self.model.left_padding.get(self.delay)
            on_disk = padcache.cache_file(self.model.file.path, self.delay)
            if cached is None and on_disk is not None and on_disk.exists():
                cached = padcache.load(on_disk)
            if cached is not None:
                self._restore(cached)
                self.model.left_padding[self.delay] = cached
                return
        self._push(np.zeros(cfg.audio.n_left_pad_tokens * cfg.audio.samples_per_token, np.float32))
        self._run()
        self._decode_available(now=True)                    # the prompt, even when scheduled
        if shareable:
            self.model.left_padding[self.delay] = self._snapshot()
            if on_disk is not None:
                padcache.save(on_disk, self.model.left_padding[self.delay])

    def _snapshot(self) -> dict:
        """Host copies of the pipeline's state (between runs: nothing pending)."""
        host = self.model.ops.to_numpy
        return {"mel": self._mel.snapshot(), "enc": _on_host(self._enc.snapshot(), host),
                "dec": _on_host(self._dec.snapshot(), host), "embeds": host(self._embeds.copy()),
                "history": [host(e.copy()) for e in self._history], "n_samples": self._n_samples}

    def _restore(self, snap: dict) -> None:
        """Copy a snapshot in (the states move it to the backend's arrays)."""
        xp = self.model.ops.xp
        self._mel.restore(snap["mel"])
        self._enc.restore(snap["enc"])
        self._dec.restore(snap["dec"])
        self._embeds = xp.array(snap["embeds"])
        self._history.extend(xp.array(e) for e in snap["history"])
        self._n_samples = snap["n_samples"]

    # -- public API -------------------------------------------------------

    def feed(self, samples) -> None:
        x = np.asarray(samples)
        if x.ndim != 1:
            raise ValueError(f"feed() takes 1-D mono samples, got shape {x.shape}")
        if x.dtype.kind != "f":
            raise ValueError(f"feed() takes float samples in [-1, 1], got dtype {x.dtype}")
        if not np.all(np.isfinite(x)):
            raise ValueError("feed() got NaN or infinite samples")
        if self.finished or len(x) == 0:
            return
        self._n_audio += len(x)
        self._pending.append(x.astype(np.float32))
        self._n_pending += len(x)
        self._new_audio += len(x)
        if self._new_audio >= self.interval_samples:
            self._run()

    def flush_pending(self) -> None:
        """Run the network now on what was fed (no padding added, unlike flush())."""
        if not self.finished and self._n_pending:
            self._run()

    def flush(self) -> None:
        """Feed silence (to a whole token plus the right padding) and decode it all."""
        if self.finished:
            return
        self._push(np.zeros(self._right_padding(), np.float32))
        self._run()

    def finish(self) -> None:
        """End of audio: right padding (SPEC §3.2), the mel's end padding, decode to the end."""
        if self.finished:
            return
        self._finishing = True
        if not self.done or self.record is not None:
            self._push(np.zeros(self._right_padding(), np.float32))
            self._run(final=True)
        self.finished = True
        if self.complete:
            self._close_text()

    @property
    def complete(self) -> bool:
        """finish() was called and everything is decoded."""
        return self.finished and (self.done or len(self._embeds) == 0)

    def _close_text(self) -> None:
        """Bytes still held by the incremental UTF-8 decoder join the last token."""
        if self._text_closed:
            return
        self._text_closed = True
        tail = self._text.flush()
        if tail and self.tokens:
            self.tokens[-1].text += tail

    def get(self, with_tokens: bool = False) -> list:
        """Token texts (or Token objects, with times and alternatives) emitted since the last call."""
        new = list(self._queue)
        self._queue.clear()
        return new if with_tokens else [t.text for t in new if t.text]

    def __iter__(self):
        return iter(self.get())

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)

    @property
    def audio_seconds(self) -> float:
        return self._n_audio / self.cfg.audio.sampling_rate

    # -- the pipeline -----------------------------------------------------

    def _right_padding(self) -> int:
        """Zeros to the next whole token, then delay + 1 + 10 tokens (SPEC §3.2)."""
        spt = self.cfg.audio.samples_per_token
        pending = self._n_samples + self._n_pending
        to_token = -pending % spt
        return to_token + self.cfg.audio.n_right_pad_tokens(self.delay) * spt

    def _push(self, x: np.ndarray) -> None:
        self._pending.append(x)
        self._n_pending += len(x)

    def _run(self, final: bool = False) -> None:
        """Run the network on everything pending."""
        samples = np.concatenate(self._pending) if self._pending else np.zeros(0, np.float32)
        self._pending, self._n_pending, self._new_audio = [], 0, 0
        self._n_samples += len(samples)
        mel = self._mel.feed(samples)                                   # [128, k]
        if final:
            mel = np.concatenate([mel, self._mel.finish()], axis=1)
        if mel.shape[1] == 0:
            return
        t0 = time.perf_counter()
        m = self.model
        frames = m.ops.xp.asarray(np.ascontiguousarray(mel.T))         # [k, 128] to the backend
        enc = encode(frames, self._enc, m.weights.encoder, self.cfg, m.ops, m.encoder_inv_freq)  # [P, 1280]
        embeds = adapt(enc, self._enc, m.weights.adapter, self.cfg, m.ops)                     # [N, 3072]
        self.timings.encoder_s += time.perf_counter() - t0
        if self.record is not None:
            self.record.mel.append(mel)
            self.record.enc.append(m.ops.to_numpy(enc))
            self.record.audio_embeds.append(m.ops.to_numpy(embeds))
        if not self.done:
            self._embeds = m.ops.xp.concatenate([self._embeds, embeds])
            self._decode_available()

    def _decode_available(self, now: bool = False) -> None:
        """Decode what the audio allows (unless a scheduler does it for this stream)."""
        if now or not self.scheduled:
            Scheduler(self.model).run([self])

    # -- the decoder protocol the scheduler drives (scheduler.py) ----------

    @property
    def decoder_state(self):
        return self._dec

    def prefill(self) -> None:
        """SPEC §7.1: prefill prompt positions 0..L-2 as far as the audio allows (no logits)."""
        m, L = self.model, len(self.prompt)
        pos = self._dec.n_positions
        if self.done or pos >= L - 1 or not len(self._embeds):
            return
        n = min(len(self._embeds), L - 1 - pos)
        t0 = time.perf_counter()
        x = self._embeds[:n] + m.ops.embed(m.weights.decoder.tok_embeddings, self.prompt[pos:pos + n])  # [n, 3072]
        decode(x, self._dec, m.weights.decoder, self.cfg, m.ops, m.decoder_inv_freq)
        self._history.extend(self._embeds[:n])
        self._embeds = self._embeds[n:]
        self.timings.prefill_s += time.perf_counter() - t0

    def wanted_rows(self) -> int:
        """Positions this stream could run in the next pass: one step plus up to
        `speculate` drafted ones, never past the audio received or the tokens allowed."""
        if self.done or not len(self._embeds) or self._dec.n_positions < len(self.prompt) - 1:
            return 0
        n = 1 + min(self._draft_length.next(), len(self._embeds) - 1)
        if self.teacher is not None:
            n = min(n, len(self.teacher) - self.n_tokens)
        if self.max_tokens is not None:
            n = min(n, self.max_tokens - self.n_tokens)
        return n

    def plan(self, n: int):
        """The inputs of the next n positions: row 0 is fed the previous token, row i
        the drafted (or, with a teacher, the known) token i."""
        m = self.model
        if self.teacher is not None:
            drafts = self.teacher[self.n_tokens:self.n_tokens + n - 1]
        elif n > 1:
            drafts = self._check_drafts(self.drafter(self._recent, n - 1), n - 1)
        else:
            drafts = []
        prev = self.prompt[-1] if self._dec.n_positions == len(self.prompt) - 1 else self._fed_token()
        x = self._embeds[:n] + m.ops.embed(m.weights.decoder.tok_embeddings, [prev] + drafts)  # [n, 3072]
        return StepPlan(stream=self, inputs=x, drafts=drafts)

    def _check_drafts(self, drafts, k: int) -> list[int]:
        ids = list(drafts) if drafts is not None else []
        vocab = self.cfg.decoder.vocab_size
        if len(ids) != k:
            raise ValueError(f"the drafter returned {len(ids)} token ids, {k} were asked for")
        if not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) and 0 <= t < vocab for t in ids):
            raise ValueError(f"the drafter returned ids outside the vocabulary 0..{vocab - 1}: {ids}")
        return [int(t) for t in ids]

    def accept(self, plan, logits: np.ndarray, seconds: float) -> None:
        """Commit the rows of a pass the model agrees with: row 0 always, row i while the
        token fed at row i is the one guessed. logits [n, vocab]."""
        n = len(plan.inputs)
        ops = self.model.ops
        best = ops.to_numpy(ops.xp.argmax(logits, axis=-1))       # [n] the ids come back, not the logits
        first = self._dec.n_positions - n                   # position of row 0
        restarts = self.restarts
        committed, refused = 0, False
        for i in range(n):
            if i > 0 and (self.done or self.restarts != restarts):
                break                                       # the stream ended or restarted
            if i > 0 and self._fed_token() != plan.drafts[i - 1]:
                refused = True                              # the model disagrees with the guess
                break
            self._dec.truncate(first + i + 1)               # later rows are dropped unless confirmed
            self._history.append(self._embeds[0])
            self._embeds = self._embeds[1:]
            self.timings.decoder_steps += 1
            self._emit(int(best[i]), logits[i], first + i)
            committed += 1
        self._draft_length.record(accepted=committed - 1, rejected=refused)
        self.timings.decoder_s += seconds
        self.timings.decoder_passes += 1
        if self.complete:
            self._close_text()

    def _fed_token(self) -> int:
        """The previous token fed back: the argmax, or the teacher's id."""
        if self.teacher is not None:
            return self.teacher[self.n_tokens - 1]
        return self._prev_token

    def _emit(self, token_id: int, logits: np.ndarray, pos: int) -> None:
        ms = self.cfg.audio.ms_per_token
        index = self._first_embed + pos                     # audio token index incl. left padding
        t = max(0.0, (index + 1 - self.cfg.audio.n_left_pad_tokens - self.delay) * ms / 1000.0)
        if self.live and token_id == EOS_ID and not self._finishing:
            self._restart_decoder()                         # EOS mid-stream: not the end
            return
        # alternatives are named before the token joins the text (they share its held bytes)
        alternatives = self._alternatives(logits) if self.alt is not None else []
        token = Token(id=token_id, text=self._text.push(token_id), time=t, position=index)
        if token.text:
            token.alternatives = alternatives
        if self.record is not None:
            self.record.logits.append(self.model.ops.to_numpy(logits).astype(np.float32, copy=False))
        if not self.live:
            self.tokens.append(token)
        self._queue.append(token)
        self.n_tokens += 1
        self._recent.append(token_id)
        if self.live and len(self._recent) > 512:
            del self._recent[:256]
        self._prev_token = token_id
        if self.on_token is not None:
            self.on_token(token)
        if self.teacher is not None:
            self.done = self.n_tokens >= len(self.teacher)
        elif token_id == EOS_ID:
            self.done = True
        if self.max_tokens is not None and self.n_tokens >= self.max_tokens:
            self.done = True
        if self.live:
            self._watch_progress(token_id)

    def _watch_progress(self, token_id: int) -> None:
        """Live streams: restart a decoder that emits no text while audio keeps coming."""
        self._idle_steps = self._idle_steps + 1 if token_id < self.model.tokenizer.n_special else 0
        if self._idle_steps >= self.LIVE_IDLE_S * 1000.0 / self.cfg.audio.ms_per_token:
            self._restart_decoder()

    def _restart_decoder(self) -> None:
        """Fresh decoder caches; the prompt is replayed over the last L-1 audio embeddings."""
        if self._dec.n_positions == 0:
            return
        replay = self.model.ops.xp.stack(list(self._history))          # [L-1, 3072]
        self._first_embed += self._dec.n_positions - len(replay)
        for cache in self._dec.caches:
            cache.reset()
        self._dec.n_positions = 0
        self._embeds = self.model.ops.xp.concatenate([replay, self._embeds])
        self._history.clear()
        self._idle_steps = 0
        self.restarts += 1

    def _alternatives(self, logits: np.ndarray) -> list:
        """SPEC §10: text candidates i with 1 - p_i / p_0 <= cutoff, best first (at most alt_count).

        Probabilities are a softmax over the whole vocabulary; as in voxtral.c only text
        tokens compete, and the list stops at the first candidate that does not qualify.
        """
        n_special = self.model.tokenizer.n_special
        ops = self.model.ops
        k = min(len(logits), 4 * self.alt_count + 8)
        top = ops.xp.argpartition(logits, len(logits) - k)[-k:]       # the k best, on the backend
        top, values = ops.to_numpy(top), ops.to_numpy(logits[top])   # only these come back
        order = np.argsort(values)[::-1]
        top, values = top[order], values[order]
        best = values[0]
        out = []
        for i, value in zip(top, values):
            if i < n_special:
                continue
            ratio = float(np.exp(value - best))                      # p_i / p_0
            if 1.0 - ratio > self.alt or len(out) == self.alt_count:
                break
            out.append((self._text.peek(int(i)), ratio))
        return out


def _on_host(snap, host):
    """A state snapshot (nested dicts, lists, tuples) with its arrays moved by `host`."""
    if isinstance(snap, dict):
        return {key: _on_host(value, host) for key, value in snap.items()}
    if isinstance(snap, (list, tuple)):
        return type(snap)(_on_host(value, host) for value in snap)
    if isinstance(snap, np.generic):
        return snap.item()                          # a NumPy scalar: a plain number, never an array
    return snap if isinstance(snap, (int, float, str)) or snap is None else host(snap)


@dataclass
class Transcript:
    text: str
    tokens: list
    timings: Timings
    audio_seconds: float


OFFLINE_CHUNK_S = 10.0  # a whole file is fed in chunks of this much audio (bounded memory)


def _feeds(stream: Stream, n_samples: int) -> list[tuple[int, int]]:
    """How an offline recording is fed: first just enough audio for the prompt (so the
    first token comes early), then chunks of OFFLINE_CHUNK_S (so memory stays bounded)."""
    ac = stream.cfg.audio
    look_ahead = ac.window_size // 2 - ac.hop_length                   # 40 samples past a token's end
    first = (stream.delay + 1) * ac.samples_per_token + look_ahead     # audio of the prompt's last rows
    step = int(OFFLINE_CHUNK_S * ac.sampling_rate)
    bounds = [0, min(first, n_samples)] + list(range(first + step, n_samples, step)) + [n_samples]
    return list(zip(bounds, bounds[1:]))


def _as_samples(audio) -> np.ndarray:
    """An input: a path, float32 samples at 16 kHz, or a callable returning them."""
    if callable(audio):
        audio = audio()
    if isinstance(audio, (str, Path)):
        from .audio import load_audio

        audio = load_audio(audio)
    return np.asarray(audio, dtype=np.float32)


def _transcript(s: Stream, n_samples: int) -> Transcript:
    s.timings.audio_s = n_samples / s.cfg.audio.sampling_rate
    return Transcript(text=s.text, tokens=s.tokens, timings=s.timings, audio_seconds=s.timings.audio_s)


def transcribe(model, audio, delay_ms: float | None = None, on_token=None, **options) -> Transcript:
    """Offline transcription: the streaming session, fed a whole recording and finished."""
    audio = _as_samples(audio)
    s = Stream(model, delay_ms=delay_ms, interval=OFFLINE_CHUNK_S, on_token=on_token, **options)
    for start, end in _feeds(s, len(audio)):
        s.feed(audio[start:end])
        if start == 0:
            s.flush_pending()
        if s.done:
            break
    s.finish()
    return _transcript(s, len(audio))


def transcribe_many(model, inputs, batch: int = 4, delay_ms: float | None = None, **options):
    """Transcribe several recordings, up to `batch` at a time, their decoder steps shared.

    Yields, in input order, a Transcript per input, or the VoxnpError of an input that
    could not be read (the others go on). Each transcript is exactly the one
    `transcribe` gives for that input alone.
    """
    from .errors import VoxnpError

    rows_option("batch", batch, 1, MAX_ROWS)
    scheduler = Scheduler(model)
    waiting = deque(enumerate(inputs))
    active: list[tuple[int, Stream, np.ndarray, deque]] = []   # (index, stream, samples, feeds left)
    done: dict[int, object] = {}
    next_out = 0
    while waiting or active:
        while waiting and len(active) < batch:
            index, item = waiting.popleft()
            try:
                audio = _as_samples(item)
            except VoxnpError as e:
                done[index] = e
                continue
            s = Stream(model, delay_ms=delay_ms, interval=math.inf, scheduled=True, **options)
            active.append((index, s, audio, deque(_feeds(s, len(audio)))))
        for _, s, audio, feeds in active:                     # the encoder, stream by stream
            if feeds and not s.done:
                start, end = feeds.popleft()
                s.feed(audio[start:end])
                s.flush_pending()
            else:
                s.finish()
        scheduler.run([s for _, s, _, _ in active])           # the decoder, streams together
        for entry in [e for e in active if e[1].complete]:
            active.remove(entry)
            done[entry[0]] = _transcript(entry[1], len(entry[2]))
        while next_out in done:
            yield done.pop(next_out)
            next_out += 1


def real_time_factor(t: Timings) -> float:
    busy = t.encoder_s + t.prefill_s + t.decoder_s
    return t.audio_s / busy if busy > 0 else math.inf
