"""Several positions per weight read: the few-row kernel, speculation, batched streams.

    python3 bench/speculate.py                  # full-size random checkpoint (bench/cache/full)
    python3 bench/speculate.py --model DIR      # or a real model directory

Measures, in one run, against the machine's limits measured in the same run:
1. the BF16 product at T = 1..8 rows for the decoder's [9216, 3072] and [3072, 9216]
   matrices (each call reads a different layer's matrix, so weights come from memory);
2. a whole decoder pass of K+1 positions against one;
3. decoder ms per emitted token for K = 0..4 on the 15 s sample, with (a) a replay
   drafter right on 2 of every 3 proposals (about the acceptance PAD drafts get on real
   speech; random weights rarely emit PAD, so this is the honest measure here) and
   (b) the default PAD drafter;
4. aggregate decoder tokens/s for 1, 2, 4 and 8 streams decoded together, and the
   with --memory, the peak anonymous memory of 8 x 60 s files transcribed together.
Prints tables and writes bench/results/speculate.json.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import voxnp  # noqa: F401  (before NumPy: its thread settings must reach OpenBLAS as it loads)
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import SHARED_AUDIO, full_checkpoint, matmul_gflops, read_bandwidth_gbs  # noqa: E402
from common import print_table, write_json  # noqa: E402

SAMPLE_15 = SHARED_AUDIO / "15s_there_are_two_of_them_out_there.wav"
SAMPLE_60 = SHARED_AUDIO / "60s_i_dont_want_anyones_life_on_my_hands.wav"


def kernel_rows(m, repeats: int = 3) -> list[dict]:
    from voxnp._kernels import matmul_bf16
    from numba import get_num_threads

    layers = m.weights.decoder.layers
    rows = []
    for name in ("w1", "w2"):
        mats = [getattr(layer, name) for layer in layers]
        n, k = mats[0].shape
        base = None
        for T in range(1, 9):
            x = np.random.default_rng(T).standard_normal((T, k), dtype=np.float32)
            y = np.empty((T, n), np.float32)
            for w in mats[:2]:
                matmul_bf16(w, x, y, get_num_threads())                # warm
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                for w in mats:                                         # 26 different matrices
                    matmul_bf16(w, x, y, get_num_threads())
                times.append((time.perf_counter() - t) / len(mats))
            ms = 1000 * min(times)
            base = base or ms
            rows.append({"matrix": f"{name} [{n}, {k}]", "rows": T, "ms": round(ms, 3),
                         "x_T1": round(ms / base, 2), "GB/s": round(n * k * 2 / ms / 1e6, 1)})
    return rows


def decoder_pass(m, rows: int, context: int = 40, repeats: int = 3) -> float:
    """Seconds of one decoder pass of `rows` positions after `context` cached ones."""
    from voxnp.decoder import decode, new_decoder_state

    cfg = m.config
    state = new_decoder_state(cfg, m.weights.decoder, 6, m.ops)
    x = np.random.default_rng(0).standard_normal((rows, cfg.decoder.dim), dtype=np.float32)
    decode(np.zeros((context, cfg.decoder.dim), np.float32), state, m.weights.decoder, cfg, m.ops,
           m.decoder_inv_freq)
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        decode(x, state, m.weights.decoder, cfg, m.ops, m.decoder_inv_freq, all_logits=True)
        best = min(best, time.perf_counter() - t)
        state.truncate(context)
    return best


class Replay:
    """Proposes the tokens a K=0 run emitted, each made wrong with probability 1/3
    (seeded): right on 2 of 3 proposals, about what PAD drafts get on real speech."""

    def __init__(self, ids, vocab, seed=0):
        self.ids, self.vocab = ids, vocab
        self.rng = np.random.default_rng(seed)

    def __call__(self, tokens, k):
        out = [(t + 1) % self.vocab if self.rng.random() < 1 / 3 else t
               for t in self.ids[len(tokens):len(tokens) + k]]
        return out + [32] * (k - len(out))


def encoded(m, path, delay_ms=None):
    """A scheduled stream fed and finished: the encoder has run, nothing is decoded."""
    from voxnp.audio import load_audio

    s = m.stream(scheduled=True, interval=float("inf"), delay_ms=delay_ms)
    s.feed(load_audio(path))
    s.finish()
    return s._snapshot()


def decode_tokens(m, snap, n_tokens, streams=1, **options):
    """Decode n_tokens in each of `streams` copies of an encoded stream; (seconds, tokens, passes)."""
    from voxnp.scheduler import Scheduler

    ss = []
    for _ in range(streams):
        s = m.stream(scheduled=True, max_tokens=n_tokens, **options)
        s._restore(snap)
        s.finished = True
        ss.append(s)
    sched = Scheduler(m)
    for s in ss:
        s.prefill()                                          # the prompt is not what is measured
    t = time.perf_counter()
    sched.run(ss)
    seconds = time.perf_counter() - t
    return seconds, sum(s.n_tokens for s in ss), sched.passes, ss


def batch_memory(model: Path, files: int = 8) -> dict:
    """`transcribe_many` of `files` copies of the 60 s sample, batch=files, in a fresh
    process: wall time, decoder tokens/s and peak anonymous memory (polled)."""
    import json
    import subprocess

    code = ("import sys,time,json,threading; sys.path.insert(0, sys.argv[3]); from common import memory_mb\n"
            "import voxnp; peak=[0.0]\n"
            "def watch():\n"
            "    while True: peak[0]=max(peak[0], memory_mb()['anon']); time.sleep(0.1)\n"
            "threading.Thread(target=watch, daemon=True).start()\n"
            "m=voxnp.load(sys.argv[1]); n=int(sys.argv[4]); t=time.perf_counter()\n"
            "rs=list(m.transcribe_many([sys.argv[2]]*n, batch=n))\n"
            "wall=time.perf_counter()-t\n"
            "print(json.dumps({'files':n,'wall_s':wall,'audio_s':sum(r.audio_seconds for r in rs),"
            "'tokens':sum(len(r.tokens) for r in rs),'encoder_s':sum(r.timings.encoder_s for r in rs),"
            "'peak_anon_gb':max(peak[0], memory_mb()['anon'])/1024,"
            "'same_text':len({r.text for r in rs})==1}))")
    run = subprocess.run([sys.executable, "-c", code, str(model), str(SAMPLE_60), str(HERE), str(files)],
                         check=True, capture_output=True, text=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(model: str | None = None, tokens: int = 48, out: str = str(HERE / "results" / "speculate.json"),
         memory: bool = False, memory_only: bool = False):
    """memory: also transcribe 8 x 60 s together (slow: ~10 min on 2 cores) for the
    batch's peak anonymous memory; memory_only: just that, into batch8_memory.json."""
    if memory_only:
        path = Path(model) if model else full_checkpoint()
        mem8 = batch_memory(path)
        print_table([mem8])
        write_json(HERE / "results" / "batch8_memory.json", {"model": str(path), "batch8_60s": mem8})
        return
    import voxnp

    path = Path(model) if model else full_checkpoint()
    m = voxnp.load(path)
    limits = {"read_gbs": round(read_bandwidth_gbs(), 1), "sgemm_gflops": round(matmul_gflops(), 1)}
    print(f"machine limits (same run): read {limits['read_gbs']} GB/s, sgemm {limits['sgemm_gflops']} GFLOP/s")

    print("\n1. BF16 product, T rows (weights from memory)")
    kernel = kernel_rows(m)
    print_table(kernel)

    print("\n2. decoder pass of T positions (context 40)")
    one = decoder_pass(m, 1)
    passes = []
    for T in (1, 2, 3, 4, 5, 8):
        s = one if T == 1 else decoder_pass(m, T)
        passes.append({"positions": T, "ms": round(1000 * s, 1), "x_one": round(s / one, 2)})
    print_table(passes)
    floor_ms = 1000 * sum(w.nbytes for layer in m.weights.decoder.layers
                          for w in (layer.wq, layer.wk, layer.wv, layer.wo, layer.w1, layer.w2, layer.w3)) \
        / (limits["read_gbs"] * 1e9) + 1000 * m.weights.decoder.lm_head.nbytes / (limits["read_gbs"] * 1e9)

    print(f"\n3. ms per emitted token, 15 s sample, {tokens} tokens")
    snap = encoded(m, SAMPLE_15)
    decode_tokens(m, snap, 3, speculate=2)                   # warm (JIT caches, page cache)
    sec0, n0, passes0, (s0,) = decode_tokens(m, snap, tokens, speculate=0)
    ids = [t.id for t in s0.tokens]
    spec = []
    vocab = m.config.decoder.vocab_size
    for K in range(0, 5):
        for name in ("replay 2/3", "PAD (default)"):
            if K == 0 and name != "replay 2/3":
                continue
            if K == 0:
                sec, n, p = sec0, n0, passes0
            else:
                drafter = Replay(ids, vocab) if name.startswith("replay") else None
                sec, n, p, (s,) = decode_tokens(m, snap, tokens, speculate=K, drafter=drafter)
                assert [t.id for t in s.tokens] == ids, "speculation changed the tokens"
            spec.append({"K": K, "drafter": name if K else "-", "ms_per_token": round(1000 * sec / n, 1),
                         "x_K0": round((sec / n) / (sec0 / n0), 2), "passes": p, "tokens": n})
    print_table(spec)

    print(f"\n4. streams decoded together (K=0), {tokens} tokens each")
    batch = []
    snap60 = encoded(m, SAMPLE_60)
    decode_tokens(m, snap60, 2, streams=2, speculate=0)      # warm
    for B in (1, 2, 4, 8):
        sec, n, p, _ = decode_tokens(m, snap60, tokens, streams=B, speculate=0)
        batch.append({"streams": B, "tokens_per_s": round(n / sec, 2), "passes": p})
    for r in batch:
        r["x_one"] = round(r["tokens_per_s"] / batch[0]["tokens_per_s"], 2)
    print_table(batch)

    if memory:
        mem8 = batch_memory(path)
        print(f"8 x 60 s files with --batch 8: peak anonymous memory {mem8['peak_anon_gb']:.2f} GB, "
              f"{mem8['wall_s']:.0f} s wall")
    else:
        mem8 = None
    write_json(out, {"model": str(path), "limits": limits, "batch8_60s": mem8, "decoder_floor_ms": round(floor_ms, 1),
                     "kernel_rows": kernel, "decoder_pass": passes, "speculation": spec,
                     "batched_streams": batch})


if __name__ == "__main__":
    import fire

    fire.Fire(main)
