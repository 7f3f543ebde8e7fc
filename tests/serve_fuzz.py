"""Fuzzing `voxnp serve` and the audio readers with Hypothesis: what hostile clients
send, and the property every answer must have.

    ws_messages       realtime websocket frames: events of random types and fields,
                      wrong JSON types, huge/empty/odd-length/non-base64 audio, events
                      out of order, binary frames, text that is not JSON
    forms             POST /v1/audio/transcriptions bodies: random or truncated audio
                      (WAV/FLAC/OGG/MP3 headers cut anywhere), form fields of every name
                      with wrong types and extremes, broken multipart
    audio_bytes       bytes for the upload decoder and the stdin reader

Properties (checked by the run_* functions, which raise AssertionError):
  - the server answers in its protocol's error shape or with a valid result: never a
    traceback, a 5xx other than 503, or a hang (a probe event is answered after each
    case); the websocket stays open after errors
  - decoders return float32 16 kHz samples or raise VoxnpError (no other exception);
    base64 PCM chunks decode the same however they are cut

Used by tests/test_server_fuzz.py (a few hundred cases, seconds) and bench/serve_soak.py
(hours); `Counter` tallies the cases of each kind.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import struct
from collections import Counter
from functools import lru_cache

from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from serve_harness import b64, check_error_body, multipart, request, ws_connect

SHARED_AUDIO = Path(__file__).resolve().parent.parent.parent / "shared" / "audio"
WS_FRAME_LIMIT = 16 * 1024 * 1024        # the server's websocket frame limit (voxnp.server.WS_MAX_FRAME)
PROBE = "voxnp.fuzz.probe"

VLLM_EVENTS = {"transcription.delta", "transcription.done", "error"}
OPENAI_EVENTS = {"session.updated", "conversation.item.added", "input_audio_buffer.committed",
                 "conversation.item.input_audio_transcription.delta",
                 "conversation.item.input_audio_transcription.completed", "input_audio_buffer.cleared", "error"}
CLIENT_EVENTS = ["session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
                 "input_audio_buffer.clear", "response.create", "transcription.session.update", ""]
FIELDS = ["file", "model", "response_format", "stream", "timestamp_granularities[]", "timestamp_granularities",
          "language", "prompt", "temperature", "delay_ms"]
FIELD_VALUES = ["json", "text", "srt", "vtt", "verbose_json", "mp3", "true", "false", "TRUE", "word", "segment",
                "80", "960", "2400", "2480", "100", "-80", "0", "1e309", "nan", "inf", "0.0", "-1", "whisper-1", "en",
                "", " ", "\x00", "é" * 3]

counts: Counter = Counter()               # cases run, by kind


# -- sample files -----------------------------------------------------------------

@lru_cache(maxsize=1)
def sample_files() -> dict[str, bytes]:
    """Half a second of a real speech clip as WAV, FLAC, OGG and MP3 files (bytes)."""
    import soundfile as sf

    from voxnp.audio import load_audio

    x = load_audio(SHARED_AUDIO / "jfk.wav")[16000:24000]
    out = {}
    for fmt, subtype in (("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")):
        buf = io.BytesIO()
        try:
            sf.write(buf, x, 16000, format=fmt, subtype=subtype)
        except (sf.LibsndfileError, TypeError, ValueError):
            continue                       # a libsndfile without this format
        out[fmt.lower()] = buf.getvalue()
    return out


def wav_header(tag: int, channels: int, rate: int, bits: int, data_size: int, extra: bytes = b"") -> bytes:
    """A RIFF/WAVE header with these fmt fields (any values: the point is odd ones)."""
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * channels * max(bits, 1) // 8 & 0xFFFFFFFF,
                      channels * max(bits, 1) // 8 & 0xFFFF, bits) + extra
    return (b"RIFF" + struct.pack("<I", 36 + data_size & 0xFFFFFFFF) + b"WAVE" + b"fmt " +
            struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", data_size & 0xFFFFFFFF))


# -- strategies -------------------------------------------------------------------

def json_values(max_leaves: int = 6):
    scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() |
               st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters(), max_size=24))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) |
                        st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=max_leaves)


@st.composite
def audio_bytes(draw) -> bytes:
    """Bytes where an audio file should be: random, a real file cut or corrupted, odd WAV headers."""
    files = sample_files()
    kind = draw(st.sampled_from(["random", "cut", "flipped", "header", "whole"]))
    if kind == "random" or not files:
        return draw(st.binary(max_size=4096))
    data = files[draw(st.sampled_from(sorted(files)))]
    if kind == "cut":
        return data[:draw(st.integers(0, len(data)))]
    if kind == "flipped":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 16))):
            i = draw(st.integers(0, min(len(out), 256) - 1))
            out[i] = draw(st.integers(0, 255))
        return bytes(out)
    if kind == "header":
        tag = draw(st.sampled_from([1, 3, 0xFFFE, 0, 85]))
        channels = draw(st.sampled_from([1, 2, 0, 3, 255, 65535]))
        rate = draw(st.sampled_from([16000, 8000, 44100, 48000, 1, 0, 7, 2**31 - 1, 2**32 - 1]))
        bits = draw(st.sampled_from([16, 32, 8, 24, 0, 64]))
        extra = draw(st.binary(max_size=12))
        body = draw(st.binary(max_size=2048))
        return wav_header(tag, channels, rate, bits, draw(st.sampled_from([len(body), 0, 0xFFFFFFFF])), extra) + body
    return data


def audio_field():
    """The `audio` of an append: PCM16 of any length, unpadded, not base64, not a string, huge."""
    return st.one_of(
        st.binary(max_size=8000).map(b64),
        st.binary(max_size=64).map(lambda b: b64(b).rstrip("=")),
        st.text(max_size=40),
        json_values(3),
        st.sampled_from(["", "=", "AAA", "A" * 4097, "////", "AA==AA==", " AAAA", "AAAA\n"]),
        st.integers(0, 29).map(lambda k: big_audio(("big", "oversized")[k]) if k < 2 else b64(bytes(333 * k))),
    )


@lru_cache(maxsize=4)
def big_audio(which: str) -> str:
    """`big`: 5 MiB of PCM (more than a 4 MB --max-upload-mb lets wait); `oversized`: a
    frame over the websocket limit."""
    n = 5 * 1024 * 1024 if which == "big" else WS_FRAME_LIMIT
    return base64.b64encode(bytes(n)).decode()


def session_objects():
    rate = st.sampled_from([16000, 24000, 8000, 0, -1, 16000.0, "16000", True, 2**64]) | json_values(2)
    fmt = st.fixed_dictionaries({}, optional={"type": st.sampled_from(["audio/pcm", "audio/pcmu", ""]) | json_values(2),
                                              "rate": rate})
    audio_in = st.fixed_dictionaries({}, optional={
        "format": fmt | json_values(2), "turn_detection": st.none() | json_values(2),
        "transcription": st.fixed_dictionaries({}, optional={"model": json_values(2)}) | json_values(2)})
    return json_values(3) | st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(["transcription", "realtime"]) | json_values(2),
        "audio": st.fixed_dictionaries({}, optional={"input": audio_in | json_values(2)}) | json_values(2),
        "turn_detection": st.none() | json_values(2),
        "input_audio_format": st.sampled_from(["pcm16", "g711_ulaw"]) | json_values(2),
        "input_audio_transcription": st.fixed_dictionaries({}, optional={"model": json_values(2)})})


def events():
    return st.fixed_dictionaries(
        {"type": st.sampled_from(CLIENT_EVENTS) | st.text(max_size=30) | json_values(2)},
        optional={"audio": audio_field(), "final": st.booleans() | json_values(2),
                  "model": st.text(max_size=30) | json_values(2), "session": session_objects(),
                  "event_id": json_values(2)})


def ws_messages():
    """One frame: ("text", str) or ("bytes", bytes)."""
    return st.one_of(
        events().map(lambda e: ("text", json.dumps(e))),
        events().map(lambda e: ("text", json.dumps(e))),
        events().map(lambda e: ("text", json.dumps(e))),
        st.binary(max_size=256).map(lambda b: ("bytes", b)),
        st.text(max_size=64).map(lambda t: ("text", t)),
        json_values().map(lambda v: ("text", json.dumps(v))),
    )


def ws_cases():
    """(query string, frames) of one connection."""
    return st.tuples(st.sampled_from(["", "?intent=transcription", "?model=x&intent=other"]),
                     st.lists(ws_messages(), max_size=10))


def field_values():
    return st.sampled_from(FIELD_VALUES) | st.text(max_size=30) | st.binary(max_size=30)


def forms():
    """(fields [(name, value, as_file)], file bytes or None, mangling) of one upload."""
    names = st.sampled_from(FIELDS) | st.text(max_size=12)
    fields = st.lists(st.tuples(names, field_values(), st.booleans()), max_size=6)
    mangle = st.sampled_from(["none", "none", "none", "content-type", "truncate", "boundary", "garbage"])
    return st.tuples(fields, st.none() | audio_bytes(), mangle, st.binary(max_size=64))


# -- cases against a running server ------------------------------------------------------

def check_ws_event(event) -> None:
    assert isinstance(event, dict) and isinstance(event.get("type"), str), event
    assert event["type"] in VLLM_EVENTS | OPENAI_EVENTS, event
    if event["type"] == "error":
        if isinstance(event["error"], str):                  # vLLM's shape
            assert set(event) == {"type", "error", "code"} and isinstance(event["code"], str), event
        else:                                                 # OpenAI's
            assert set(event["error"]) == {"type", "code", "message", "param", "event_id"}, event
            assert isinstance(event["error"]["message"], str)
        assert "Traceback" not in json.dumps(event)
    elif event["type"].endswith("delta"):
        assert isinstance(event["delta"], str), event
    elif event["type"] == "transcription.done":
        assert isinstance(event["text"], str) and set(event["usage"]) == {
            "prompt_tokens", "completion_tokens", "total_tokens"}, event


async def run_ws_case(served, query: str, frames: list, timeout: float = 60.0) -> int:
    """Send the frames on one connection, then a probe event that must be answered; every
    answer is checked. Returns the number of answers. A frame over the limit may close
    the socket (code 1009); nothing else may."""
    import websockets

    ws = await ws_connect(served, query)
    answers = 0
    oversized = any(len(f) > WS_FRAME_LIMIT for _, f in frames)
    try:
        for _, frame in frames:
            await ws.send(frame)
        await ws.send(json.dumps({"type": PROBE}))
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), timeout))
            check_ws_event(event)
            answers += 1
            if event["type"] == "error" and PROBE in json.dumps(event):
                return answers
    except websockets.exceptions.ConnectionClosed as e:
        assert oversized, f"closed: {e}"                         # 1009, or a reset while we sent
        return answers
    except asyncio.TimeoutError:
        raise AssertionError(f"no answer to the probe within {timeout:g} s") from None
    finally:
        await ws.close()


def form_body(fields, file, mangle: str, junk: bytes) -> tuple[bytes, str]:
    """The body and Content-Type of one fuzzed upload (forms())."""
    files = [("file", "upload", file)] if file is not None else []
    body, ctype = multipart([(n, v) for n, v, as_file in fields if not as_file],
                            files + [(n, "x", v if isinstance(v, bytes) else v.encode("utf-8", "surrogatepass"))
                                     for n, v, as_file in fields if as_file])
    if mangle == "content-type":
        ctype = ["application/json", "text/plain", "multipart/form-data", "multipart/form-data; boundary=",
                 "application/x-www-form-urlencoded"][len(junk) % 5]
    elif mangle == "truncate":
        body = body[:len(body) * (len(junk) % 8) // 8]
    elif mangle == "boundary":
        ctype = "multipart/form-data; boundary=" + junk.hex()[:70]
    elif mangle == "garbage":
        body = junk + body[len(junk):]
    return body, ctype


def check_http_answer(status: int, headers: dict, answer: bytes) -> None:
    """200 with a valid body, else an error in OpenAI's shape (never a 5xx but 503)."""
    if status != 200:
        check_error_body(status, answer)
        return
    kind = headers.get("content-type", "")
    if kind.startswith("application/json"):
        doc = json.loads(answer)
        assert isinstance(doc.get("text"), str), doc
    elif kind.startswith("text/event-stream"):
        lines = [line for line in answer.decode().split("\n\n") if line]
        last = json.loads(lines[-1][len("data: "):])
        assert last.get("type") == "transcript.text.done" or "error" in last, last
    else:
        answer.decode("utf-8")


def run_http_case(served, fields, file, mangle: str, junk: bytes, headers=None, timeout: float = 60.0) -> int:
    """POST one fuzzed form to a running server; its status."""
    body, ctype = form_body(fields, file, mangle, junk)
    status, h, answer = request(served, "POST", "/v1/audio/transcriptions", body,
                                {"Content-Type": ctype, **(headers or {})}, timeout=timeout)
    check_http_answer(status, h, answer)
    return status


# -- in-process cases ----------------------------------------------------------------

def run_decoder_case(data: bytes) -> None:
    """The upload decoder: float32 samples (at least 10 ms, finite) or VoxnpError."""
    from voxnp.errors import VoxnpError
    from voxnp.server.pcm import decode_upload

    try:
        x = decode_upload(data, "upload")
    except VoxnpError as e:
        assert "voxnp-upload-" not in str(e), e                 # the temporary file's name stays hidden
        return
    assert x.dtype == np.float32 and x.ndim == 1 and len(x) >= 160 and np.all(np.isfinite(x))


def run_stdin_case(data: bytes) -> None:
    """The stdin reader on a pipe holding `data`: float32 chunks or VoxnpError; raw
    input (no RIFF header) gives exactly its whole samples."""
    from voxnp.audio import s16le_to_float
    from voxnp.errors import VoxnpError
    from voxnp.live import stdin_audio

    r, w = os.pipe()
    try:
        os.write(w, data[:60000])
        os.close(w)
        w = None
        with contextlib.redirect_stderr(io.StringIO()):
            try:
                chunks = list(stdin_audio(r))
            except VoxnpError:
                return
    finally:
        os.close(r)
        if w is not None:
            os.close(w)
    for c in chunks:
        assert c.dtype == np.float32 and c.ndim == 1 and np.all(np.isfinite(c))
    data = data[:60000]
    if not data.startswith(b"RIFF"):
        whole = s16le_to_float(data[:len(data) // 2 * 2])
        got = np.concatenate(chunks) if chunks else whole[:0]
        assert np.array_equal(got, whole)


def run_pcm_case(chunks: list, rate: int) -> None:
    """PcmChunks: ValueError for anything not base64 text; valid chunks decode to the same
    samples however the bytes were cut."""
    from voxnp.server.pcm import PcmChunks

    cut, whole, good = PcmChunks(rate), PcmChunks(rate), []
    parts = []
    for c in chunks:
        try:
            parts.append(cut.decode(c))
        except ValueError:
            assert not isinstance(c, str) or not is_base64(c), c
            continue
        good.append(base64.b64decode(c))
    parts.append(cut.end())
    got = np.concatenate(parts)
    expected = np.concatenate([whole.decode(b64(b"".join(good))), whole.end()])
    assert got.dtype == np.float32
    if rate == 16000:
        assert np.array_equal(got, expected)
    else:                                                        # a streaming resampler: lengths agree
        assert abs(len(got) - len(expected)) <= 2, (len(got), len(expected))


def is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
        return True
    except ValueError:
        return False


def pcm_chunk_lists():
    return st.tuples(st.lists(st.binary(max_size=501).map(b64) | audio_field().filter(lambda a: a not in
                     (big_audio("big"), big_audio("oversized"))), max_size=8),
                     st.sampled_from([16000, 24000]))


# -- the app in this process (no sockets) ------------------------------------------------

class AppDriver:
    """The server's ASGI app and a real engine in this process, driven without sockets:
    the same routes and protocol code as `voxnp serve` minus uvicorn, at hundreds of
    cases a second. Frames over the websocket limit (which uvicorn refuses) are not sent."""

    def __init__(self, model_dir, max_upload_mb: float = 4.0, timeout: float = 5.0):
        import voxnp
        from voxnp.server.app import Server, build_app
        from voxnp.server.engine import Engine

        self.engine = Engine(voxnp.load(model_dir), max_sessions=64, interval=0.5)
        self.engine.start()
        assert self.engine.ready.wait(300), "the engine did not warm up"
        self.server = Server(self.engine, max_upload_mb=max_upload_mb, timeout=timeout)
        self.app = build_app(self.server)
        self.loop = asyncio.new_event_loop()                    # one loop, as under uvicorn

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def scope(self, kind: str, path: str, headers: dict, query: str = "") -> dict:
        return {"type": kind, "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                "scheme": "http" if kind == "http" else "ws", "path": path, "raw_path": path.encode(),
                "query_string": query.lstrip("?").encode("latin-1"), "root_path": "", "state": {},
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
                "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "subprotocols": []}

    async def post(self, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
        scope = self.scope("http", "/v1/audio/transcriptions", {**headers, "content-length": str(len(body))})
        scope["method"] = "POST"
        chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)] or [b""]
        pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        answer = {"status": None, "headers": {}, "body": []}

        async def receive():
            if pending:
                return pending.pop(0)
            await asyncio.Event().wait()                         # the client stays: until cancelled

        async def send(message):
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                answer["headers"] = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
            elif message["type"] == "http.response.body":
                answer["body"].append(message.get("body", b""))

        await asyncio.wait_for(self.app(scope, receive, send), 60)
        return answer["status"], answer["headers"], b"".join(answer["body"])

    async def websocket(self, query: str, frames: list, timeout: float = 30.0) -> int:
        """The frames, then a probe that must be answered; every event checked. The
        number of answers."""
        scope = self.scope("websocket", "/v1/realtime", {"host": "127.0.0.1"}, query)
        inbox = [{"type": "websocket.connect"}]
        inbox += [{"type": "websocket.receive", kind: frame} for kind, frame in frames if len(frame) <= WS_FRAME_LIMIT]
        inbox.append({"type": "websocket.receive", "text": json.dumps({"type": PROBE})})
        answered, events = asyncio.Event(), []

        async def receive():
            if inbox:
                return inbox.pop(0)
            await answered.wait()
            return {"type": "websocket.disconnect", "code": 1000}

        async def send(message):
            if message["type"] == "websocket.send":
                event = json.loads(message["text"])
                events.append(event)
                if event["type"] != "session.created":
                    check_ws_event(event)
                if event["type"] == "error" and PROBE in message["text"]:
                    answered.set()
            elif message["type"] == "websocket.close":
                answered.set()

        await asyncio.wait_for(self.app(scope, receive, send), timeout)
        assert any(e["type"] == "error" and PROBE in json.dumps(e) for e in events), events[-3:]
        assert self.engine.n_sessions == 0
        return len(events)


def run_app_http_case(driver: AppDriver, fields, file, mangle: str, junk: bytes) -> int:
    """run_http_case's form through the in-process app."""
    body, ctype = form_body(fields, file, mangle, junk)
    status, h, answer = driver.run(driver.post(body, {"content-type": ctype}))
    check_http_answer(status, h, answer)
    return status
