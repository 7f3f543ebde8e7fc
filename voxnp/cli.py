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

FLAG_ALIASES = {"-I": "--interval", "--no-tensors": "--notensors"}  # voxtral.c's spelling; fire's


class Printer:
    """Writes decoded text to stdout as it arrives, flushed per token."""

    def __init__(self, alt: bool = False):
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


def number_option(flag: str, value, low: float, high: float) -> float:
    """A numeric option checked against its range, else a one-line error."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise VoxnpError(f"{flag} must be a number, got {value!r}") from None
    if not low <= x <= high:
        raise VoxnpError(f"{flag} must be between {low:g} and {high:g}, got {x:g}")
    return x


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
               alt=None, format="txt", output_dir=None, threads=None, backend="auto",
               silent=False, debug=False):
    """Transcribe audio files, stdin or the microphone with Voxtral Realtime 4B.

    Other commands: `voxnp dump`, `voxnp download`, `voxnp inspect`, `voxnp checkpoint`
    (each has --help).

    Args:
      files: audio files or directories of them (WAV, FLAC, OGG, MP3; others through ffmpeg)
      model: model directory (default: $VOXNP_MODEL, ./voxtral-model, download location)
      stdin: read WAV (auto-detected) or raw s16le 16 kHz mono from standard input
      from_mic: transcribe the default microphone until Ctrl-C (needs `sounddevice`)
      delay: transcription delay in ms, 80..2400 in steps of 80 (default 480)
      interval: seconds of new audio between runs of the network when streaming (-I)
      alt: show alternatives [best|alt|...] within this probability cutoff, e.g. 0.5
      format: txt | json | srt | vtt
      output_dir: write one FORMAT file per input here (named after it) instead of stdout
      threads: CPU threads (default $VOXNP_THREADS or all cores)
      backend: auto | numba | numpy | cupy
      silent: print only the transcript (no timing line, no progress)
      debug: print per-stage details to stderr
    """
    from . import model as model_mod
    from .formats import FORMATS, expand_inputs

    if not files and not stdin and not from_mic:
        raise VoxnpError("no input: give audio files, --stdin or --from-mic (see voxnp --help)")
    interval = number_option("--interval", interval, 0.0, float("inf"))
    alt = None if alt is None else number_option("--alt", alt, 0.0, 1.0)
    if format not in FORMATS:
        raise VoxnpError(f"unknown --format '{format}' (choose from {', '.join(FORMATS)})")
    if output_dir is not None:
        try:
            os.makedirs(str(output_dir), exist_ok=True)
        except OSError as e:
            raise VoxnpError(f"{output_dir}: cannot create output directory ({e.strerror})") from None
    t0 = time.perf_counter()
    m = model_mod.load(model, backend=backend, threads=threads)
    load_s = time.perf_counter() - t0
    if debug:
        c = m.config
        log(f"model {m.path}: encoder {c.encoder.n_layers}x{c.encoder.dim}, decoder "
            f"{c.decoder.n_layers}x{c.decoder.dim}, vocab {c.decoder.vocab_size}, load {1000 * load_s:.0f} ms")
    options = dict(delay_ms=delay, alt=alt)
    if stdin or from_mic:
        from .live import run_live

        printer = Printer(alt=alt is not None)
        t = run_live(m, printer, source="mic" if from_mic else "stdin", interval=interval, **options)
        if not silent:
            log(timing_line(load_s, t))
        return None
    failed = 0
    for path in expand_inputs(files):
        try:
            transcribe_one(m, path, format, output_dir, options, silent, load_s)
        except VoxnpError as e:
            log(f"voxnp: error: {e}")
            failed += 1
    if failed:
        raise SystemExit(1)
    return None


def transcribe_one(m, path, fmt, output_dir, options, silent, load_s):
    """One input: text streams to stdout (txt), or a document goes to stdout or a file."""
    from .audio import load_audio
    from .formats import output_path, render, write_atomic
    from .progress import Progress
    from .stream import transcribe as run

    audio = load_audio(path)
    duration = len(audio) / m.config.audio.sampling_rate
    streaming_text = fmt == "txt" and output_dir is None
    printer = Printer(alt=options["alt"] is not None)
    show_progress = sys.stderr.isatty() and not silent and not (streaming_text and sys.stdout.isatty())
    with Progress(duration, enabled=show_progress) as progress:
        def on_token(token):
            if streaming_text:
                printer.token(token)
            progress.update(token.time)

        try:
            result = run(m, audio, on_token=on_token, **options)
        finally:
            printer.end()
    if not streaming_text:
        document = render(fmt, result.text, result.tokens, duration, model=str(m.path))
        if output_dir is None:
            sys.stdout.write(document)
            sys.stdout.flush()
        else:
            out = output_path(path, output_dir, fmt)
            write_atomic(out, document)
            if not silent:
                log(f"wrote {out}")
    if not silent:
        log(f"{path}: {timing_line(load_s, result.timings)}")


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
    from .dump import check_output, dump_arrays, read_teacher, write_npz_atomic

    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise VoxnpError(f"--steps must be a non-negative integer, got {steps!r}")
    check_output(str(out))
    m = model_mod.load(model, backend=backend, threads=threads)
    ids = None
    if teacher is not None:
        ids = read_teacher(teacher)
        bad = ids[(ids < 0) | (ids >= m.config.decoder.vocab_size)]
        if len(bad):
            raise VoxnpError(f"{teacher}: token id {int(bad[0])} outside the vocabulary (0..{m.config.decoder.vocab_size - 1})")
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


def check_flags(component, argv: list[str]) -> None:
    """Reject an unknown --flag before any work (fire would only notice at the end)."""
    import inspect

    known = set(inspect.signature(component).parameters)
    for arg in argv:
        if arg == "--":
            break
        if not arg.startswith("--") or arg in ("--help", "--helpfull"):
            continue
        name = arg[2:].split("=", 1)[0].replace("-", "_")
        if name not in known and not (name.startswith("no") and name[2:] in known):
            raise VoxnpError(f"unknown option {arg.split('=', 1)[0]} (see voxnp --help)")


def main(argv=None) -> int:
    import fire

    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [FLAG_ALIASES.get(a, a) for a in argv]
    commands = dict(COMMANDS, **_extra_commands())
    if argv and argv[0] in commands:
        name, component, rest = argv[0], commands[argv[0]], argv[1:]
    else:
        name, component, rest = None, transcribe, argv
    try:
        check_flags(component, rest)
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

