"""Errors in the shapes clients parse: OpenAI's REST body and the two realtime events.

REST (every status, 400 to 503):
    {"error": {"message": str, "type": str, "param": str | null, "code": str | null}}
vLLM's realtime dialect:  {"type": "error", "error": "<message>", "code": "<code>"}
OpenAI's realtime dialect: {"type": "error", "event_id": ..., "error": {"type", "code",
                            "message", "param", "event_id"}}

No traceback ever reaches a client: an unexpected exception is logged here and
answered with a 500 `server_error`.
"""
from __future__ import annotations

import logging

log = logging.getLogger("voxnp.server")

# the `openai` client retries 408/409/429/5xx; say so where a retry cannot help
RETRYABLE = {408, 409, 429, 503}


class ApiError(Exception):
    """A request the server answers with an error status (raised anywhere in a route)."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})


def shown(value, limit: int = 80) -> str:
    """A client's value, safe to echo in an error message: text (lone surrogates, which
    UTF-8 cannot carry, replaced), at most `limit` characters."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text)} characters)"
    return text.encode("utf-8", "replace").decode("utf-8")


def shutting_down_error() -> ApiError:
    return ApiError(503, "the server is shutting down; retry shortly", type="server_error",
                    code="server_shutting_down", headers={"Retry-After": "1"})


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(e: ApiError):
    from starlette.responses import JSONResponse

    headers = dict(e.headers)
    if e.status not in RETRYABLE:
        headers.setdefault("x-should-retry", "false")
    return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status,
                        headers=headers)


def busy_error(max_sessions: int) -> ApiError:
    return ApiError(503, f"the server is busy: all {max_sessions} sessions are in use; retry shortly",
                    type="server_error", code="server_busy", headers={"Retry-After": "1"})


def loading_error() -> ApiError:
    return ApiError(503, "the model is still loading; retry shortly", type="server_error",
                    code="model_loading", headers={"Retry-After": "2"})


# -- Starlette exception handlers -----------------------------------------

async def on_api_error(request, e: ApiError):
    return error_response(e)


async def on_http_exception(request, e):
    """Starlette's own 404/405/400s, in OpenAI's shape instead of {"detail": ...}."""
    message = e.detail if isinstance(e.detail, str) else "bad request"
    if e.status_code == 404:
        message = f"no route {request.method} {request.url.path}"
    elif e.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    return error_response(ApiError(e.status_code, message, headers=getattr(e, "headers", None)))


async def on_unexpected(request, e: Exception):
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=e)
    return error_response(ApiError(500, "internal server error (logged on the server)", type="server_error"))


# -- realtime error events ------------------------------------------------

def vllm_error(message: str, code: str) -> dict:
    return {"type": "error", "error": message, "code": code}


def openai_error(event_id: str, message: str, code: str, type: str = "invalid_request_error",
                 param: str | None = None, client_event_id: str | None = None) -> dict:
    return {"type": "error", "event_id": event_id,
            "error": {"type": type, "code": code, "message": message, "param": param,
                      "event_id": client_event_id}}
