"""The `voxnp` command (python-fire): a thin layer over the Python API.

    voxnp FILE [FILE...]          transcribe files (text streams to stdout)
    voxnp --stdin                 transcribe WAV or raw s16le 16 kHz mono from stdin
    voxnp --from-mic              transcribe the microphone (needs `sounddevice`)
    voxnp dump MODEL AUDIO OUT    write every intermediate to an .npz
    voxnp download [--dir DIR]    fetch the published model
    voxnp inspect MODEL           list tensors, configuration and problems
    voxnp checkpoint OUT          write a random-weight model (tests, benchmarks)

The model directory comes from --model, else $VOXNP_MODEL, else ./voxtral-model,
else the download location (`voxnp download --help`).
"""
from __future__ import annotations

import os
import sys
import time

from .errors import VoxnpError

FLAG_ALIASES = {"-I": "--interval"}  # voxtral.c's spelling


class Printer:
    """Writes decoded text to stdout as it arrives, flushed per token."""

    def __init__(self, silent: bool = False, alt: bool = False):
        self.silent = silent
        self.alt = alt
        self.started = False

    def token(self, token) -> None:
        text = token.text
        if self.alt and len(token.alternatives) > 1 and text:
            text = "[" + "|".join(a for a, _ in token.alternatives) + "]"
        if not text:
            return
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        sys.stdout.write(text)
        sys.stdout.flush()

    def end(self) -> None:
        if self.started:
            sys.stdout.write("\n")
            sys.stdout.flush()
        self.started = False


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timing_line(load_s: float, t) -> str:
    from .stream import real_time_factor

    per_step = 1000 * t.decoder_s / t.decoder_steps if t.decoder_steps else 0.0
    return (f"load {1000 * load_s:.0f} ms | encoder {1000 * t.encoder_s:.0f} ms | "
            f"prefill {1000 * t.prefill_s:.0f} ms | decoder {per_step:.1f} ms/step "
            f"({t.decoder_steps} steps) | audio {t.audio_s:.2f} s | "
            f"{real_time_factor(t):.2f}x real time")


def transcribe(*files, model=None, stdin=False, from_mic=False, delay=None, interval=2.0,
               alt=None, threads=None, backend="auto", silent=False, debug=False):
    """Transcribe audio files, stdin or the microphone with Voxtral Realtime 4B.

    Other commands: `voxnp dump`, `voxnp download`, `voxnp inspect`, `voxnp checkpoint`
    (each has --help).

    Args:
      files: audio files (WAV, FLAC, OGG, MP3; others through ffmpeg)
      model: model directory (default: $VOXNP_MODEL, ./voxtral-model, download location)
      stdin: read WAV (auto-detected) or raw s16le 16 kHz mono from standard input
      from_mic: transcribe the default microphone until Ctrl-C (needs `sounddevice`)
      delay: transcription delay in ms, 80..2400 in steps of 80 (default 480)
      interval: seconds of new audio between runs of the network when streaming (-I)
      alt: show alternative tokens whose probability is within this fraction of the best, e.g. 0.5
      threads: CPU threads (default $VOXNP_THREADS or all cores)
      backend: auto | numba | numpy | cupy
      silent: print only the transcript (no timing line)
      debug: print per-stage details to stderr
    """
    from . import model as model_mod

    if not files and not stdin and not from_mic:
        raise VoxnpError("no input: give audio files, --stdin or --from-mic (see voxnp --help)")
    t0 = time.perf_counter()
    m = model_mod.load(model, backend=backend, threads=threads)
    load_s = time.perf_counter() - t0
    if debug:
        c = m.config
        log(f"model {m.path}: encoder {c.encoder.n_layers}x{c.encoder.dim}, decoder "
            f"{c.decoder.n_layers}x{c.decoder.dim}, vocab {c.decoder.vocab_size}, load {1000 * load_s:.0f} ms")
    printer = Printer(silent=silent, alt=alt is not None)
    options = dict(delay_ms=delay, alt=alt)
    if stdin or from_mic:
        from .live import run_live

        t = run_live(m, printer, source="mic" if from_mic else "stdin", interval=interval, **options)
        if not silent:
            log(timing_line(load_s, t))
        return None
    from .stream import transcribe as run

    failed = 0
    for path in files:
        try:
            result = run(m, str(path), on_token=printer.token, **options)
        except VoxnpError as e:
            printer.end()
            log(f"voxnp: error: {e}")
            failed += 1
            continue
        printer.end()
        if not silent:
            log(timing_line(load_s, result.timings))
    if failed:
        raise SystemExit(1)
    return None


def dump(model, audio, out, steps=None, teacher=None, delay=None, backend="auto", threads=None):
    """Write float32 mel, enc, audio_embeds, logits and int32 tokens of one file to an .npz.

    Args:
      model: model directory
      audio: audio file
      out: output .npz path (written atomically)
      steps: stop after this many tokens
      teacher: .npy of token ids fed as the previous tokens instead of the argmax
      delay: transcription delay in ms (default 480)
    """
    from . import model as model_mod
    from .audio import load_audio
    from .dump import dump_arrays, read_teacher, write_npz_atomic

    m = model_mod.load(model, backend=backend, threads=threads)
    ids = None
    if teacher is not None:
        ids = read_teacher(teacher)
        bad = ids[(ids < 0) | (ids >= m.config.decoder.vocab_size)]
        if len(bad):
            raise VoxnpError(f"{teacher}: token id {int(bad[0])} outside the vocabulary (0..{m.config.decoder.vocab_size - 1})")
    if steps is not None and (not isinstance(steps, int) or steps < 0):
        raise VoxnpError(f"--steps must be a non-negative integer, got {steps!r}")
    arrays = dump_arrays(m, load_audio(str(audio)), delay_ms=delay, steps=steps, teacher=ids)
    write_npz_atomic(str(out), arrays)
    log(f"wrote {out}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items()))


def checkpoint(out, preset="tiny", seed=0, overwrite=False):
    """Write a random-weight model directory in the published format.

    Args:
      out: output directory
      preset: tiny | tiny-window | full (full is ~8.9 GB)
      seed: random seed
      overwrite: replace an existing directory
    """
    from .checkpoint import PRESETS, write_checkpoint

    if preset not in PRESETS:
        raise VoxnpError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    write_checkpoint(str(out), preset=preset, seed=int(seed), overwrite=bool(overwrite))
    log(f"wrote {out} ({preset})")


COMMANDS = {"dump": dump, "checkpoint": checkpoint}


def _extra_commands():
    from . import download as download_mod
    from . import inspect as inspect_mod

    return {"download": download_mod.download_command, "inspect": inspect_mod.inspect_command}


def main(argv=None) -> int:
    import fire

    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [FLAG_ALIASES.get(a, a) for a in argv]
    commands = dict(COMMANDS)
    try:
        commands.update(_extra_commands())
    except ImportError:
        pass
    if argv and argv[0] in commands:
        name, component, rest = argv[0], commands[argv[0]], argv[1:]
    else:
        name, component, rest = None, transcribe, argv
    try:
        fire.Fire(component, command=rest, name=f"voxnp {name}" if name else "voxnp")
    except VoxnpError as e:
        log(f"voxnp: error: {e}")
        return 1
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        log("voxnp: interrupted")
        return 130
    return 0

