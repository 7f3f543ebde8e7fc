"""Quality of the quantized formats on the real model (for users who have its weights).

    python3 bench/quality.py --model DIR [--out bench/results/quality.json]

For each sample of ../shared/audio, in bf16 (the reference), int8 and q4:
- WER against the sample's .txt reference (where there is one) and against the bf16
  transcript;
- teacher-forced top-1 agreement: the bf16 tokens are fed in every format, and at the
  positions where bf16 emits text (not a control token) the format's argmax must agree
  (each format runs its own encoder: int8 and q4 quantize the encoder layers too);
- the encoder's error: ||audio embeddings - bf16's|| / ||bf16's|| per sample;
- robustness: the sample scaled to a peak of 0.01 (quiet audio), and with its leading
  silence cut (speech from t = 0). Naive 4-bit quantization collapsed to PAD-only
  output on these in another port; a format that emits no text where bf16 does is a
  failure (exit status 1).
Prints a table and writes JSON. Runs on any checkpoint (the random ones give
meaningless WERs, but exercise every step).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import voxnp  # noqa: F401  (before NumPy: its thread settings must reach OpenBLAS as it loads)
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import print_table, write_json  # noqa: E402

SHARED_AUDIO = HERE.parent.parent / "shared" / "audio"
FORMATS = ("bf16", "int8", "q4")
QUIET_PEAK = 0.01


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def wer(hyp: str, ref: str) -> float:
    """Word error rate: word-level edit distance / reference words."""
    h, r = words(hyp), words(ref)
    d = np.arange(len(h) + 1)
    for i, rw in enumerate(r, 1):
        prev, d[0] = d.copy(), i
        for j, hw in enumerate(h, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (rw != hw))
    return float(d[len(h)] / max(1, len(r)))


def cut_leading_silence(audio: np.ndarray, rate: int = 16000) -> np.ndarray:
    """From the first 10 ms frame louder than 5% of the loudest frame's RMS."""
    frames = audio[:len(audio) // 160 * 160].reshape(-1, 160)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    first = int(np.argmax(rms > 0.05 * rms.max())) if len(rms) else 0
    return audio[first * 160:]


def main(model=None, out=None):
    import voxnp
    from voxnp.audio import load_audio
    from voxnp.dump import dump_arrays
    from voxnp.stream import transcribe

    if model is None:
        sys.exit("usage: python3 bench/quality.py --model DIR [--out FILE]")
    samples = sorted(SHARED_AUDIO.glob("*.wav"))
    audio = {p.stem: load_audio(p) for p in samples}
    refs = {p.stem: p.with_suffix(".txt").read_text().strip() for p in samples if p.with_suffix(".txt").exists()}
    cases = {}
    for name, a in audio.items():
        cases[name] = a
        cases[f"{name} quiet"] = a * np.float32(QUIET_PEAK / max(1e-9, float(np.abs(a).max())))
        cases[f"{name} from speech"] = cut_leading_silence(a)
    results, rows, failures = {}, [], []
    outputs, embeds = {}, {}
    for fmt in FORMATS:
        m = voxnp.load(model, weights=fmt)
        for name, a in audio.items():
            embeds[fmt, name] = dump_arrays(m, a, steps=0)["audio_embeds"]
            ref = embeds["bf16", name]
            results[f"{fmt}/{name}/encoder_error"] = float(np.linalg.norm(embeds[fmt, name] - ref) / np.linalg.norm(ref))
        for case, a in cases.items():
            t = transcribe(m, a)
            outputs[fmt, case] = (t.text, [tok.id for tok in t.tokens])
        for name, a in audio.items():                       # teacher-forced on the bf16 tokens
            teacher = outputs["bf16", name][1]
            if fmt == "bf16" or not teacher:
                continue
            logits = dump_arrays(m, a, teacher=teacher, speculate=7)["logits"]
            text = np.array([t >= 1000 for t in teacher[:len(logits)]])   # SPEC §9: 0..999 control
            agree = logits.argmax(axis=1)[:len(text)] == np.array(teacher[:len(logits)])
            results[f"{fmt}/{name}/teacher_top1_text"] = float(agree[text].mean()) if text.any() else None
        del m
    for fmt in FORMATS:
        for case in cases:
            text, ids = outputs[fmt, case]
            name = case.split(" ")[0]
            r = {"format": fmt, "case": case, "text_tokens": len(text_ids(ids)),
                 "wer_ref": f"{wer(text, refs[name]):.3f}" if name in refs and case == name else "",
                 "wer_bf16": f"{wer(text, outputs['bf16', case][0]):.3f}" if outputs["bf16", case][0].strip() else "",
                 "teacher_top1": "" if case != name or fmt == "bf16"
                 else _fmt(results.get(f"{fmt}/{name}/teacher_top1_text")),
                 "encoder_error": "" if case != name or fmt == "bf16"
                 else _fmt(results.get(f"{fmt}/{name}/encoder_error"))}
            collapsed = r["text_tokens"] == 0 and len(text_ids(outputs["bf16", case][1])) > 0
            r["collapsed"] = "YES" if collapsed else ""
            if collapsed:
                failures.append(f"{fmt}: {case}")
            rows.append(r)
            results[f"{fmt}/{case}"] = {**r, "text": text}
    print_table(rows)
    write_json(out or HERE / "results" / "quality.json", {"model": str(model), **results, "failures": failures})
    if failures:
        print("collapsed to control tokens only where bf16 did not: " + "; ".join(failures), file=sys.stderr)
        sys.exit(1)


def text_ids(ids) -> list[int]:
    """Text tokens: ids >= 1000 (0..999 are control tokens, SPEC §9)."""
    return [t for t in ids if t >= 1000]


def _fmt(v):
    return "" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    args = sys.argv[1:]
    opts = {}
    for flag in ("--model", "--out"):
        if flag in args:
            opts[flag[2:]] = args[args.index(flag) + 1]
    main(**opts)
