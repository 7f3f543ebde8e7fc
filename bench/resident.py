"""The quantized decoder mapped from its file against copied into huge-page memory.

    flock /tmp/voxnp-bench.lock python bench/resident.py [--model DIR] [--rounds 8]
        [--out bench/results/resident.json]

For int8 and q4, the same converted file is loaded twice in this one process: mapped
(VOXNP_RESIDENT=0: the page cache's 4 KB pages) and resident (the default: the decoder's
matrices copied into memory advised for 2 MB pages, voxnp/resident.py). Steps of 1 and 4
rows at 2000 cached positions alternate between the two, round after round, one format at
a time; the medians are compared as a ratio, with the load time of each (the copy is the
difference).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import voxnp  # noqa: F401  (before NumPy: its thread settings must reach OpenBLAS as it loads)
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import full_checkpoint  # noqa: E402
from common import options, print_table, row_recorder, write_json  # noqa: E402
from bench import filled_state  # noqa: E402
from decoder_speed import CONTEXT, time_pass  # noqa: E402

FORMATS = ("int8", "q4")
MODES = {"mapped": False, "resident": True}


def main(model=None, rounds=8, out=None):
    import voxnp

    model = Path(model) if model else full_checkpoint()
    results = {"model": str(model), "context": CONTEXT}
    rows = []
    row = row_recorder(rows, results)
    load_s, steps = {}, {}
    for fmt in FORMATS:                # one format's pair at a time, as one model is used
        voxnp.load(model, weights=fmt, progress=False, resident=False)     # converted before timing
        models = {}
        for mode, resident in MODES.items():
            t = time.perf_counter()
            models[mode] = voxnp.load(model, weights=fmt, progress=False, resident=resident)
            load_s[fmt, mode] = time.perf_counter() - t
        states = {mode: filled_state(m, CONTEXT) for mode, m in models.items()}
        for mode, m in models.items():
            time_pass(m, states[mode], 1, 1)                               # warm: JIT, first touch
        for r in range(int(rounds)):
            for T in (1, 4):
                for mode, m in models.items():
                    steps.setdefault((fmt, mode, T), []).append(time_pass(m, states[mode], T, 1))
        print(f"{fmt}: {rounds} rounds done", flush=True)
        del models, states
    for fmt in FORMATS:
        for mode in MODES:
            row(f"load_{fmt}_{mode}", load_s[fmt, mode], "s", "voxnp.load, the file already converted")
        for T in (1, 4):
            mapped, resident = (1000 * float(np.median(steps[fmt, mode, T])) for mode in MODES)
            row(f"pass{T}_{fmt}_mapped", mapped, "ms", f"{T} row(s), median of {rounds}")
            row(f"pass{T}_{fmt}_resident", resident, "ms", f"{T} row(s), median of {rounds}")
            row(f"pass{T}_{fmt}_resident_vs_mapped", resident / mapped, "x", "below 1: the copy is faster")
    print_table(rows)
    write_json(out or HERE / "results" / "resident.json", results)


if __name__ == "__main__":
    main(**options(sys.argv[1:], __doc__, ("--model", "--out", "--rounds")))
