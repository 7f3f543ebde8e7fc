"""WebSocket /v1/realtime: one path, two dialects (SERVER.md §2).

    vLLM's:   session.update {model} · input_audio_buffer.append {audio} ·
              input_audio_buffer.commit {final}  ->  transcription.delta · transcription.done
    OpenAI's: session.update {session} · append · commit · clear
              ->  session.updated · conversation.item.added · input_audio_buffer.committed ·
                  ...input_audio_transcription.delta · ...completed · input_audio_buffer.cleared

A connection is one engine session (one slot of --max-sessions) and one live Stream:
audio is fed as it arrives, deltas go out as the worker decodes them, a vLLM
`final` commit is the stream's finish() and an OpenAI commit its flush() (the
audio context carries on into the next item). Two tasks per connection: one
reads the client's events, one sends the worker's results; closing the socket
closes the session, which cancels its work.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from .engine import Busy
from .errors import busy_error, error_body, log, openai_error, shown, shutting_down_error, vllm_error
from .pcm import PcmChunks

TRANSCRIPT_EVENTS = ("transcription.done", "conversation.item.input_audio_transcription.completed")
OPENAI_RATES = (24000, 16000)   # OpenAI's realtime input is 24 kHz unless declared 16 kHz
BIG_MESSAGE = 256 * 1024        # characters: parsed and decoded off the event loop (it answers /health meanwhile)
MAX_UNSENT_EVENTS = 64          # results waiting for a client that does not read: stop reading its audio


class Hangup(Exception):
    """The server ends a connection: `code` and `message` go to the client first."""

    def __init__(self, message: str, code: str, close_code: int):
        super().__init__(message)
        self.message, self.code, self.close_code = message, code, close_code


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def member(obj, key: str) -> dict:
    """obj[key] when both are JSON objects, else {} (a client's session.update may be anything)."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}


async def realtime_endpoint(websocket: WebSocket) -> None:
    server = websocket.app.state.server
    problem = None
    delay_ms = websocket.query_params.get("delay_ms")     # voxnp's own (the page's delay setting)
    if not server.authorized(websocket.headers):
        problem = (401, error_body("missing or wrong API key (Authorization: Bearer KEY)", code="invalid_api_key"), {})
    elif server.draining.is_set():
        e = shutting_down_error()
        problem = (503, error_body(e.message, e.type, code=e.code), e.headers)
    elif not server.engine.ready.is_set():
        problem = (503, error_body("the model is still loading; retry shortly", type="server_error"),
                   {"Retry-After": "2"})
    elif delay_ms is not None and (delay_problem := server.delay_problem(delay_ms)):
        problem = (400, error_body(delay_problem, param="delay_ms"), {})
    else:
        try:
            session = server.engine.open(prefix="sess", live=True,
                                         **({"delay_ms": float(delay_ms)} if delay_ms is not None else {}))
        except Busy:
            e = busy_error(server.engine.max_sessions)
            problem = (503, error_body(e.message, e.type, code=e.code), e.headers)
    if problem is not None:
        status, body, headers = problem
        log.info("realtime connection refused: %d %s", status, body["error"]["message"])
        try:
            await websocket.send_denial_response(JSONResponse(body, status_code=status, headers=headers))
        except RuntimeError:                      # a server without the denial extension
            await websocket.close(code=1008 if status == 401 else 1013)
        return
    openai = websocket.query_params.get("intent") == "transcription"
    # a browser sends its key as a subprotocol (it cannot set headers) beside "realtime",
    # and closes a socket whose answer names none of the subprotocols it offered
    offered = websocket.scope.get("subprotocols") or []
    try:
        await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
        await Connection(websocket, session, server, openai).run()
    finally:
        session.close()


class Connection:
    def __init__(self, websocket: WebSocket, session, server, openai: bool):
        self.ws = websocket
        self.session = session
        self.server = server
        self.id = session.id
        self.dialect = OpenAIDialect(self) if openai else None   # else chosen by the first event
        self.transcripts = 0                      # transcription.done / items completed
        self.errors = 0                           # error events sent
        self._send_lock = asyncio.Lock()
        self.last_sent = time.monotonic()

    async def run(self) -> None:
        started = time.monotonic()
        rate = OPENAI_RATES[0] if self.dialect is not None else 16000
        await self.send({"type": "session.created", "event_id": new_id("event"), "id": self.id,
                         "created": int(time.time()), "session": self.describe(rate)})
        results = asyncio.create_task(self._results())
        outcome = "closed by the client"
        try:
            await self._read_until_drained()
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass                                  # the client went away while we were sending
        except Hangup as e:
            outcome = e.code
            await self._hang_up(e)
        finally:
            results.cancel()
            self.session.close()
            name = type(self.dialect).__name__.replace("Dialect", "").lower() if self.dialect else "-"
            log.info("%s realtime (%s): audio %.1f s, work %.2f s, %.1f s open, %d transcripts, %d errors, %s",
                     self.id, name, self.session.audio_s, self.session.work_s, time.monotonic() - started,
                     self.transcripts, self.errors, outcome)

    def describe(self, rate: int) -> dict:
        name = self.server.served_name
        return {"id": self.id, "object": "realtime.session", "type": "transcription", "model": name,
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": rate},
                                    "transcription": {"model": name}, "turn_detection": None}}}

    async def send(self, event: dict) -> None:
        self.errors += event["type"] == "error"
        self.transcripts += event["type"] in TRANSCRIPT_EVENTS
        text = json.dumps(event, ensure_ascii=False)
        try:
            text.encode()
        except UnicodeEncodeError:                # a lone surrogate: only \u escapes carry it
            text = json.dumps(event)
        async with self._send_lock:
            await self.ws.send_text(text)
        self.last_sent = time.monotonic()

    async def _read_until_drained(self) -> None:
        """Read the client's events until it leaves; Hangup when the server drains."""
        reading = asyncio.ensure_future(self._read())
        draining = asyncio.ensure_future(self.server.draining.wait())
        try:
            done, _ = await asyncio.wait({reading, draining}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            draining.cancel()
            if not reading.done():
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)
        if reading in done:
            return reading.result()
        raise Hangup("the server is shutting down: reconnect and send the audio again",
                     "server_shutting_down", 1012)

    async def _hang_up(self, e: Hangup) -> None:
        """Tell the client why (unless it does not read: then within 1 s), then close."""
        try:
            await asyncio.wait_for(self._error(e.message, e.code), 1.0)
            await asyncio.wait_for(self.ws.close(e.close_code), 1.0)
        except (asyncio.TimeoutError, WebSocketDisconnect, RuntimeError, OSError):
            pass

    def model_problem(self, name) -> str | None:
        """With --strict-model, a model name other than the served one is refused."""
        if name is None or not self.server.strict_model or name == self.server.served_name:
            return None
        return f"the model `{shown(name)}` does not exist (this server serves `{self.server.served_name}`)"

    async def _read(self) -> None:
        timeout = self.server.timeout
        while True:
            if self.session.events.qsize() > MAX_UNSENT_EVENTS:
                await self._wait_for_reader()
            try:
                message = await asyncio.wait_for(self.ws.receive(), timeout)
            except asyncio.TimeoutError:
                if self.session.idle and time.monotonic() - self.last_sent >= timeout:
                    raise Hangup(f"no event for {timeout:g} s: closing the session (send audio or "
                                 "close the socket)", "idle_timeout", 1000) from None
                continue                          # the server still owes results: not idle
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                await self._error("binary frames are not supported: send JSON events in text frames",
                                  "invalid_event")
                continue
            try:
                event = await asyncio.to_thread(json.loads, text) if len(text) > BIG_MESSAGE else json.loads(text)
            except ValueError:
                await self._error("the message is not valid JSON", "invalid_json")
                continue
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                await self._error("an event must be a JSON object with a string `type`", "invalid_event")
                continue
            if self.dialect is None:
                opens_openai = event["type"] == "session.update" and isinstance(event.get("session"), dict)
                self.dialect = OpenAIDialect(self) if opens_openai else VllmDialect(self)
            try:
                await self.dialect.on_event(event)
            except (WebSocketDisconnect, RuntimeError, OSError):
                raise
            except Exception as e:                # noqa: BLE001 -- a bug must not end the session
                log.error("%s: error handling %s", self.id, shown(event["type"]), exc_info=e)
                await self._error(f"internal error handling {shown(event['type'])} (logged on the server)",
                                  "processing_error")

    async def _wait_for_reader(self) -> None:
        """A client that does not read its results: read none of its audio (the socket's
        buffers fill and the client's sends wait) until it catches up; Hangup after
        --timeout seconds of this."""
        deadline = time.monotonic() + self.server.timeout
        while self.session.events.qsize() > MAX_UNSENT_EVENTS // 2:
            if time.monotonic() > deadline:
                raise Hangup(f"results were not read for {self.server.timeout:g} s: closing the session",
                             "slow_consumer", 1008)
            await asyncio.sleep(0.05)

    async def decode(self, pcm: PcmChunks, audio):
        """pcm.decode(audio), a large chunk on a thread (ValueError as pcm.decode)."""
        if isinstance(audio, str) and len(audio) > BIG_MESSAGE:
            return await asyncio.to_thread(pcm.decode, audio)
        return pcm.decode(audio)

    def backlog_problem(self, n: int) -> str | None:
        """Why n more samples cannot be queued (too much audio waiting), or None."""
        if self.session.queued + n <= self.server.max_backlog_samples:
            return None
        return ("too much audio is waiting to be transcribed: send it at real-time pace "
                f"(at most {self.server.max_upload_mb:g} MB of PCM16 may wait)")

    async def _error(self, message: str, code: str) -> None:
        dialect = self.dialect or VllmDialect(self)
        await dialect.error(message, code)

    async def _results(self) -> None:
        try:
            while True:
                event = await self.session.next_event()
                await self.dialect.on_result(event)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass                                  # the socket closed under us: the reader ends too


class VllmDialect:
    """vLLM's protocol: audio from the first append or commit; `commit {final: true}` ends
    the utterance (finish(): the rest of the deltas, then transcription.done); the
    socket stays open and the next audio starts a new utterance on a fresh Stream."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.pcm = PcmChunks(16000)
        self.text = ""

    async def error(self, message: str, code: str) -> None:
        await self.conn.send(vllm_error(message, code))

    async def on_event(self, event: dict) -> None:
        kind = event["type"]
        if kind == "session.update":
            problem = self.conn.model_problem(event.get("model"))
            if problem:
                await self.error(problem, "model_not_found")
        elif kind == "input_audio_buffer.append":
            try:
                samples = await self.conn.decode(self.pcm, event.get("audio"))
            except ValueError as e:
                return await self.error(f"invalid audio data: {e}", "invalid_audio")
            problem = self.conn.backlog_problem(len(samples))
            if problem:
                return await self.error(problem, "invalid_audio")
            self.conn.session.feed(samples)
        elif kind == "input_audio_buffer.commit":
            if event.get("final") is True:
                self.pcm.end()
                self.conn.session.finish()
            # a non-final commit starts transcribing: audio is already decoded as it arrives
        else:
            await self.error(f"unknown event type '{shown(kind)}'", "unknown_event")

    async def on_result(self, event) -> None:
        if event.kind == "tokens":
            delta = "".join(t.text for t in event.tokens)
            if delta:
                self.text += delta
                await self.conn.send({"type": "transcription.delta", "delta": delta})
        elif event.kind == "finished":
            s = event.stream
            prompt, completion = (len(s.prompt), s.n_tokens) if s is not None else (0, 0)
            await self.conn.send({"type": "transcription.done", "text": self.text,
                                  "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                            "total_tokens": prompt + completion}})
            self.text = ""
        elif event.kind == "error":
            await self.error(event.message, "processing_error")
            self.text = ""


@dataclass
class Item:
    """One OpenAI conversation item: the audio between two commits and its transcript."""
    id: str
    previous_id: str | None
    samples: int = 0             # 16 kHz samples fed
    text: str = ""
    discarded: bool = False      # cleared before its commit: its deltas are dropped


class OpenAIDialect:
    """OpenAI's realtime transcription: items end at each commit (the Stream's flush());
    `clear` drops the uncommitted item (and the stream's context, which holds its audio)."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.pcm = PcmChunks(OPENAI_RATES[0])
        self.items: deque[Item] = deque()        # not yet completed, oldest first
        self.open_item: Item | None = None      # receiving audio
        self.last_id: str | None = None

    async def error(self, message: str, code: str, param: str | None = None,
                    event: dict | None = None, type: str = "invalid_request_error") -> None:
        client_id = event.get("event_id") if event else None
        client_id = shown(client_id, 64) if isinstance(client_id, str) else None
        await self.conn.send(openai_error(new_id("event"), message, code, type=type, param=param,
                                          client_event_id=client_id))

    async def on_event(self, event: dict) -> None:
        kind = event["type"]
        if kind == "session.update":
            await self.update(event)
        elif kind == "input_audio_buffer.append":
            await self.append(event)
        elif kind == "input_audio_buffer.commit":
            await self.commit(event)
        elif kind == "input_audio_buffer.clear":
            if self.open_item is not None:
                self.open_item.discarded = True
                self.open_item = None
                self.pcm.end()
                self.conn.session.reset()
            await self.conn.send({"type": "input_audio_buffer.cleared", "event_id": new_id("event")})
        else:
            await self.error(f"unknown or unsupported event type '{shown(kind)}' (voxnp serves transcription "
                             "sessions: session.update, input_audio_buffer.append/commit/clear)",
                             "unknown_event", event=event)

    async def update(self, event: dict) -> None:
        session = event.get("session")
        if not isinstance(session, dict):
            return await self.error("session.update needs a `session` object", "invalid_event",
                                    "session", event)
        if session.get("type", "transcription") != "transcription":
            return await self.error("voxnp serves transcription sessions only (session.type "
                                    "\"transcription\")", "invalid_value", "session.type", event)
        audio_in = member(member(session, "audio"), "input")
        fmt = member(audio_in, "format")
        if fmt.get("type", "audio/pcm") != "audio/pcm":
            return await self.error("only audio/pcm input is supported", "invalid_value",
                                    "session.audio.input.format.type", event)
        rate = fmt.get("rate", self.pcm.rate)
        if rate not in OPENAI_RATES:
            return await self.error("audio/pcm rate must be 24000 or 16000", "invalid_value",
                                    "session.audio.input.format.rate", event)
        if session.get("input_audio_format", "pcm16") != "pcm16":
            return await self.error("only pcm16 input is supported", "invalid_value",
                                    "session.input_audio_format", event)
        for where, holder in (("session.audio.input.turn_detection", audio_in), ("session.turn_detection", session)):
            if holder.get("turn_detection") is not None:
                return await self.error("server-side voice activity detection is not offered: set "
                                        "turn_detection to null and commit the buffer yourself",
                                        "unsupported_turn_detection", where, event)
        model = (member(audio_in, "transcription") or member(session, "input_audio_transcription")).get("model")
        problem = self.conn.model_problem(model)
        if problem:
            return await self.error(problem, "model_not_found", "session.audio.input.transcription.model", event)
        if rate != self.pcm.rate:
            if self.open_item is not None:
                return await self.error("the input rate cannot change in the middle of an item: "
                                        "commit or clear first", "invalid_value",
                                        "session.audio.input.format.rate", event)
            self.pcm = PcmChunks(rate)
        await self.conn.send({"type": "session.updated", "event_id": new_id("event"),
                              "session": self.conn.describe(self.pcm.rate)})

    async def append(self, event: dict) -> None:
        try:
            samples = await self.conn.decode(self.pcm, event.get("audio"))
        except ValueError as e:
            return await self.error(f"invalid audio data: {e}", "invalid_audio", "audio", event)
        problem = self.conn.backlog_problem(len(samples))
        if problem:
            return await self.error(problem, "invalid_audio", "audio", event)
        if self.open_item is None:
            self.open_item = Item(new_id("item"), self.last_id)
            self.last_id = self.open_item.id
            self.items.append(self.open_item)
            await self.conn.send({
                "type": "conversation.item.added", "event_id": new_id("event"),
                "previous_item_id": self.open_item.previous_id,
                "item": {"id": self.open_item.id, "object": "realtime.item", "type": "message",
                         "status": "completed", "role": "user",
                         "content": [{"type": "input_audio", "transcript": None}]}})
        self.open_item.samples += len(samples)
        self.conn.session.feed(samples)

    async def commit(self, event: dict) -> None:
        item = self.open_item
        if item is None:
            return await self.error("the input audio buffer is empty: append audio before committing",
                                    "input_audio_buffer_commit_empty", None, event)
        tail = self.pcm.end()                    # the resampler's last samples
        item.samples += len(tail)
        self.conn.session.feed(tail)
        self.open_item = None
        await self.conn.send({"type": "input_audio_buffer.committed", "event_id": new_id("event"),
                              "item_id": item.id, "previous_item_id": item.previous_id})
        self.conn.session.flush()

    async def on_result(self, event) -> None:
        item = self.items[0] if self.items else None
        if event.kind == "tokens" and item is not None and not item.discarded:
            delta = "".join(t.text for t in event.tokens)
            if delta:
                item.text += delta
                await self.conn.send({
                    "type": "conversation.item.input_audio_transcription.delta", "event_id": new_id("event"),
                    "item_id": item.id, "content_index": 0, "delta": delta})
        elif event.kind in ("flushed", "reset") and item is not None:
            self.items.popleft()
            if event.kind == "flushed":
                await self.conn.send({
                    "type": "conversation.item.input_audio_transcription.completed",
                    "event_id": new_id("event"), "item_id": item.id, "content_index": 0,
                    "transcript": item.text,
                    "usage": {"type": "duration", "seconds": round(item.samples / 16000, 3)}})
        elif event.kind == "error":
            if item is not None:
                self.items.popleft()
                if item is self.open_item:
                    self.open_item = None
            await self.error(event.message, "processing_error", type="server_error")
