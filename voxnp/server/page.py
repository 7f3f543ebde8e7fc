"""GET / and /static/...: the browser page (static package data, no key needed).

The page is a shell: it holds no data and every API call it makes carries the key
the user typed. Its responses forbid every origin but this server's (CSP), so a
transcript string can never pull in a script, style or image from elsewhere.
"""
from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from .errors import ApiError

STATIC = resources.files(__package__) / "static"
FILES = {                                   # the page's files and their types (nothing else is served)
    "index.html": "text/html; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
    "page.js": "text/javascript; charset=utf-8",
    "worklet.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "media-src 'self' blob:; connect-src 'self'; worker-src 'self'; manifest-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def is_page_path(path: str) -> bool:
    return path == "/" or path.startswith("/static/")


def page_file(name: str) -> Response:
    if name not in FILES:
        raise ApiError(404, f"no route GET /static/{name}")
    return Response((STATIC / name).read_bytes(), media_type=FILES[name], headers=HEADERS)


async def index(request: Request) -> Response:
    return page_file("index.html")


async def static_file(request: Request) -> Response:
    return page_file(request.path_params["name"])
