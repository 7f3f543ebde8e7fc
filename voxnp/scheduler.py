"""Decoder passes shared by several rows: speculative positions and many streams.

A decoder step reads every decoder weight to produce one token, so it costs about the
same for 1 row as for a few (see `matmul_bf16`). Two kinds of rows can share a pass:

- speculation: with the next audio embeddings already known, a drafter guesses the
  next k tokens; the pass runs k+1 positions, and each guess the model confirms
  saves a step. The model's own token at the first wrong guess is kept too, so the
  output is exactly the greedy output (each row's arithmetic is independent of the
  others: the kernels give bit-identical rows whatever the row count);
- batching: several streams each need a step; their rows go through the linear
  layers together, and each attends over its own KV rings.

The scheduler decides which rows run; the decoder (`decoder.decode_rows`) runs them
and knows nothing of why. The protocol a stream offers (see `stream.Stream`):
prefill(), wanted_rows(), plan(n) -> StepPlan, accept(plan, logits).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .config import STREAMING_PAD_ID
from .decoder import MAX_ROWS, decode_rows


DEFAULT_SPECULATE = 4  # most drafted tokens per pass by default (DraftLength picks fewer when they fail)


def rows_option(name: str, value, low: int, high: int) -> int:
    """An option counted in decoder rows (speculate, batch): a whole number low..high."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number {low}..{high}, got {value!r}")
    return int(value)


def pad_drafter(tokens: list[int], k: int) -> list[int]:
    """The default drafter: the next k tokens are [STREAMING_PAD] (60-75% of the tokens
    of real speech are)."""
    return [STREAMING_PAD_ID] * k


class DraftLength:
    """How many tokens a stream drafts next: up to its `speculate` K, the k that gives
    the most tokens per unit of decoder time at the drafts' recent acceptance rate p.

    A pass with k drafts emits 1 + p + ... + p^k tokens on average and costs about
    1 + ROW_COST * k single steps, so k falls to 0 while drafts keep failing (every
    PROBE_EVERY-th pass still drafts one, to notice when they start to succeed) and
    rises to K while they succeed. The tokens never depend on k; only the time does.
    """

    ROW_COST = 0.2      # a pass of 1 + k positions ~ 1 + 0.2 k steps (bench/speculate.py: 1.37, 1.54, 1.69, 1.9)
    DECAY = 0.9         # weight of the past per pass: p follows the last ~10 passes
    PROBE_EVERY = 8

    def __init__(self, max_k: int):
        self.max_k = max_k
        self.hits, self.misses = 2.0, 1.0    # prior: right on 2 of 3 (real speech, PAD drafts)
        self.passes = 0

    def next(self) -> int:
        p = self.hits / (self.hits + self.misses)
        gain = [sum(p ** i for i in range(k + 1)) / (1 + self.ROW_COST * k) for k in range(self.max_k + 1)]
        k = int(np.argmax(gain))
        if k == 0 and self.max_k and self.passes % self.PROBE_EVERY == self.PROBE_EVERY - 1:
            k = 1
        return k

    def record(self, accepted: int, rejected: bool) -> None:
        """A pass's drafts: how many were confirmed, and whether one was refused."""
        self.hits = self.DECAY * self.hits + accepted
        self.misses = self.DECAY * self.misses + rejected
        self.passes += 1


@dataclass
class StepPlan:
    """The rows one stream runs in a pass."""
    stream: object
    inputs: np.ndarray   # [n, dim] audio embedding + embedding of the token fed at each row
    drafts: list[int]    # [n - 1] the token guessed to be fed at rows 1..n-1


def share_rows(wanted: list[int], max_rows: int) -> list[int]:
    """Rows per stream for one pass: one each first (as many streams as fit), then
    the extra (speculative) rows round-robin, at most `wanted` each."""
    given = [0] * len(wanted)
    free = max_rows
    while free:
        before = free
        for i, want in enumerate(wanted):
            if free and given[i] < want:
                given[i] += 1
                free -= 1
        if free == before:
            break
    return given


class Scheduler:
    """Runs the decoder for a set of streams, their rows sharing passes.

        sched = Scheduler(model, max_rows=8)
        sched.run([s1, s2, ...])    # decode every position these streams can decode now

    Streams made with `model.stream(..., scheduled=True)` only run the encoder when fed;
    `run` decodes. A stream's prompt is prefilled on its own (many rows through BLAS);
    every later pass holds at most `max_rows` rows (the kernels' few-row limit), one per
    stream first, speculative rows with what is left. Streams beyond `max_rows` take
    turns, so none starves.
    """

    def __init__(self, model, max_rows: int = MAX_ROWS):
        if not 1 <= max_rows <= MAX_ROWS:
            raise ValueError(f"max_rows must be 1..{MAX_ROWS}, got {max_rows}")
        self.model = model
        self.max_rows = max_rows
        self._turn = 0          # where the next pass starts in the list of ready streams
        self.passes = 0
        self.rows = 0           # rows run (committed or not)

    def run(self, streams) -> None:
        while self.step(streams):
            pass

    def step(self, streams) -> bool:
        """One decoder pass over the streams that can decode; False when none can."""
        for s in streams:
            s.prefill()
        ready = [(s, n) for s in streams if (n := s.wanted_rows()) > 0]
        if not ready:
            return False
        start = self._turn % len(ready)
        ready = ready[start:] + ready[:start]                   # take turns beyond max_rows
        self._turn += self.max_rows
        counts = share_rows([n for _, n in ready], self.max_rows)
        plans = [s.plan(n) for (s, _), n in zip(ready, counts) if n]
        m = self.model
        t0 = time.perf_counter()
        logits = decode_rows(m.ops.xp.concatenate([p.inputs for p in plans]),   # [R, dim]
                             [p.stream.decoder_state for p in plans], [len(p.inputs) for p in plans],
                             m.weights.decoder, m.config, m.ops, m.decoder_inv_freq)  # [R, vocab]
        seconds = time.perf_counter() - t0
        self.passes += 1
        self.rows += len(logits)
        start = 0
        for p in plans:
            n = len(p.inputs)
            p.stream.accept(p, logits[start:start + n], seconds)
            start += n
        return True
