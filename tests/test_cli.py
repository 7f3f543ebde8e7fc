"""The `voxnp` command as people type it (issue #8), run as the installed console script.

Each run of the command costs about half a second (tiny checkpoint, --backend numpy, a
1-second clip), so the full matrix of flag positions is checked in-process on
`cli.parse` and a representative set of command lines through the real command:
flags before and after the files with --model before and after, voxtral.c's command
line, raw PCM files, help and version, and bad option values.
"""
from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
from itertools import permutations
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import shared_audio
from voxnp import cli

RATE = 16000
FAST = ("--backend", "numpy")  # no Numba compile in a fresh process
SWITCHES = ("--silent", "--debug", "--raw", "--stdin", "--from-mic")


def installed_voxnp() -> str:
    """The console script `pip install` put beside this Python, else the one on PATH."""
    beside = Path(sys.executable).with_name("voxnp")
    found = str(beside) if beside.exists() else shutil.which("voxnp")
    if found is None:
        pytest.fail("the `voxnp` command is not installed (pip install -e .)")
    return found


def voxnp(*args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([installed_voxnp(), *map(str, args)], input=stdin, capture_output=True,
                       timeout=300)
    r.stdout, r.stderr = r.stdout.decode(), r.stderr.decode()
    return r


def assert_error(r: subprocess.CompletedProcess, *words) -> str:
    """Non-zero, no traceback, one `voxnp: error:` line holding every word."""
    assert r.returncode != 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("voxnp: error: "), r.stderr
    for word in words:
        assert str(word).lower() in lines[0].lower(), (word, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def pcm() -> np.ndarray:
    """One second of real speech as int16 samples at 16 kHz."""
    x, rate = sf.read(shared_audio("jfk.wav"), dtype="int16")
    assert rate == RATE
    return x[RATE:2 * RATE]


@pytest.fixture(scope="module")
def clip(pcm, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "speech.wav"
    sf.write(path, pcm, RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def expected(tiny_dir, clip) -> str:
    """The transcript of `clip` by the plainest command line."""
    r = voxnp(clip, "--model", tiny_dir, *FAST, "--silent")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    return r.stdout


# ---------------------------------------------------------------------------
# 1. flags in any position


def orders(flag: str, model: list, files: list) -> list[list]:
    """The flag before and after the files, with --model before and after them."""
    return [[flag, *model, *files], [*model, flag, *files], [*files, flag, *model],
            [*files, *model, flag]]


@pytest.mark.parametrize("flag", ["--silent", "--debug"])
@pytest.mark.parametrize("order", range(4))
def test_switch_anywhere(tiny_dir, clip, expected, flag, order):
    args = orders(flag, ["--model", tiny_dir], [clip])[order]
    r = voxnp(*args, *FAST)
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected
    if flag == "--silent":
        assert r.stderr == ""
    else:
        assert f"model {tiny_dir}" in r.stderr and "real time" in r.stderr


@pytest.mark.parametrize("order", range(4))
def test_raw_switch_anywhere(tiny_dir, pcm, tmp_path, expected, order):
    """--raw reads any name as s16le 16 kHz mono; it never takes the file as its value."""
    path = tmp_path / "speech.bin"
    path.write_bytes(pcm.tobytes())
    r = voxnp(*orders("--raw", ["--model", tiny_dir], [path])[order], *FAST, "--silent")
    assert r.returncode == 0 and r.stdout == expected, r.stderr


@pytest.mark.parametrize("model_first", [True, False])
def test_stdin_anywhere(tiny_dir, clip, expected, model_first):
    args = ["--model", tiny_dir, "--stdin"] if model_first else ["--stdin", "--model", tiny_dir]
    r = voxnp(*args, *FAST, "--silent", stdin=clip.read_bytes())
    assert r.returncode == 0 and r.stdout == expected, r.stderr


@pytest.mark.parametrize("flag", ["--stdin", "--from-mic"])
@pytest.mark.parametrize("flag_first", [True, False])
def test_live_switch_with_a_file_is_not_swallowed(tiny_dir, clip, flag, flag_first):
    """`--stdin FILE`: the file stays a file, and voxtral.c's rule applies (one source)."""
    args = [flag, clip] if flag_first else [clip, flag]
    assert_error(voxnp(*args, "--model", tiny_dir), "mutually exclusive")


@pytest.mark.parametrize("model_first", [True, False])
def test_from_mic_anywhere(tiny_dir, model_first, without_sounddevice):
    args = ["--model", tiny_dir, "--from-mic"] if model_first else ["--from-mic", "--model", tiny_dir]
    assert_error(voxnp(*args, *FAST), "sounddevice")


def test_switch_values(tiny_dir, clip, expected):
    """--flag=false and --no-flag turn a switch off; --flag=true turns it on."""
    r = voxnp("--silent=false", clip, "--model", tiny_dir, *FAST)
    assert r.returncode == 0 and r.stdout == expected and "real time" in r.stderr
    r = voxnp("--debug=true", "--no-debug", "--silent=yes", clip, "--model", tiny_dir, *FAST)
    assert r.returncode == 0 and r.stdout == expected and r.stderr == ""
    assert_error(voxnp("--silent=maybe", clip), "--silent", "maybe")


def test_file_names_that_look_like_values(tiny_dir, clip, expected, tmp_path, monkeypatch):
    """Names fire would read as literals or flags reach the command unchanged."""
    monkeypatch.chdir(tmp_path)
    names = ["True", "1e3", "[x] 'q\".wav", "--odd.wav", "-o.wav"]
    for name in names:
        shutil.copy(clip, tmp_path / name)
    r = voxnp("--model", tiny_dir, *FAST, "--silent", "--", *names)
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected * len(names)


def test_equals_and_underscores(tiny_dir, clip, expected, tmp_path):
    out = tmp_path / "out"
    r = voxnp(clip, f"--model={tiny_dir}", "--format=json", f"--output_dir={out}", *FAST, "--silent")
    assert r.returncode == 0, r.stderr
    assert (out / "speech.json").exists() and r.stdout == ""


# ---------------------------------------------------------------------------
# 2. voxtral.c's command line


def test_voxtral_c_command_line(tiny_dir, clip, expected):
    r = voxnp("-d", tiny_dir, "-i", clip, *FAST, "--silent")
    assert r.returncode == 0 and r.stdout == expected and r.stderr == "", r.stderr
    r = voxnp("-d", tiny_dir, "-i", clip, "-I", "0.5", "--alt", "0.5", *FAST)
    assert r.returncode == 0 and r.stdout.strip() and "real time" in r.stderr, r.stderr
    r = voxnp("-i", clip, "-d", tiny_dir, "-i", clip, *FAST, "--silent")  # -i repeated
    assert r.returncode == 0 and r.stdout == expected * 2, r.stderr


def test_voxtral_c_stdin(tiny_dir, pcm, expected):
    r = voxnp("-d", tiny_dir, "--stdin", "-I", "0.5", *FAST, "--silent", stdin=pcm.tobytes())
    assert r.returncode == 0 and r.stdout == expected, r.stderr


# ---------------------------------------------------------------------------
# 3. raw PCM files


def test_raw_extensions(tiny_dir, pcm, tmp_path, expected):
    paths = []
    for name in ("a.raw", "b.pcm", "c.s16le", "D.RAW"):
        paths.append(tmp_path / name)
        paths[-1].write_bytes(pcm.tobytes())
    r = voxnp(*paths, "--model", tiny_dir, *FAST, "--silent")
    assert r.returncode == 0 and r.stdout == expected * len(paths), r.stderr


def test_raw_odd_byte_count(tiny_dir, pcm, tmp_path):
    path = tmp_path / "odd.pcm"
    path.write_bytes(pcm.tobytes()[:-1])
    assert_error(voxnp(path, "--model", tiny_dir, *FAST), str(path), "odd byte count")
    path = tmp_path / "odd.bin"
    path.write_bytes(b"abc")
    assert_error(voxnp("--raw", path, "--model", tiny_dir, *FAST), str(path), "odd byte count")


def test_dump_raw(tiny_dir, pcm, clip, tmp_path):
    raw = tmp_path / "clip.s16le"
    raw.write_bytes(pcm.tobytes())
    for audio, out in ((clip, "wav.npz"), (raw, "raw.npz")):
        r = voxnp("dump", tiny_dir, audio, tmp_path / out, "--steps", "1", *FAST)
        assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "wav.npz") as a, np.load(tmp_path / "raw.npz") as b:
        np.testing.assert_array_equal(a["mel"], b["mel"])
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
    odd = tmp_path / "odd.raw"
    odd.write_bytes(b"\x00" * 333)
    assert_error(voxnp("dump", tiny_dir, odd, tmp_path / "odd.npz", *FAST), str(odd), "odd byte count")
    assert not (tmp_path / "odd.npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.s16le", "odd.raw", "raw.npz", "wav.npz"]


def test_load_audio_raw_equals_wav(pcm, clip, tmp_path):
    from voxnp.audio import load_audio

    raw = tmp_path / "clip.anything"
    raw.write_bytes(pcm.tobytes())
    np.testing.assert_array_equal(load_audio(raw, raw=True), load_audio(clip))


# ---------------------------------------------------------------------------
# 4. help and version

FIRE_NOISE = ("Type:", "Optional[", "=STDIN", "SYNOPSIS", "POSITIONAL ARGUMENTS", "FLAGS\n")


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_help_lists_every_option_once(name):
    command = cli.COMMANDS[name]
    for args in ([name, "--help"], [name, "-h"]) if name else (["--help"], ["-h"], ["--silent", "--help"]):
        r = voxnp(*filter(None, args))
        assert r.returncode == 0 and r.stderr == "", r.stderr
        for noise in FIRE_NOISE:
            assert noise not in r.stdout, noise
        lines = r.stdout.splitlines()
        for opt in command.options:
            left, text = cli.option_help(opt)
            rows = [line for line in lines if line.startswith(f"  {left}")
                    and line[len(left) + 2:len(left) + 3] in (" ", "")]
            assert len(rows) == 1, left
            if opt.default not in (None, False):
                assert "(default: " in text
        for arg, _ in command.arguments:
            assert arg in r.stdout


def test_help_shows_voxtral_c_flags_and_defaults():
    out = voxnp("--help").stdout
    for flag in ("-d, -m, --model DIR", "-i, --input FILE", "-I, --interval SECONDS", "--stdin",
                 "--from-mic", "--alt C", "--silent", "--debug", "-h, --help", "--version"):
        assert f"  {flag}" in out, flag
    assert "(default: 2.0)" in out and "(default: txt)" in out and "(default: 480)" in out
    for name in ("dump", "download", "inspect", "checkpoint"):
        assert f"\n  {name}" in out


def test_version():
    import voxnp as api

    r = voxnp("--version")
    assert r.returncode == 0 and r.stdout == f"voxnp {api.__version__}\n"


# ---------------------------------------------------------------------------
# bad command lines: one line, no traceback, before any work


BAD_COMMAND_LINES = [
    ("unknown", ["--bogus", "a.wav"], ["unknown option --bogus"]),
    ("unknown-short", ["a.wav", "-x"], ["unknown option -x"]),
    ("no-value", ["a.wav", "--model"], ["--model", "needs a value"]),
    ("delay-word", ["a.wav", "--delay", "soon"], ["--delay", "soon"]),
    ("alt-range", ["a.wav", "--alt", "1.5"], ["--alt", "between 0 and 1"]),
    ("interval-negative", ["a.wav", "-I", "-1"], ["-I", "at least 0"]),
    ("threads-word", ["a.wav", "--threads", "two"], ["--threads", "integer"]),
    ("format", ["a.wav", "--format", "doc"], ["--format", "doc", "txt"]),
    ("no-value-option", ["a.wav", "--no-model"], ["unknown option --no-model"]),
    ("switch-value", ["--stdin=2"], ["--stdin", "true or", "false"]),
    ("dump-arguments", ["dump", "m"], ["voxnp dump takes MODEL AUDIO OUT"]),
    ("preset", ["checkpoint", "out", "--preset", "huge"], ["--preset", "huge", "tiny"]),
    ("inspect-unknown", ["inspect", "m", "--json", "--bogus"], ["unknown option --bogus", "voxnp inspect --help"]),
]


@pytest.mark.parametrize("args,words", [c[1:] for c in BAD_COMMAND_LINES], ids=[c[0] for c in BAD_COMMAND_LINES])
def test_bad_command_line(args, words):
    assert_error(voxnp(*args), *words)


def test_checkpoint_exists(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x").write_text("keep")
    assert_error(voxnp("checkpoint", tmp_path / "m"), "m", "not empty")


# ---------------------------------------------------------------------------
# in-process: the option table, the parser and the hand-over to fire


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_table_matches_the_function(name):
    """Each option and argument of the table is a parameter of the command's function."""
    command = cli.COMMANDS[name]
    module, attr = command.function.split(":")
    fn = getattr(__import__(f"voxnp.{module}", fromlist=[attr]), attr)
    params = inspect.signature(fn).parameters
    options = [o.name for o in command.options if o.kind != "input"]
    varargs = [p for p in params.values() if p.kind is p.VAR_POSITIONAL]
    named = [p for p in params if params[p].kind is not params[p].VAR_POSITIONAL]
    arguments = [] if varargs else [a.lower().rstrip(".") for a, _ in command.arguments]
    assert sorted(named) == sorted(arguments + options)
    spellings = [s for o in command.options for s in (o.flag, *o.short)]
    assert len(spellings) == len(set(spellings)), "a spelling names two options"


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_switch_in_every_position(name):
    command = cli.COMMANDS[name]
    args = [f"ARG{i}" for i in range(len(command.arguments))]
    for opt in (o for o in command.options if o.kind == "switch"):
        for spelling, value in ((opt.flag, True), (f"{opt.flag}=false", False),
                                (f"{opt.flag}=TRUE", True), (f"--no-{opt.flag[2:]}", False)):
            for i in range(len(args) + 1):
                words = args[:i] + [spelling] + args[i:]
                request = cli.parse(([name] if name else []) + words)
                assert request.arguments == args, words
                assert request.values[opt.name] is value, words


def test_transcribe_options_in_any_order():
    for words in permutations([["a.wav"], ["-d", "M"], ["--silent"], ["-I", "0.5"], ["-i", "b.wav"],
                               ["--alt=0.25"], ["--from-mic=false"]]):
        request = cli.parse([w for group in words for w in group])
        assert sorted(request.arguments) == ["a.wav", "b.wav"]
        v = request.values
        assert (v["model"], v["silent"], v["interval"], v["alt"], v["from_mic"]) == ("M", True, 0.5, 0.25, False)
    assert cli.parse(["--model", "-weird-dir", "x"]).values["model"] == "-weird-dir"
    assert cli.parse(["--", "--silent"]).arguments == ["--silent"]


def test_fire_gets_values_back_exactly(monkeypatch):
    """What fire hands the function is what the user typed, whatever it looks like."""
    seen = {}

    def fake(*files, model, silent, interval):
        seen.update(files=files, model=model, silent=silent, interval=interval)

    monkeypatch.setattr(cli, "transcribe", fake)
    command = cli.Command("", "cli:transcribe", "", (("FILE...", ""),), (
        cli.Option("model", None, ""), cli.Option("silent", False, "", kind="switch"),
        cli.Option("interval", 2.0, "", type=float)))
    names = ("True", "None", "1e3", "[1, 2]", "{a: b}", "-", "--help", "a#b", "x=1", "'", "\\n", "é ü")
    cli.run(cli.Request(command, list(names), {"model": "007", "silent": True, "interval": float("inf")}))
    assert seen == dict(files=names, model="007", silent=True, interval=float("inf"))


# ---------------------------------------------------------------------------
# 5. alternatives: bytes that are not UTF-8 alone


def test_printable_bytes():
    from voxnp.tokenizer import printable

    assert printable(b"") == "" and printable(b" the") == " the"
    assert printable("é".encode()) == "é"
    assert printable(b"\xc3") == "<0xC3>"                   # a lead byte alone
    assert printable(b"a\xa9b") == "a<0xA9>b"               # a continuation byte alone
    assert printable(b"\xe6\x97") == "<0xE6><0x97>"         # two thirds of a character
    assert printable("😀".encode() + b"\xff") == "😀<0xFF>"


def test_peek_merges_held_bytes(tiny_model):
    from voxnp.tokenizer import TextDecoder

    tok = tiny_model.tokenizer
    dec = TextDecoder(tok)
    assert dec.peek(1000 + 0xC3) == "<0xC3>" and dec.held == b""
    assert dec.push(1000 + 0xC3) == ""                      # the start of é/è, held back
    assert dec.held == b"\xc3"
    assert dec.peek(1000 + 0xA8) == "è" and dec.peek(1000 + 0xA9) == "é"
    assert dec.peek(1000 + ord("x")) == "<0xC3>x"
    assert dec.peek(32) == tok.token_name(32)               # a control token by its name
    assert dec.push(1000 + 0xA9) == "é"                     # peeking changed nothing


def test_printer_alternatives(capsys):
    from voxnp.stream import Token

    p = cli.Printer(alt=True)
    p.token(Token(id=1, text=" a", time=0.0, position=0, alternatives=[(" a", 1.0), (" b", 0.6)]))
    p.token(Token(id=2, text="é", time=0.1, position=1, alternatives=[("é", 1.0), ("è", 0.7)]))
    p.token(Token(id=3, text=" c", time=0.2, position=2, alternatives=[(" c", 1.0)]))
    p.end()
    assert capsys.readouterr().out == "[a| b][é|è] c\n"


def test_alt_shows_no_replacement_character(tiny_dir):
    r = voxnp(shared_audio("jfk.wav"), "--model", tiny_dir, "--alt", "1", *FAST, "--silent")
    assert r.returncode == 0, r.stderr
    assert "[" in r.stdout and "\ufffd" not in r.stdout
