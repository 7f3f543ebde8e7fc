"""`voxnp batch` throughput: in this process, and on a local Ray cluster with 1 and 2 workers.

    python bench/batch_scaling.py [--model DIR] [--files 8] [--seconds 5] [--batch 4]
                                  [--out bench/results/batch_scaling.json]

Each configuration transcribes the same FILES clips (SECONDS of real speech each) into
a fresh output directory; the figure is the aggregate speed: audio seconds done per
second of wall time, over all workers, from the job's start (model opening and actor
start-up included) to its end. The cores are shared between the workers (each actor
gets cores / workers threads). Without --model a tiny random checkpoint is used (its
figures show the job's overheads, not the real model's speed).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import print_table, write_json  # noqa: E402

SPEECH = HERE.parent.parent / "shared" / "audio" / "60s_i_dont_want_anyones_life_on_my_hands.wav"
RATE = 16000


def make_clips(directory: Path, files: int, seconds: float) -> list[str]:
    import soundfile as sf

    x, rate = sf.read(SPEECH, dtype="float32")
    n = int(seconds * rate)
    paths = []
    for i in range(files):
        start = (i * n) % max(1, len(x) - n)
        paths.append(str(directory / f"clip{i:03d}.wav"))
        sf.write(paths[-1], x[start:start + n], rate)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model directory (default: a tiny random checkpoint)")
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", default=str(HERE / "results" / "batch_scaling.json"))
    args = ap.parse_args()

    import ray

    from voxnp.batch import run_batch
    from voxnp.checkpoint import write_checkpoint

    work = Path(tempfile.mkdtemp(prefix="voxnp-batch-bench-"))
    model = args.model or str(write_checkpoint(work / "tiny", preset="tiny", seed=0, overwrite=True))
    clips = make_clips(work, args.files, args.seconds)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    rows = []
    try:
        for name, options in (("embedded", {}), ("ray, 1 worker", {"ray": True, "workers": 1}),
                              ("ray, 2 workers", {"ray": True, "workers": 2})):
            s = run_batch(clips, work / name.replace(", ", "-").replace(" ", ""), model=model,
                          batch=args.batch, progress=False, **options)
            assert s.done == args.files, s
            rows.append({"run": name, "files": s.done, "audio_s": round(s.audio_s, 1),
                         "wall_s": round(s.wall_s, 2), "x_real_time": round(s.audio_s / s.wall_s, 2)})
            print(f"{name}: {rows[-1]['x_real_time']}x real time", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    print_table(rows)
    write_json(args.out, {"model": model, "files": args.files, "seconds": args.seconds,
                          "batch": args.batch, "runs": rows})
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
