"""Weight formats on the full-size model: speed of bf16, int8 and q4, conversion cost,
and quality proxies that need no real weights.

    python bench/quant.py [--model DIR] [--out bench/results/quant.json] [--quick | --proxies]

Without --model the full-size random checkpoint of bench/bench.py is used (written
once to bench/cache/full). Converted files go to bench/cache/voxnp (VOXNP_CACHE_DIR).
All ratios compare figures measured in this one run. Measures:

- matmul proxy: relative error of x @ W.T per format on heavy-tailed weights (Student-t,
  3 degrees of freedom) with a few 20x outlier input channels in x;
- conversion: wall time and peak anonymous memory (above the maps) of a fresh process;
  open time of the converted file;
- decoder step (ms) at 40 and 2000 cached positions; passes of T = 1..8 rows, and the
  ms per emitted token with speculation for a drafter right on 2 of 3 guesses (each
  guess right with p = 2/3 independently; a pass of K drafts emits
  (1 - p^(K+1)) / (1 - p) tokens on average);
- teacher-forced proxies on a 60 s sample: the same random tokens fed in every format,
  each format's own encoder (int8 and q4 quantize the encoder layers too), top-1
  agreement with bf16, the relative logit error ||l - l_bf16|| / ||l_bf16|| and the
  encoder's ||embeddings - bf16's|| / ||bf16's||;
- (unless --quick) the 60 s sample end to end, `voxnp SAMPLE --weights FMT` in a fresh
  process (default speculation), for q4 and int8.
--proxies measures only the two kinds of proxies (no timings: no need to hold the bench lock).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import voxnp  # noqa: F401  (before NumPy: its thread settings must reach OpenBLAS as it loads)
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import SHARED_AUDIO, full_checkpoint, time_decoder  # noqa: E402
from common import print_table, row_recorder, write_json  # noqa: E402

FORMATS = ("bf16", "int8", "q4")
SAMPLE_60S = "60s_i_dont_want_anyones_life_on_my_hands.wav"
ACCEPT = 2 / 3      # the drafter's hit rate


def matmul_proxy(seed: int = 0) -> dict:
    """Relative error of the product per matrix format: W [4096, 3072] Student-t(3),
    x [8, 3072] normal with 8 outlier channels at 20x (i8rows, the encoder's format,
    quantizes each activation row to int8 with one scale, so the outliers cost it most)."""
    from voxnp import quant

    rng = np.random.default_rng(seed)
    w = rng.standard_t(3, size=(4096, 3072)).astype(np.float32) * 0.02
    x = rng.standard_normal((8, 3072)).astype(np.float32)
    x[:, rng.choice(3072, 8, replace=False)] *= 20
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    out = {}
    for f in (quant.INT8, quant.Q4K_FORMAT, quant.INT8_ROWS):
        y = quant.fast_linear(x, quant.quantize(w, f))
        out[f.name] = float(np.linalg.norm(y - exact) / np.linalg.norm(exact))
    return out


def convert(model: Path, fmt: str) -> dict:
    """Convert in a fresh process (the cached file removed first): time, peak anonymous memory."""
    code = ("import sys,time,json,threading; sys.path.insert(0, sys.argv[3]); from common import memory_mb\n"
            "import voxnp; peak=[0.0]\n"
            "def watch():\n"
            "    while True: peak[0]=max(peak[0], memory_mb()['anon']); time.sleep(0.02)\n"
            "threading.Thread(target=watch, daemon=True).start(); base=memory_mb()['anon']\n"
            "t=time.perf_counter(); voxnp.load(sys.argv[1], weights=sys.argv[2], progress=False)\n"
            "wall=time.perf_counter()-t; t=time.perf_counter()\n"
            "m=voxnp.load(sys.argv[1], weights=sys.argv[2], progress=False); reopen=time.perf_counter()-t\n"
            "print(json.dumps({'convert_s': wall, 'peak_anon_above_start_mb': max(peak[0], memory_mb()['anon']) - base,"
            "'open_s': reopen, 'file_gb': m.file.path.stat().st_size / 1e9}))")
    from voxnp import quant_file

    for old in quant_file.cache_dir().glob(f"*.{fmt}.*"):
        old.unlink()
    out = subprocess.run([sys.executable, "-c", code, str(model), fmt, str(HERE)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_rows(m, rows: int, context: int = 200, repeats: int = 3) -> float:
    """Seconds per decoder pass of `rows` positions of one sequence (then rolled back)."""
    from voxnp.decoder import decode_rows, new_decoder_state

    cfg = m.config
    state = new_decoder_state(cfg, m.weights.decoder, 6, m.ops)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((context, cfg.decoder.dim), dtype=np.float32) * 0.1
    decode_rows(x, [state], [context], m.weights.decoder, cfg, m.ops, m.decoder_inv_freq, all_logits=False)
    snap = state.snapshot()
    step = rng.standard_normal((rows, cfg.decoder.dim), dtype=np.float32) * 0.1
    best = np.inf
    for _ in range(repeats + 1):
        state.restore(snap)
        t = time.perf_counter()
        decode_rows(step, [state], [rows], m.weights.decoder, cfg, m.ops, m.decoder_inv_freq)
        best = min(best, time.perf_counter() - t)
    return best


def teacher_forced(m, embeds: np.ndarray, teacher: np.ndarray, prompt: list[int]) -> np.ndarray:
    """Logits [N, vocab] of every position after the prompt, fed the teacher's tokens,
    8 positions per pass (as speculation with an always-right drafter)."""
    from voxnp.decoder import decode_rows, new_decoder_state

    cfg, w = m.config, m.weights.decoder
    state = new_decoder_state(cfg, w, 6, m.ops)
    L = len(prompt)
    x = embeds[:L - 1] + m.ops.embed(w.tok_embeddings, prompt[:-1])
    decode_rows(x, [state], [L - 1], w, cfg, m.ops, m.decoder_inv_freq, all_logits=False)
    fed = [prompt[-1]] + list(teacher)
    n = min(len(teacher), len(embeds) - L + 1)
    out = []
    for p in range(0, n, 8):
        k = min(8, n - p)
        x = embeds[L - 1 + p:L - 1 + p + k] + m.ops.embed(w.tok_embeddings, fed[p:p + k])
        out.append(decode_rows(x, [state], [k], w, cfg, m.ops, m.decoder_inv_freq))
    return np.concatenate(out)


def cli_end_to_end(model: Path, audio: Path, fmt: str) -> dict:
    """`voxnp AUDIO --model MODEL --weights FMT` in a fresh process: wall time and its timing line."""
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "voxnp", str(audio), "--model", str(model), "--weights", fmt],
                         check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    return {"wall_s": wall, "timing": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""}


def main(model=None, out=None, quick=False, proxies=False):
    import voxnp
    from voxnp.audio import load_audio
    from voxnp.dump import dump_arrays

    model = Path(model) if model else full_checkpoint()
    os.environ.setdefault("VOXNP_CACHE_DIR", str(HERE / "cache" / "voxnp"))
    results = {"model": str(model)}
    rows = []

    row = row_recorder(rows, results)

    for name, err in matmul_proxy().items():
        row(f"matmul_error_{name}", err, "relative", "Student-t(3) W, 8 outlier channels in x")
    for fmt in FORMATS[1:] if not proxies else ():           # --proxies: no timings (no lock needed)
        c = convert(model, fmt)
        results[f"convert_{fmt}"] = c
        row(f"convert_{fmt}", c["convert_s"], "s",
            f"peak +{c['peak_anon_above_start_mb']:.0f} MB anon; reopen {c['open_s']:.2f} s; {c['file_gb']:.2f} GB")

    models = {fmt: voxnp.load(model, weights=fmt) for fmt in FORMATS}
    for context in (40, 2000) if not proxies else ():
        steps = {fmt: time_decoder(models[fmt], context) for fmt in FORMATS}
        for fmt in FORMATS:
            row(f"step_ctx{context}_{fmt}", 1000 * steps[fmt], "ms",
                "" if fmt == "bf16" else f"{steps[fmt] / steps['bf16']:.2f}x bf16")
    if not proxies:
        passes = {fmt: [time_rows(models[fmt], T) for T in range(1, 9)] for fmt in FORMATS}
        results["pass_ms_by_rows"] = {fmt: [1000 * t for t in ts] for fmt, ts in passes.items()}
        per_token = {fmt: [t / ((1 - ACCEPT ** (K + 1)) / (1 - ACCEPT)) for K, t in enumerate(ts)]
                     for fmt, ts in passes.items()}
        base = per_token["bf16"][0]
        for fmt in FORMATS:
            K = int(np.argmin(per_token[fmt]))
            row(f"spec_ms_per_token_{fmt}", 1000 * per_token[fmt][K], "ms",
                f"best K={K}; {per_token[fmt][K] / base:.2f}x bf16 at K=0; T=1..8 pass ms "
                + "/".join(f"{1000 * t:.0f}" for t in passes[fmt]))

    audio = load_audio(SHARED_AUDIO / SAMPLE_60S)
    embeds = {fmt: dump_arrays(models[fmt], audio, steps=0)["audio_embeds"] for fmt in FORMATS}   # own encoders
    from voxnp.stream import Stream

    prompt = Stream(models["bf16"]).prompt
    teacher = np.random.default_rng(1).integers(1000, models["bf16"].config.decoder.vocab_size, len(embeds["bf16"]))
    ref = teacher_forced(models["bf16"], embeds["bf16"], teacher, prompt)
    for fmt in FORMATS[1:]:
        got = teacher_forced(models[fmt], embeds[fmt], teacher, prompt)
        agree = float(np.mean(got.argmax(1) == ref.argmax(1)))
        err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        enc_err = float(np.linalg.norm(embeds[fmt] - embeds["bf16"]) / np.linalg.norm(embeds["bf16"]))
        row(f"teacher_top1_{fmt}", agree, "fraction", f"{len(ref)} positions of {SAMPLE_60S[:3]}; "
            f"logit error {err:.3f}; encoder error {enc_err:.4f}")
        results[f"teacher_logit_error_{fmt}"] = err
        results[f"encoder_embedding_error_{fmt}"] = enc_err
    margins = np.sort(ref, axis=1)[:, -2:]
    results["bf16_top1_margin_median"] = float(np.median(margins[:, 1] - margins[:, 0]))
    results["bf16_logit_std_median"] = float(np.median(ref.std(axis=1)))
    del models

    if not quick:
        for fmt in ("q4", "int8"):
            r = cli_end_to_end(model, SHARED_AUDIO / SAMPLE_60S, fmt)
            results[f"e2e_60s_{fmt}"] = r
            row(f"e2e_60s_{fmt}", r["wall_s"], "s", f"`voxnp SAMPLE --weights {fmt}`, {r['wall_s'] / 60:.2f}x "
                f"audio duration; {r['timing']}")
    print_table(rows)
    write_json(out or HERE / "results" / ("quant_quick.json" if quick else "quant.json"), results)


if __name__ == "__main__":
    args = sys.argv[1:]
    if "-h" in args or "--help" in args:
        sys.exit(__doc__)
    opts = {"quick": "--quick" in args or "--proxies" in args, "proxies": "--proxies" in args}
    for flag in ("--model", "--out"):
        if flag in args:
            opts[flag[2:]] = args[args.index(flag) + 1]
    main(**opts)
