"""voxnp against the ggml port (CKwasd/voxtral.cpp) on the same clip and thread count.

    python bench/peer_ggml.py --peer PATH/TO/voxtral --gguf q4=PATH/Q4_K_M.gguf \\
        --gguf int8=PATH/Q8_0.gguf [--model DIR] [--clip WAV] [--threads 2] [--out JSON]

The peer is built outside this project (cmake, see its README) and its GGUF files are
given by path: each `--gguf FORMAT=PATH` is run against `voxnp CLIP --weights FORMAT`
(q4 against Q4_K_M, int8 against Q8_0; bf16 against F16/BF16 if given). Each side runs
in a fresh process, one after the other, the same number of threads; the table shows
wall time (model load included for both), the audio duration ratio and the text each
produced. Without --peer it runs voxnp alone, so the voxnp half stays checked.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import SHARED_AUDIO, full_checkpoint  # noqa: E402
from common import print_table, row_recorder, write_json  # noqa: E402

SAMPLE_60S = SHARED_AUDIO / "60s_i_dont_want_anyones_life_on_my_hands.wav"
MAX_TOKENS = 100000     # the peer stops at 256 tokens by default: ~20 s of audio


def timed(cmd: list[str]) -> tuple[float, str]:
    """Wall seconds and stdout of a command (its failure is an error naming it)."""
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return wall, r.stdout


def main(argv: list[str]) -> None:
    import soundfile

    opts: dict[str, str] = {}
    ggufs: dict[str, str] = {}
    it = iter(argv)
    for flag in it:
        if flag in ("-h", "--help"):
            print(__doc__)
            return
        value = next(it, None)
        if value is None:
            raise SystemExit(f"{flag} needs a value")
        if flag == "--gguf":
            fmt, _, path = value.partition("=")
            if fmt not in ("bf16", "int8", "q4") or not path:
                raise SystemExit(f"--gguf takes FORMAT=PATH with FORMAT bf16, int8 or q4, got {value!r}")
            ggufs[fmt] = path
        elif flag in ("--peer", "--model", "--clip", "--threads", "--out"):
            opts[flag[2:]] = value
        else:
            raise SystemExit(f"unknown option {flag} (see --help)")
    model = Path(opts["model"]) if "model" in opts else full_checkpoint()
    clip = Path(opts.get("clip", SAMPLE_60S))
    threads = opts.get("threads", "2")
    audio_s = soundfile.info(str(clip)).duration
    formats = list(ggufs) or ["q4", "int8"]
    results = {"model": str(model), "clip": clip.name, "audio_s": audio_s, "threads": int(threads),
               "peer": opts.get("peer"), "gguf": ggufs}
    rows = []
    row = row_recorder(rows, results)
    for fmt in formats:
        wall, text = timed([sys.executable, "-m", "voxnp", str(clip), "--model", str(model), "--weights", fmt,
                            "--threads", threads, "--silent"])
        row(f"voxnp_{fmt}", wall, "s", f"{wall / audio_s:.2f}x audio; {text.strip()[:60]!r}")
        if "peer" in opts and fmt in ggufs:
            wall_p, text_p = timed([opts["peer"], "--model", ggufs[fmt], "--audio", str(clip),
                                    "--threads", threads, "--max-len", str(MAX_TOKENS), "--log-level", "error"])
            first = text_p.strip().splitlines()[0] if text_p.strip() else ""
            row(f"peer_{fmt}", wall_p, "s", f"{wall_p / audio_s:.2f}x audio; {Path(ggufs[fmt]).name}; "
                f"{first[:60]!r}")
            row(f"voxnp_vs_peer_{fmt}", wall / wall_p, "x", "below 1: voxnp faster")
    print_table(rows)
    write_json(opts.get("out", HERE / "results" / "peer_ggml.json"), results)


if __name__ == "__main__":
    main(sys.argv[1:])
