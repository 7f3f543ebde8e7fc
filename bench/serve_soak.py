"""Soak `voxnp serve`: N clients for --minutes of realtime streams, uploads, faults and fuzz.

    python bench/serve_soak.py                              # tiny checkpoint, 4 clients, 30 minutes
    python bench/serve_soak.py --minutes 2 --clients 2      # a quick look
    python bench/serve_soak.py --model DIR --weights q4 --minutes 60

The server runs as a real process on loopback (`python -m voxnp.server`, --timeout 3,
--drain 5). Each client loops over a random mix of
  realtime   vLLM's dialect at real-time pace and unpaced (two utterances a socket),
             OpenAI's dialect (one item at 16 kHz)
  uploads    POST /v1/audio/transcriptions in every response_format, and stream=true
  faults     disconnect mid-upload, mid-decode, mid-SSE and mid-stream, a slow consumer,
             a slowloris upload (408), an idle websocket (closed after --timeout)
  fuzz       Hypothesis cases on the websocket and the upload route (tests/serve_fuzz.py)
and one more process (spawned, on core 0) fuzzes without sockets: the upload decoder,
the stdin reader, the base64 PCM chunks, and the server's app with an engine of its own
driven in-process (tests/serve_fuzz.py AppDriver); its cases are counted apart
(`in_process_*` in fuzz_cases_by_kind). The load generators run at nice 5, below the
server and the /health monitor.
Every completed transcript is compared with the offline transcript of the same samples
(json/text/srt/vtt/verbose_json/SSE/realtime). At the end: the sessions left, then
SIGTERM while sessions run (drain: exit 0 within a bound, websockets told, requests
200 or 503) and SIGKILL + restart (serves again at once).

Prints a row a minute and writes bench/results/serve_soak.json (see `summary`).
"""
from __future__ import annotations

import asyncio
import io
import json
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

import voxnp  # noqa: F401  (before NumPy: its thread settings must reach OpenBLAS as it loads)
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import print_table, write_json  # noqa: E402

import serve_harness as H  # noqa: E402

SHARED_AUDIO = HERE.parent.parent / "shared" / "audio"
SPEECH = "60s_i_dont_want_anyones_life_on_my_hands.wav"
UPLOAD_FORMATS = ["json", "text", "srt", "vtt", "verbose_json", "stream-json", "stream-text"]
SERVER_ARGS = ["--timeout", "3", "--drain", "5", "--max-upload-mb", "4"]
CLIENT_NICE = 5                 # the load generators run below the server (and the /health monitor)
IN_PROCESS_RATE = 80            # in-process fuzz cases per second at most (a shared machine)


class Clips:
    """Speech clips, their upload files and offline transcripts (the server's model, this process)."""

    def __init__(self, model_dir, weights: str, n: int = 6):
        import soundfile as sf

        import voxnp
        from voxnp.audio import load_audio
        from voxnp.stream import Stream, transcribe

        self.model = voxnp.load(model_dir, weights=weights)
        speech = load_audio(SHARED_AUDIO / SPEECH)
        self.samples, self.wav, self.offline, self.flushed = [], [], [], []
        for i in range(n):
            x = speech[i * 96000: i * 96000 + 24000 + 4000 * i]          # 1.5 .. 2.75 s
            buf = io.BytesIO()
            sf.write(buf, x, 16000, format="WAV", subtype="PCM_16")
            self.samples.append(x)
            self.wav.append(buf.getvalue())
            self.offline.append(transcribe(self.model, x))
            s = Stream(self.model, live=True)          # an OpenAI item ends with a flush(), not finish()
            s.feed(x)
            s.flush()
            self.flushed.append("".join(s.get()))
        self.pcm = [H.pcm16(x) for x in self.samples]

    def expected(self, i: int, fmt: str) -> str:
        from voxnp import formats

        r, duration = self.offline[i], len(self.samples[i]) / 16000
        if fmt == "realtime-item":
            return self.flushed[i]
        if fmt in ("json", "verbose_json", "stream-json", "stream-text", "realtime-done"):
            return r.text.strip() if fmt != "realtime-done" else r.text
        return formats.render("txt" if fmt == "text" else fmt, r.text, r.tokens, duration)


class Tally:
    """Everything counted, shared by the client tasks (one event loop) and the monitor threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.c = Counter()
        self.faults = Counter()
        self.fuzz = Counter()
        self.unclean: list[str] = []
        self.wrong: list[str] = []

    def add(self, **kw):
        with self.lock:
            self.c.update(kw)

    def bad(self, what: str, detail: str):
        with self.lock:
            self.c["unclean_errors"] += 1
            if len(self.unclean) < 30:
                self.unclean.append(f"{what}: {detail[-800:]}")


def text_of_upload(fmt: str, status: int, body: bytes) -> str:
    if fmt.startswith("stream"):
        events = [json.loads(chunk[len("data: "):]) for chunk in body.decode().split("\n\n") if chunk]
        assert events[-1]["type"] == "transcript.text.done", events[-1]
        assert events[-1]["text"] == "".join(e["delta"] for e in events[:-1])
        return events[-1]["text"]
    if fmt in ("json", "verbose_json"):
        return json.loads(body)["text"]
    return body.decode()


async def upload(served, clips, tally, rng):
    i, fmt = rng.randrange(len(clips.wav)), rng.choice(UPLOAD_FORMATS)
    fields = [("model", "whisper-1")]
    if fmt.startswith("stream"):
        fields += [("stream", "true"), ("response_format", fmt.split("-")[1])]
    else:
        fields += [("response_format", fmt)]
    status, _, body = await asyncio.to_thread(H.post_form, served, fields, [("file", "a.wav", clips.wav[i])])
    tally.add(requests=1, sessions=1)
    if status == 503:
        tally.add(busy_503=1)
        return
    if status != 200:
        return tally.bad(f"upload {fmt}", f"{status} {body[:300]!r}")
    got, want = text_of_upload(fmt, status, body), clips.expected(i, fmt)
    tally.add(transcripts_checked=1)
    if got != want:
        tally.add(wrong_transcripts=1)
        tally.wrong.append(f"upload {fmt} clip {i}: {got!r} != {want!r}")


async def realtime(served, clips, tally, rng, kind: str):
    i = rng.randrange(len(clips.pcm))
    want = clips.expected(i, "realtime-item" if kind == "openai" else "realtime-done")
    if kind == "openai":
        texts = [await H.openai_transcribe(served, clips.pcm[i])]
    else:
        n = 1 if kind == "paced" else 2
        texts = await H.vllm_transcribe(served, clips.pcm[i], pace=1.0 if kind == "paced" else 0.0, utterances=n)
    tally.add(sessions=1, transcripts_checked=len(texts))
    for t in texts:
        if t != want:
            tally.add(wrong_transcripts=1)
            tally.wrong.append(f"realtime {kind} clip {i}: {t!r} != {want!r}")


async def fault(served, clips, tally, rng):
    kind = rng.choice(["mid_upload", "mid_decode", "mid_sse", "mid_stream", "slow_consumer", "slowloris", "idle"])
    wav, pcm = clips.wav[rng.randrange(len(clips.wav))], clips.pcm[0]
    long_wav = b"".join(clips.wav[:1]) if kind != "mid_decode" else (SHARED_AUDIO / SPEECH).read_bytes()
    if kind == "mid_upload":
        await asyncio.to_thread(H.disconnect_mid_upload, served, wav, rng.random())
    elif kind == "mid_decode":
        await asyncio.to_thread(H.disconnect_mid_decode, served, long_wav, rng.random() * 0.5)
    elif kind == "mid_sse":
        await asyncio.to_thread(H.disconnect_mid_sse, served, long_wav)
    elif kind == "mid_stream":
        await H.disconnect_mid_stream(served, pcm)
    elif kind == "slow_consumer":
        await H.slow_consumer(served, np.tile(np.frombuffer(pcm, np.uint8), 4).tobytes(), 2.0)
    elif kind == "slowloris":
        await asyncio.to_thread(H.slowloris_upload, served, wav, 0.5, 12.0)
    else:
        await H.idle_websocket(served, 12.0)
    tally.add(faults_injected=1, sessions=1, requests=kind in ("mid_upload", "mid_decode", "mid_sse", "slowloris"))
    tally.faults[kind] += 1


def fuzz_runners(served, tally):
    """Hypothesis-driven network cases: (ws burst, http burst), each a plain function."""
    from hypothesis import HealthCheck, given, settings

    import serve_fuzz as F

    cfg = settings(max_examples=10, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                   print_blob=False)

    @cfg
    @given(F.ws_cases())
    def ws(case):
        asyncio.run(F.run_ws_case(served, *case, timeout=30))
        tally.add(sessions=1)
        with tally.lock:
            tally.fuzz["ws"] += 1

    @cfg
    @given(F.forms())
    def http(case):
        F.run_http_case(served, *case, timeout=30)
        tally.add(requests=1)
        with tally.lock:
            tally.fuzz["http"] += 1

    return ws, http


async def client(k: int, served, clips, tally, stop: threading.Event, seed: int):
    import websockets

    rng = random.Random(seed * 1000 + k)
    fuzz_ws, fuzz_http = fuzz_runners(served, tally)
    mix = [("paced", 2), ("fast", 2), ("openai", 2), ("upload", 5), ("fault", 3), ("fuzz_ws", 4), ("fuzz_http", 4)]
    names = [m for m, w in mix for _ in range(w)]
    while not stop.is_set():
        what = rng.choice(names)
        try:
            if what in ("paced", "fast", "openai"):
                await realtime(served, clips, tally, rng, what)
            elif what == "upload":
                await upload(served, clips, tally, rng)
            elif what == "fault":
                await fault(served, clips, tally, rng)
            elif what == "fuzz_ws":
                await asyncio.to_thread(fuzz_ws)
            else:
                await asyncio.to_thread(fuzz_http)
        except websockets.exceptions.InvalidStatus as e:
            if e.response.status_code == 503:
                tally.add(busy_503=1)
                await asyncio.sleep(0.2)
            else:
                tally.bad(what, repr(e))
        except Exception as e:                 # noqa: BLE001 -- every failure is counted and shown
            tally.bad(what, "".join(traceback.format_exception(e))[-1500:])


def in_process_fuzz(seconds: float, rate: float, out, log: str):
    """A child process on the other core: the decoders (upload, stdin, PCM chunks) and the
    server's app driven without sockets (websocket and upload cases, a tiny checkpoint of
    its own); counts sent to `out`."""
    import logging

    os.sched_setaffinity(0, {0})
    os.nice(5)
    os.dup2(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND), 2)  # libmpg123's notes on malformed MP3s
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    from hypothesis import HealthCheck, given, settings

    import serve_fuzz as F
    from voxnp.checkpoint import write_checkpoint

    tmp = tempfile.TemporaryDirectory(prefix="voxnp-soak-fuzz-")
    driver = F.AppDriver(write_checkpoint(Path(tmp.name) / "tiny", preset="tiny", seed=0))

    counts, failures = Counter(), []
    cfg = settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                   print_blob=False)

    @cfg
    @given(F.audio_bytes())
    def decoder(data):
        F.run_decoder_case(data)
        counts["decoder"] += 1

    @cfg
    @given(F.audio_bytes())
    def stdin(data):
        F.run_stdin_case(data)
        counts["stdin"] += 1

    @cfg
    @given(F.pcm_chunk_lists())
    def pcm(case):
        F.run_pcm_case(*case)
        counts["pcm"] += 1

    @cfg
    @given(F.ws_cases())
    def app_ws(case):
        driver.run(driver.websocket(*case))
        counts["app_ws"] += 1

    @cfg
    @given(F.forms())
    def app_http(case):
        F.run_app_http_case(driver, *case)
        counts["app_http"] += 1

    # the upload decoder's cases cost 5-30x the others' (real files cut, resampled, MP3s
    # decoded): it runs every other round, the cheaper targets every round
    rounds = [(decoder, stdin, pcm, app_ws, app_http), (stdin, pcm, app_ws, app_http)]
    t0, n = time.monotonic(), 0
    while time.monotonic() - t0 < seconds:
        n += 1
        for f in rounds[n % 2]:
            start, before = time.monotonic(), sum(counts.values())
            try:
                f()
            except Exception as e:               # noqa: BLE001
                failures.append(f"{f.__name__}: {e!r}"[:1500])
            spent = time.monotonic() - start
            time.sleep(max(0.0, (sum(counts.values()) - before) / rate - spent))
    out.send((dict(counts), failures))


def monitor(served, tally, stop: threading.Event, health_ms: list, rss: list, t0: float):
    """/health every 0.25 s (latency, status) and the server's RSS every 5 s."""
    next_rss = 0.0
    while not stop.is_set():
        start = time.monotonic()
        try:
            doc = served.health()
            ms = 1000 * (time.monotonic() - start)
            health_ms.append((start - t0, ms))
            if doc["http_status"] != 200 or doc["status"] != "ok":
                tally.bad("health", json.dumps(doc))
        except Exception as e:                   # noqa: BLE001
            health_ms.append((start - t0, 1000 * (time.monotonic() - start)))
            tally.bad("health", repr(e))
        if start >= next_rss:
            rss.append((start - t0, served.rss_mb()))
            next_rss = start + 5
        time.sleep(max(0.0, 0.25 - (time.monotonic() - start)))


def p99(values) -> float:
    return round(float(np.percentile(values, 99)), 1) if len(values) else 0.0


def drain_check(served, clips) -> dict:
    """SIGTERM while sessions run: a realtime stream at real-time pace, an unpaced upload of
    60 s of speech and a streamed upload. Exit 0 within the bound; each client gets a
    clean ending (done/error event, 200 or 503)."""
    long_wav = (SHARED_AUDIO / SPEECH).read_bytes()
    endings, sigterm = {}, []

    async def stream():
        """A client that reads its events while it sends at real-time pace (one that does not
        read may lose the error event: the server's close resets a connection with unread data)."""
        ws = await H.ws_connect(served)
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        pcm = b"".join(clips.pcm) * 4

        async def read():
            ending = "closed without an error event"
            try:
                while True:
                    event = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if event["type"] in ("error", "transcription.done"):
                        ending = f"{event['type']} {event.get('code', '')}".strip()
                        endings["realtime_after_sigterm_s"] = round(time.monotonic() - sigterm[0], 2) if sigterm else None
            except Exception:                    # noqa: BLE001 -- the close that follows
                pass
            endings["realtime"] = ending

        reader = asyncio.create_task(read())
        try:
            for i in range(0, len(pcm), 4096):
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": H.b64(pcm[i:i + 4096])}))
                await asyncio.sleep(4096 / 32000)
        except Exception:                        # noqa: BLE001 -- the socket closed: the reader says how
            pass
        await reader

    def post(name, fields):
        try:
            status, _, body = H.post_form(served, fields, [("file", "a.wav", long_wav)], timeout=60)
            endings[name] = status if name != "sse" else f"{status} {body.decode()[-120:].strip()}"
        except Exception as e:                   # noqa: BLE001
            endings[name] = f"no answer: {e!r}"

    threads = [threading.Thread(target=post, args=("upload", [])),
               threading.Thread(target=post, args=("sse", [("stream", "true")]))]
    for t in threads:
        t.start()

    async def run():
        task = asyncio.create_task(stream())
        await asyncio.sleep(1.5)
        t0 = time.monotonic()
        sigterm.append(t0)
        code = await asyncio.to_thread(served.stop, signal.SIGTERM, 60)
        elapsed = time.monotonic() - t0
        await asyncio.wait_for(task, 30)
        return code, elapsed

    code, elapsed = asyncio.run(run())
    for t in threads:
        t.join(60)
    return {"exit_code": code, "exit_s": round(elapsed, 2), "bound_s": 15, "endings": endings,
            "ok": code == 0 and elapsed < 15 and endings.get("realtime", "").startswith("error")
            and (endings.get("realtime_after_sigterm_s") or 99) < 3      # told at once, not after --drain
            and all(str(endings.get(k, "")).startswith(("200", "503")) for k in ("upload", "sse"))}


def kill_check(served, clips) -> dict:
    """SIGKILL in the middle of sessions; a restart serves again at once, correctly."""
    served.start()
    long_wav = (SHARED_AUDIO / SPEECH).read_bytes()
    worker = threading.Thread(target=lambda: _ignore(H.post_form, served, [], [("file", "a.wav", long_wav)]))
    worker.start()
    time.sleep(1.0)
    served.proc.kill()
    served.proc.wait()
    worker.join(30)
    ready_s = served.start()
    status, _, body = H.post_form(served, [], [("file", "a.wav", clips.wav[0])])
    ok = status == 200 and json.loads(body)["text"] == clips.expected(0, "json")
    served.stop()
    return {"restart_ready_s": round(ready_s, 2), "transcript_ok": ok}


def _ignore(f, *args):
    try:
        f(*args)
    except Exception:                            # noqa: BLE001 -- the server was killed under it
        pass


def main(model=None, weights="bf16", clients: int = 4, minutes: float = 30.0, seed: int = 0,
         out=None, note: str = ""):
    tmp = None
    if model is None:
        from voxnp.checkpoint import write_checkpoint

        tmp = tempfile.TemporaryDirectory(prefix="voxnp-soak-")
        model = write_checkpoint(Path(tmp.name) / "tiny", preset="tiny", seed=0)
    clips = Clips(model, weights)
    log = Path(tempfile.mkdtemp(prefix="voxnp-soak-log-")) / "server.log"
    served = H.Served(model, log, args=["--weights", weights, "--max-sessions", str(clients + 2), *SERVER_ARGS])
    ready_s = served.start()
    print(f"server ready in {ready_s:.1f} s ({model}, {weights}); {clients} clients for {minutes:g} min; "
          f"log {log}", flush=True)
    tally, stop = Tally(), threading.Event()
    health_ms, rss = [], []
    t0 = time.monotonic()
    mon = threading.Thread(target=monitor, args=(served, tally, stop, health_ms, rss, t0), daemon=True)
    mon.start()
    os.nice(CLIENT_NICE)      # this thread only (Linux): the clients and their threads yield to the server
    spawn = multiprocessing.get_context("spawn")   # not fork: this process has BLAS/OpenMP threads
    parent, child = spawn.Pipe()
    fuzzer = spawn.Process(target=in_process_fuzz, args=(minutes * 60, IN_PROCESS_RATE, child,
                                                         str(log.with_name("fuzz.log"))))
    fuzzer.start()

    async def run_clients():
        tasks = [asyncio.create_task(client(k, served, clips, tally, stop, seed)) for k in range(clients)]
        rows, minute = [], 1
        while time.monotonic() - t0 < minutes * 60:
            await asyncio.sleep(1)
            if time.monotonic() - t0 >= minute * 60:
                recent = [ms for t, ms in health_ms if t >= (minute - 1) * 60]
                with tally.lock:
                    c = dict(tally.c)
                rows.append({"minute": minute, "sessions": c.get("sessions", 0), "requests": c.get("requests", 0),
                             "faults": c.get("faults_injected", 0), "net_fuzz": sum(tally.fuzz.values()),
                             "checked": c.get("transcripts_checked", 0), "wrong": c.get("wrong_transcripts", 0),
                             "unclean": c.get("unclean_errors", 0), "rss_mb": round(rss[-1][1], 1),
                             "health_p99_ms": p99(recent), "load1": round(os.getloadavg()[0], 1)})
                print_table(rows[-1:], header=minute == 1)
                minute += 1
        stop.set()
        _, hung = await asyncio.wait(tasks, timeout=120)
        for task in hung:
            tally.bad("client", "a client did not finish its last scenario within 120 s (a hang)")
            task.cancel()
        return rows

    rows = asyncio.run(run_clients())
    in_process, failures = parent.recv() if parent.poll(120) else (
        {}, [f"the in-process fuzzer did not report (exit code {fuzzer.exitcode}; see {log.with_name('fuzz.log')})"])
    fuzzer.join(30)
    for f in failures:
        tally.bad("in-process fuzz", f)
    left = H.wait_sessions(served, 20)
    mon.join(5)
    rss_end = served.rss_mb()
    tracebacks = served.tracebacks()
    if tracebacks:
        tally.bad("server log", f"{tracebacks} traceback(s) in {log}")
    start5 = min(300, minutes * 60 / 6)          # minute 5 (or a sixth of a shorter run)
    window = min(60, minutes * 60 / 6)
    minute5 = [mb for t, mb in rss if start5 <= t < start5 + window]
    last = [mb for t, mb in rss if t >= minutes * 60 - window]
    after5 = [(t, mb) for t, mb in rss if t >= start5]
    slope = float(np.polyfit([t for t, _ in after5], [mb for _, mb in after5], 1)[0]) * 3600 if len(after5) > 2 else 0.0
    drain = drain_check(served, clips)
    restart = kill_check(served, clips)
    c = tally.c
    fuzz_by_kind = {**{f"network_{k}": v for k, v in tally.fuzz.items()}, **{f"in_process_{k}": v for k, v in in_process.items()}}
    summary = {
        "model": str(model) if tmp is None else "tiny (random weights, written by this run)", "weights": weights,
        "minutes": minutes, "clients": clients, "server_args": SERVER_ARGS,
        "sessions": c["sessions"], "requests": c["requests"], "faults_injected": c["faults_injected"],
        "faults_by_kind": dict(tally.faults), "fuzz_cases": sum(fuzz_by_kind.values()),
        "fuzz_cases_by_kind": fuzz_by_kind, "transcripts_checked": c["transcripts_checked"],
        "wrong_transcripts": c["wrong_transcripts"], "unclean_errors": c["unclean_errors"],
        "busy_503": c["busy_503"],
        "rss_start_mb": round(rss[0][1], 1), "rss_minute5_mb": round(float(np.median(minute5)), 1),
        "rss_last_minute_mb": round(float(np.median(last)), 1),
        "rss_end_mb": round(rss_end, 1), "rss_max_mb": round(max(mb for _, mb in rss), 1),
        "rss_growth_after_minute5_mb": round(float(np.median(last) - np.median(minute5)), 1),
        "rss_idle_end_minus_minute5_mb": round(rss_end - float(np.median(minute5)), 1),
        "rss_trend_after_minute5_mb_per_hour": round(slope, 1),
        "rss_note": "sampled every 5 s under load; minute 5 and the last minute are medians over a minute "
                    "of samples; rss_end_mb is taken once the clients have stopped (idle)",
        "sessions_left": left, "p99_health_ms": p99([ms for _, ms in health_ms]),
        "max_health_ms": round(max(ms for _, ms in health_ms), 1), "health_polls": len(health_ms),
        "drain": drain, "kill_restart": restart, "server_log_tracebacks": tracebacks,
        "unclean_examples": tally.unclean, "wrong_examples": tally.wrong[:20], "note": note, "rows": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    write_json(out or HERE / "results" / "serve_soak.json", summary)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    import fire

    fire.Fire(main)
