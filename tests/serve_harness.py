"""`voxnp serve` as a real process, and the clients that test it: plain HTTP, multipart
bodies, websockets, and the misbehaving clients of the fault tests (a disconnect
mid-upload or mid-stream, a slow consumer, a slowloris upload, an idle websocket).

Shared by tests/test_server_faults.py, tests/test_server_fuzz.py and bench/serve_soak.py;
each fault client returns what it saw and raises AssertionError where the server
broke its contract.
"""
from __future__ import annotations

import asyncio
import base64
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ERROR_KEYS = {"message", "type", "param", "code"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A `python -m voxnp.server` process on a free port, its log in `log`."""

    def __init__(self, model, log: Path, port: int | None = None, args=()):
        self.model, self.log, self.args = model, Path(log), list(args)
        self.port = port or free_port()
        self.http = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/v1/realtime"
        self.proc = None

    def start(self, timeout: float = 120.0) -> float:
        """Start and wait for /health 200; returns the seconds that took."""
        cmd = [sys.executable, "-m", "voxnp.server", "--model", str(self.model), "--port", str(self.port),
               *self.args]
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited ({self.proc.returncode}):\n{self.log.read_text()[-4000:]}")
            try:
                if request(self, "GET", "/health", timeout=5)[0] == 200:
                    return time.monotonic() - t0
            except OSError:
                pass
            if time.monotonic() - t0 > timeout:
                self.proc.kill()
                raise AssertionError(f"the server did not become healthy:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` and wait; the exit status (killed if it outlives `timeout`)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the server outlived {timeout:g} s after signal {sig}") from None

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def health(self) -> dict:
        status, _, body = request(self, "GET", "/health", timeout=10)
        doc = json.loads(body)
        doc["http_status"] = status
        return doc

    def tracebacks(self) -> int:
        return self.log.read_text(errors="replace").count("Traceback")


def rss_settled_mb(served, baseline: float, bound: float, timeout: float = 15.0) -> float:
    """A server's resident MB (served.rss_mb()) once within `bound` of `baseline`, else after
    `timeout` s. Freed memory goes back to the system when the engine next trims its heap
    (every engine.TRIM_EVERY_S, once its worker is idle), not the moment a session ends."""
    deadline = time.monotonic() + timeout
    while (rss := served.rss_mb()) - baseline >= bound and time.monotonic() < deadline:
        time.sleep(0.25)
    return rss


def request(served, method: str, path: str, body=b"", headers=None, timeout: float = 60.0):
    """(status, lower-cased headers, body) of one HTTP request (no client library, no retries)."""
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def multipart(fields=(), files=(), boundary: str | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body: fields [(name, text | bytes)], files [(name, filename, bytes)]."""
    boundary = boundary or uuid.uuid4().hex
    parts = []
    for name, value in fields:
        value = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n")
    for name, filename, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_form(served, fields=(), files=(), headers=None, timeout: float = 60.0):
    body, ctype = multipart(fields, files)
    return request(served, "POST", "/v1/audio/transcriptions", body,
                   {"Content-Type": ctype, **(headers or {})}, timeout=timeout)


def check_error_body(status: int, body: bytes, allowed=(400, 401, 404, 408, 413, 503)) -> dict:
    """An HTTP error in OpenAI's shape with an allowed status; the parsed body."""
    assert status in allowed, (status, body[:300])
    doc = json.loads(body)
    assert set(doc) == {"error"} and set(doc["error"]) == ERROR_KEYS, doc
    assert isinstance(doc["error"]["message"], str) and "Traceback" not in doc["error"]["message"]
    return doc


def pcm16(samples: np.ndarray) -> bytes:
    """Samples read by load_audio are v / 32768 of 16-bit values: exactly back to PCM16."""
    return np.round(samples * 32768).astype("<i2").tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def ws_connect(served, query: str = "", headers=None):
    """A websocket on /v1/realtime after its session.created."""
    import websockets

    ws = await websockets.connect(served.ws + query, additional_headers=headers or {}, max_size=None,
                                  open_timeout=20)
    created = json.loads(await asyncio.wait_for(ws.recv(), 20))
    assert created["type"] == "session.created", created
    return ws


async def vllm_transcribe(served, pcm: bytes, pace: float = 0.0, chunk: int = 4096, utterances: int = 1,
                          timeout: float = 120.0) -> list[str]:
    """vLLM's example client: per utterance, commit, appends (at `pace` x real time, 0:
    unpaced), commit final, read to transcription.done; the texts (deltas checked to add up)."""
    ws = await ws_connect(served)
    texts = []
    try:
        await ws.send(json.dumps({"type": "session.update", "model": "voxnp-soak"}))
        for _ in range(utterances):
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            t0 = time.monotonic()
            for k, i in enumerate(range(0, len(pcm), chunk)):
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(pcm[i:i + chunk])}))
                if pace:
                    await asyncio.sleep(max(0.0, t0 + (k + 1) * chunk / 32000 / pace - time.monotonic()))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
            deltas = []
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), timeout))
                if event["type"] == "transcription.delta":
                    deltas.append(event["delta"])
                    continue
                assert event["type"] == "transcription.done", event
                assert event["text"] == "".join(deltas), (event, deltas)
                texts.append(event["text"])
                break
    finally:
        await ws.close()
    return texts


async def openai_transcribe(served, pcm: bytes, chunk: int = 9601, timeout: float = 120.0) -> str:
    """OpenAI's realtime transcription dialect at a declared 16 kHz: one item; its transcript."""
    ws = await ws_connect(served, "?intent=transcription")
    try:
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}}}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), timeout))["type"] == "session.updated"
        for i in range(0, len(pcm), chunk):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(pcm[i:i + chunk])}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        deltas = []
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), timeout))
            assert event["type"] != "error", event
            if event["type"] == "conversation.item.input_audio_transcription.delta":
                deltas.append(event["delta"])
            elif event["type"] == "conversation.item.input_audio_transcription.completed":
                assert event["transcript"] == "".join(deltas)
                return event["transcript"]
    finally:
        await ws.close()


# -- fault clients --------------------------------------------------------------

def raw_socket(served, timeout: float = 30.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", served.port), timeout=timeout)
    return s


def upload_head(served, body_length: int, ctype: str) -> bytes:
    return (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {body_length}\r\n\r\n").encode()


def recv_until(s, marker: bytes) -> bytes:
    """What a socket sends until `marker` has come (or the socket closes)."""
    data = b""
    while marker not in data:
        more = s.recv(65536)
        if not more:
            break
        data += more
    return data


def read_response(s) -> tuple[int, bytes]:
    """(status, body) of the HTTP/1.1 response on a raw socket (read to close or length)."""
    data = recv_until(s, b"\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next((int(v) for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "content-length"), None)
    while length is not None and len(body) < length:
        more = s.recv(65536)
        if not more:
            break
        body += more
    return status, body


def disconnect_mid_upload(served, wav: bytes, fraction: float = 0.5) -> dict:
    """Send the head and part of an upload's body, then close the socket."""
    body, ctype = multipart([("model", "whisper-1")], [("file", "a.wav", wav)])
    with raw_socket(served) as s:
        s.sendall(upload_head(served, len(body), ctype) + body[:int(len(body) * fraction)])
        time.sleep(0.05)
    return {"fault": "disconnect_mid_upload"}


def disconnect_mid_decode(served, wav: bytes, after_s: float = 0.2) -> dict:
    """Send a whole upload, close before the answer: the worker must drop its work."""
    body, ctype = multipart([], [("file", "a.wav", wav)])
    with raw_socket(served) as s:
        s.sendall(upload_head(served, len(body), ctype) + body)
        time.sleep(after_s)
    return {"fault": "disconnect_mid_decode"}


def disconnect_mid_sse(served, wav: bytes) -> dict:
    """stream=true: read the first delta, then close."""
    body, ctype = multipart([("stream", "true")], [("file", "a.wav", wav)])
    with raw_socket(served) as s:
        s.sendall(upload_head(served, len(body), ctype) + body)
        data = recv_until(s, b"data:")
    assert data.startswith(b"HTTP/1.1 200") or data.startswith(b"HTTP/1.1 503"), data[:200]
    return {"fault": "disconnect_mid_sse"}


def slowloris_upload(served, wav: bytes, gap_s: float, max_wait_s: float) -> dict:
    """Send an upload's head and a few bytes, then a byte every `gap_s` seconds: the server
    must answer 408 within `max_wait_s` (once its --timeout passes)."""
    body, ctype = multipart([], [("file", "a.wav", wav)])
    t0 = time.monotonic()
    with raw_socket(served, timeout=max_wait_s) as s:
        s.sendall(upload_head(served, len(body), ctype) + body[:100])
        s.setblocking(False)
        sent = 100
        while time.monotonic() - t0 < max_wait_s:
            try:
                data = s.recv(65536)
            except BlockingIOError:
                data = None
            if data is not None:
                s.setblocking(True)
                status, answer = read_response_from(s, data)
                check_error_body(status, answer, allowed=(408,))
                return {"fault": "slowloris_upload", "status": status, "after_s": time.monotonic() - t0}
            try:
                s.send(body[sent:sent + 1])
                sent += 1
            except (BlockingIOError, OSError):
                pass
            time.sleep(gap_s)
    raise AssertionError(f"a stalled upload was not answered within {max_wait_s:g} s")


def read_response_from(s: socket.socket, first: bytes) -> tuple[int, bytes]:
    class Prefixed:
        def __init__(self):
            self.pending = first

        def recv(self, n):
            if self.pending:
                out, self.pending = self.pending, b""
                return out
            return s.recv(n)

    return read_response(Prefixed())


async def idle_websocket(served, max_wait_s: float) -> dict:
    """Connect and send nothing: the server closes the session after its --timeout with
    an `idle_timeout` error event."""
    ws = await ws_connect(served)
    t0 = time.monotonic()
    try:
        event = json.loads(await asyncio.wait_for(ws.recv(), max_wait_s))
        assert event["type"] == "error" and event["code"] == "idle_timeout", event
        await asyncio.wait_for(ws.wait_closed(), max_wait_s)
    finally:
        await ws.close()
    return {"fault": "idle_websocket", "after_s": time.monotonic() - t0}


async def slow_consumer(served, pcm: bytes, seconds: float, chunk: int = 32000) -> dict:
    """Stream audio unpaced and read nothing for `seconds`: the server must stop reading
    (its sends wait) rather than queue without bound; then read and close."""
    import websockets

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # small buffers: backpressure comes soon
    sock.connect(("127.0.0.1", served.port))
    ws = await websockets.connect(served.ws, sock=sock, max_size=None, max_queue=1, open_timeout=20,
                                  ping_interval=None, close_timeout=1)
    sent, t0 = 0, time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            data = pcm[(sent * chunk) % len(pcm):][:chunk]
            try:
                await asyncio.wait_for(ws.send(json.dumps({"type": "input_audio_buffer.append",
                                                           "audio": b64(data)})), 0.5)
                sent += 1
            except asyncio.TimeoutError:
                pass                              # the server stopped reading us: good
            except websockets.exceptions.ConnectionClosed:
                break
    finally:
        await ws.close()
    return {"fault": "slow_consumer", "appends": sent, "audio_s": sent * chunk / 32000}


async def disconnect_mid_stream(served, pcm: bytes, chunk: int = 8000) -> dict:
    """A realtime client that streams part of an utterance and vanishes (no close frame)."""
    ws = await ws_connect(served)
    await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
    for i in range(0, len(pcm) // 2, chunk):
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(pcm[i:i + chunk])}))
    ws.transport.abort()
    return {"fault": "disconnect_mid_stream"}


def wait_sessions(served, timeout: float = 15.0) -> int:
    """Wait until /health reports no session; the number left when the time ran out."""
    deadline = time.monotonic() + timeout
    while True:
        n = served.health()["sessions"]
        if n == 0 or time.monotonic() > deadline:
            return n
        time.sleep(0.05)

