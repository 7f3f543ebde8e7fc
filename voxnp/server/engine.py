"""The worker thread that owns the model and every session's stream.

All model work happens on one thread, in rounds; the asyncio side only queues
commands and reads events, so the event loop keeps answering (websocket pings
included) while the network runs.

    asyncio side                          worker thread, one round
    session.feed(samples) ─┐              1. take each session's queued commands
    session.flush()        ├── inbox ──>     (at most `interval` seconds of audio each)
    session.finish()       │              2. apply them to the session's Stream (encoder)
    session.reset()       ─┘              3. decode: all streams' new positions, sharing passes
    session.events  <── call_soon_threadsafe ── 4. new tokens, then a marker
                                                   ("flushed", "finished", "reset")

A session holds one of `max_sessions` slots from open() to close(). Its Stream is
created by its first command, dropped when it finishes or is reset, and dropped at
close() whatever it was doing: a client that disconnects cancels its work.
Rounds come every `interval` seconds while audio arrives (at once for a flush,
finish or reset, or when a session has `interval` seconds waiting), and each takes
every session's waiting audio, at most `interval` seconds of it: sessions streaming
at real-time pace are fed together and share decoder passes, and one long upload
cannot hold up the live sessions. How audio is cut into rounds does not change the
tokens (a stream fed in any chunking gives the offline tokens).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..scheduler import Scheduler
from ..stream import Stream
from . import heap

log = logging.getLogger("voxnp.server")
TRIM_EVERY_S = 10.0             # seconds between returns of free heap pages (heap.py)


class Busy(Exception):
    """Every session slot is taken."""


@dataclass
class Event:
    """What the worker hands back to a session, in order."""
    kind: str                                  # "tokens" | "flushed" | "finished" | "reset" | "error"
    tokens: list = field(default_factory=list)  # Token objects decoded since the last event
    stream: object = None                      # "finished": the finished Stream (None if nothing was fed)
    message: str = ""                          # "error": what went wrong (no traceback)


class Session:
    """The asyncio side's handle on one session: queue commands, await events.

    feed/flush/finish/reset/close never block: they append to the inbox that the
    worker drains. Events arrive on `events` in the order the commands were given.
    """

    def __init__(self, engine: Engine, sid: str, loop: asyncio.AbstractEventLoop, options: dict):
        self.id = sid
        self.options = options                  # Stream options (delay_ms, live), logprobs
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.inbox: deque = deque()             # (op, samples | None); guarded by the engine's lock
        self.queued = 0                         # samples in the inbox: audio not yet run
        self.unanswered = 0                     # flush/finish/reset whose marker has not arrived
        self.closed = False
        self.audio_s = 0.0                      # seconds of audio fed (worker-written)
        self.work_s = 0.0                       # seconds of worker time spent on it
        self.opened = time.monotonic()
        self._engine = engine
        self._loop = loop

    def feed(self, samples: np.ndarray) -> None:
        if len(samples):
            self._engine.submit(self, "feed", samples)

    def flush(self) -> None:
        self.unanswered += 1
        self._engine.submit(self, "flush")

    def finish(self) -> None:
        self.unanswered += 1
        self._engine.submit(self, "finish")

    def reset(self) -> None:
        self.unanswered += 1
        self._engine.submit(self, "reset")

    @property
    def idle(self) -> bool:
        """No audio waiting for the worker and no command waiting for its answer."""
        return not self.queued and not self.unanswered

    def close(self) -> None:
        self._engine.close(self)

    async def next_event(self) -> Event:
        return await self.events.get()

    def post(self, events: list[Event]) -> None:
        """Called on the worker thread: hand events to the event loop."""
        try:
            self._loop.call_soon_threadsafe(self._put, events)
        except RuntimeError:                    # the loop is closed: the server is stopping
            pass

    def _put(self, events: list[Event]) -> None:
        if not self.closed:
            for e in events:
                if e.kind != "tokens":
                    self.unanswered = max(0, self.unanswered - 1)
                self.events.put_nowait(e)


class LogprobStream(Stream):
    """A Stream whose tokens also carry `logprob`: log p(token) under the full softmax
    (verbose_json's avg_logprob). Costs one log-sum-exp over the vocabulary per token."""

    def _emit(self, token_id: int, logits: np.ndarray, pos: int) -> None:
        n = len(self._queue)
        super()._emit(token_id, logits, pos)
        if len(self._queue) > n:
            top = float(np.max(logits))
            lse = top + float(np.log(np.sum(np.exp(logits - top, dtype=np.float64))))
            self._queue[-1].logprob = float(logits[token_id]) - lse


class Engine:
    """One model, many sessions; a worker thread runs every round of model work."""

    def __init__(self, model, max_sessions: int = 4, interval: float = 0.5, speculate: int = 3):
        self.model = model
        self.speculate = speculate              # drafted rows per stream where a pass has room
        self.max_sessions = max_sessions
        self.interval = interval
        rate = model.config.audio.sampling_rate
        self.rate = rate
        self.round_samples = max(model.config.audio.samples_per_token, int(interval * rate))
        self.scheduler = Scheduler(model)
        self.ready = threading.Event()          # set once the warm-up is done
        self.failed: str | None = None          # the warm-up's error, if any
        self._cond = threading.Condition()
        self._sessions: dict[str, Session] = {}  # open sessions (each holds a slot)
        self._closing: list[str] = []           # closed since the last round: drop their streams
        self._streams: dict[str, object] = {}   # session id -> Stream; worker thread only
        self._ids = itertools.count(1)
        self._stop = False
        self._trimmed = time.monotonic()
        self._thread = threading.Thread(target=self._work, name="voxnp-engine", daemon=True)

    # -- the asyncio side -------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=10)

    @property
    def n_sessions(self) -> int:
        return len(self._sessions)

    def backlog_s(self) -> float:
        """Seconds of received audio the busiest session still waits for the worker to run:
        stays under about `interval` while the server keeps up with its sessions."""
        with self._cond:
            return max((s.queued for s in self._sessions.values()), default=0) / self.rate

    def open(self, prefix: str = "sess", **options) -> Session:
        """A new session, or Busy. Options: the Stream's (delay_ms, live), and logprobs
        (tokens carry `logprob`)."""
        with self._cond:
            if len(self._sessions) >= self.max_sessions:
                raise Busy()
            sid = f"{prefix}-{next(self._ids):06d}"
            session = Session(self, sid, asyncio.get_running_loop(), options)
            self._sessions[sid] = session
            return session

    def submit(self, session: Session, op: str, samples=None) -> None:
        with self._cond:
            if session.closed:
                return
            session.inbox.append((op, samples))
            session.queued += len(samples) if samples is not None else 0
            self._cond.notify()

    def close(self, session: Session) -> None:
        """Free the slot; the worker drops the stream (and any queued work) next round."""
        with self._cond:
            if session.closed:
                return
            session.closed = True
            session.inbox.clear()
            session.queued = 0
            self._sessions.pop(session.id, None)
            self._closing.append(session.id)
            self._cond.notify()

    # -- the worker thread ------------------------------------------------

    def _new_stream(self, options: dict):
        # scheduled: feed/flush/finish run the encoder only, _decode runs the decoder;
        # interval 0: the network runs on each feed (the rounds decide when that is)
        options = dict(options)
        kind = LogprobStream if options.pop("logprobs", False) else Stream
        return kind(self.model, interval=0, scheduled=True, speculate=self.speculate, **options)

    def _decode(self, streams: list) -> None:
        """Decode every position these streams can decode now, their rows sharing each
        decoder pass (one read of the weights for up to 8 rows): the batched scheduler."""
        if streams:
            self.scheduler.run(streams)

    def _work(self) -> None:
        try:
            self._warm_up()
        except Exception as e:                  # noqa: BLE001 -- reported by /health and the log
            log.exception("warm-up failed")
            self.failed = f"warm-up failed: {e}"
            return
        self.ready.set()
        last_round = 0.0
        while True:
            with self._cond:
                while (wait := self._until_next_round(last_round)) != 0:
                    if wait is None:                # idle: what the last requests freed goes back too
                        self._trim_memory()
                    self._cond.wait(timeout=wait if wait is not None else TRIM_EVERY_S)
                if self._stop:
                    return
                last_round = time.monotonic()
                batch = [(s, self._take(s)) for s in list(self._sessions.values()) if s.inbox]
            self._round(batch)
            self._trim_memory()

    def _trim_memory(self) -> None:
        """Every TRIM_EVERY_S, hand the C heap's free pages back to the system (heap.py)."""
        now = time.monotonic()
        if now - self._trimmed >= TRIM_EVERY_S:
            self._trimmed = now
            heap.trim()

    def _until_next_round(self, last_round: float) -> float | None:
        """Seconds until the next round is due (0: now; None: when a command comes).

        A round is due at once for a flush/finish/reset or a session with a round's
        worth of audio waiting; otherwise `interval` after the last one began. So
        sessions that stream at real-time pace are all fed in the same rounds, and their
        new positions share decoder passes, whatever the phase of their appends.
        """
        for sid in self._closing:               # closed sessions: drop their streams
            self._streams.pop(sid, None)
        self._closing.clear()
        waiting = [s for s in self._sessions.values() if s.inbox]
        if self._stop:
            return 0
        if not waiting:
            return None
        if any(s.queued >= self.round_samples or any(op != "feed" for op, _ in s.inbox) for s in waiting):
            return 0
        return max(0.0, last_round + self.interval - time.monotonic())

    def _warm_up(self) -> None:
        """Compute the left padding for the default delay and run every kernel once,
        so the first client does not pay for it."""
        t0 = time.perf_counter()
        stream = self._new_stream({})
        spt = self.model.config.audio.samples_per_token
        stream.feed(np.zeros(2 * spt, np.float32))
        stream.flush_pending()
        self._decode([stream])
        stream.get()
        log.info("warm-up done in %.1f s", time.perf_counter() - t0)

    def _take(self, session: Session) -> list:
        """Commands for this round: its audio (up to `interval` seconds, as one feed),
        then at most one other command."""
        audio, taken, budget = [], [], self.round_samples
        while session.inbox and budget > 0:
            op, samples = session.inbox[0]
            if op != "feed":
                session.inbox.popleft()
                taken.append((op, None))
                break
            if len(samples) > budget:
                session.inbox[0] = (op, samples[budget:])
                samples = samples[:budget]
            else:
                session.inbox.popleft()
            audio.append(samples)
            budget -= len(samples)
            session.queued -= len(samples)
        if audio:
            taken.insert(0, ("feed", np.concatenate(audio)))
        return taken

    def _round(self, batch: list) -> None:
        markers: dict[str, str | None] = {}
        for session, commands in batch:
            t0 = time.perf_counter()
            try:
                markers[session.id] = self._apply(session, commands)
            except Exception as e:              # noqa: BLE001 -- one session fails, the rest go on
                self._fail(session, e)
            session.work_s += time.perf_counter() - t0
        ok = [s for s, _ in batch if s.id in markers]
        streams = [self._streams[s.id] for s in ok if s.id in self._streams]
        t0 = time.perf_counter()
        try:
            self._decode(streams)
        except Exception as e:                  # noqa: BLE001
            for session in ok:
                self._fail(session, e)
            return
        for session in ok:
            session.work_s += (time.perf_counter() - t0) / max(1, len(streams))
            self._deliver(session, markers[session.id])

    def _apply(self, session: Session, commands: list) -> str | None:
        """Run a session's commands on its stream (created on demand); return its marker."""
        marker = None
        for op, samples in commands:
            if op == "reset":
                self._streams.pop(session.id, None)
                marker = "reset"
                continue
            stream = self._streams.get(session.id)
            if stream is None and op != "feed":  # nothing was fed: nothing to decode
                marker = "finished" if op == "finish" else "flushed"
                continue
            if stream is None:
                stream = self._streams[session.id] = self._new_stream(session.options)
            if op == "feed":
                stream.feed(samples)
                session.audio_s += len(samples) / self.rate
            elif op == "flush":
                stream.flush()
                marker = "flushed"
            elif op == "finish":
                stream.finish()
                marker = "finished"
        return marker

    def _deliver(self, session: Session, marker: str | None) -> None:
        stream = self._streams.get(session.id)
        events = []
        tokens = stream.get(with_tokens=True) if stream is not None else []
        if tokens:
            events.append(Event("tokens", tokens))
        if marker == "finished":
            events.append(Event("finished", stream=self._streams.pop(session.id, None)))
        elif marker is not None:
            events.append(Event(marker))
        if events:
            session.post(events)

    def _fail(self, session: Session, e: Exception) -> None:
        log.error("session %s: processing error", session.id, exc_info=e)
        self._streams.pop(session.id, None)
        session.post([Event("error", message=f"processing error: {type(e).__name__}: {e}")])
