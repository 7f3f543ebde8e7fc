"""Soak test of a live stream: hours of synthetic audio through a checkpoint.

Feeds audio in real-time-sized chunks to a live `Stream` and reports, for each
stretch of audio, the resident memory (RSS and anonymous RSS) and the decoder's
mean ms/step. Flat columns are the claim: no growth with stream length.

    python bench/stream_soak.py [--model DIR] [--hours 2] [--out bench/results/stream_soak.json]

Without --model a tiny random checkpoint is written to a temporary directory.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import voxnp  # noqa: F401  (before NumPy: its thread settings must reach OpenBLAS as it loads)
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import memory_mb, print_table, write_json  # noqa: E402

import voxnp  # noqa: E402
from voxnp.stream import Stream  # noqa: E402


def synthetic_audio(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Speech-like test signal: bursts of harmonic tones and noise with pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120 + 80 * rng.random()
    voiced = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6))
    envelope = (np.sin(2 * np.pi * 0.7 * t + rng.random() * 6) > -0.3).astype(np.float32)
    x = 0.1 * voiced * envelope + 0.01 * rng.standard_normal(len(t))
    return x.astype(np.float32)


def main(model=None, hours: float = 2.0, report_every_min: float = 10.0, chunk_s: float = 0.5,
         interval: float = 2.0, out="bench/results/stream_soak.json"):
    tmp = None
    if model is None:
        from voxnp.checkpoint import write_checkpoint

        tmp = tempfile.TemporaryDirectory()
        model = write_checkpoint(Path(tmp.name) / "tiny", preset="tiny")
    m = voxnp.load(model)
    rate = m.config.audio.sampling_rate
    s = Stream(m, interval=interval, live=True)
    total_s = hours * 3600
    rows, fed, seed = [], 0.0, 0
    next_report = report_every_min * 60
    last = (0.0, 0)
    start = time.perf_counter()
    block = synthetic_audio(60.0, rate, seed)            # one minute, re-generated every minute
    while fed < total_s:
        i = int((fed % 60.0) * rate)
        s.feed(block[i:i + int(chunk_s * rate)])
        s.get()                                           # a live consumer takes the tokens
        fed += chunk_s
        if fed % 60.0 == 0:
            seed += 1
            block = synthetic_audio(60.0, rate, seed)
        if fed >= next_report:
            t = s.timings
            busy = t.decoder_s - last[0]
            steps = t.decoder_steps - last[1]
            last = (t.decoder_s, t.decoder_steps)
            mem = memory_mb()
            rows.append({"audio_min": round(fed / 60, 1), "rss_mb": mem["rss"], "anon_mb": mem["anon"],
                         "ms_per_step": round(1000 * busy / max(steps, 1), 3),
                         "restarts": s.restarts, "wall_s": round(time.perf_counter() - start, 1)})
            print_table(rows[-1:], header=len(rows) == 1)
            next_report += report_every_min * 60
    s.finish()
    after = rows[len(rows) // 4:] or rows                # after warm-up
    summary = {
        "model": str(model), "hours": hours, "chunk_s": chunk_s, "interval_s": interval,
        "rss_growth_mb_after_warmup": round(after[-1]["rss_mb"] - after[0]["rss_mb"], 1),
        "anon_growth_mb_after_warmup": round(after[-1]["anon_mb"] - after[0]["anon_mb"], 1),
        "ms_per_step_first_last": [after[0]["ms_per_step"], after[-1]["ms_per_step"]],
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    write_json(out, summary)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    import fire

    fire.Fire(main)
