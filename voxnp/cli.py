"""The `voxnp` command: one table of commands and options, read here, run by python-fire.

    voxnp FILE [FILE...]          transcribe files (text streams to stdout)
    voxnp --stdin                 transcribe WAV or raw s16le 16 kHz mono from stdin
    voxnp --from-mic              transcribe the microphone (needs `sounddevice`)
    voxnp -d DIR -i FILE          voxtral.c's command line
    voxnp dump MODEL AUDIO OUT    write every intermediate to an .npz
    voxnp download [--dir DIR]    fetch the published model
    voxnp inspect MODEL           list tensors, configuration and problems
    voxnp checkpoint OUT          write a random-weight model (tests, benchmarks)
    voxnp batch INPUT... --output-dir DIR   a corpus, resumably, here or on Ray (--ray)

Every command and option is one entry in COMMANDS. `parse` reads a command line with
that table (flags in any position, switches that never take a file name, voxtral.c's
spellings) and `usage` writes the help from it. Fire then runs the command on a line it
cannot misread: every value written as a Python literal ('a.wav', --silent=True).

The model directory comes from --model, else $VOXNP_MODEL, else ./voxtral-model,
else the download location (`voxnp download --help`).
"""
from __future__ import annotations

import importlib
import math
import os
import re
import sys
import textwrap
import time
from dataclasses import dataclass

from .backend import BACKENDS
from .checkpoint import PRESETS
from .decoder import MAX_ROWS
from .errors import VoxnpError
from .formats import FORMATS
from .quant import WEIGHT_FORMATS
from .scheduler import DEFAULT_SPECULATE


# ---------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class Option:
    """One option: `--name` (underscores written as dashes) and its other spellings."""
    name: str                        # the parameter of the command's function
    default: object                  # its value when the option is not given
    help: str
    kind: str = "value"              # "value": takes one argument | "switch": takes none |
                                     # "input": takes a file, added to the command's files |
                                     # "optional": takes =VALUE or a next word that matches
                                     # `pattern`; given alone, its value is True
    type: type = str                 # how a value is read: str, int or float
    short: tuple[str, ...] = ()      # other spellings, e.g. voxtral.c's "-d"
    metavar: str = "VALUE"
    choices: tuple = ()              # the allowed values, when they are a list
    low: float | None = None         # the allowed range of a number, inclusive
    high: float | None = None
    pattern: str = ""                # kind "optional": the shape of a value given as the next word

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Command:
    name: str                        # "" for the default command (transcribe)
    function: str                    # "module:function" in voxnp, imported when it runs
    summary: str
    arguments: tuple[tuple[str, str], ...]  # (NAME, help); "NAME..." takes any number
    options: tuple[Option, ...]

    @property
    def title(self) -> str:
        return f"voxnp {self.name}".strip()


# An option is one entry: give it to a command below and add the parameter of the same
# name to the command's function (tests/test_cli.py checks that they agree). A command is
# one entry in COMMANDS; tests/test_readme.py runs README lines only of commands it lists.

BACKEND = Option("backend", "auto", "compute backend", choices=BACKENDS, metavar="NAME")
THREADS = Option("threads", None, "CPU threads (default: $VOXNP_THREADS, else all cores)",
                 type=int, low=1, metavar="N")
DELAY = Option("delay", None, "transcription delay in ms, 80..2400 in steps of 80 (default: 480)",
               type=float, metavar="MS")
SPECULATE = Option("speculate", DEFAULT_SPECULATE, "speculative decoding: verify up to K drafted "
                   "tokens per decoder pass (fewer while they fail), 0 = off; the output is the "
                   "same for every K",
                   type=int, low=0, high=MAX_ROWS - 1, metavar="K")
WEIGHTS = Option("weights", "bf16", "weight format (bf16 is the checkpoint itself and the reference; "
                 "int8 and q4 are converted once and cached)", choices=WEIGHT_FORMATS, metavar="FMT")
RAW = Option("raw", False, "read every audio file as raw s16le 16 kHz mono, whatever its name "
             "(names ending in .raw, .pcm or .s16le always are)", kind="switch")

TRANSCRIBE = Command(
    "", "cli:transcribe", "transcribe audio files, standard input or the microphone",
    (("FILE...", "audio files or directories of them: WAV, FLAC, OGG, MP3 (other containers "
                 "through ffmpeg); .raw, .pcm and .s16le files are s16le 16 kHz mono"),),
    (
        Option("model", None, "model directory (default: $VOXNP_MODEL, else ./voxtral-model, "
               "else the download location)", short=("-d", "-m"), metavar="DIR"),
        Option("input", None, "an audio file, as voxtral.c's -i; the same as giving FILE "
               "(may be repeated)", kind="input", short=("-i",), metavar="FILE"),
        Option("stdin", False, "read WAV (auto-detected) or raw s16le 16 kHz mono from "
               "standard input, as it arrives", kind="switch"),
        Option("from_mic", False, "transcribe the default microphone until Ctrl-C (needs "
               "`sounddevice`)", kind="switch"),
        Option("record", None, "with --stdin or --from-mic: also write the audio as it arrives "
               "to this 16 kHz WAV file (before --from-mic's silence skipping)", metavar="FILE"),
        RAW,
        DELAY,
        Option("interval", 2.0, "with --stdin and --from-mic: seconds of new audio gathered "
               "before the network runs; smaller is lower latency, more overhead",
               type=float, short=("-I",), low=0.0, metavar="SECONDS"),
        Option("alt", None, "show alternatives [best|alt|...] whose probability is within this "
               "cutoff of the best, e.g. 0.5", type=float, low=0.0, high=1.0, metavar="C"),
        Option("format", "txt", "output format", choices=FORMATS, metavar="FORMAT"),
        Option("output_dir", None, "write one FORMAT file per input here (named after it) "
               "instead of stdout", metavar="DIR"),
        SPECULATE,
        Option("batch", 1, "decode up to N files together (their decoder steps share each read "
               "of the weights); outputs stay in input order", type=int, low=1, high=MAX_ROWS,
               metavar="N"),
        WEIGHTS,
        THREADS,
        BACKEND,
        Option("silent", False, "print only the transcript: no timing line, no progress",
               kind="switch"),
        Option("debug", False, "print the model's shapes and load time to stderr", kind="switch"),
    ))

COMMANDS = {c.name: c for c in (
    TRANSCRIBE,
    Command("dump", "cli:dump", "write float32 mel, enc, audio_embeds, logits and int32 tokens "
            "of one file to an .npz (written atomically)",
            (("MODEL", "model directory"), ("AUDIO", "audio file"), ("OUT", "output .npz path")),
            (Option("steps", None, "stop after this many tokens", type=int, low=0, metavar="K"),
             Option("teacher", None, ".npy of token ids fed as the previous tokens instead of "
                    "the argmax", metavar="IDS.npy"),
             DELAY, RAW, SPECULATE, WEIGHTS, THREADS, BACKEND)),
    Command("quantize", "cli:quantize", "convert a model's weights once to int8 or q4, written "
            "next to it (otherwise the first --weights run converts into the cache directory)",
            (("MODEL", "model directory"),),
            (Option("to", None, "target format", choices=tuple(f for f in WEIGHT_FORMATS if f != "bf16"),
                    metavar="FMT"),
             Option("out", None, "output file (default: MODEL/consolidated.FMT.safetensors)",
                    metavar="PATH"))),
    Command("serve", "cli:serve", "serve OpenAI-compatible transcription (REST) and the realtime "
            "websocket (vLLM's and OpenAI's dialects); needs pip install \"voxnp[serve]\"", (),
            (Option("model", None, "model directory (default: as for transcription)", short=("-d", "-m"),
                    metavar="DIR"),
             Option("host", "127.0.0.1", "address to bind (0.0.0.0: every interface)", metavar="ADDR"),
             Option("port", 8000, "TCP port", type=int, low=1, high=65535, metavar="N"),
             Option("api_key", None, "require Authorization: Bearer KEY on every route but /health",
                    metavar="KEY"),
             WEIGHTS,
             Option("max_sessions", 4, "concurrent requests and realtime sessions (503 beyond)",
                    type=int, low=1, metavar="N"),
             Option("max_upload_mb", 25.0, "largest upload accepted (413 beyond)", type=float,
                    low=0.0, metavar="MB"),
             Option("served_name", "mistralai/Voxtral-Mini-4B-Realtime-2602", "model id reported "
                    "by /v1/models", metavar="NAME"),
             Option("strict_model", False, "refuse realtime sessions that name another model",
                    kind="switch"),
             Option("interval", 0.5, "seconds of audio between runs of the network (how often "
                    "deltas go out)", type=float, short=("-I",), low=0.0, metavar="SECONDS"),
             Option("timeout", 60.0, "seconds a client may stall: an upload with no data gets 408, "
                    "an idle websocket is closed", type=float, low=0.0, metavar="SECONDS"),
             Option("drain", 10.0, "on SIGTERM, seconds running requests get to finish (then 503)",
                    type=float, low=0.0, metavar="SECONDS"),
             SPECULATE, THREADS, BACKEND)),
    Command("batch", "batch:batch_command", "transcribe a corpus into DIR: one output per input "
            "(written atomically) and manifest.jsonl; runs again resume; here or on a Ray cluster",
            (("INPUT...", "audio files, directories (searched recursively), glob patterns, or "
                          ".txt/.lst/.list files listing paths (one per line)"),),
            (Option("output_dir", None, "where the outputs and manifest.jsonl go (required)",
                    metavar="DIR"),
             Option("format", "txt", "output format", choices=FORMATS, metavar="FORMAT"),
             Option("model", None, "model directory (default: as for transcription)",
                    short=("-d", "-m"), metavar="DIR"),
             WEIGHTS,
             Option("ray", None, "run on a Ray cluster: ADDRESS is HOST:PORT, ray://HOST:PORT or "
                    "auto; without one, $RAY_ADDRESS, else a new local cluster (needs pip install "
                    "\"voxnp[ray]\")", kind="optional", metavar="[ADDRESS]",
                    pattern=r"auto|local|ray://\S+|[\w.-]+:\d+|\[[0-9a-fA-F:]+\]:\d+"),
             Option("workers", None, "with --ray: worker actors, each holding the model once "
                    "(default: one per node)", type=int, low=1, metavar="N"),
             Option("batch", 4, "files a worker decodes together", type=int, low=1, high=MAX_ROWS,
                    metavar="N"),
             Option("retry_failed", False, "transcribe again the inputs that failed before",
                    kind="switch"),
             Option("force", False, "start over in a DIR whose manifest was written with another "
                    "model or options", kind="switch"),
             THREADS, BACKEND)),
    Command("download", "download:download_command", "fetch the published model files (8.9 GB)",
            (),
            (Option("dir", None, "directory to download into (default: $VOXNP_HOME/"
                    "Voxtral-Mini-4B-Realtime-2602, else ~/.cache/voxnp/"
                    "Voxtral-Mini-4B-Realtime-2602, where voxnp finds it by itself)",
                    metavar="DIR"),)),
    Command("inspect", "inspect:inspect_command", "list a model's tensors, totals, configuration "
            "and problems (exit status 1 when there is a problem)",
            (("MODEL", "model directory"),),
            (Option("tensors", True, "list every tensor", kind="switch"),
             Option("json", False, "print the whole report as JSON", kind="switch"))),
    Command("checkpoint", "cli:checkpoint", "write a random-weight model directory in the "
            "published format (tests, benchmarks)",
            (("OUT", "output directory"),),
            (Option("preset", "tiny", "size (full is ~8.9 GB)", choices=tuple(PRESETS),
                    metavar="NAME"),
             Option("seed", 0, "random seed", type=int, metavar="N"),
             Option("overwrite", False, "replace an existing directory", kind="switch"))),
)}

HELP_FLAGS, VERSION_FLAG = ("-h", "--help"), "--version"
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


# ---------------------------------------------------------------------------
# reading a command line with the table


@dataclass
class Request:
    command: Command
    arguments: list[str]             # the positional arguments, -i files included, in order
    values: dict                     # every option's value, defaults filled in
    show: str = ""                   # "help" or "version" instead of running


def find_option(command: Command, flag: str) -> tuple[Option | None, bool]:
    """The option a flag names, and whether it was negated (--no-NAME)."""
    if flag.startswith("--"):
        flag = flag.replace("_", "-")
    for opt in command.options:
        if flag == opt.flag or flag in opt.short:
            return opt, False
        if opt.kind == "switch" and flag == "--no-" + opt.flag[2:]:
            return opt, True
    return None, False


def parse(argv: list[str]) -> Request:
    """A command line -> the command, its arguments and every option's value.

    Options may come before, between or after the arguments; a value option takes the
    next word (or `=VALUE`), a switch never does (`--silent=false` sets it). After `--`
    every word is an argument.
    """
    if argv and argv[0] and argv[0] in COMMANDS:
        command, words = COMMANDS[argv[0]], argv[1:]
    else:
        command, words = TRANSCRIBE, list(argv)
    request = Request(command, [], {o.name: o.default for o in command.options if o.kind != "input"})
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            request.arguments += words[i:]
            break
        if word == "-" or not word.startswith("-"):
            request.arguments.append(word)
            continue
        flag, has_value, text = word.partition("=")
        if flag in HELP_FLAGS or flag == VERSION_FLAG:
            request.show = request.show or ("help" if flag in HELP_FLAGS else "version")
            continue
        opt, negated = find_option(command, flag)
        if opt is None:
            raise VoxnpError(f"unknown option {flag} (see {command.title} --help)")
        if opt.kind == "switch":
            if negated and has_value:
                raise VoxnpError(f"{flag} takes no value")
            request.values[opt.name] = switch_value(flag, text) if has_value else not negated
            continue
        if opt.kind == "optional" and not has_value:
            if not (i < len(words) and re.fullmatch(opt.pattern, words[i])):
                request.values[opt.name] = True
                continue
        if not has_value:
            if i == len(words):
                raise VoxnpError(f"{flag} needs a value ({opt.metavar})")
            text = words[i]
            i += 1
        if opt.kind == "input":
            request.arguments.append(text)
        else:
            request.values[opt.name] = read_value(opt, flag, text)
    if not request.show:
        check_arguments(command, request.arguments)
    return request


def switch_value(flag: str, text: str) -> bool:
    if text.lower() in TRUE_WORDS:
        return True
    if text.lower() in FALSE_WORDS:
        return False
    raise VoxnpError(f"{flag} is a switch: {flag}=true or {flag}=false, not {text!r}")


def read_value(opt: Option, flag: str, text: str):
    """One option's value, converted and checked against the table."""
    value = text
    if opt.type in (int, float):
        what = "an integer" if opt.type is int else "a number"
        try:
            value = opt.type(text)
        except ValueError:
            raise VoxnpError(f"{flag} must be {what}, got {text!r}") from None
        if math.isnan(value):
            raise VoxnpError(f"{flag} must be {what}, got {text!r}")
    if opt.choices and value not in opt.choices:
        raise VoxnpError(f"unknown {flag} '{text}' (choose from {', '.join(map(str, opt.choices))})")
    too_low = opt.low is not None and value < opt.low
    too_high = opt.high is not None and value > opt.high
    if too_low or too_high:
        if opt.low is not None and opt.high is not None:
            allowed = f"between {opt.low:g} and {opt.high:g}"
        else:
            allowed = f"at least {opt.low:g}" if too_low else f"at most {opt.high:g}"
        raise VoxnpError(f"{flag} must be {allowed}, got {text}")
    return value


def check_arguments(command: Command, arguments: list[str]) -> None:
    names = [name for name, _ in command.arguments]
    if any(name.endswith("...") for name in names):
        return
    if len(arguments) != len(names):
        expected = " ".join(names) if names else "no arguments"
        got = f"got {len(arguments)}" + (f": {' '.join(arguments)}" if arguments else "")
        raise VoxnpError(f"{command.title} takes {expected} ({got}; see {command.title} --help)")


def fire_literal(value) -> str:
    """A value as fire reads it back exactly: a Python literal."""
    if isinstance(value, float) and math.isinf(value):
        return "1e999" if value > 0 else "-1e999"  # what literal_eval reads as +-inf
    return repr(value)


def run(request: Request) -> None:
    """Call the command's function through fire, every value written as a literal."""
    import fire

    from . import cpu

    cpu.active()                   # a bad $VOXNP_CPU: a one-line error before any work
    module, name = request.command.function.split(":")
    function = getattr(importlib.import_module(f"voxnp.{module}"), name)
    line = [fire_literal(a) for a in request.arguments]
    line += [f"--{k}={fire_literal(v)}" for k, v in request.values.items()]
    fire.Fire(function, command=line, name=request.command.title)


# ---------------------------------------------------------------------------
# help, from the same table

HELP_WIDTH, LEFT = 100, 28


def _entry(left: str, text: str) -> str:
    lines = textwrap.wrap(text, HELP_WIDTH - LEFT, break_on_hyphens=False) or [""]
    if len(left) > LEFT - 4:
        return f"  {left}\n" + "".join(" " * LEFT + line + "\n" for line in lines)
    out = f"  {left:<{LEFT - 2}}{lines[0]}\n"
    return out + "".join(" " * LEFT + line + "\n" for line in lines[1:])


def option_help(opt: Option) -> tuple[str, str]:
    spellings = ", ".join(opt.short + (opt.flag,))
    left = spellings if opt.kind == "switch" else f"{spellings} {opt.metavar}"
    text = opt.help
    if opt.choices:
        text += f": {' | '.join(map(str, opt.choices))}"
    if opt.kind == "switch" and opt.default is True:
        text += f" (default: on; --no-{opt.flag[2:]} turns it off)"
    elif opt.default is not None and opt.default is not False:
        text += f" (default: {opt.default})"
    return left, text


def usage(command: Command) -> str:
    args = " ".join(name for name, _ in command.arguments)
    if command is TRANSCRIBE:
        out = ("usage: voxnp [options] FILE...      transcribe audio files\n"
               "       voxnp [options] --stdin      transcribe standard input\n"
               "       voxnp [options] --from-mic   transcribe the microphone\n"
               "       voxnp COMMAND ...            see commands below (voxnp COMMAND --help)\n\n"
               "Voxtral Realtime 4B speech-to-text on the CPU. Text streams to stdout; the timing "
               "line and\nerrors go to stderr. Options may come before or after the files.\n")
    else:
        summary = command.summary[0].upper() + command.summary[1:] + "."
        out = f"usage: {' '.join(filter(None, (command.title, args, '[options]')))}\n\n"
        out += textwrap.fill(summary, HELP_WIDTH) + "\n"
    if command.arguments:
        out += "\narguments:\n" + "".join(_entry(name, text) for name, text in command.arguments)
    out += "\noptions:\n" + "".join(_entry(*option_help(o)) for o in command.options)
    out += _entry(", ".join(HELP_FLAGS), "show this help and exit")
    out += _entry(VERSION_FLAG, "show the version and exit")
    if command is TRANSCRIBE:
        out += "\ncommands:\n"
        for c in COMMANDS.values():
            if c.name:
                out += _entry(f"{c.name} {' '.join(n for n, _ in c.arguments)}".strip(), c.summary)
        out += ("\nvoxtral.c's command lines work as they are: voxnp -d voxtral-model -i audio.wav "
                "(or --stdin,\nor --from-mic) [-I 0.5] [--alt 0.5] [--silent | --debug].\n")
    return out


def version() -> str:
    from . import __version__

    return f"voxnp {__version__}\n"


# ---------------------------------------------------------------------------
# the commands


class Printer:
    """Writes decoded text to stdout as it arrives, flushed per token."""

    def __init__(self, alt: bool = False):
        self.alt = alt
        self.started = False

    def token(self, token) -> None:
        text = token.text
        if self.alt and len(token.alternatives) > 1 and text:
            names = [name for name, _ in token.alternatives]
            if not self.started:
                names[0] = names[0].lstrip()  # as voxtral.c: the transcript starts without a space
            text = "[" + "|".join(names) + "]"
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


def transcribe(*files, model, stdin, from_mic, record, raw, delay, interval, alt, format, output_dir,
               speculate, batch, weights, threads, backend, silent, debug):
    """Transcribe audio files, stdin or the microphone (options: TRANSCRIBE above)."""
    from . import model as model_mod
    from .formats import expand_inputs

    if not files and not stdin and not from_mic:
        raise VoxnpError("no input: give audio files, --stdin or --from-mic (see voxnp --help)")
    if bool(files) + stdin + from_mic > 1:
        raise VoxnpError("audio files (FILE, -i), --stdin and --from-mic are mutually exclusive")
    if record is not None and not (stdin or from_mic):
        raise VoxnpError("--record needs --stdin or --from-mic")
    if output_dir is not None:
        try:
            os.makedirs(output_dir, exist_ok=True)
        except OSError as e:
            raise VoxnpError(f"{output_dir}: cannot create output directory ({e.strerror})") from None
    t0 = time.perf_counter()
    m = model_mod.load(model, backend=backend, threads=threads, weights=weights)
    load_s = time.perf_counter() - t0
    if debug:
        c = m.config
        log(f"model {m.path}: encoder {c.encoder.n_layers}x{c.encoder.dim}, decoder "
            f"{c.decoder.n_layers}x{c.decoder.dim}, vocab {c.decoder.vocab_size}, load {1000 * load_s:.0f} ms")
        from .cpu import describe

        log(describe())
    options = dict(delay_ms=delay, alt=alt, speculate=speculate)
    if stdin or from_mic:
        from .live import run_live

        printer = Printer(alt=alt is not None)
        t = run_live(m, printer, source="mic" if from_mic else "stdin", interval=interval, record=record,
                     **options)
        if not silent:
            log(timing_line(load_s, t))
        return None
    paths = expand_inputs(files)
    if batch > 1 and len(paths) > 1:
        failed = transcribe_batch(m, paths, batch, raw, format, output_dir, options, silent, load_s)
    else:
        failed = 0
        for path in paths:
            try:
                transcribe_one(m, path, raw, format, output_dir, options, silent, load_s)
            except VoxnpError as e:
                log(f"voxnp: error: {e}")
                failed += 1
    if failed:
        raise SystemExit(1)
    return None


def transcribe_one(m, path, raw, fmt, output_dir, options, silent, load_s):
    """One input: text streams to stdout (txt), or a document goes to stdout or a file."""
    from .audio import load_audio
    from .progress import Progress
    from .stream import transcribe as run_stream

    audio = load_audio(path, raw=raw)
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
            result = run_stream(m, audio, on_token=on_token, **options)
        finally:
            printer.end()
    if not streaming_text:
        write_document(m, path, result, fmt, output_dir, silent)
    if not silent:
        log(f"{path}: {timing_line(load_s, result.timings)}")


def write_document(m, path, result, fmt, output_dir, silent) -> None:
    """A transcript as a FORMAT document: on stdout, or as a file under output_dir."""
    from .formats import output_path, render, write_atomic

    document = render(fmt, result.text, result.tokens, result.audio_seconds, model=str(m.path))
    if output_dir is None:
        sys.stdout.write(document)
        sys.stdout.flush()
    else:
        out = output_path(path, output_dir, fmt)
        write_atomic(out, document)
        if not silent:
            log(f"wrote {out}")


def transcribe_batch(m, paths, batch, raw, fmt, output_dir, options, silent, load_s) -> int:
    """Several inputs decoded together (--batch): each output, in input order, once its
    file is done. Returns the number of inputs that failed."""
    from functools import partial

    from .audio import load_audio

    failed = 0
    loaders = [partial(load_audio, p, raw=raw) for p in paths]
    results = m.transcribe_many(loaders, batch=batch, **options)
    for path, result in zip(paths, results):
        if isinstance(result, VoxnpError):
            log(f"voxnp: error: {result}")
            failed += 1
            continue
        if fmt == "txt" and output_dir is None:
            printer = Printer(alt=options["alt"] is not None)
            for token in result.tokens:
                printer.token(token)
            printer.end()
        else:
            write_document(m, path, result, fmt, output_dir, silent)
        if not silent:
            log(f"{path}: {timing_line(load_s, result.timings)}")
    return failed


def dump(model, audio, out, *, steps, teacher, delay, raw, speculate, weights, threads, backend):
    """Write every intermediate of one transcription to an .npz (options: COMMANDS["dump"])."""
    from . import model as model_mod
    from .audio import load_audio
    from .dump import check_output, dump_arrays, read_teacher, write_npz_atomic

    check_output(out)
    m = model_mod.load(model, backend=backend, threads=threads, weights=weights)
    ids = None
    if teacher is not None:
        ids = read_teacher(teacher)
        bad = ids[(ids < 0) | (ids >= m.config.decoder.vocab_size)]
        if len(bad):
            raise VoxnpError(f"{teacher}: token id {int(bad[0])} outside the vocabulary (0..{m.config.decoder.vocab_size - 1})")
    arrays = dump_arrays(m, load_audio(audio, raw=raw), delay_ms=delay, steps=steps, teacher=ids,
                         speculate=speculate)
    write_npz_atomic(out, arrays)
    log(f"wrote {out}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items()))


def quantize(model, *, to, out):
    """Convert a model's weights once (options: COMMANDS["quantize"])."""
    from .quant_file import quantize_model

    if to is None:
        raise VoxnpError("voxnp quantize needs --to int8 or --to q4")
    log(f"wrote {quantize_model(model, to, out=out, progress=sys.stderr.isatty())}")


def serve(*, model, host, port, api_key, weights, max_sessions, max_upload_mb, served_name,
          strict_model, interval, timeout, drain, speculate, threads, backend):
    """Run the server (options: COMMANDS["serve"])."""
    try:
        from . import server
    except ImportError as e:
        raise VoxnpError(f"voxnp serve needs its extra: pip install \"voxnp[serve]\" ({e})") from None
    server.main(model=model, host=host, port=port, api_key=api_key, weights=weights,
                max_sessions=max_sessions, max_upload_mb=max_upload_mb, served_name=served_name,
                strict_model=strict_model, interval=interval, timeout=timeout, drain=drain,
                speculate=speculate, threads=threads, backend=backend)


def checkpoint(out, *, preset, seed, overwrite):
    """Write a random-weight model directory (options: COMMANDS["checkpoint"])."""
    from .checkpoint import write_checkpoint

    try:
        write_checkpoint(out, preset=preset, seed=seed, overwrite=overwrite)
    except (FileExistsError, RuntimeError, OSError) as e:
        raise VoxnpError(str(e)) from None
    log(f"wrote {out} ({preset})")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        request = parse(argv)
        if request.show == "help":
            sys.stdout.write(usage(request.command))
        elif request.show == "version":
            sys.stdout.write(version())
        else:
            run(request)
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
