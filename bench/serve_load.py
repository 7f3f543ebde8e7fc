"""How many realtime streams `voxnp serve` keeps up with, at real-time pace.

    python bench/serve_load.py                             # full-size random checkpoint, bf16
    python bench/serve_load.py --weights q4 --streams 1,2,3,4 --seconds 20
    python bench/serve_load.py --model DIR --out bench/results/NAME.json

The server runs as a real process (`python -m voxnp.server`). For each N in --streams
(increasing), N realtime sessions speak vLLM's dialect as its example client does
(commit, appends, `commit final`), each sending --seconds of speech in 100 ms appends
at real-time pace, their starts spread over one --interval. Measured per level:

  backlog    /health's backlog_s (received audio the worker has not run yet), sampled
             every 0.25 s: the server keeps up while its maximum stays under --bound
  end        audio end (the final commit) -> transcription.done, per session: p50, p95
  first      connection -> first transcription.delta, p50

A level whose backlog passes 3 x --bound is cut short (closing its sockets drops its
work), and the levels stop there. The answer is the largest N that keeps up.
Without --model, the full-size random checkpoint of bench.py (bench/cache/full) is used;
converted weights go to bench/cache/voxnp (VOXNP_CACHE_DIR), shared with bench/quant.py.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import voxnp  # noqa: F401  (before NumPy: its thread settings must reach OpenBLAS as it loads)
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import SHARED_AUDIO, full_checkpoint  # noqa: E402
from common import print_table, write_json  # noqa: E402

SPEECH = "60s_i_dont_want_anyones_life_on_my_hands.wav"
APPEND_S = 0.1              # seconds of audio per append


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
        return json.loads(r.read())


def start_server(model, weights: str, port: int, max_sessions: int, interval: float, log: Path):
    cmd = [sys.executable, "-m", "voxnp.server", "--model", str(model), "--weights", weights,
           "--port", str(port), "--max-sessions", str(max_sessions), "--interval", str(interval)]
    out = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()}")
        try:
            if health(port)["status"] == "ok":
                return proc, time.monotonic() - t0
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.5)


async def session(port: int, pcm: bytes, start_delay: float, cut: asyncio.Event) -> dict:
    """One vLLM-dialect session at real-time pace; its timings (None where cut short)."""
    import websockets

    await asyncio.sleep(start_delay)
    step = int(APPEND_S * 16000) * 2                     # bytes per append
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/realtime", max_size=None) as ws:
        opened = time.monotonic()
        await ws.recv()                                  # session.created
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        first_delta, done_at = None, None

        async def read():
            nonlocal first_delta, done_at
            async for message in ws:
                event = json.loads(message)
                if event["type"] == "transcription.delta" and first_delta is None:
                    first_delta = time.monotonic()
                elif event["type"] in ("transcription.done", "error"):
                    done_at = time.monotonic()
                    return

        reader = asyncio.create_task(read())
        for k, i in enumerate(range(0, len(pcm), step)):
            if cut.is_set():
                break
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(pcm[i:i + step]).decode()}))
            await asyncio.sleep(max(0.0, opened + (k + 1) * APPEND_S - time.monotonic()))
        audio_end = time.monotonic()
        if not cut.is_set():
            await ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
            cancel = asyncio.create_task(cut.wait())
            await asyncio.wait({reader, cancel}, return_when=asyncio.FIRST_COMPLETED)
            cancel.cancel()
        reader.cancel()
    return {"first_s": None if first_delta is None else first_delta - opened,
            "end_s": None if done_at is None else done_at - audio_end}


async def level(port: int, n: int, pcm: bytes, interval: float, bound: float) -> dict:
    """N sessions at once, /health sampled meanwhile."""
    cut = asyncio.Event()
    backlog = []

    async def watch():
        while True:
            b = (await asyncio.to_thread(health, port))["backlog_s"]
            backlog.append(b)
            if b > 3 * bound:
                cut.set()
            await asyncio.sleep(0.25)

    watcher = asyncio.create_task(watch())
    results = await asyncio.gather(*(session(port, pcm, i * interval / n, cut) for i in range(n)))
    watcher.cancel()
    ends = [r["end_s"] for r in results if r["end_s"] is not None]
    firsts = [r["first_s"] for r in results if r["first_s"] is not None]
    worst = max(backlog, default=0.0)
    return {"streams": n, "keeps_up": not cut.is_set() and worst < bound and len(ends) == n,
            "max_backlog_s": round(worst, 2),
            "end_p50_s": round(float(np.percentile(ends, 50)), 2) if ends else None,
            "end_p95_s": round(float(np.percentile(ends, 95)), 2) if ends else None,
            "first_delta_p50_s": round(float(np.percentile(firsts, 50)), 2) if firsts else None,
            "cut_short": cut.is_set()}


def main(model=None, weights="bf16", streams="1,2,3,4", seconds: float = 20.0, interval: float = 0.5,
         bound: float = 2.0, out=None):
    from voxnp.audio import load_audio

    counts = [int(x) for x in str(streams).replace("(", "").replace(")", "").split(",") if str(x).strip()]
    os.environ.setdefault("VOXNP_CACHE_DIR", str(HERE / "cache" / "voxnp"))   # the server inherits it
    model = Path(model) if model is not None else full_checkpoint()
    speech = load_audio(SHARED_AUDIO / SPEECH)[:int(seconds * 16000)]
    pcm = np.round(speech * 32768).astype("<i2").tobytes()
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="voxnp-serve-load-")) / "server.log"
    proc, ready_s = start_server(model, weights, port, max(counts) + 1, interval, log)
    print(f"server ready in {ready_s:.1f} s ({model}, {weights}); {seconds:g} s of speech per stream",
          flush=True)
    rows = []
    try:
        for n in counts:
            row = asyncio.run(level(port, n, pcm, interval, bound))
            rows.append(row)
            print_table([row], header=len(rows) == 1)
            while health(port)["sessions"]:              # cut-short work is dropped; wait for it
                time.sleep(0.5)
            if not row["keeps_up"]:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    sustained = max((r["streams"] for r in rows if r["keeps_up"]), default=0)
    print(f"real-time streams sustained: {sustained} (server log: {log})")
    write_json(out or HERE / "results" / f"serve_load_{weights}.json",
               {"model": str(model), "weights": weights, "seconds_per_stream": seconds,
                "interval": interval, "bound_s": bound, "server_ready_s": round(ready_s, 1),
                "threads": os.environ.get("VOXNP_THREADS"), "levels": rows, "sustained": sustained})


if __name__ == "__main__":
    import fire

    fire.Fire(main)
