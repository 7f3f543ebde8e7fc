"""The decoder's KV rings in float32 against BF16 (what int8 and q4 use), side by side.

    flock /tmp/voxnp-bench.lock python bench/kv_ring.py [--model DIR] [--formats q4,int8]
        [--contexts 40,2000,8192] [--rounds 4] [--out bench/results/kv_ring.json]

For each format and context, the same model steps once over a state whose rings hold
`context` positions stored as float32 and once over one stored as BF16 (the weights
loaded once; rounds interleaved, best kept): the step (ms), its ratio, and the bytes a
step reads with each ring (the decoder's matrices, the head, the cached keys and values).
Also the rings' memory at a full window (8192 positions: ~11 minutes of audio), per stream.
"""
from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import voxnp  # noqa: F401  (before NumPy: its thread settings must reach OpenBLAS as it loads)
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import filled_state, full_checkpoint, read_bandwidth_gbs  # noqa: E402
from common import options, print_table, row_recorder, write_json  # noqa: E402
from decoder_speed import step_bytes, time_pass  # noqa: E402


def with_decoder(m, w):
    """A shallow copy of model m whose decoder weights are w (the same matrices)."""
    clone = copy.copy(m)
    clone.weights = dataclasses.replace(m.weights, decoder=w)
    return clone


def main(model=None, formats="q4,int8", contexts="40,2000,8192", rounds=4, out=None):
    import voxnp

    model = Path(model) if model else full_checkpoint()
    formats, contexts = str(formats).split(","), [int(c) for c in str(contexts).split(",")]
    results = {"model": str(model), "formats": formats, "contexts": contexts}
    rows = []
    row = row_recorder(rows, results)
    variants = {}                                   # (format, ring) -> (model, its decoder weights)
    for fmt in formats:
        m = voxnp.load(model, weights=fmt, progress=False)
        for ring, bf16 in (("float32", False), ("bf16", True)):
            w = dataclasses.replace(m.weights.decoder, kv_bf16=bf16)
            variants[fmt, ring] = with_decoder(m, w)
    best = {(f, r, c): np.inf for f, r in variants for c in contexts}
    bandwidth = 0.0
    for i in range(int(rounds)):
        bandwidth = max(bandwidth, read_bandwidth_gbs(repeats=2))
        for c in contexts:
            for (f, r), m in variants.items():
                state = filled_state(m, c)
                best[f, r, c] = min(best[f, r, c], time_pass(m, state, 1, 3))
        print(f"round {i + 1} of {rounds} done", flush=True)
    row("read_bandwidth", bandwidth, "GB/s", "streaming read, all cores, best of the rounds")
    for f in formats:
        for c in contexts:
            full, half = best[f, "float32", c], best[f, "bf16", c]
            bytes_full, bytes_half = (step_bytes(variants[f, r], c) / 1e9 for r in ("float32", "bf16"))
            row(f"step_{f}_ctx{c}_float32", 1000 * full, "ms", f"{bytes_full:.2f} GB read")
            row(f"step_{f}_ctx{c}_bf16", 1000 * half, "ms", f"{bytes_half:.2f} GB read")
            row(f"bf16_vs_float32_{f}_ctx{c}", half / full, "x", f"bytes {bytes_half / bytes_full:.2f}x")
    m = next(iter(variants.values()))
    d = m.config.decoder
    for ring, item in (("float32", 4), ("bf16", 2)):
        full_window = d.n_layers * 2 * d.sliding_window * d.n_kv_heads * d.head_dim * item
        row(f"ring_memory_full_window_{ring}", full_window / 1e9, "GB", "per stream, all decoder layers")
    print_table(rows)
    write_json(out or HERE / "results" / "kv_ring.json", results)


if __name__ == "__main__":
    main(**options(sys.argv[1:], __doc__, ("--model", "--formats", "--contexts", "--rounds", "--out")))
