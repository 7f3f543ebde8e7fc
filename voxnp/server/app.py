"""The Starlette application: routes, API-key check, one log line per request.

    GET  /, /static/{name}           the browser page (page.py; no key needed)
    GET  /health                     200 {"status": "ok"} once the model is open (503 before)
    GET  /v1/models[/{id}]           the one served model
    POST /v1/audio/transcriptions    transcriptions.py
    WS   /v1/realtime                realtime.py
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from ..errors import VoxnpError
from . import DEFAULT_SERVED_NAME
from .engine import Engine
from .errors import (ApiError, error_response, loading_error, log, on_api_error, on_http_exception, on_unexpected,
                     shutting_down_error)
from .page import index, is_page_path, static_file
from .realtime import realtime_endpoint
from .recent import Recent
from .transcriptions import create_transcription

OPEN_PATHS = ("/health",)       # no API key needed (nor for the page: is_page_path)


@dataclass
class Server:
    """What every route needs: the engine and the server's settings."""
    engine: Engine
    served_name: str = DEFAULT_SERVED_NAME
    api_key: str | None = None
    max_upload_mb: float = 25.0
    strict_model: bool = False
    timeout: float = 60.0        # seconds a client may stall (upload, websocket); see transcriptions, realtime
    created: int = field(default_factory=lambda: int(time.time()))
    recent: Recent = field(default_factory=Recent)    # finished uploads: their other formats
    # set on SIGTERM (lifecycle.py): new work gets 503, websockets are told and closed;
    # then, once the grace period is over, requests still running answer 503
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    drain_expired: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def max_backlog_samples(self) -> int:
        """Audio a websocket may have waiting for the worker: --max-upload-mb of PCM16."""
        return int(self.max_upload_mb * 1024 * 1024) // 2

    def check_ready(self) -> None:
        if self.draining.is_set():
            raise shutting_down_error()
        if self.engine.failed:
            raise ApiError(500, self.engine.failed, type="server_error")
        if not self.engine.ready.is_set():
            raise loading_error()

    def delay_problem(self, delay_ms) -> str | None:
        """Why a client's delay_ms is not usable (80..2400 in steps of 80), or None."""
        try:
            self.engine.model.config.audio.delay_tokens(delay_ms)
        except VoxnpError as e:
            return str(e)
        return None

    def authorized(self, headers) -> bool:
        """`Authorization: Bearer KEY`, or (browsers cannot set headers on a websocket)
        the subprotocol `openai-insecure-api-key.KEY`."""
        if not self.api_key:
            return True
        given = headers.get("authorization", "")
        candidates = [given[7:].strip()] if given[:7].lower() == "bearer " else []
        for proto in headers.get("sec-websocket-protocol", "").split(","):
            proto = proto.strip()
            if proto.startswith("openai-insecure-api-key."):
                candidates.append(proto[len("openai-insecure-api-key."):])
        return any(hmac.compare_digest(c.encode(), self.api_key.encode()) for c in candidates)

    def model_card(self) -> dict:
        return {"id": self.served_name, "object": "model", "created": self.created, "owned_by": "voxnp"}


async def health(request: Request) -> JSONResponse:
    server = request.app.state.server
    engine = server.engine
    status, code = ("ok", 200) if engine.ready.is_set() else ("loading model", 503)
    if engine.failed:
        status, code = engine.failed, 500
    elif server.draining.is_set():
        status, code = "shutting down", 503
    return JSONResponse({"status": status, "sessions": engine.n_sessions, "max_sessions": engine.max_sessions,
                         "backlog_s": round(engine.backlog_s(), 3)}, status_code=code)


async def list_models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [request.app.state.server.model_card()]})


async def get_model(request: Request) -> JSONResponse:
    server = request.app.state.server
    model_id = request.path_params["model_id"]
    if model_id != server.served_name:
        raise ApiError(404, f"the model `{model_id}` does not exist (this server serves `{server.served_name}`)",
                       param="model", code="model_not_found")
    return JSONResponse(server.model_card())


class AuthAndLog:
    """ASGI middleware: the API key on every HTTP route but /health and the page (websockets check
    it in realtime.py, where a refusal can be an HTTP response), and one log line per
    HTTP request with what the route noted in `request.state.log` (a healthy /health,
    which load balancers poll, only at --log-level debug)."""

    def __init__(self, app, server: Server):
        self.app = app
        self.server = server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.monotonic()
        status = 0

        async def send_noting_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            path = scope["path"]
            if path not in OPEN_PATHS and not is_page_path(path) and not self.server.authorized(headers):
                e = ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                             code="invalid_api_key")
                return await error_response(e)(scope, receive, send_noting_status)
            await self.app(scope, receive, send_noting_status)
        finally:
            note = scope.get("state", {}).get("log", "")
            level = logging.DEBUG if scope["path"] in OPEN_PATHS and status == 200 else logging.INFO  # polled
            log.log(level, "%s %s %d %.0f ms%s", scope["method"], scope["path"], status,
                    1000 * (time.monotonic() - started), f" {note}" if note else "")


def build_app(server: Server) -> Starlette:
    app = Starlette(
        middleware=[Middleware(AuthAndLog, server=server)],
        routes=[
            Route("/", index),
            Route("/static/{name}", static_file),
            Route("/health", health),
            Route("/v1/models", list_models),
            Route("/v1/models/{model_id:path}", get_model),
            Route("/v1/audio/transcriptions", create_transcription, methods=["POST"]),
            WebSocketRoute("/v1/realtime", realtime_endpoint),
        ],
        exception_handlers={ApiError: on_api_error, HTTPException: on_http_exception, Exception: on_unexpected},
    )
    app.state.server = server
    return app
