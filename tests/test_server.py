"""`voxnp serve` as a real process on localhost, driven by real clients: the `openai`
package (every response format, streaming, `client.realtime.connect`) and `websockets`
replaying vLLM's example client; 8 realtime sessions at once at real-time pace; bad
input answered in OpenAI's/vLLM's shapes while the server keeps serving."""
from __future__ import annotations

import asyncio
import http.client
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_audio
from serve_harness import b64, free_port, multipart, pcm16, request, rss_settled_mb

for _package in ("starlette", "uvicorn", "websockets", "openai"):
    pytest.importorskip(_package)

import websockets  # noqa: E402
import websockets.exceptions  # noqa: E402  (not imported by `import websockets` alone)
from openai import OpenAI  # noqa: E402

from voxnp import formats  # noqa: E402
from voxnp.audio import load_audio  # noqa: E402
from voxnp.stream import transcribe  # noqa: E402

KEY = "test-key"
NAME = "mistralai/Voxtral-Mini-4B-Realtime-2602"
CLIP = "5s_dont_worry_about_him.wav"
MAX_SESSIONS = 9
AUTH = {"Authorization": f"Bearer {KEY}"}


class Served:
    def __init__(self, proc, port: int, log: Path):
        self.proc, self.port, self.log = proc, port, log
        self.http = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}/v1/realtime"

    def client(self) -> OpenAI:
        return OpenAI(base_url=f"{self.http}/v1", api_key=KEY, max_retries=0, timeout=60)

    def rss_mb(self) -> float:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


@pytest.fixture(scope="module")
def cli_run(tiny_dir):
    """`voxnp CLIP` on the tiny model, started while the server starts."""
    return subprocess.Popen([sys.executable, "-m", "voxnp", str(shared_audio(CLIP)), "--model", str(tiny_dir),
                             "--silent"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_served(tiny_dir, log: Path, *args: str) -> Served:
    """`python3 -m voxnp.server --model TINY --port FREE ARGS`, once /health answers 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "voxnp.server", "--model", str(tiny_dir), "--port", str(port), *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    served = Served(proc, port, log)
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server exited ({proc.returncode}):\n{log.read_text()}")
        try:
            if request(served, "GET", "/health")[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the server did not become healthy:\n{log.read_text()}")
        time.sleep(0.1)
    return served


def stop_served(served: Served) -> None:
    served.proc.terminate()
    try:
        served.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        served.proc.kill()
        pytest.fail("the server did not stop on SIGTERM")


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory, cli_run):
    served = start_served(tiny_dir, tmp_path_factory.mktemp("serve") / "server.log", "--api-key", KEY,
                          "--max-sessions", str(MAX_SESSIONS), "--max-upload-mb", "3")
    yield served
    stop_served(served)


def post_form(served, fields=(), files=(), key=KEY):
    body, ctype = multipart(fields, files)
    headers = {"Content-Type": ctype, **({"Authorization": f"Bearer {key}"} if key else {})}
    status, headers, data = request(served, "POST", "/v1/audio/transcriptions", body, headers)
    return status, headers, json.loads(data) if headers.get("content-type", "").startswith("application/json") else data


def assert_openai_error(status, body, expected_status, param=None):
    assert status == expected_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert "Traceback" not in body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param


def sessions(served) -> int:
    return json.loads(request(served, "GET", "/health")[2])["sessions"]


def wait_idle(served, timeout=10.0) -> None:
    deadline = time.monotonic() + timeout
    while sessions(served) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sessions(served) == 0


@pytest.fixture(scope="module")
def clip():
    path = shared_audio(CLIP)
    return path, load_audio(path)


@pytest.fixture(scope="module")
def offline(tiny_model, clip):
    return transcribe(tiny_model, clip[1])


# -- HTTP -----------------------------------------------------------------

def test_health_models_and_api_key(server):
    status, _, body = request(server, "GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    models = server.client().models.list()
    assert [m.id for m in models.data] == [NAME] and models.data[0].owned_by == "voxnp"
    assert server.client().models.retrieve(NAME).id == NAME
    status, _, body = request(server, "GET", "/v1/models/whisper-1", headers=AUTH)
    assert_openai_error(status, json.loads(body), 404)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        status, h, body = request(server, "GET", "/v1/models", headers=headers)
        assert_openai_error(status, json.loads(body), 401)
        assert h.get("x-should-retry") == "false"
    status, _, body = request(server, "GET", "/no/such/route", headers=AUTH)
    assert_openai_error(status, json.loads(body), 404)


def test_every_format_equals_the_cli(server, cli_run, tiny_model, clip, offline):
    path, audio = clip
    stdout, stderr = cli_run.communicate(timeout=120)
    assert cli_run.returncode == 0, stderr
    assert stdout.strip() and stdout.strip() == offline.text.strip()
    client = server.client()
    duration = len(audio) / 16000

    def create(fmt, **kw):
        with open(path, "rb") as f:
            return client.audio.transcriptions.create(file=f, model="whisper-1", response_format=fmt, **kw)

    r = create("json")
    assert r.text == stdout.strip()
    assert r.usage.type == "duration" and r.usage.seconds == 6           # ceil(5.00006 s)
    assert create("text") == stdout
    for fmt in ("srt", "vtt"):
        assert create(fmt) == formats.render(fmt, offline.text, offline.tokens, duration)
    v = create("verbose_json", timestamp_granularities=["word", "segment"], language="en")
    assert v.text == r.text and v.language == "en" and abs(v.duration - duration) < 1e-3
    segments = formats.segments(offline.tokens, duration)
    assert [s.text for s in v.segments] == [s["text"] for s in segments]
    for s in v.segments:
        assert s.seek == 0 and s.temperature == 0.0 and s.no_speech_prob == 0.0
        assert s.avg_logprob <= 0.0 and s.compression_ratio > 0 and s.tokens
    assert v.words and all(0 <= w.start <= w.end <= duration for w in v.words)
    assert create("verbose_json").model_extra.get("words") is None        # only when asked
    # delay_ms: voxnp's own field, sent by the openai client through extra_body
    r960 = create("json", extra_body={"delay_ms": 960})
    assert r960.text == transcribe(tiny_model, audio, delay_ms=960).text.strip()


def test_streaming_transcription(server, clip, offline):
    with open(clip[0], "rb") as f:
        events = list(server.client().audio.transcriptions.create(file=f, model="whisper-1", stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) > 2                                                  # as decoded, not at the end
    assert events[-1].type == "transcript.text.done"
    assert events[-1].text == "".join(deltas).strip() == offline.text.strip()
    body, ctype = multipart([("stream", "true"), ("response_format", "text")],
                            [("file", "a.wav", clip[0].read_bytes())])
    status, headers, body = request(server, "POST", "/v1/audio/transcriptions", body,
                                    {"Content-Type": ctype, **AUTH})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert b"[DONE]" not in body and body.endswith(b"\n\n")


# -- WebSocket -----------------------------------------------------------

async def vllm_utterance(ws, audio: np.ndarray, pace: float = 0.0, chunk: int = 4096,
                         pings: list | None = None) -> dict:
    """vLLM's example client: commit, appends of `chunk` bytes, commit final; read to the
    end. pace > 0 sends at that many times real time; pings collects pong delays."""
    data = pcm16(audio)
    await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
    deltas, first_delta_at = [], None

    async def reader():
        nonlocal first_delta_at
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == "transcription.delta":
                deltas.append(event["delta"])
                first_delta_at = first_delta_at or time.monotonic()
            elif event["type"] in ("transcription.done", "error"):
                return event

    reading = asyncio.create_task(reader())
    for i in range(0, len(data), chunk):
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(data[i:i + chunk])}))
        if pace:
            await asyncio.sleep(chunk / 32000 / pace)
            if pings is not None and i % (8 * chunk) == 0:
                t0 = time.monotonic()
                await asyncio.wait_for(await ws.ping(), 5)
                pings.append(time.monotonic() - t0)
    audio_end = time.monotonic()
    await ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
    done = await asyncio.wait_for(reading, 60)
    return {"done": done, "deltas": deltas, "early": first_delta_at is not None and first_delta_at < audio_end}


async def connect(served, **kw):
    ws = await websockets.connect(served.ws, additional_headers=AUTH, max_size=None, **kw)
    created = json.loads(await ws.recv())
    assert created["type"] == "session.created" and created["id"].startswith("sess")
    assert created["session"]["object"] == "realtime.session" and created["session"]["model"] == NAME
    return ws


def test_realtime_vllm_client_sequence(server, tiny_model, clip, offline):
    other = load_audio(shared_audio("jfk.wav"))[:48000]

    async def run():
        async with await connect(server) as ws:
            await ws.send(json.dumps({"type": "session.update", "model": NAME}))
            first = await vllm_utterance(ws, clip[1])
            second = await vllm_utterance(ws, other)                # same socket, new utterance
            await ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
            empty = json.loads(await ws.recv())
            return first, second, empty

    first, second, empty = asyncio.run(run())
    assert first["done"]["type"] == "transcription.done", first["done"]
    assert first["done"]["text"] == "".join(first["deltas"]) == offline.text
    assert len(first["deltas"]) > 1
    usage = first["done"]["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert second["done"]["text"] == transcribe(tiny_model, other).text
    assert empty == {"type": "transcription.done", "text": "",
                     "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
    wait_idle(server)


def test_realtime_openai_client(server, clip):
    import soxr

    audio = clip[1]
    client = server.client()
    with client.realtime.connect(model="whisper-1", extra_query={"intent": "transcription"}) as conn:
        assert conn.recv().type == "session.created"
        conn.send({"type": "input_audio_buffer.commit"})                    # nothing appended yet
        e = conn.recv()
        assert e.type == "error" and e.error.code == "input_audio_buffer_commit_empty"
        conn.send({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": {"type": "server_vad"}}}}})
        e = conn.recv()
        assert e.type == "error" and e.error.code == "unsupported_turn_detection"
        items = []
        for rate in (16000, 24000):
            conn.send({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": rate}, "transcription": {"model": "whisper-1"},
                "turn_detection": None}}}})
            updated = conn.recv()
            assert updated.type == "session.updated", updated
            x = audio if rate == 16000 else soxr.resample(audio, 16000, rate).astype(np.float32)
            data = pcm16(np.clip(x, -1, 32767 / 32768))
            for i in range(0, len(data), 9601):                              # odd sizes split samples
                conn.send({"type": "input_audio_buffer.append", "audio": b64(data[i:i + 9601])})
            conn.send({"type": "input_audio_buffer.commit"})
            deltas, seen = [], []
            while True:
                e = conn.recv()
                seen.append(e.type)
                if e.type == "conversation.item.input_audio_transcription.delta":
                    deltas.append(e.delta)
                elif e.type == "conversation.item.input_audio_transcription.completed":
                    break
                assert e.type != "error", e
            assert seen[0] == "conversation.item.added" and "input_audio_buffer.committed" in seen
            assert e.transcript == "".join(deltas) and e.transcript
            assert abs(e.usage.seconds - 5.0) < 0.05
            items.append(e.item_id)
        conn.send({"type": "input_audio_buffer.append", "audio": b64(pcm16(audio[:8000]))})
        assert conn.recv().type == "conversation.item.added"
        conn.send({"type": "input_audio_buffer.clear"})
        assert conn.recv().type == "input_audio_buffer.cleared"
        conn.send({"type": "response.create"})
        e = conn.recv()
        assert e.type == "error" and e.error.code == "unknown_event"
    assert len(set(items)) == 2
    wait_idle(server)


def test_openai_client_drives_the_vllm_dialect(server, clip, offline):
    """conn.send passes any fields through: without ?intent, vLLM's events over the same client."""
    data = pcm16(clip[1])
    with server.client().realtime.connect(model=NAME) as conn:
        assert conn.recv().type == "session.created"
        conn.send({"type": "session.update", "model": NAME})
        conn.send({"type": "input_audio_buffer.commit"})
        for i in range(0, len(data), 32000):
            conn.send({"type": "input_audio_buffer.append", "audio": b64(data[i:i + 32000])})
        conn.send({"type": "input_audio_buffer.commit", "final": True})
        deltas = []
        while (e := conn.recv()).type == "transcription.delta":
            deltas.append(e.delta)
    assert e.type == "transcription.done" and e.text == "".join(deltas) == offline.text


def test_eight_sessions_at_real_time_pace(server, tiny_model):
    """8 realtime sessions fed at real-time pace at once: each transcript equals its
    offline transcript (different audio per session: no cross-talk), deltas arrive while
    audio is still coming, and pings are answered within 1 s throughout."""
    long = load_audio(shared_audio("60s_i_dont_want_anyones_life_on_my_hands.wav"))
    clips = [long[i * 64000: i * 64000 + 25600 + 3200 * i] for i in range(8)]   # 1.6..3.0 s
    expected = [transcribe(tiny_model, c).text for c in clips]
    pings: list[float] = []

    async def one(c):
        async with await connect(server) as ws:
            return await vllm_utterance(ws, c, pace=1.0, pings=pings)

    async def run():
        return await asyncio.gather(*(one(c) for c in clips))

    results = asyncio.run(run())
    for r, text in zip(results, expected):
        assert r["done"]["type"] == "transcription.done", r["done"]
        assert r["done"]["text"] == text
        assert r["early"], "deltas must stream while audio arrives"
    assert pings and max(pings) < 1.0, pings
    wait_idle(server)


# -- bad input --------------------------------------------------------------

def bad_requests(server, clip) -> None:
    wav = clip[0].read_bytes()
    status, h, body = post_form(server, [("model", "whisper-1")], [("file", "upload", b"")])
    assert_openai_error(status, body, 400, "file")
    assert h.get("x-should-retry") == "false"
    status, _, body = post_form(server, [("model", "whisper-1")], [("file", "upload", b"\x00junk" * 999)])
    assert_openai_error(status, body, 400, "file")
    status, _, body = post_form(server, [("model", "whisper-1")])
    assert_openai_error(status, body, 400, "file")
    status, _, body = post_form(server, [("file", "not a file")])
    assert_openai_error(status, body, 400, "file")
    status, _, body = post_form(server, [("response_format", "mp3")], [("file", "a.wav", wav)])
    assert_openai_error(status, body, 400, "response_format")
    status, _, body = post_form(server, [("stream", "true"), ("response_format", "srt")], [("file", "a.wav", wav)])
    assert_openai_error(status, body, 400, "stream")
    status, _, body = post_form(server, [("delay_ms", "100")], [("file", "a.wav", wav)])
    assert_openai_error(status, body, 400, "delay_ms")
    status, _, body = post_form(server, [], [("file", "big.wav", b"\x00" * (5 * 1024 * 1024))])
    assert_openai_error(status, body, 413)
    status, _, body = post_form(server, [], [("file", "a.wav", wav)], key="wrong")
    assert_openai_error(status, body, 401)
    status, _, body = request(server, "POST", "/v1/audio/transcriptions", b'{"file": 1}',
                              {"Content-Type": "application/json", **AUTH})
    assert_openai_error(status, json.loads(body), 400, "file")

    async def ws_bad():
        with pytest.raises(websockets.exceptions.InvalidStatus) as e:
            await websockets.connect(server.ws, additional_headers={"Authorization": "Bearer wrong"})
        assert e.value.response.status_code == 401
        async with await connect(server) as ws:
            answers = []
            for message in (b"\x00binary", "{not json", json.dumps([1]),
                            json.dumps({"type": "input_audio_buffer.append", "audio": "%%%not base64"}),
                            json.dumps({"type": "nonsense"})):
                await ws.send(message)
                answers.append(json.loads(await ws.recv()))
            assert [a["code"] for a in answers] == ["invalid_event", "invalid_json", "invalid_event",
                                                    "invalid_audio", "unknown_event"]
            assert all(a["type"] == "error" and isinstance(a["error"], str) for a in answers)
            done = await vllm_utterance(ws, clip[1][:16000])              # the socket still works
            assert done["done"]["type"] == "transcription.done"
        async with await connect(server) as ws:       # more audio waiting than --max-upload-mb allows
            minute = b64(pcm16(np.zeros(60 * 16000, np.float32)))
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": minute}))
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": minute}))
            answer = json.loads(await ws.recv())
            while answer["type"] == "transcription.delta":          # the first minute may already decode
                answer = json.loads(await ws.recv())
            assert answer["type"] == "error" and answer["code"] == "invalid_audio", answer
        async with await connect(server) as ws:       # an odd session.update is answered, not fatal
            await ws.send(json.dumps({"type": "session.update", "session": {"audio": "odd", "type": "transcription"}}))
            assert json.loads(await ws.recv())["type"] == "session.updated"
        async with await connect(server) as ws:                           # disconnect mid-decode
            for _ in range(10):
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": b64(pcm16(clip[1][:32000]))}))

    asyncio.run(ws_bad())
    # a REST client that disconnects mid-decode
    body, ctype = multipart([], [("file", "long.wav", shared_audio(
        "60s_i_dont_want_anyones_life_on_my_hands.wav").read_bytes())])
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", "/v1/audio/transcriptions", body, {"Content-Type": ctype, **AUTH})
    time.sleep(0.3)
    conn.close()
    wait_idle(server)


def test_bad_input_keeps_the_server_serving_and_leaks_nothing(server, clip, offline):
    bad_requests(server, clip)
    rss = server.rss_mb()
    for _ in range(2):
        bad_requests(server, clip)
    settled = rss_settled_mb(server, rss, 40)
    assert settled - rss < 40, (rss, settled)
    status, _, body = post_form(server, [], [("file", "a.wav", clip[0].read_bytes())])
    assert status == 200 and body["text"] == offline.text.strip()
    assert "client disconnected" in server.log.read_text()


def test_max_sessions_answers_503(server, clip):
    async def run():
        sockets = [await connect(server) for _ in range(MAX_SESSIONS)]
        try:
            assert sessions(server) == MAX_SESSIONS
            with pytest.raises(websockets.exceptions.InvalidStatus) as e:
                await websockets.connect(server.ws, additional_headers=AUTH)
            assert e.value.response.status_code == 503
            assert e.value.response.headers["Retry-After"]
            status, headers, body = await asyncio.to_thread(
                post_form, server, [], [("file", "a.wav", clip[0].read_bytes())])
            assert_openai_error(status, body, 503)
            assert headers["retry-after"]
        finally:
            for ws in sockets:
                await ws.close()

    asyncio.run(run())
    wait_idle(server)


def test_log_has_a_line_per_request_and_no_traceback(server):
    request(server, "GET", "/health")
    text = server.log.read_text()
    assert "Traceback" not in text
    assert "GET /v1/models 200" in text and "POST /v1/audio/transcriptions 400" in text
    assert "realtime (vllm)" in text and "realtime (openai)" in text
