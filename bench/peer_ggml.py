"""voxnp against the ggml port (CKwasd/voxtral.cpp) on the same clip and thread count.

    python bench/peer_ggml.py --peer PATH/TO/voxtral --gguf q4=PATH/Q4_K_M.gguf \\
        --gguf int8=PATH/Q8_0.gguf [--model DIR] [--clip WAV] [--seconds S] [--threads 2] [--out JSON]

The peer is built outside this project (cmake, see its README) and its GGUF files are
given by path: each `--gguf FORMAT=PATH` is run against `voxnp CLIP --weights FORMAT`
(q4 against Q4_K_M, int8 against Q8_0; bf16 against F16/BF16 if given). Each side runs
in a fresh process, one after the other, the same number of threads; the table shows
wall time (model load included for both), the audio duration ratio and the text each
produced, and whether the two texts are the same (both decode greedily: on the same
weights they should agree, which checks each against the other; on a random checkpoint
the text is one token repeated, so this catches gross disagreement only). Without --peer it runs
voxnp alone, so the voxnp half stays checked.

The peer encodes a file in one piece and holds at most 4000 mel frames (40 s with its
padding: longer files abort in its encoder), so the default clip is the 15 s sample;
`--seconds S` takes the first S seconds of --clip instead (both sides read that cut).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import SHARED_AUDIO, full_checkpoint  # noqa: E402
from common import print_table, row_recorder, write_json  # noqa: E402

SAMPLE_15S = SHARED_AUDIO / "15s_there_are_two_of_them_out_there.wav"
MAX_TOKENS = 1000       # the peer stops at 256 tokens by default (~20 s); 40 s is 500 tokens


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
        elif flag in ("--peer", "--model", "--clip", "--seconds", "--threads", "--out"):
            opts[flag[2:]] = value
        else:
            raise SystemExit(f"unknown option {flag} (see --help)")
    model = Path(opts["model"]) if "model" in opts else full_checkpoint()
    clip = Path(opts.get("clip", SAMPLE_15S))
    threads = opts.get("threads", "2")
    if "seconds" in opts:                          # the first S seconds, as a 16-bit WAV both read
        audio, rate = soundfile.read(str(clip), dtype="int16")
        cut = Path(tempfile.mkdtemp()) / f"{clip.stem}_{opts['seconds']}s.wav"
        soundfile.write(str(cut), audio[:int(float(opts["seconds"]) * rate)], rate, subtype="PCM_16")
        clip = cut
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
            first = text_p.strip().splitlines()[0] if text_p.strip() else ""   # the text (then its token ids)
            row(f"peer_{fmt}", wall_p, "s", f"{wall_p / audio_s:.2f}x audio; {Path(ggufs[fmt]).name}; "
                f"{first[:60]!r}")
            row(f"voxnp_vs_peer_{fmt}", wall / wall_p, "x", "below 1: voxnp faster")
            same = " ".join(text.split()) == " ".join(first.split())
            row(f"same_text_{fmt}", int(same), "", f"{len(text.strip())} vs {len(first.strip())} characters "
                "(whitespace normalised)")
    print_table(rows)
    write_json(opts.get("out", HERE / "results" / "peer_ggml.json"), results)


if __name__ == "__main__":
    main(sys.argv[1:])
