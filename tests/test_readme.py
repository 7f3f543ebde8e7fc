"""Every README command line that needs only a tiny model runs as written.

Which lines run (the convention; keep README examples to it):
  - a line of a code block: indented by four spaces, or in a fence marked sh, bash,
    console, shell or nothing (```python and ```json blocks are not commands);
  - made of stages joined by `|` or `&&`, each started by a program in PROGRAMS
    (`voxnp`, `cat`, and `ffmpeg` when it is installed); a line with any other program
    (`pip`, `python3`, `curl`, ...) is documentation only;
  - every `voxnp` stage is a command in RUN_COMMANDS (transcription, `dump`, `inspect`,
    `checkpoint`); `voxnp download`, and any command added later (`serve`, `quantize`, ...),
    runs only once it is added to RUN_COMMANDS here; transcription of the microphone
    (`--from-mic`) is never run.
Each line runs through bash, exactly as written, in a fresh directory holding what its
words name: `voxtral-model/` is the tiny checkpoint (voxnp's default model location),
every audio file name is a short clip from ../shared/audio in that format (raw PCM
included), and a directory given to transcription holds two clips. A line whose files
cannot be made here (an .m4a without ffmpeg) is skipped, saying why. A line passes when
it exits 0 with no traceback and no `voxnp: error`.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import shared_audio
from voxnp import cli
from voxnp.audio import RAW_EXTENSIONS
from voxnp.formats import AUDIO_EXTENSIONS

README = Path(__file__).parent.parent / "README.md"
PROGRAMS = ("voxnp", "cat", "ffmpeg")
RUN_COMMANDS = ("", "dump", "inspect", "checkpoint", "quantize")   # "" is transcription
SHELL_FENCES = ("", "sh", "bash", "console", "shell")
SEPARATORS = ("|", "&&")
SOUNDFILE_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}
CLIP_SECONDS = 2


def code_lines(text: str) -> list[str]:
    """The lines of the README's shell code blocks (indented, or fenced as shell)."""
    out, fence = [], None
    for line in text.splitlines():
        marker = re.match(r"\s*```\s*(\w*)", line)
        if marker:
            fence = None if fence is not None else marker.group(1).lower()
            continue
        if fence is not None:
            if fence in SHELL_FENCES and line.strip():
                out.append(line.strip())
        elif line.startswith("    ") and line.strip():
            out.append(line.strip())
    return out


def stages(line: str) -> list[list[str]]:
    """A command line's programs and their words, comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars="|&")
    lexer.whitespace_split = True
    groups = [[]]
    for word in lexer:
        if word in SEPARATORS:
            groups.append([])
        else:
            groups[-1].append(word)
    return [g for g in groups if g]


def voxnp_command(words: list[str]) -> str | None:
    """The command a `voxnp` stage runs ("" for transcription), None when it is not known."""
    first = words[1] if len(words) > 1 else ""
    if first in cli.COMMANDS:
        return first
    if first.startswith("-") or is_audio(first) or first.endswith("/"):
        return ""
    return None


def is_audio(word: str) -> bool:
    return Path(word).suffix.lower() in AUDIO_EXTENSIONS + RAW_EXTENSIONS


def why_not_run(line: str) -> str | None:
    """None when the convention above runs this line, else the reason it does not."""
    groups = stages(line)
    if not groups or any(g[0] not in PROGRAMS for g in groups):
        return "not only voxnp, cat and ffmpeg"
    if any(g[0] == "ffmpeg" for g in groups) and shutil.which("ffmpeg") is None:
        return "needs ffmpeg"
    for g in groups:
        if g[0] == "voxnp":
            command = voxnp_command(g)
            if command not in RUN_COMMANDS:
                return f"`voxnp {g[1]}` is not in RUN_COMMANDS"
            if command == "" and "--from-mic" in g:
                return "needs a microphone"
    return None


def readme_lines() -> list[str]:
    """The code lines that run `voxnp` somewhere (the rest are skipped unlisted)."""
    lines = code_lines(README.read_text(encoding="utf-8"))
    return [line for line in lines if any(g[0] == "voxnp" for g in stages(line))]


# ---------------------------------------------------------------------------
# the directory a line runs in


def make_audio(path: Path, pcm: np.ndarray) -> None:
    """`pcm` (int16, 16 kHz mono) written in the format its name says."""
    suffix = path.suffix.lower()
    if suffix in RAW_EXTENSIONS:
        path.write_bytes(pcm.astype("<i2").tobytes())
    elif suffix in SOUNDFILE_FORMATS:
        sf.write(path, pcm, 16000, format=SOUNDFILE_FORMATS[suffix])
    elif shutil.which("ffmpeg"):
        wav = path.with_suffix(".tmp.wav")
        sf.write(wav, pcm, 16000)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(wav), str(path)], check=True)
        wav.unlink()
    else:
        pytest.skip(f"cannot make {path.name} without ffmpeg")


def inputs(words: list[str]) -> tuple[list[str], list[str]]:
    """(audio files, directories of audio) that a stage reads."""
    if words[0] == "cat":
        return [w for w in words[1:] if is_audio(w)], []
    if words[0] == "ffmpeg":
        return [words[words.index("-i") + 1]] if "-i" in words else [], []
    request = cli.parse(words[1:])
    files = [a for a in request.arguments if is_audio(a)]
    dirs = [a for a in request.arguments if request.command is cli.TRANSCRIBE and not is_audio(a)]
    return files, dirs


def prepare(sandbox: Path, line: str, tiny_dir: Path, pcm: np.ndarray) -> None:
    shutil.copytree(tiny_dir, sandbox / "voxtral-model")
    for words in stages(line):
        files, dirs = inputs(words)
        for name in files:
            make_audio(sandbox / name, pcm)
        for name in dirs:
            (sandbox / name).mkdir(parents=True, exist_ok=True)
            for clip in ("one.wav", "two.flac"):
                make_audio(sandbox / name / clip, pcm)


# ---------------------------------------------------------------------------
# tests


@pytest.fixture(scope="module")
def pcm() -> np.ndarray:
    x, rate = sf.read(shared_audio("5s_dont_worry_about_him.wav"), dtype="int16")
    assert rate == 16000 and x.ndim == 1
    return x[:CLIP_SECONDS * rate]


def test_readme_has_runnable_lines():
    """The convention keeps finding the examples (a reformatted README would hide them)."""
    run = [line for line in readme_lines() if why_not_run(line) is None]
    assert len(run) >= 10, run
    assert any(line.startswith("voxnp -d ") for line in run)
    assert not any(line.startswith(("voxnp download", "pip ")) for line in run)


@pytest.mark.parametrize("line", readme_lines())
def test_readme_line(line, tiny_dir, pcm, tmp_path):
    reason = why_not_run(line)
    if reason:
        pytest.skip(reason)
    sandbox = tmp_path / "cwd"
    sandbox.mkdir()
    prepare(sandbox, line, tiny_dir, pcm)
    env = dict(os.environ, VOXNP_HOME=str(tmp_path / "home"))
    env.pop("VOXNP_MODEL", None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {line}"], cwd=sandbox, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "voxnp: error" not in r.stderr, r.stderr
