"""Output formats: segmentation, SRT/VTT cue syntax, JSON schema, atomic writes, inputs."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conftest import shared_audio
from voxnp import formats
from voxnp.errors import VoxnpError
from voxnp.formats import (FORMATS, expand_inputs, output_path, render, segments, to_json, to_srt,
                           to_txt, to_vtt, write_atomic)
from voxnp.stream import Token, transcribe

PAD, WORD, EOS = 32, 33, 2


def toks(*items, step=0.08, t0=0.0):
    """Token list from items: a str is a text token, an int a control id, a float a pause (s)."""
    out, t = [], t0
    for item in items:
        if isinstance(item, float):
            t += item
            continue
        t += step
        if isinstance(item, int):
            out.append(Token(id=item, text="", time=round(t, 3), position=len(out)))
        else:
            out.append(Token(id=1000 + len(out), text=item, time=round(t, 3), position=len(out)))
    return out


def check_times(segs, duration):
    last = 0.0
    for s in segs:
        assert 0.0 <= last <= s["start"] <= s["end"] <= duration, segs
        assert s["text"] == s["text"].strip() and s["text"]
        last = s["end"]


SRT_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)\n(.+)\n")
VTT_CUE = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d\d\d) --> (\d\d):(\d\d):(\d\d)\.(\d\d\d)\n(.+)\n")


def _seconds(h, m, s, ms):
    assert int(m) < 60 and int(s) < 60
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse_srt(text):
    blocks = text.split("\n\n")
    assert blocks[-1] == "", "every cue ends with a blank line"
    cues = []
    for block in blocks[:-1]:
        m = SRT_CUE.fullmatch(block + "\n")
        assert m, repr(block)
        g = m.groups()
        cues.append((int(g[0]), _seconds(*g[1:5]), _seconds(*g[5:9]), g[9]))
    assert [c[0] for c in cues] == list(range(1, len(cues) + 1))
    return cues


def parse_vtt(text):
    assert text.startswith("WEBVTT\n\n")
    blocks = text[len("WEBVTT\n\n"):].split("\n\n")
    assert blocks[-1] == ""
    cues = []
    for block in blocks[:-1]:
        m = VTT_CUE.fullmatch(block + "\n")
        assert m, repr(block)
        g = m.groups()
        cues.append((_seconds(*g[0:4]), _seconds(*g[4:8]), g[8]))
    return cues


def assert_monotone(cues):
    last = 0.0
    for start, end in cues:
        assert last <= start <= end
        last = end


# -- segmentation ---------------------------------------------------------


def test_split_at_sentence_punctuation():
    tokens = toks(PAD, " Hello", " world", ".", PAD, " How", " are", " you", "?", " Fine", EOS)
    segs = segments(tokens, 2.0)
    assert [s["text"] for s in segs] == ["Hello world.", "How are you?", "Fine"]
    check_times(segs, 2.0)
    assert segs[0]["start"] == pytest.approx(0.08)  # first token at 0.16, minus one frame


def test_split_at_cjk_punctuation_and_quotes():
    tokens = toks("你好", "。", WORD, "谢谢", "！", ' "Yes."', " No")
    assert [s["text"] for s in segments(tokens, 5.0)] == ["你好。", "谢谢！", '"Yes."', "No"]


def test_split_at_pause():
    tokens = toks(" one", " two", 1.0, " three", 0.5, " four")
    segs = segments(tokens, 10.0, pause=0.8)
    assert [s["text"] for s in segs] == ["one two", "three four"]
    three = tokens[2].time
    assert segs[1]["start"] == pytest.approx(three - 0.08)  # not inside the silence
    assert segs[0]["end"] == pytest.approx(tokens[1].time)
    check_times(segs, 10.0)


def test_split_at_length_never_inside_a_word():
    words = [" alpha", " beta", " gamma", " delta", " epsilon"] * 4
    segs = segments(toks(*words), 30.0, max_chars=20)
    assert len(segs) > 1 and all(len(s["text"]) <= 20 for s in segs)
    assert " ".join(s["text"] for s in segs) == "".join(words).strip()
    long_word = toks(" super", "cal", "ifrag", "ilistic", " yes")
    assert [s["text"] for s in segments(long_word, 5.0, max_chars=6)] == ["supercalifragilistic", "yes"]


def test_split_at_max_seconds():
    tokens = toks(*[" la"] * 60, step=0.4)  # 24 s of one word every 0.4 s
    segs = segments(tokens, 30.0, max_seconds=5.0)
    assert len(segs) >= 4
    assert all(s["end"] - s["start"] <= 5.0 + 1e-9 for s in segs)
    check_times(segs, 30.0)


def test_streaming_word_markers_delimit_words():
    tokens = toks("日本", "語", WORD, "です", WORD, "ね")
    assert [s["text"] for s in segments(tokens, 5.0, max_chars=2)] == ["日本語", "です", "ね"]
    # without markers the subwords are one word and stay together
    assert [s["text"] for s in segments(toks("日本", "語", "です"), 5.0, max_chars=3)] == ["日本語です"]


def test_times_clamped_into_duration():
    tokens = toks(" late", " words", ".", " after", " the", " end", t0=1.5)
    segs = segments(tokens, 1.7)
    check_times(segs, 1.7)
    assert segs[-1]["end"] == 1.7
    assert segments([], 3.0) == [] and segments(toks(PAD, WORD, EOS), 3.0) == []
    assert segments(toks(" ", "\n", EOS), 3.0) == []


def test_end_after_start_when_possible():
    tokens = [Token(id=1001, text=" a", time=0.0, position=0), Token(id=1002, text=".", time=0.0, position=1),
              Token(id=1003, text=" b", time=0.0, position=2)]
    segs = segments(tokens, 1.0)
    check_times(segs, 1.0)
    assert all(s["end"] > s["start"] for s in segs)


# -- renderers ------------------------------------------------------------


SAMPLE = toks(PAD, WORD, " Don't", " worry", WORD, " about", " him", ".", 1.2, " He", "'s", " fine", "!",
              " <b>&", " -->", EOS)


def test_srt_parses_back():
    segs = segments(SAMPLE, 4.0)
    cues = parse_srt(to_srt(segs))
    assert len(cues) == len(segs) >= 3
    assert_monotone([(c[1], c[2]) for c in cues])
    assert cues[0][3] == "Don't worry about him." and cues[1][3] == "He's fine!"
    assert to_srt([]) == ""
    assert "00:01:01,500 --> 01:00:00,000" in to_srt([{"start": 61.5, "end": 3600.0, "text": "x"}])


def test_vtt_parses_back():
    segs = segments(SAMPLE, 4.0)
    cues = parse_vtt(to_vtt(segs))
    assert len(cues) == len(segs)
    assert_monotone([(c[0], c[1]) for c in cues])
    assert cues[-1][2] == "&lt;b&gt;&amp; --&gt;"
    assert to_vtt([]) == "WEBVTT\n\n"


def test_json_schema_round_trip():
    text = "".join(t.text for t in SAMPLE)
    doc = json.loads(to_json(text, SAMPLE, segments(SAMPLE, 4.0), 4.0, model="voxtral-model"))
    assert set(doc) == {"text", "duration", "model", "segments", "tokens"}
    assert doc["text"] == text.strip() and doc["duration"] == 4.0 and doc["model"] == "voxtral-model"
    assert all(set(s) == {"start", "end", "text"} for s in doc["segments"])
    assert [t["id"] for t in doc["tokens"]] == [t.id for t in SAMPLE if t.id >= 1000]
    assert all(set(t) == {"id", "text", "time"} for t in doc["tokens"])
    assert "".join(t["text"] for t in doc["tokens"]) == text
    times = [t["time"] for t in doc["tokens"]]
    assert times == sorted(times) and all(0 <= x <= 4.0 for x in times)
    check_times(doc["segments"], 4.0)
    assert "model" not in json.loads(render("json", text, SAMPLE, 4.0))


def test_render_every_format():
    text = "".join(t.text for t in SAMPLE)
    assert render("txt", text, SAMPLE, 4.0) == to_txt(text) == text.strip() + "\n"
    assert to_txt("  ") == ""
    for fmt in FORMATS:
        assert render(fmt, text, SAMPLE, 4.0)
    with pytest.raises(VoxnpError, match="txt, json, srt, vtt"):
        render("docx", text, SAMPLE, 4.0)


def test_real_transcript_in_every_format(tiny_model, tmp_path):
    result = transcribe(tiny_model, str(shared_audio("5s_dont_worry_about_him.wav")))
    duration = result.audio_seconds
    assert 4.5 < duration < 5.5
    for fmt in FORMATS:
        out = render(fmt, result.text, result.tokens, duration, model="tiny")
        path = output_path("/in/5s_dont_worry_about_him.wav", tmp_path, fmt)
        write_atomic(path, out)
        assert path.read_text(encoding="utf-8") == out
    doc = json.loads((tmp_path / "5s_dont_worry_about_him.json").read_text(encoding="utf-8"))
    assert len(doc["tokens"]) == sum(t.id >= 1000 for t in result.tokens)
    check_times(doc["segments"], duration)
    cues = parse_srt((tmp_path / "5s_dont_worry_about_him.srt").read_text(encoding="utf-8"))
    assert len(cues) == len(doc["segments"])
    assert_monotone([(c[1], c[2]) for c in cues])
    parse_vtt((tmp_path / "5s_dont_worry_about_him.vtt").read_text(encoding="utf-8"))


# -- files ----------------------------------------------------------------


def test_write_atomic_replaces_and_keeps_old_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "out.srt"
    write_atomic(path, "old\n")
    write_atomic(path, "new ✓\n")
    assert path.read_text(encoding="utf-8") == "new ✓\n"

    def boom(fd):
        raise RuntimeError("disk on fire")  # after the text was written to the temp file

    monkeypatch.setattr(formats.os, "fsync", boom)
    with pytest.raises(RuntimeError):
        write_atomic(path, "half-written replacement")
    assert path.read_text(encoding="utf-8") == "new ✓\n"
    assert sorted(os.listdir(tmp_path)) == ["out.srt"]
    with pytest.raises(VoxnpError, match="does not exist"):
        write_atomic(tmp_path / "nowhere" / "x.txt", "x")


def test_write_atomic_os_error_is_voxnp_error(tmp_path, monkeypatch):
    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(formats.os, "replace", no_space)
    with pytest.raises(VoxnpError, match="No space left"):
        write_atomic(tmp_path / "a.txt", "x")
    assert os.listdir(tmp_path) == []


def test_output_path():
    assert output_path("rec/talk.final.wav", "out", "srt") == Path("out/talk.final.srt")
    assert output_path("rec/talk.wav", None, "json") == Path("rec/talk.json")


def test_expand_inputs(tmp_path):
    for name in ("b.wav", "a.FLAC", "c.mp3", "notes.txt", ".hidden.wav", "d.opus"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.wav").mkdir()
    missing = tmp_path / "missing.wav"
    got = expand_inputs([tmp_path, str(tmp_path / "notes.txt"), missing])
    assert got == [tmp_path / "a.FLAC", tmp_path / "b.wav", tmp_path / "c.mp3", tmp_path / "d.opus",
                   tmp_path / "notes.txt", missing]


def test_pause_inside_a_word_is_a_boundary():
    tokens = toks("日本", 1.0, "語")
    assert [s["text"] for s in segments(tokens, 5.0)] == ["日本", "語"]
