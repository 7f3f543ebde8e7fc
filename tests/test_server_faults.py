"""Faults injected into `voxnp serve`: clients that vanish mid-upload, mid-decode,
mid-SSE and mid-stream, a slow consumer, a slowloris upload, an idle websocket;
SIGTERM while sessions run (drain, exit 0) and SIGKILL + restart. After each, the
server serves a correct transcript and holds no session."""
from __future__ import annotations

import asyncio
import json
import signal
import threading
import time

import pytest

from conftest import shared_audio

for _package in ("starlette", "uvicorn", "websockets"):
    pytest.importorskip(_package)

import serve_harness as H  # noqa: E402
from voxnp.audio import load_audio  # noqa: E402
from voxnp.stream import transcribe  # noqa: E402

TIMEOUT_S = 2              # the server's --timeout in these tests
LONG = "60s_i_dont_want_anyones_life_on_my_hands.wav"


@pytest.fixture(scope="module")
def clip(tiny_model):
    """2 s of speech: (wav bytes, pcm16 bytes, offline text)."""
    import io

    import soundfile as sf

    x = load_audio(shared_audio(LONG))[:32000]
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue(), H.pcm16(x), transcribe(tiny_model, x).text


@pytest.fixture(scope="module")
def served(tiny_dir, tmp_path_factory):
    s = H.Served(tiny_dir, tmp_path_factory.mktemp("faults") / "server.log",
                 args=["--max-sessions", "4", "--timeout", str(TIMEOUT_S), "--drain", "3"])
    s.start()
    yield s
    assert s.stop() == 0


def assert_serves(served, clip) -> None:
    """No session left, a correct transcript, nothing logged as a traceback."""
    assert H.wait_sessions(served) == 0
    status, _, body = H.post_form(served, [], [("file", "a.wav", clip[0])])
    assert status == 200 and json.loads(body)["text"] == clip[2].strip()
    assert served.tracebacks() == 0, served.log.read_text()[-3000:]


def test_disconnects_leave_no_work(served, clip):
    long_wav = shared_audio(LONG).read_bytes()
    for fraction in (0.0, 0.3, 0.99):
        H.disconnect_mid_upload(served, clip[0], fraction)
    H.disconnect_mid_decode(served, long_wav, 0.3)
    H.disconnect_mid_sse(served, long_wav)
    asyncio.run(H.disconnect_mid_stream(served, clip[1] * 8))
    assert H.wait_sessions(served, timeout=10) == 0
    log = served.log.read_text()
    assert "client disconnected" in log
    assert_serves(served, clip)


def test_slowloris_upload_gets_408(served, clip):
    """Was unbounded: an upload trickling a byte at a time held its connection forever."""
    t0 = time.monotonic()
    outcome = H.slowloris_upload(served, clip[0], gap_s=0.25, max_wait_s=TIMEOUT_S * 4)
    assert outcome["status"] == 408 and time.monotonic() - t0 < TIMEOUT_S * 4
    assert_serves(served, clip)


def test_idle_websocket_is_closed(served, clip):
    """Was unbounded: a websocket that sent nothing held one of --max-sessions forever."""
    outcome = asyncio.run(H.idle_websocket(served, max_wait_s=TIMEOUT_S * 4))
    assert TIMEOUT_S * 0.9 < outcome["after_s"] < TIMEOUT_S * 4
    assert "idle_timeout" in served.log.read_text()
    assert_serves(served, clip)


def test_a_session_owed_results_is_not_idle(served, clip):
    """The idle timeout counts only silence on both sides: a client waiting for a long
    transcription (its last event older than --timeout) gets it."""
    pcm = clip[1] * 25                                     # 50 s of audio, appended at once

    async def run():
        ws = await H.ws_connect(served)
        try:
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": H.b64(pcm)}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
            t0 = time.monotonic()
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if event["type"] != "transcription.delta":
                    return event, time.monotonic() - t0
        finally:
            await ws.close()

    event, _ = asyncio.run(run())
    assert event["type"] == "transcription.done", event
    assert_serves(served, clip)


def test_slow_consumer_is_bounded(served, clip):
    """A client that streams and never reads: memory stays bounded and, once it leaves,
    nothing is left. The first such client warms the allocator's arenas and code paths
    (measured: +50 MB on a fresh CI venv); a second one must not add to that."""
    asyncio.run(H.slow_consumer(served, clip[1], seconds=4.0))
    assert_serves(served, clip)
    rss = served.rss_mb()
    outcome = asyncio.run(H.slow_consumer(served, clip[1], seconds=4.0))
    assert outcome["appends"] > 0
    settled = H.rss_settled_mb(served, rss, 40)
    assert settled - rss < 40, (rss, settled)
    assert_serves(served, clip)


def test_sigterm_drains_and_exits_0(tiny_dir, tmp_path, clip):
    """SIGTERM while a realtime stream, an upload and a server-sent stream run: the
    websocket gets an `error` event (server_shutting_down), the requests finish (200)
    or get a clean 503, and the process exits 0 within --drain plus a few seconds."""
    s = H.Served(tiny_dir, tmp_path / "server.log", args=["--drain", "1"])
    s.start()
    long_wav = shared_audio(LONG).read_bytes()
    answers = {}

    def post(name, fields):
        status, headers, body = H.post_form(s, fields, [("file", "a.wav", long_wav)], timeout=60)
        answers[name] = (status, headers, body)

    threads = [threading.Thread(target=post, args=(n, f)) for n, f in (("upload", []), ("sse", [("stream", "true")]))]

    async def run():
        ws = await H.ws_connect(s)
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        for t in threads:
            t.start()
        for i in range(0, 64000, 4000):                     # 1 s at real-time pace
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": H.b64(clip[1][i:i + 4000])}))
            await asyncio.sleep(4000 / 32000)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        events = []
        try:
            while True:
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        except Exception as e:                               # noqa: BLE001 -- the close that follows
            closed = e
        code = await asyncio.to_thread(s.proc.wait, 20)
        return events, closed, code, time.monotonic() - t0

    events, closed, code, elapsed = asyncio.run(run())
    for t in threads:
        t.join(30)
    assert code == 0 and elapsed < 1 + 8, (code, elapsed)
    assert events and events[-1]["type"] == "error" and events[-1]["code"] == "server_shutting_down", events
    assert getattr(getattr(closed, "rcvd", None), "code", None) == 1012, closed
    status, _, body = answers["upload"]
    if status != 200:
        H.check_error_body(status, body, allowed=(503,))
    status, _, body = answers["sse"]
    assert status in (200, 503), answers["sse"]
    last = json.loads(body.decode().strip().split("\n\n")[-1][len("data: "):])
    assert last.get("type") == "transcript.text.done" or last["error"]["code"] == "server_shutting_down", last
    assert s.tracebacks() == 0, s.log.read_text()[-3000:]


def test_sigkill_and_restart_serves_at_once(tiny_dir, tmp_path, clip):
    """SIGKILL in the middle of an upload; a restart on the same port serves again at once."""
    s = H.Served(tiny_dir, tmp_path / "server.log")
    s.start()
    long_wav = shared_audio(LONG).read_bytes()
    def upload():
        try:
            H.post_form(s, [], [("file", "a.wav", long_wav)])
        except OSError:
            pass                                              # killed under it

    worker = threading.Thread(target=upload)
    worker.start()
    time.sleep(0.5)
    s.proc.kill()
    s.proc.wait()
    worker.join(30)
    assert s.start(timeout=60) < 30
    status, _, body = H.post_form(s, [], [("file", "a.wav", clip[0])])
    assert status == 200 and json.loads(body)["text"] == clip[2].strip()
    assert s.stop() == 0
