"""The decoder step per weight format and kernel set, against its read floor.

    flock /tmp/voxnp-bench.lock python bench/decoder_speed.py [--model DIR] [--sets avx2,avx512vnni]
        [--rounds 3] [--out bench/results/decoder_speed.json]

For bf16, int8 and q4 (converted files cached in VOXNP_CACHE_DIR) and each kernel set
(default: the CPU's best and avx2), all measured in this one run, rounds interleaved and
the best round kept (the machine is shared and noisy):
- the step at 2000 cached positions (ms) and its ratio to bf16;
- the bytes one step reads (decoder matrices, the tied head, the KV cache at that context)
  and the read floor: bytes / streaming read bandwidth measured in the same run;
- a pass of T = 1, 2, 4, 8 rows of one sequence (speculation, batching) at the same context,
  as a ratio to T = 1 (the step).
Each format's decoder is loaded as `voxnp.load` does by default (int8 and q4 copied into
huge-page memory, bf16 mapped; the JSON's "resident" says which): VOXNP_RESIDENT=1 copies
bf16's too, for a comparison of the kernels alone, VOXNP_RESIDENT=0 maps all three.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import voxnp  # noqa: F401  (before NumPy: its thread settings must reach OpenBLAS as it loads)
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import filled_state, full_checkpoint, read_bandwidth_gbs  # noqa: E402
from common import print_table, row_recorder, write_json  # noqa: E402

FORMATS = ("bf16", "int8", "q4")
CONTEXT = 2000
ROWS = (1, 2, 4, 8)


def step_bytes(m, context: int) -> int:
    """Bytes one decoder step reads: every decoder matrix and the head once, the KV cache."""
    d, w = m.config.decoder, m.weights.decoder
    names = ("wq", "wk", "wv", "wo", "w1", "w3", "w2")
    matrices = sum(getattr(layer, n).nbytes for layer in w.layers for n in names)
    head = w.lm_head.nbytes                 # the tied head (a quantized copy for int8/q4)
    kv_item = 2 if w.kv_bf16 else 4         # int8/q4 rings store BF16 (kv_cache.py)
    kv = d.n_layers * 2 * min(context, d.sliding_window) * d.n_kv_heads * d.head_dim * kv_item
    return matrices + head + kv


def time_pass(m, state, rows: int, repeats: int) -> float:
    """Best seconds of a pass of `rows` new positions (a step when 1), taken back after."""
    from voxnp.decoder import decode_rows

    cfg = m.config
    x = np.random.default_rng(rows).standard_normal((rows, cfg.decoder.dim), dtype=np.float32) * 0.1
    context = state.n_positions
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        decode_rows(x, [state], [rows], m.weights.decoder, cfg, m.ops, m.decoder_inv_freq, all_logits=False)
        best = min(best, time.perf_counter() - t)
        state.truncate(context)
    return best


def main(model=None, sets=None, rounds=3, out=None):
    import voxnp
    from voxnp import cpu, resident

    model = Path(model) if model else full_checkpoint()
    sets = sets.split(",") if sets else sorted({cpu.best(), "avx2"} & set(cpu.available()),
                                               key=cpu.KERNEL_SETS.index)[::-1]
    results = {"model": str(model), "context": CONTEXT, "kernel_sets": sets}
    rows = []
    row = row_recorder(rows, results)

    models = {fmt: voxnp.load(model, weights=fmt, progress=False) for fmt in FORMATS}
    results["resident"] = {fmt: resident.wanted(fmt, "auto") for fmt in FORMATS}   # else mapped
    nbytes = {fmt: step_bytes(models[fmt], CONTEXT) for fmt in FORMATS}
    states = {fmt: filled_state(models[fmt], CONTEXT) for fmt in FORMATS}
    for f in FORMATS:
        time_pass(models[f], states[f], 1, 1)                    # warm: JIT, page cache
    passes = {(s, f, T): np.inf for s in sets for f in FORMATS for T in ROWS}
    bandwidth = 0.0
    for r in range(int(rounds)):
        bandwidth = max(bandwidth, read_bandwidth_gbs(repeats=2))
        for s in sets:
            with cpu.using(s):
                for f in FORMATS:
                    for T in ROWS:
                        passes[s, f, T] = min(passes[s, f, T], time_pass(models[f], states[f], T, 2))
        print(f"round {r + 1} of {rounds} done", flush=True)

    row("read_bandwidth", bandwidth, "GB/s", "streaming read, all cores, best of the rounds")
    for f in FORMATS:
        floor = nbytes[f] / bandwidth / 1e9
        row(f"bytes_per_step_{f}", nbytes[f] / 1e9, "GB", f"read floor {1000 * floor:.1f} ms")
    for s in sets:
        for f in FORMATS:
            t = passes[s, f, 1]
            floor = nbytes[f] / bandwidth / 1e9
            note = f"{t / floor:.2f}x read floor"
            if f != "bf16":
                note = f"{t / passes[s, 'bf16', 1]:.2f}x bf16; " + note
            row(f"step_ctx{CONTEXT}_{f}_{s}", 1000 * t, "ms", note)
        for f in FORMATS:
            one = passes[s, f, 1]
            results[f"pass_ms_{f}_{s}"] = {T: 1000 * passes[s, f, T] for T in ROWS}
            row(f"rows4_vs_1_{f}_{s}", passes[s, f, 4] / one, "x",
                "pass ms T=" + "/".join(f"{T}:{1000 * passes[s, f, T]:.0f}" for T in ROWS))
    print_table(rows)
    write_json(out or HERE / "results" / "decoder_speed.json", results)


if __name__ == "__main__":
    args = sys.argv[1:]
    opts = {}
    for flag in ("--model", "--out", "--sets", "--rounds"):
        if flag in args:
            opts[flag[2:]] = args[args.index(flag) + 1]
    if "--help" in args or "-h" in args:
        print(__doc__)
        sys.exit(0)
    main(**opts)
