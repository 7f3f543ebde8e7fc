"""POST /v1/audio/transcriptions: OpenAI's transcription API over a Stream.

    form fields -> checked options -> decoded upload -> a session (feed, finish)
      -> json | text | srt | vtt | verbose_json   (the CLI's formats.render for text/srt/vtt)
      -> or, with stream=true, server-sent events as tokens are decoded

The upload is transcribed exactly as `voxnp FILE` does (same samples, same tokens),
so the text equals the CLI's output for the same file. The last few finished uploads are
kept (recent.py): asking again for the same bytes and delay, in any format, runs nothing.
"""
from __future__ import annotations

import asyncio
import json
import math
import time
import zlib

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from .. import formats
from ..errors import VoxnpError
from .engine import Busy
from .errors import ApiError, busy_error, error_body, log, shown, shutting_down_error
from .pcm import decode_upload
from .recent import Transcript, upload_key

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
STREAM_FORMATS = ("json", "text")
GRANULARITIES = ("segment", "word")
TEXT_FIELDS = ("model", "response_format", "stream", "timestamp_granularities[]", "timestamp_granularities",
               "language", "prompt", "temperature", "delay_ms")
MB = 1024 * 1024
MIN_UPLOAD_RATE = 64 * 1024     # bytes/s an upload must average once it has taken --timeout seconds


CLIENT_GONE = object()


class UploadTooLarge(Exception):
    pass


class UploadStalled(Exception):
    pass


async def first_of(awaitable, *events: asyncio.Event, timeout: float | None = None):
    """(True, awaitable's result) if it finishes first; (False, None) if one of `events`
    is set or `timeout` passes first (the awaitable is then cancelled)."""
    work = asyncio.ensure_future(awaitable)
    watches = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait({work, *watches}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in watches:
            w.cancel()
        if not work.done():
            work.cancel()
    if work.done() and not work.cancelled():
        return True, work.result()
    return False, None


def limited(receive, limit: int, server):
    """An ASGI receive that raises UploadTooLarge once the body passes `limit` bytes
    (a client that sends no Content-Length is stopped as early as one that lies),
    UploadStalled when no bytes come for --timeout seconds or the upload averages under
    MIN_UPLOAD_RATE after that long (slowloris), and the 503 of a drain that ran out."""
    seen, started = 0, time.monotonic()

    async def receive_limited():
        nonlocal seen
        arrived, message = await first_of(receive(), server.drain_expired, timeout=server.timeout)
        if not arrived:
            if server.drain_expired.is_set():
                raise shutting_down_error()
            raise UploadStalled()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise UploadTooLarge()
            elapsed = time.monotonic() - started
            if elapsed > server.timeout and seen < MIN_UPLOAD_RATE * elapsed and message.get("more_body"):
                raise UploadStalled()
        return message

    return receive_limited


async def create_transcription(request: Request) -> Response:
    server = request.app.state.server
    server.check_ready()
    options, data, name = await read_form(request, server)
    server.check_ready()                                 # draining since the upload began: 503
    try:
        samples = await asyncio.to_thread(decode_upload, data, name)
    except VoxnpError as e:
        raise ApiError(400, f"could not decode the audio: {e}", param="file", code="invalid_audio") from None
    duration = len(samples) / server.engine.rate
    request.state.log = f"{options['response_format']}{' stream' if options['stream'] else ''} audio {duration:.1f} s"
    try:
        session = server.engine.open(prefix="req", delay_ms=options["delay_ms"], logprobs=True)
    except Busy:
        raise busy_error(server.engine.max_sessions) from None
    key = await asyncio.to_thread(upload_key, data, options["delay_ms"])
    done = server.recent.get(key) if not options["stream"] else None
    if done is not None:                                 # the same upload was just transcribed
        session.close()
        request.state.log += " (recent)"
        return render(options, done.text, done.tokens, duration)
    session.feed(samples)
    session.finish()

    def remember(stream) -> Transcript:
        done = Transcript(stream.text, stream.tokens) if stream is not None else Transcript("", [])
        server.recent.put(key, done)
        return done

    if options["stream"]:
        return StreamingResponse(sse_events(session, server, remember), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        stream = await until_finished(session, request, server)
    finally:
        session.close()
        request.state.log += f" work {session.work_s:.2f} s"
    if stream is CLIENT_GONE:
        request.state.log += " (client disconnected)"
        return Response(status_code=499)                 # nobody reads it
    done = remember(stream)
    return render(options, done.text, done.tokens, duration)


async def read_form(request: Request, server) -> tuple[dict, bytes, str]:
    """(checked options, the file's bytes, its name); 400 or 413 otherwise."""
    limit = server.max_upload_mb * MB
    too_large = ApiError(413, f"the upload is larger than the server's limit of {server.max_upload_mb:g} MB",
                         param="file", code="file_too_large")
    stalled = ApiError(408, f"the upload stalled (no data for {server.timeout:g} s, or under "
                       f"{MIN_UPLOAD_RATE // 1024} kB/s after that long)", param="file", code="upload_timeout")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + MB:      # + room for the other form fields
        raise too_large
    try:
        form = await Request(request.scope, limited(request.receive, limit + MB, server)).form(
            max_files=4, max_fields=64)
    except UploadTooLarge:
        raise too_large from None
    except UploadStalled:
        raise stalled from None
    except ApiError:
        raise
    except Exception as e:                                  # noqa: BLE001 -- any parse failure is the client's
        detail = getattr(e, "detail", None) or str(e) or type(e).__name__
        raise ApiError(400, f"could not read the form: {detail} "
                       "(send multipart/form-data with a `file` field)") from None
    try:
        options = read_options(form, server)
        upload = form.get("file")
        data = await upload.read()
        name = upload.filename or "file"
    finally:
        await form.close()
    if len(data) > limit:
        raise too_large
    if not data:
        raise ApiError(400, "the uploaded file is empty", param="file", code="empty_file")
    return options, data, name


def read_options(form, server) -> dict:
    """The form's fields, checked: every problem is a 400 naming its field."""
    upload = form.get("file")
    if upload is None:
        raise ApiError(400, "the `file` field is missing (multipart/form-data with the audio file)", param="file")
    if not isinstance(upload, UploadFile):
        raise ApiError(400, "the `file` field must be a file upload, not text", param="file")
    for name in TEXT_FIELDS:
        if any(not isinstance(value, str) for value in form.getlist(name)):
            raise ApiError(400, f"`{name}` must be a text field, not a file", param=name)
    fmt = form.get("response_format") or "json"
    if fmt not in RESPONSE_FORMATS:
        raise ApiError(400, f"unknown response_format '{shown(fmt)}' (choose from {', '.join(RESPONSE_FORMATS)})",
                       param="response_format")
    stream = (form.get("stream") or "false").strip().lower()
    if stream not in ("true", "false"):
        raise ApiError(400, f"stream must be true or false, got '{shown(stream)}'", param="stream")
    stream = stream == "true"
    if stream and fmt not in STREAM_FORMATS:
        raise ApiError(400, f"stream=true works with response_format json or text, not '{fmt}'",
                       param="stream")
    granularities = form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities")
    for g in granularities:
        if g not in GRANULARITIES:
            raise ApiError(400, f"unknown timestamp granularity '{shown(g)}' (choose from segment, word)",
                           param="timestamp_granularities[]")
    temperature = form.get("temperature")              # accepted and ignored: decoding is greedy
    if temperature is not None:
        try:
            float(temperature)
        except ValueError:
            raise ApiError(400, f"temperature must be a number, got '{shown(temperature)}'",
                           param="temperature") from None
    delay_ms = form.get("delay_ms")
    if delay_ms is not None:
        try:
            server.engine.model.config.audio.delay_tokens(delay_ms)
            delay_ms = float(delay_ms)
        except VoxnpError as e:
            raise ApiError(400, shown(str(e), 200), param="delay_ms") from None
    return {"response_format": fmt, "stream": stream, "words": "word" in granularities,
            "language": form.get("language") or "unknown", "delay_ms": delay_ms}


async def until_finished(session, request: Request, server):
    """Wait for the session's Stream to finish (CLIENT_GONE if the client went away:
    closing the session then cancels the work; a 503 if a drain runs out first)."""
    async def transcript():
        while True:
            event = await session.next_event()
            if event.kind == "finished":
                return event.stream
            if event.kind == "error":
                raise ApiError(500, event.message, type="server_error", code="processing_error")

    async def client_gone():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work = asyncio.ensure_future(transcript())
    watch = asyncio.ensure_future(client_gone())
    expired = asyncio.ensure_future(server.drain_expired.wait())
    try:
        done, _ = await asyncio.wait({work, watch, expired}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        expired.cancel()
        if not work.done():
            work.cancel()
    if work in done:
        return work.result()
    if expired in done:
        raise shutting_down_error()
    return CLIENT_GONE


async def sse_events(session, server, remember):
    """text/event-stream: a transcript.text.delta per round of decoded text, then
    transcript.text.done (no [DONE]); an error mid-stream (or a drain that ran out) is
    one `error` event. Deltas start at the first non-space character, so they add up to `text`.
    remember(stream) keeps the finished transcript for the upload's other formats."""
    started = time.monotonic()
    sent, outcome = "", "client disconnected"
    try:
        while True:
            arrived, event = await first_of(session.next_event(), server.drain_expired)
            if not arrived:
                e = shutting_down_error()
                yield sse(error_body(e.message, e.type, code=e.code))
                outcome = "shutting down"
                return
            if event.kind == "tokens":
                delta = "".join(t.text for t in event.tokens)
                if not sent:
                    delta = delta.lstrip()
                if delta:
                    sent += delta
                    yield sse({"type": "transcript.text.delta", "delta": delta})
            elif event.kind == "finished":
                text = remember(event.stream).text.strip()
                yield sse({"type": "transcript.text.done", "text": text})
                outcome = "done"
                return
            elif event.kind == "error":
                yield sse(error_body(event.message, type="server_error", code="processing_error"))
                outcome = "error"
                return
    finally:
        session.close()
        log.info("%s stream: audio %.1f s, work %.2f s, %.2f s, %s", session.id, session.audio_s,
                 session.work_s, time.monotonic() - started, outcome)


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# -- response bodies ------------------------------------------------------

def render(options: dict, text: str, tokens: list, duration: float) -> Response:
    fmt = options["response_format"]
    usage = {"type": "duration", "seconds": math.ceil(duration)}
    if fmt == "json":
        return JSONResponse({"text": text.strip(), "usage": usage})
    if fmt == "text":
        return PlainTextResponse(formats.render("txt", text, tokens, duration))
    if fmt == "srt":
        return PlainTextResponse(formats.render("srt", text, tokens, duration))
    if fmt == "vtt":
        return Response(formats.render("vtt", text, tokens, duration), media_type="text/vtt; charset=utf-8")
    return JSONResponse(verbose_json(text, tokens, duration, options, usage))


def verbose_json(text: str, tokens: list, duration: float, options: dict, usage: dict) -> dict:
    """OpenAI's verbose_json: the CLI's segments, each with its tokens and statistics."""
    segs = formats.segments(tokens, duration)
    spoken = [t for t in tokens if t.id >= formats.N_SPECIAL]
    owners = segment_of_each(spoken, segs)
    out = []
    for i, s in enumerate(segs):
        mine = [t for t, owner in zip(spoken, owners) if owner == i]
        logprobs = [t.logprob for t in mine if getattr(t, "logprob", None) is not None]
        data = s["text"].encode()
        out.append({
            "id": i, "seek": 0, "start": round(s["start"], 3), "end": round(s["end"], 3), "text": s["text"],
            "tokens": [int(t.id) for t in mine], "temperature": 0.0,
            "avg_logprob": sum(logprobs) / len(logprobs) if logprobs else 0.0,
            "compression_ratio": len(data) / len(zlib.compress(data)) if data else 0.0,
            "no_speech_prob": 0.0,
        })
    doc = {"task": "transcribe", "language": options["language"], "duration": round(duration, 3),
           "text": text.strip(), "segments": out}
    if options["words"]:
        doc["words"] = [{"word": w.text.strip(), "start": round(min(w.start, duration), 3),
                         "end": round(min(w.end, duration), 3)}
                        for w in formats._words(tokens, pause=0.8) if w.text.strip()]
    doc["usage"] = usage
    return doc


def segment_of_each(tokens: list, segs: list) -> list:
    """Index of the segment each text token belongs to: segments are consecutive runs
    of tokens in time, so a token goes to the first segment not ended before it."""
    owners, i = [], 0
    for t in tokens:
        while i < len(segs) - 1 and t.time > segs[i]["end"]:
            i += 1
        owners.append(i)
    return owners
