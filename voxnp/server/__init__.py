"""`voxnp serve`: OpenAI's transcription API and the realtime websocket (vLLM's and
OpenAI's dialects), many streams at once on one model.

    app.py             the Starlette app: routes, API key, request log; Server settings
    page.py            GET / and /static/: the browser page (static/, package data), its CSP
    recent.py          the last few finished uploads, for their other formats
    transcriptions.py  POST /v1/audio/transcriptions (json, text, srt, vtt, verbose_json, SSE)
    realtime.py        WS /v1/realtime, both dialects
    engine.py          the worker thread that owns the model and every session's Stream
    lifecycle.py       SIGTERM: drain the sessions, then exit 0
    heap.py            freed memory goes back to the system (a server runs for weeks)
    pcm.py             uploads and base64 PCM16 chunks -> float32 16 kHz
    errors.py          errors in OpenAI's and vLLM's shapes

Needs the `serve` extra: pip install "voxnp[serve]".
"""
from __future__ import annotations

import logging
import sys

from ..errors import VoxnpError
from ..decoder import MAX_ROWS
from ..scheduler import DEFAULT_SPECULATE, rows_option

DEFAULT_SERVED_NAME = "mistralai/Voxtral-Mini-4B-Realtime-2602"
WS_MAX_FRAME = 16 * 1024 * 1024     # bytes: a base64 append of ~6 minutes of 16 kHz audio


def main(model=None, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
         weights: str = "bf16", max_sessions: int = 4, max_upload_mb: float = 25.0,
         served_name: str = DEFAULT_SERVED_NAME, interval: float = 0.5, speculate: int = DEFAULT_SPECULATE,
         strict_model: bool = False, timeout: float = 60.0, drain: float = 10.0,
         threads: int | None = None, backend: str = "auto", log_level: str = "info") -> None:
    """Serve Voxtral Realtime over HTTP and WebSocket until interrupted.

    Args:
      model: model directory (default: $VOXNP_MODEL, ./voxtral-model, download location)
      host: address to bind (127.0.0.1: this machine only; 0.0.0.0: every interface)
      port: TCP port
      api_key: require `Authorization: Bearer KEY` on every route but /health
      weights: weight format to run: bf16 (the checkpoint), int8 or q4
      max_sessions: transcriptions and realtime connections at once (more get 503)
      max_upload_mb: largest file POST /v1/audio/transcriptions accepts (more get 413)
      served_name: the model id clients see in /v1/models and send back
      interval: seconds of new audio between runs of the network (delta latency vs. overhead)
      speculate: drafted tokens a stream may verify per decoder pass when the pass has
        rows to spare (0..7; the tokens are the same, a lone stream catches up sooner)
      strict_model: refuse realtime sessions that name another model
      timeout: seconds a client may stall: an upload with no data (or slower than 64 kB/s
        after that long) gets 408, a websocket with no event and no result due is closed
      drain: on SIGTERM, seconds running requests get to finish before they answer 503
      threads: CPU threads (default $VOXNP_THREADS or all cores)
      backend: auto | numba | numpy | cupy
      log_level: debug | info | warning
    """
    try:
        import uvicorn

        from .app import Server, build_app
        from .engine import Engine
        from .heap import limit_heap_growth
        from .lifecycle import DrainingServer
    except ImportError as e:
        raise VoxnpError(f"voxnp serve needs the `serve` extra ({e.name} is missing): "
                         "pip install \"voxnp[serve]\"") from None
    from .. import load

    max_sessions = positive_int("--max-sessions", max_sessions)
    port = positive_int("--port", port)
    try:
        max_upload_mb, interval, timeout, drain = float(max_upload_mb), float(interval), float(timeout), float(drain)
    except (TypeError, ValueError):
        raise VoxnpError("--max-upload-mb, --interval, --timeout and --drain must be numbers") from None
    if max_upload_mb <= 0 or interval < 0 or timeout <= 0 or drain < 0:
        raise VoxnpError("--max-upload-mb and --timeout must be > 0, --interval and --drain >= 0")
    setup_logging(log_level)
    limit_heap_growth()
    try:
        rows_option("--speculate", speculate, 0, MAX_ROWS - 1)
    except ValueError as e:
        raise VoxnpError(str(e)) from None
    m = load(model, backend=backend, threads=threads, weights=weights)
    engine = Engine(m, max_sessions=max_sessions, interval=interval, speculate=speculate)
    server = Server(engine, served_name=str(served_name), api_key=str(api_key) if api_key else None,
                    max_upload_mb=max_upload_mb, strict_model=bool(strict_model), timeout=timeout)
    logging.getLogger("voxnp.server").info("model %s (%s), at most %d sessions", m.path, weights, max_sessions)
    engine.start()
    config = uvicorn.Config(build_app(server), host=str(host), port=port, log_level=str(log_level),
                            access_log=False, ws_max_size=WS_MAX_FRAME, ws_ping_interval=20.0,
                            ws_ping_timeout=20.0, timeout_graceful_shutdown=5)
    try:
        DrainingServer(config, server, drain_s=drain).run()
    finally:
        engine.stop()


def positive_int(flag: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise VoxnpError(f"{flag} must be a positive integer, got {value!r}")
    return value


def setup_logging(level: str) -> None:
    logger = logging.getLogger("voxnp.server")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s voxnp: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(str(level).upper())
    logger.propagate = False
    # uvicorn notes each websocket in 3 lines; the session's own line (realtime.py) says more
    logging.getLogger("uvicorn.error").addFilter(quiet_websocket_lines)
    # a malformed multipart body is answered with a 400; its parser's warnings would let
    # any client fill the log
    logging.getLogger("python_multipart").setLevel(logging.ERROR)


def quiet_websocket_lines(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (message in ("connection open", "connection closed") or "WebSocket /" in message)
