"""Transcript output formats: txt, json, srt, vtt; atomic writes; input expansion.

Timing comes from the decoder schedule (SPEC §9): one token per 80 ms frame, and
`Token.time` is the second of original audio at which that frame ends. A word's
tokens are grouped, words are grouped into segments, and segments become cues.

JSON schema (`voxnp --format json`):

    {
      "text": "the whole transcript",
      "duration": 5.0,                       // seconds of input audio
      "model": "voxtral-model",              // present when known
      "segments": [                          // subtitle-sized pieces, in order
        {"start": 0.32, "end": 1.84, "text": "Don't worry about him."}
      ],
      "tokens": [                            // every emitted text token (id >= 1000), in order
        {"id": 1784, "text": " worry", "time": 0.96}
      ]
    }

All times are seconds (3 decimals) within [0, duration]; segment times never go
backwards (start <= end <= next start). A token's `time` is where its 80 ms frame
ends (±80 ms); control tokens (ids < 1000: [STREAMING_PAD], [STREAMING_WORD], EOS)
are not listed. Concatenating the tokens' `text` gives `text` (before trimming).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .audio import RAW_EXTENSIONS
from .config import STREAMING_WORD_ID
from .errors import VoxnpError

FORMATS = ("txt", "json", "srt", "vtt")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".m4a", ".mp4", ".aac", ".webm",
                    ".aiff", ".aif") + RAW_EXTENSIONS
N_SPECIAL = 1000            # ids below are control tokens (tekken.json default_num_special_tokens)
FRAME_S = 0.08              # one decoder token per 80 ms of audio
SENTENCE_END = ".!?。！？"   # a word ending in one of these ends a segment
CLOSERS = "\"'”’»)]}」』）】"  # closing quotes/brackets that may follow the punctuation


# ---------------------------------------------------------------------------
# tokens -> words -> segments


@dataclass
class _Word:
    text: str        # with its leading space, if any
    start: float     # estimated start (s)
    end: float       # time of its last token (s)
    gap: float       # silence before it: first token time - previous text token time


def _ends_sentence(text: str) -> bool:
    core = text.rstrip().rstrip(CLOSERS)
    return bool(core) and core[-1] in SENTENCE_END


def _words(tokens, pause: float) -> list[_Word]:
    """Group text tokens into words.

    A new word starts at a [STREAMING_WORD] marker, at a token that begins with
    whitespace, after sentence punctuation and after a pause; other tokens continue
    the current word.
    Start times: inside speech, the previous text token's time (tokens are 80 ms apart
    while someone speaks); after a pause of `pause` seconds or more (or at the very
    beginning), 80 ms before the word's first token -- or before the [STREAMING_WORD]
    marker that announced it, if earlier -- never before the previous word's end or 0.
    """
    words: list[_Word] = []
    prev_time = None          # time of the previous text token
    marker_time = None        # time of a [STREAMING_WORD] seen since the last text token
    space = ""                # whitespace-only tokens waiting for the next word
    boundary = True
    for t in tokens:
        if t.id == STREAMING_WORD_ID:
            boundary = True
            if marker_time is None:
                marker_time = t.time
            continue
        if not t.text:
            continue
        if not t.text.strip():  # whitespace only: a boundary, and the next word's leading space
            space += t.text
            boundary = True
            continue
        text = space + t.text
        space = ""
        gap = t.time - prev_time if prev_time is not None else float("inf")
        if boundary or text[0].isspace() or gap >= pause or not words:
            if gap >= pause:
                first = t.time if marker_time is None else min(t.time, marker_time)
                start = max(first - FRAME_S, prev_time if prev_time is not None else 0.0, 0.0)
            else:
                start = prev_time
            words.append(_Word(text=text, start=start, end=t.time, gap=gap))
        else:
            words[-1].text += text
            words[-1].end = t.time
        prev_time = t.time
        marker_time = None
        boundary = _ends_sentence(words[-1].text)
    if space and words:
        words[-1].text += space
    return words


def _clean(text: str) -> str:
    """One line of text: whitespace runs (newlines included) become one space."""
    return " ".join(text.split())


def segments(tokens, duration: float, max_chars: int = 80, max_seconds: float = 8.0,
             pause: float = 0.8) -> list[dict]:
    """Split a transcript into [{"start", "end", "text"}] segments.

    A segment ends after a word that ends a sentence (. ! ? and their CJK forms), before
    a word that follows a pause of `pause` seconds or more, and before a word that would
    make it longer than `max_chars` characters or `max_seconds` seconds. Words are never
    split ([STREAMING_WORD] markers and leading spaces delimit them), so a single longer
    word makes a longer segment. Times are clamped into [0, duration] and never go back;
    each segment's end is after its start whenever the duration allows.
    """
    duration = max(0.0, float(duration))
    groups: list[list[_Word]] = []
    for w in _words(tokens, pause):
        cur = groups[-1] if groups else None
        if cur is not None and not _ends_sentence(cur[-1].text):
            text = _clean("".join(x.text for x in cur) + w.text)
            if (w.gap < pause and len(text) <= max_chars and w.end - cur[0].start <= max_seconds):
                cur.append(w)
                continue
        groups.append([w])
    out: list[dict] = []
    last_end = 0.0
    for g in groups:
        text = _clean("".join(w.text for w in g))
        if not text:
            continue
        start = min(max(g[0].start, last_end, 0.0), duration)
        end = min(max(g[-1].end, start), duration)
        if end <= start:
            end = min(start + FRAME_S, duration)
        out.append({"start": start, "end": end, "text": text})
        last_end = end
    return out


# ---------------------------------------------------------------------------
# renderers


def _ms(seconds: float) -> int:
    return int(round(max(0.0, seconds) * 1000))


def _timestamp(seconds: float, sep: str) -> str:
    """HH:MM:SS{sep}mmm (SRT uses ',', WebVTT '.')."""
    ms = _ms(seconds)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_txt(text: str) -> str:
    """The transcript, trimmed, with a final newline (empty transcript: empty file)."""
    text = text.strip()
    return text + "\n" if text else ""


def to_json(text: str, tokens, segments: list[dict], duration: float, model=None) -> str:
    """The JSON document described in the module docstring."""
    duration = max(0.0, float(duration))

    def sec(x: float) -> float:
        return round(min(max(float(x), 0.0), duration), 3)

    doc = {"text": text.strip(), "duration": round(duration, 3)}
    if model is not None:
        doc["model"] = str(model)
    doc["segments"] = [{"start": sec(s["start"]), "end": sec(s["end"]), "text": s["text"]} for s in segments]
    doc["tokens"] = [{"id": int(t.id), "text": t.text, "time": sec(t.time)}
                     for t in tokens if t.id >= N_SPECIAL]
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


def to_srt(segments: list[dict]) -> str:
    """SubRip: index, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, text, blank line."""
    cues = []
    for i, s in enumerate(segments, 1):
        text = s["text"].replace("-->", "->")
        cues.append(f"{i}\n{_timestamp(s['start'], ',')} --> {_timestamp(s['end'], ',')}\n{text}\n\n")
    return "".join(cues)


def to_vtt(segments: list[dict]) -> str:
    """WebVTT: `WEBVTT` header, then `HH:MM:SS.mmm --> HH:MM:SS.mmm` cues (text escaped)."""
    out = ["WEBVTT\n\n"]
    for s in segments:
        text = s["text"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        out.append(f"{_timestamp(s['start'], '.')} --> {_timestamp(s['end'], '.')}\n{text}\n\n")
    return "".join(out)


def render(fmt: str, transcript_text: str, tokens, duration: float, model=None) -> str:
    """The transcript in one of FORMATS."""
    if fmt not in FORMATS:
        raise VoxnpError(f"unknown output format '{fmt}' (choose from {', '.join(FORMATS)})")
    if fmt == "txt":
        return to_txt(transcript_text)
    segs = segments(tokens, duration)
    if fmt == "json":
        return to_json(transcript_text, tokens, segs, duration, model=model)
    return to_srt(segs) if fmt == "srt" else to_vtt(segs)


# ---------------------------------------------------------------------------
# files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path, text: str) -> None:
    """Write UTF-8 text to a temp file beside `path`, then rename it onto `path`.

    On any exception the temp file is removed and an existing `path` is untouched.
    OSErrors (missing directory, permissions, disk full) become VoxnpError.
    """
    path = Path(path)
    directory = path.parent
    if not directory.is_dir():
        raise VoxnpError(f"{path}: directory {directory} does not exist")
    try:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise VoxnpError(f"{path}: cannot write ({e.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise VoxnpError(f"{path}: cannot write ({e.strerror or e})") from None
        raise


def output_path(input_path, output_dir, fmt: str) -> Path:
    """<output_dir>/<input stem>.<fmt> (output_dir None: beside the input)."""
    input_path = Path(input_path)
    directory = Path(output_dir) if output_dir is not None else input_path.parent
    return directory / f"{input_path.stem}.{fmt}"


def expand_inputs(paths) -> list[Path]:
    """Files as given; each directory replaced by its audio files (sorted, not recursive).

    Audio files are recognised by extension (AUDIO_EXTENSIONS, any case); hidden files
    are skipped; a directory without audio files is kept as it is, and so is a path that
    does not exist, for the caller to report when it fails to read them.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        found = []
        if p.is_dir():
            found = sorted(f for f in p.iterdir()
                           if f.suffix.lower() in AUDIO_EXTENSIONS and not f.name.startswith(".") and f.is_file())
        out += found or [p]
    return out
