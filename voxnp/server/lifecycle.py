"""Stopping: SIGTERM drains the server, then it exits 0.

    SIGTERM (or the first Ctrl-C)
      1. stop accepting connections; /health and new requests answer 503
      2. websockets get an `error` event (code server_shutting_down) and close 1012
      3. HTTP requests running get up to --drain seconds to finish; then the rest
         answer 503 (Retry-After) and server-sent streams end with an `error` event
      4. uvicorn closes what is left, the worker thread stops, exit status 0

A second Ctrl-C stops at once (uvicorn's force exit). SIGKILL leaves nothing that a
restart trips on: the listening socket is reused at once, the left-padding cache is
written atomically and uploads are decoded from temporary files that are deleted.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time

import uvicorn

log = logging.getLogger("voxnp.server")


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining voxnp's sessions before it closes connections."""

    def __init__(self, config: uvicorn.Config, server, drain_s: float):
        super().__init__(config)
        self.voxnp = server
        self.drain_s = drain_s

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and sig in self._captured_signals:
            self._captured_signals.remove(sig)  # a drained server exits 0, not by re-raising SIGTERM

    async def shutdown(self, sockets=None) -> None:
        for s in self.servers:                  # no new connections while draining
            s.close()
        await self.drain()
        await super().shutdown(sockets)

    async def drain(self) -> None:
        server, engine = self.voxnp, self.voxnp.engine
        started = time.monotonic()
        server.draining.set()
        log.info("shutting down: %d session(s) get up to %g s to finish", engine.n_sessions, self.drain_s)
        deadline = started + self.drain_s
        while engine.n_sessions and time.monotonic() < deadline and not self.force_exit:
            await asyncio.sleep(0.05)
        server.drain_expired.set()
        for _ in range(20):                     # the 503s and error events go out
            if not engine.n_sessions:
                break
            await asyncio.sleep(0.05)
        log.info("drained in %.1f s (%d session(s) cut short)", time.monotonic() - started, engine.n_sessions)
