"""voxnp's speed and memory on the full-size model, against the machine's own limits.

    python bench/bench.py [--model DIR] [--out bench/results/NAME.json] [--quick] [--encoder_only]

Without --model, a full-size random checkpoint (8.9 GB, the published format) is
written once to bench/cache/full (or $VOXNP_BENCH_CACHE) and reused. Everything is
measured in this one run, and the figures that matter are ratios to limits measured
in the same run: read bandwidth (GB/s, all cores) and float32 matmul rate (GFLOP/s).
The encoder is measured in bf16 (float32 products) and in the fast formats' int8
(rows *_int8); --encoder_only stops there (bench/results/encoder.json).
Prints a table and writes the same figures as JSON.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import voxnp  # noqa: F401  (before NumPy: its thread settings must reach OpenBLAS as it loads)
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import memory_mb, print_table, row_recorder, write_json  # noqa: E402

SHARED_AUDIO = HERE.parent.parent / "shared" / "audio"
SAMPLES = ("5s_dont_worry_about_him.wav", "15s_there_are_two_of_them_out_there.wav",
           "60s_i_dont_want_anyones_life_on_my_hands.wav")


# ---------------------------------------------------------------------------
# the machine's limits


def read_bandwidth_gbs(n_bytes: int = 2 << 30, repeats: int = 5) -> float:
    """Streaming read bandwidth with all cores: parallel row sums over a buffer >> L3."""
    from numba import njit, prange

    @njit(parallel=True, fastmath=True, cache=True)
    def row_sums(a):
        out = np.zeros(a.shape[0], np.float32)
        for r in prange(a.shape[0]):
            acc = np.float32(0.0)
            row = a[r]
            for j in range(row.shape[0]):
                acc += row[j]
            out[r] = acc
        return out.sum()

    a = np.ones((n_bytes // 4 // 4096, 4096), np.float32)
    row_sums(a)
    best = min(_timed(lambda: row_sums(a)) for _ in range(repeats))
    return a.nbytes / best / 1e9


def matmul_gflops(n: int = 3072, repeats: int = 5) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---------------------------------------------------------------------------
# model figures


def full_checkpoint() -> Path:
    cache = Path(os.environ.get("VOXNP_BENCH_CACHE", HERE / "cache")) / "full"
    if not (cache / "params.json").exists():
        from voxnp.checkpoint import write_checkpoint

        print(f"writing a full-size random checkpoint to {cache} (8.9 GB, once) ...", flush=True)
        write_checkpoint(cache, preset="full", overwrite=True)
    return cache


def decoder_bytes_per_step(cfg, context: int) -> float:
    """Weights (BF16) plus the KV cache read by one decoder step."""
    d = cfg.decoder
    q, kv = d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim
    per_layer = d.dim * (q + 2 * kv) + q * d.dim + 3 * d.dim * d.hidden_dim
    weights = 2 * (d.n_layers * per_layer + d.vocab_size * d.dim)
    kv_bytes = d.n_layers * 2 * min(context, d.sliding_window) * kv * 4
    return weights + kv_bytes


def encoder_flops_per_position(cfg) -> float:
    """Multiply-adds x 2 of the encoder layers, attention at a full window, and the adapter."""
    e = cfg.encoder
    q, kv = e.n_heads * e.head_dim, e.n_kv_heads * e.head_dim
    linear = e.n_layers * (e.dim * (q + 2 * kv) + q * e.dim + 3 * e.dim * e.hidden_dim)
    attention = e.n_layers * 2 * 2 * e.sliding_window * q          # QK^T and PV at a full window
    adapter = (e.dim * e.downsample_factor * cfg.decoder.dim + cfg.decoder.dim ** 2) / e.downsample_factor
    return 2 * linear + attention + 2 * adapter


def filled_state(m, context: int):
    """A decoder state that has `context` positions cached (random keys and values, stored
    as the model's rings store them)."""
    from voxnp.decoder import new_decoder_state

    state = new_decoder_state(m.config, m.weights.decoder, 6, m.ops)
    rng = np.random.default_rng(0)
    for cache in state.caches:
        n = min(context, cache.capacity)
        cache.k[:, :n] = cache.stored(rng.standard_normal(cache.k[:, :n].shape, dtype=np.float32))
        cache.v[:, :n] = cache.stored(rng.standard_normal(cache.v[:, :n].shape, dtype=np.float32))
        cache.length = cache.appended = context
    state.n_positions = context
    return state


def time_decoder(m, context: int, steps: int = 5) -> float:
    """Mean seconds per decoder step with `context` positions already cached."""
    from voxnp.decoder import decode

    cfg = m.config
    state = filled_state(m, context)
    x = np.random.default_rng(0).standard_normal((1, cfg.decoder.dim), dtype=np.float32)
    decode(x, state, m.weights.decoder, cfg, m.ops, m.decoder_inv_freq)   # warm
    t = time.perf_counter()
    for _ in range(steps):
        decode(x, state, m.weights.decoder, cfg, m.ops, m.decoder_inv_freq)
    return (time.perf_counter() - t) / steps


def time_blas_baseline_step(m) -> float:
    """One decoder step's matrices the voxtral.c BLAS way: widen each BF16 matrix into a
    float32 scratch buffer, then a BLAS matrix-vector product (attention excluded)."""
    from voxnp.kernels import widen_into

    w = m.weights.decoder
    mats = [getattr(layer, n) for layer in w.layers for n in ("wq", "wk", "wv", "wo", "w1", "w3", "w2")]
    mats.append(w.tok_embeddings)
    scratch = np.empty(max(a.size for a in mats), np.float32)
    x = {k: np.ones(k, np.float32) for k in {a.shape[1] for a in mats}}

    def step():
        for a in mats:
            f32 = widen_into(a, scratch)
            f32 @ x[a.shape[1]]

    step()
    return min(_timed(step) for _ in range(2))


def time_encoder(m, seconds: float = 10.0, after_seconds: float = 0.0) -> float:
    """Seconds of encoder + adapter work per second of audio, for `seconds` of audio fed
    after `after_seconds` (0: a fresh stream; > 15: every sliding window full)."""
    from voxnp.encoder import adapt, encode, new_encoder_state

    cfg = m.config
    per_s = cfg.audio.sampling_rate / cfg.audio.hop_length                      # mel frames per second
    rng = np.random.default_rng(0)
    mel = rng.standard_normal((int((after_seconds + seconds) * per_s), cfg.audio.n_mels), dtype=np.float32) * 0.3
    warm = new_encoder_state(cfg, m.ops)
    encode(mel[:256], warm, m.weights.encoder, cfg, m.ops, m.encoder_inv_freq)  # compile, float32 copies
    state = new_encoder_state(cfg, m.ops)
    split = int(after_seconds * per_s)
    if split:
        encode(mel[:split], state, m.weights.encoder, cfg, m.ops, m.encoder_inv_freq)
    t = time.perf_counter()
    enc = encode(mel[split:], state, m.weights.encoder, cfg, m.ops, m.encoder_inv_freq)
    adapt(enc, state, m.weights.adapter, cfg, m.ops)
    return (time.perf_counter() - t) / seconds


def encoder_profile(m, seconds: float = 10.0, after_seconds: float = 20.0) -> dict:
    """Seconds per audio second in each kind of op, windows full: every op of the
    backend wrapped with a timer (linear, attention, the rest)."""
    from voxnp.encoder import adapt, encode, new_encoder_state

    cfg = m.config
    per_s = cfg.audio.sampling_rate / cfg.audio.hop_length
    mel = np.random.default_rng(1).standard_normal((int((after_seconds + seconds) * per_s), cfg.audio.n_mels),
                                                   dtype=np.float32) * 0.3
    state = new_encoder_state(cfg, m.ops)
    split = int(after_seconds * per_s)
    encode(mel[:split], state, m.weights.encoder, cfg, m.ops, m.encoder_inv_freq)
    spent: dict[str, float] = {}

    class Timed:
        def __getattr__(self, name):
            op = getattr(m.ops, name)
            if not callable(op):
                return op

            def timed(*args, **kwargs):
                t = time.perf_counter()
                out = op(*args, **kwargs)
                kind = name if name in ("linear", "attention") else "other"
                spent[kind] = spent.get(kind, 0.0) + time.perf_counter() - t
                return out
            return timed

    t = time.perf_counter()
    enc = encode(mel[split:], state, m.weights.encoder, cfg, Timed(), m.encoder_inv_freq)
    adapt(enc, state, m.weights.adapter, cfg, Timed())
    total = time.perf_counter() - t
    spent["other"] = total - spent.get("linear", 0.0) - spent.get("attention", 0.0)  # incl. glue
    return {k: v / seconds for k, v in spent.items()}


def decoder_linear_flops(cfg) -> float:
    """Multiply-adds x 2 of one decoder position's linear layers (without the LM head)."""
    d = cfg.decoder
    q, kv = d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim
    return 2 * d.n_layers * (d.dim * (q + 2 * kv) + q * d.dim + 3 * d.dim * d.hidden_dim)


def time_prefill(m) -> float:
    from voxnp.decoder import decode, new_decoder_state

    cfg = m.config
    L = 1 + cfg.audio.n_left_pad_tokens + 6
    x = np.random.default_rng(0).standard_normal((L - 1, cfg.decoder.dim), dtype=np.float32)
    decode(x[:2], new_decoder_state(cfg, m.weights.decoder, 6, m.ops), m.weights.decoder, cfg, m.ops,
           m.decoder_inv_freq)                                                        # warm
    state = new_decoder_state(cfg, m.weights.decoder, 6, m.ops)
    return _timed(lambda: decode(x, state, m.weights.decoder, cfg, m.ops, m.decoder_inv_freq))


def cold_start(model: Path, audio: Path, numba_cache: str | None) -> float:
    """Process start to the first token of `transcribe(FILE)`, in a fresh interpreter."""
    env = dict(os.environ)
    if numba_cache is not None:
        env["NUMBA_CACHE_DIR"] = numba_cache
    code = ("import time,sys; t0=time.perf_counter(); import voxnp; from voxnp.stream import transcribe\n"
            "class First(Exception): pass\n"
            "def stop(token): raise First\n"
            "try: transcribe(voxnp.load(sys.argv[1]), sys.argv[2], on_token=stop)\n"
            "except First: print(time.perf_counter()-t0)")
    out = subprocess.run([sys.executable, "-c", code, str(model), str(audio)], env=env, check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def end_to_end(model: Path, audio: Path) -> dict:
    """`voxnp FILE` in a fresh process: wall time, x real time, peak RSS and anonymous memory."""
    code = ("import sys,time,json,threading; sys.path.insert(0, sys.argv[3]); from common import memory_mb;"
            "import voxnp; from voxnp.stream import transcribe; peak=[0.0]\n"
            "def watch():\n"
            "    while True: peak[0]=max(peak[0], memory_mb()['anon']); time.sleep(0.05)\n"
            "threading.Thread(target=watch, daemon=True).start(); t=time.perf_counter();"
            "m=voxnp.load(sys.argv[1]); r=transcribe(m, sys.argv[2]); wall=time.perf_counter()-t;"
            "print(json.dumps({'wall_s':wall,'audio_s':r.audio_seconds,'peak_rss_mb':memory_mb()['peak'],"
            "'peak_anon_mb':max(peak[0], memory_mb()['anon']),'encoder_s':r.timings.encoder_s,"
            "'prefill_s':r.timings.prefill_s,'decoder_ms_per_step':1000*r.timings.decoder_s/max(1,r.timings.decoder_steps)}))")
    out = subprocess.run([sys.executable, "-c", code, str(model), str(audio), str(HERE)],
                         check=True, capture_output=True, text=True)
    import json

    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["x_real_time"] = r["audio_s"] / r["wall_s"]
    return r


def encoder_products(row, rows: int = 512, suffix: str = "") -> None:
    """The encoder's three matrix shapes at `rows` positions: int8 (i8rows, activations
    quantized per call) and float32 sgemm on the same operands, rates in the same run."""
    from voxnp import quant
    from voxnp.kernels import linear

    rng = np.random.default_rng(2)
    for n, k in ((2048, 1280), (5120, 1280), (1280, 5120)):
        w = rng.standard_normal((n, k), dtype=np.float32)
        x = rng.standard_normal((rows, k), dtype=np.float32)
        m = quant.quantize(w, quant.INT8_ROWS)
        linear(x, m)
        t8 = min(_timed(lambda: linear(x, m)) for _ in range(5))
        x @ w.T
        t32 = min(_timed(lambda: x @ w.T) for _ in range(5))
        ops = 2 * rows * n * k
        row(f"encoder_product_{n}x{k}{suffix}", ops / t8 / 1e9, "GOP/s", f"int8, {rows} rows; {t32 / t8:.2f}x sgemm "
            f"on the same operands ({ops / t32 / 1e9:.0f} GFLOP/s)")


def encoder_rows(row, results, m, floor: float, suffix: str) -> None:
    """The encoder's seconds per audio second, fresh and windows full, against the
    sgemm floor (`floor`: its FLOPs at the matmul rate), and the per-op profile."""
    for name, after in (("encoder_fresh", 0.0), ("encoder_steady", 20.0)):
        enc = time_encoder(m, 10.0, after)
        row(name + suffix, enc, "s per audio s",
            f"{100 * floor / enc:.0f}% of matmul rate (floor {floor:.2f}); "
            + ("first 10 s of a stream" if after == 0 else "windows full (long audio)"))
        results[f"{name}{suffix}_fraction_of_matmul"] = floor / enc
    prof = encoder_profile(m)
    for kind in ("linear", "attention", "other"):
        row(f"encoder_steady{suffix}_{kind}", prof.get(kind, 0.0), "s per audio s", "per-op profile, windows full")


def main(model=None, out=None, quick=False, encoder_only=False):
    import voxnp
    from voxnp import cpu

    model = Path(model) if model else full_checkpoint()
    results = {"model": str(model)}
    rows = []

    row = row_recorder(rows, results)

    bw = read_bandwidth_gbs()
    mm = matmul_gflops()
    row("read_bandwidth", bw, "GB/s", "all cores")
    row("matmul_rate", mm, "GFLOP/s", "float32 sgemm 3072^3")

    before = memory_mb()
    t = time.perf_counter()
    m = voxnp.load(model)
    row("open_time", time.perf_counter() - t, "s")
    row("open_rss_delta", memory_mb()["rss"] - before["rss"], "MB")

    cfg = m.config
    with tempfile.TemporaryDirectory() as fresh:
        audio = SHARED_AUDIO / SAMPLES[0]
        if not encoder_only:
            row("first_call", cold_start(model, audio, fresh), "s", "process start to first token, empty JIT cache")
            row("cold_start_cached", cold_start(model, audio, None), "s", "process start to first token, JIT cached")

    floor = encoder_flops_per_position(cfg) * 50 / (mm * 1e9)                  # s per audio s at sgemm rate
    encoder_products(row)
    encoder_rows(row, results, m, floor, "")
    # the fast formats' encoder: int8 weights and activations (q4 has the same encoder)
    int8 = voxnp.load(model, weights="int8", progress=False)
    encoder_rows(row, results, int8, floor, "_int8")
    results["kernel_set"] = cpu.active()
    if cpu.active() == "amx":                # the set below AMX in the same run: the ratio
        with cpu.using("avx512bf16"):
            encoder_products(row, suffix="_avx512bf16")
            encoder_rows(row, results, int8, floor, "_int8_avx512bf16")
    if encoder_only:
        print_table(rows)
        write_json(out or HERE / "results" / "encoder.json", results)
        return
    n_prompt = cfg.audio.n_left_pad_tokens + 6
    prefill = time_prefill(m)
    prefill_floor = decoder_linear_flops(cfg) * n_prompt / (mm * 1e9)
    row("prefill", prefill, "s", f"{n_prompt} positions; {prefill / prefill_floor:.2f}x its FLOP floor "
                                 f"({prefill_floor:.2f} s at the matmul rate)")
    results["prefill_floor_ratio"] = prefill / prefill_floor
    for context in (40, 2000):
        step = time_decoder(m, context)
        floor = decoder_bytes_per_step(cfg, context) / (bw * 1e9)
        row(f"decoder_step_ctx{context}", 1000 * step, "ms", f"{step / floor:.2f}x bandwidth floor ({1000 * floor:.0f} ms)")
        results[f"decoder_step_ctx{context}_floor_ratio"] = step / floor
    blas = time_blas_baseline_step(m)
    row("blas_baseline_step", 1000 * blas, "ms", f"voxtral.c way; voxnp is {blas / (results['decoder_step_ctx40'] / 1000):.2f}x faster")
    if not quick:
        for name in SAMPLES:
            r = end_to_end(model, SHARED_AUDIO / name)
            results[f"e2e_{name}"] = r
            row(f"e2e_{name.split('_')[0]}", r["wall_s"], "s",
                f"{r['x_real_time']:.2f}x real time, peak RSS {r['peak_rss_mb']:.0f} MB, anon {r['peak_anon_mb']:.0f} MB")
    print_table(rows)
    if out is None:
        out = HERE / "results" / ("quick.json" if quick else "full.json")
    write_json(out, results)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
