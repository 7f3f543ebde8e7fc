"""The cupy backend on an NVIDIA GPU: correctness against numba, then speed and memory.

    python3 bench/gpu.py [--out bench/results/gpu.json] [--model DIR] [--quick]

1. kernels: each CUDA kernel of kernels_cupy against its NumPy twin (odd sizes; the
   few-row BF16 product's rows bit-identical to one-row calls);
2. tiny checkpoints (tiny, tiny-window): `voxnp dump` arrays with cupy and numba:
   identical tokens, relative error <= 1e-4 (enc, audio embeddings, logits);
3. the full-size random checkpoint (written once to bench/cache/full, or --model):
   decoder ms/step at context 40 and 2000, encoder seconds per audio second, prefill,
   the 5 s and 60 s samples end to end, 16 streams batched against one at a time, and
   the peak GPU memory in use.
Prints a table and writes JSON. Needs CuPy, numba and mistral_common (for the random
checkpoints' tekken.json; see the README's "NVIDIA GPU" for carrying it as a wheel);
audio is read with the standard library's `wave` from ../shared/audio, else from
bench/cache/audio (a copy that travels to a device machine).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import wave
from pathlib import Path

import voxnp  # noqa: F401  (before NumPy: its thread settings must reach OpenBLAS as it loads)
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from common import print_table, write_json  # noqa: E402

AUDIO_DIRS = (HERE.parent.parent / "shared" / "audio", HERE / "cache" / "audio")
SHORT, LONG = "5s_dont_worry_about_him.wav", "60s_i_dont_want_anyones_life_on_my_hands.wav"
TOLERANCE = 1e-4   # relative error allowed against numba (max |diff| / max |numba|)


def read_wav(name: str) -> np.ndarray:
    """16 kHz mono 16-bit WAV -> float32 samples (no soundfile needed)."""
    for d in AUDIO_DIRS:
        if (d / name).exists():
            with wave.open(str(d / name)) as f:
                assert f.getframerate() == 16000 and f.getnchannels() == 1 and f.getsampwidth() == 2
                return np.frombuffer(f.readframes(f.getnframes()), "<i2").astype(np.float32) / 32768.0
    raise SystemExit(f"{name} not found in {', '.join(map(str, AUDIO_DIRS))} (copy ../shared/audio there)")


class GpuMemory:
    """The most GPU memory seen in use (total - free, sampled after each phase)."""

    def __init__(self, cp):
        self.cp = cp
        self.peak = 0

    def sample(self) -> None:
        self.cp.cuda.Device().synchronize()
        free, total = self.cp.cuda.runtime.memGetInfo()
        self.peak = max(self.peak, total - free)


def timed(cp, f) -> float:
    cp.cuda.Device().synchronize()
    t = time.perf_counter()
    f()
    cp.cuda.Device().synchronize()
    return time.perf_counter() - t


# ---------------------------------------------------------------------------
# 1. kernels against their twins


def check_kernels(cp) -> dict:
    from voxnp import kernels_cupy

    cuda, twins = kernels_cupy.CudaKernels(cp), kernels_cupy.KernelTwins()
    rng = np.random.default_rng(0)
    worst, rows_exact = 0.0, True
    for n, k, aligned in ((1000, 3072, True), (77, 1283, False), (4096, 9216, True)):
        w = (rng.standard_normal((n, k), dtype=np.float32) * 0.05).view(np.uint32) >> 16
        w = w.astype(np.uint16)
        x = rng.standard_normal((8, k), dtype=np.float32)
        wd = cp.asarray(w) if aligned else cp.asarray(np.pad(w.reshape(-1), (1, 0)))[1:].reshape(n, k)
        one = np.concatenate([cp.asnumpy(cuda.bf16_rows(cp.asarray(x[t:t + 1]), wd)) for t in range(8)])
        for T in range(1, 9):
            got = cp.asnumpy(cuda.bf16_rows(cp.asarray(x[:T]), wd))
            rows_exact &= bool(np.array_equal(got, one[:T]))
            ref = twins.bf16_rows(x[:T], w)
            worst = max(worst, float(np.abs(got - ref).max() / np.abs(ref).max()))
    widen_exact = bool(np.array_equal(cp.asnumpy(cuda.widen(cp.asarray(w))), twins.widen(w)))

    def rel(got, ref):
        return float(np.abs(cp.asnumpy(got) - ref).max() / max(np.abs(ref).max(), 1e-30))

    g = rng.standard_normal(1001, dtype=np.float32) * 3
    u = rng.standard_normal(1001, dtype=np.float32)
    gelu_err = float(np.abs(cp.asnumpy(cuda.gelu(cp.asarray(g))) - twins.gelu(g)).max())
    swiglu_err = rel(cuda.swiglu(cp.asarray(g), cp.asarray(u)), twins.swiglu(g, u))
    x = rng.standard_normal((5, 3072), dtype=np.float32)
    nw = rng.standard_normal(3072, dtype=np.float32)
    norm_err = rel(cuda.rms_norm(cp.asarray(x), cp.asarray(nw), 1e-5), twins.rms_norm(x, nw, 1e-5))
    from voxnp import ops

    q = rng.standard_normal((3, 32, 128), dtype=np.float32)
    pos = np.array([0, 41, 1_000_003])
    inv_freq = ops.rope_frequencies(128, 1e6)
    rope_err = rel(cuda.rope(cp.asarray(q), cp.asarray(pos), cp.asarray(inv_freq)), twins.rope(q, pos, inv_freq))
    attention_err, ring_exact = 0.0, True
    for hd, rows, lengths, window, capacity in ((128, [slice(0, 1)], [40], 8192, 8200),
                                                (128, [slice(0, 5), slice(5, 8)], [9000, 100], 8192, 8200),
                                                (64, [slice(0, 38)], [900], 750, 790),
                                                (16, [slice(0, 2), slice(2, 3)], [300, 12], 64, 72)):
        R = rows[-1].stop
        host = [tuple(rng.standard_normal((2, 8, capacity, hd), dtype=np.float32)) for _ in rows]
        device = [(cp.asarray(k), cp.asarray(v)) for k, v in host]
        qq = rng.standard_normal((R, 32, hd), dtype=np.float32)
        kk, vv = rng.standard_normal((2, R, 8, hd), dtype=np.float32)
        firsts = [n - (r.stop - r.start) for n, r in zip(lengths, rows)]
        lowest = [max(0, n - capacity) for n in lengths]
        got = cuda.append_and_attend(cp.asarray(qq), cp.asarray(kk), cp.asarray(vv), device, rows, firsts, lowest,
                                     window)
        want = twins.append_and_attend(qq, kk, vv, host, rows, firsts, lowest, window)
        attention_err = max(attention_err, rel(got, want))
        ring_exact &= all(np.array_equal(cp.asnumpy(d[0]), h[0]) and np.array_equal(cp.asnumpy(d[1]), h[1])
                          for d, h in zip(device, host))
    errors = {"gelu_max_err": gelu_err, "swiglu_rel_err": swiglu_err, "rms_norm_rel_err": norm_err,
              "rope_rel_err": rope_err, "attention_rel_err": attention_err,
              "ring_append_exact": ring_exact}
    return {"bf16_rows_rel_err": worst, "bf16_rows_rows_exact": rows_exact, "widen_exact": widen_exact, **errors,
            "kernels_ok": rows_exact and widen_exact and ring_exact and worst <= TOLERANCE and gelu_err <= 1e-5
            and max(swiglu_err, norm_err, rope_err, attention_err) <= TOLERANCE}


# ---------------------------------------------------------------------------
# 2. tiny checkpoints: cupy against numba


def check_tiny(speech: np.ndarray) -> dict:
    import voxnp
    from voxnp.checkpoint import write_checkpoint
    from voxnp.dump import dump_arrays

    equal, worst = True, 0.0
    for preset in ("tiny", "tiny-window"):
        d = write_checkpoint(tempfile.mkdtemp(prefix="voxnp-gpu-"), preset=preset, seed=0, overwrite=True)
        ref = dump_arrays(voxnp.load(d, backend="numba"), speech)
        got = dump_arrays(voxnp.load(d, backend="cupy"), speech)
        equal &= bool(np.array_equal(ref["tokens"], got["tokens"]))
        for key in ("enc", "audio_embeds", "logits"):
            worst = max(worst, float(np.abs(got[key] - ref[key]).max() / np.abs(ref[key]).max()))
    return {"tokens_equal_tiny": equal, "rel_err_tiny": worst, "tiny_ok": equal and worst <= TOLERANCE}


# ---------------------------------------------------------------------------
# 3. the full-size model


def full_checkpoint(path: str | None) -> Path:
    if path:
        return Path(path)
    from voxnp.checkpoint import write_checkpoint

    d = Path(os.environ.get("VOXNP_BENCH_CACHE", HERE / "cache")) / "full"
    if not (d / "params.json").exists():
        t = time.perf_counter()
        write_checkpoint(d, preset="full", seed=0, overwrite=True)
        print(f"wrote the full-size checkpoint to {d} in {time.perf_counter() - t:.0f} s", flush=True)
    return d


def copy_bandwidth(cp, nbytes: int = 2 << 30) -> float:
    """Device memory bandwidth (bytes read + written per second) of a plain copy."""
    a = cp.empty(nbytes // 4, cp.float32)
    b = cp.empty_like(a)
    b[...] = a
    seconds = min(timed(cp, lambda: b.__setitem__(Ellipsis, a)) for _ in range(5))
    return 2 * nbytes / seconds


def decoder_bytes(m) -> int:
    """Bytes of weights one decoder step reads (every layer and the tied head)."""
    return sum(a.nbytes for a in _arrays(m.weights.decoder))


def _arrays(node):
    if isinstance(node, np.ndarray):
        yield node
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from _arrays(item)
    elif hasattr(node, "__dataclass_fields__"):
        for name in node.__dataclass_fields__:
            yield from _arrays(getattr(node, name))


def host_cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} threads)"
    except OSError:
        pass
    return "unknown"


def decoder_state_at(cp, m, context: int):
    """A decoder state whose rings hold `context` (random) positions."""
    from voxnp.decoder import new_decoder_state

    state = new_decoder_state(m.config, m.weights.decoder, 6, m.ops)
    for cache in state.caches:
        cache.make_room(context + 8)
        n = min(context, cache.capacity)
        cache.k[:, :n] = cp.random.standard_normal(cache.k[:, :n].shape, dtype=cp.float32)
        cache.v[:, :n] = cp.random.standard_normal(cache.v[:, :n].shape, dtype=cp.float32)
        cache.length = cache.appended = context
    state.n_positions = context
    return state


def decoder_ms(cp, m, context: int, streams: int = 1, steps: int = 20) -> float:
    """ms per decoder pass of one row for each of `streams` sequences with `context`
    positions already in their rings (the positions are taken back after each pass)."""
    from voxnp.decoder import decode_rows

    cfg = m.config
    states = [decoder_state_at(cp, m, context) for _ in range(streams)]
    x = cp.random.standard_normal((streams, cfg.decoder.dim), dtype=cp.float32)

    def step():
        decode_rows(x, states, [1] * streams, m.weights.decoder, cfg, m.ops, m.decoder_inv_freq)
        for state in states:
            state.truncate(context)

    step()                                           # compile, warm
    return 1000 * timed(cp, lambda: [step() for _ in range(steps)]) / steps


def encoder_s_per_s(cp, m, seconds: float = 10.0) -> float:
    from voxnp.encoder import adapt, encode, new_encoder_state

    cfg = m.config
    per_s = cfg.audio.sampling_rate // cfg.audio.hop_length                     # mel frames per second
    mel = cp.random.standard_normal((int(seconds * per_s), cfg.audio.n_mels), dtype=cp.float32) * 0.3
    encode(mel[:256], new_encoder_state(cfg, m.ops), m.weights.encoder, cfg, m.ops, m.encoder_inv_freq)
    state = new_encoder_state(cfg, m.ops)

    def run():
        adapt(encode(mel, state, m.weights.encoder, cfg, m.ops, m.encoder_inv_freq), state,
              m.weights.adapter, cfg, m.ops)

    return timed(cp, run) / seconds


def prefill_s(cp, m) -> float:
    from voxnp.decoder import decode, new_decoder_state

    cfg = m.config
    L = 1 + cfg.audio.n_left_pad_tokens + 6
    x = cp.random.standard_normal((L - 1, cfg.decoder.dim), dtype=cp.float32)
    decode(x, new_decoder_state(cfg, m.weights.decoder, 6, m.ops), m.weights.decoder, cfg, m.ops,
           m.decoder_inv_freq)                                                  # warm
    state = new_decoder_state(cfg, m.weights.decoder, 6, m.ops)
    return timed(cp, lambda: decode(x, state, m.weights.decoder, cfg, m.ops, m.decoder_inv_freq))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "results" / "gpu.json"))
    ap.add_argument("--model", default=None, help="a full-size model directory (default: a random one)")
    ap.add_argument("--quick", action="store_true", help="skip the 60 s sample and the 16 streams")
    args = ap.parse_args()
    os.environ.setdefault("VOXNP_CACHE_DIR", "")                 # compute the left padding every time
    from voxnp.kernels_cupy import import_cupy

    cp = import_cupy()
    props = cp.cuda.runtime.getDeviceProperties(0)
    result = {"device": props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])}
    result["host_cpu"] = host_cpu()
    print(f"device: {result['device']}, host: {result['host_cpu']}", flush=True)
    t0 = time.perf_counter()
    short = read_wav(SHORT)
    state = {}

    def phase(name, f):
        """Run one phase; a failure is recorded (first lines of its traceback) and the rest go on."""
        t = time.perf_counter()
        try:
            f()
        except Exception:
            import traceback

            result.setdefault("errors", {})[name] = traceback.format_exc().strip().splitlines()[-12:]
            print(f"[{name}] FAILED:\n" + traceback.format_exc(), flush=True)
        print(f"[{name}] {time.perf_counter() - t:.1f} s", flush=True)
        write_json(args.out, result)                 # what is known so far survives a timeout

    phase("kernels", lambda: result.update(check_kernels(cp)))
    phase("tiny", lambda: result.update(check_tiny(short[:48000])))
    print({k: result.get(k) for k in ("kernels_ok", "tokens_equal_tiny", "rel_err_tiny")}, flush=True)

    import voxnp
    from voxnp.stream import transcribe, transcribe_many

    memory = GpuMemory(cp)

    def load():
        path = full_checkpoint(args.model)
        t = time.perf_counter()
        state["m"] = voxnp.load(path, backend="cupy")                      # uploads the checkpoint
        memory.sample()
        result["load_s"] = time.perf_counter() - t

    def decoder():
        bandwidth = copy_bandwidth(cp)
        result["copy_bandwidth_tb_s"] = bandwidth / 1e12
        result["decoder_step_floor_ms"] = 1000 * decoder_bytes(state["m"]) / bandwidth     # weights read once
        result["decoder_ms_per_step_ctx40"] = decoder_ms(cp, state["m"], 40)
        result["decoder_ms_per_step_ctx2000"] = decoder_ms(cp, state["m"], 2000)
        result["decoder_ms_per_pass_8_streams_ctx40"] = decoder_ms(cp, state["m"], 40, streams=8)
        result["decoder_8_streams_tokens_per_s_vs_1"] = (8 * result["decoder_ms_per_step_ctx40"]
                                                         / result["decoder_ms_per_pass_8_streams_ctx40"])
        memory.sample()

    def encoder():
        m = state["m"]
        result["encoder_s_per_audio_s"] = encoder_s_per_s(cp, m)       # weights widened block by block
        memory.sample()

    def prefill():
        result["prefill_s"] = prefill_s(cp, state["m"])
        memory.sample()

    def end_to_end():
        m = state["m"]
        timed(cp, lambda: transcribe(m, short[:16000]))                         # warm
        result["e2e_5s_s"] = timed(cp, lambda: transcribe(m, short))
        result["e2e_60s_s"] = None if args.quick else timed(cp, lambda: transcribe(m, read_wav(LONG)))
        memory.sample()

    def batched():
        m = state["m"]
        clip = short                                                      # 5 s: decoding, not setup
        alone = timed(cp, lambda: [transcribe(m, clip) for _ in range(4)]) / 4
        together = timed(cp, lambda: list(transcribe_many(m, [clip] * 16, batch=8)))
        result["batch16_s"] = together
        result["batch16_speedup"] = 16 * alone / together
        memory.sample()

    phase("load", load)
    if "m" in state:
        for name, f in (("decoder", decoder), ("encoder", encoder), ("prefill", prefill),
                        ("end_to_end", end_to_end)):
            phase(name, f)
        if args.quick:
            result["batch16_speedup"] = None
        else:
            phase("batch16", batched)
    result["gpu_memory_gb"] = memory.peak / 1e9
    result["total_s"] = time.perf_counter() - t0
    print_table([{"figure": k, "value": f"{v:.4g}" if isinstance(v, float) else str(v)}
                 for k, v in result.items() if k != "errors"])
    write_json(args.out, result)

if __name__ == "__main__":
    main()
