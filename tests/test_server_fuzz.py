"""Hypothesis fuzzing of `voxnp serve` (a CI-sized run: a few hundred cases, seconds) and of
the audio readers, plus the defects the fuzz found, each as a fixed example.

The long run is bench/serve_soak.py; the strategies and properties are tests/serve_fuzz.py."""
from __future__ import annotations

import asyncio
import json

import pytest

for _package in ("starlette", "uvicorn", "websockets", "hypothesis"):
    pytest.importorskip(_package)

from hypothesis import HealthCheck, given, settings  # noqa: E402

import serve_fuzz as F  # noqa: E402
import serve_harness as H  # noqa: E402

# derandomized: the same cases on every run (no flakes); the soak explores at random
CI = settings(deadline=None, database=None, derandomize=True, print_blob=False,
              suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def served(tiny_dir, tmp_path_factory):
    s = H.Served(tiny_dir, tmp_path_factory.mktemp("fuzz") / "server.log",
                 args=["--max-sessions", "6", "--max-upload-mb", "4", "--timeout", "5"])
    s.start()
    yield s
    assert s.stop() == 0


def assert_still_serving(served) -> None:
    """/health ok, every session closed, no traceback logged."""
    assert H.wait_sessions(served) == 0
    doc = served.health()
    assert doc["http_status"] == 200 and doc["status"] == "ok", doc
    assert served.tracebacks() == 0, served.log.read_text()[-3000:]


def test_websocket_fuzz(served):
    @settings(CI, max_examples=40)
    @given(F.ws_cases())
    def case(c):
        asyncio.run(F.run_ws_case(served, *c, timeout=30))

    case()
    assert_still_serving(served)


def test_upload_fuzz(served):
    @settings(CI, max_examples=60)
    @given(F.forms())
    def case(c):
        F.run_http_case(served, *c, timeout=30)

    case()
    assert_still_serving(served)


@settings(CI, max_examples=150)
@given(F.audio_bytes())
def test_upload_decoder_fuzz(data):
    F.run_decoder_case(data)


@settings(CI, max_examples=150)
@given(F.audio_bytes())
def test_stdin_reader_fuzz(data):
    F.run_stdin_case(data)


@settings(CI, max_examples=150)
@given(F.pcm_chunk_lists())
def test_pcm_chunks_fuzz(case):
    F.run_pcm_case(*case)


# -- what the fuzz found ----------------------------------------------------------

def test_form_fields_sent_as_files_are_400(served):
    """Was a 500: `stream`, `temperature`, `language` ... sent as file parts reached
    .strip()/float()/the JSON body as UploadFile objects."""
    wav = F.sample_files()["wav"]
    for name in ("stream", "temperature", "language", "delay_ms", "response_format", "model"):
        body, ctype = H.multipart([], [("file", "a.wav", wav), (name, "x", b"1")])
        status, _, answer = H.request(served, "POST", "/v1/audio/transcriptions", body, {"Content-Type": ctype})
        doc = H.check_error_body(status, answer, allowed=(400,))
        assert doc["error"]["param"] == name
    assert_still_serving(served)


def test_event_type_with_a_lone_surrogate_is_answered(served):
    """Was a dropped connection and a traceback: echoing "\\ud800" in an error event
    could not be encoded as UTF-8. Echoed values are also cut to a readable length."""
    async def run():
        for query in ("", "?intent=transcription"):
            ws = await H.ws_connect(served, query)
            try:
                for event in ({"type": "\ud800"}, {"type": "x" * 100000}, {"type": "session.update", "model": "\udfff"},
                              {"type": "input_audio_buffer.append", "audio": "A", "event_id": "\ud800" * 3}):
                    await ws.send(json.dumps(event))
                    if event.get("model") and not query:
                        continue                        # vLLM's session.update has no reply
                    answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    F.check_ws_event(answer)
                    assert answer["type"] == "error" and len(json.dumps(answer)) < 2000, answer
                await ws.send(json.dumps({"type": F.PROBE}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "error"
            finally:
                await ws.close()

    asyncio.run(run())
    assert_still_serving(served)


def test_malformed_multipart_does_not_fill_the_log(served):
    """python-multipart logged a warning per malformed body: any client could fill the log."""
    before = served.log.read_text()
    for junk in (b"\x00" * 50, b"--x\r\nnot a part", b"-" * 500):
        status, _, answer = H.request(served, "POST", "/v1/audio/transcriptions", junk,
                                      {"Content-Type": "multipart/form-data; boundary=abc"})
        H.check_error_body(status, answer, allowed=(400,))
    new = served.log.read_text()[len(before):]
    assert "boundary" not in new.lower(), new


@pytest.fixture(scope="module")
def app_driver(tiny_dir):
    driver = F.AppDriver(tiny_dir)
    yield driver
    driver.engine.stop()
    driver.loop.close()


def test_app_fuzz_without_sockets(app_driver):
    """The soak's in-process cases (the app and a real engine, no uvicorn) hold the same
    properties: every answer in its protocol's shape, the probe answered, no session left."""
    @settings(CI, max_examples=30)
    @given(F.ws_cases(), F.forms())
    def case(ws_case, form):
        app_driver.run(app_driver.websocket(*ws_case))
        F.run_app_http_case(app_driver, *form)

    case()
    assert app_driver.engine.n_sessions == 0


def test_a_header_claiming_billions_of_samples_allocates_nothing_of_the_kind():
    """Was a MemoryError (a 500, or tens of GB taken on a large machine): soundfile's read
    allocated the sample count a damaged FLAC header claimed before decoding anything."""
    from voxnp.errors import VoxnpError
    from voxnp.server.pcm import decode_upload

    data = bytearray(F.sample_files()["flac"])
    assert data[:4] == b"fLaC"
    field = int.from_bytes(data[18:26], "big")                 # STREAMINFO: ... 36 bits of total samples
    data[18:26] = ((field & ~((1 << 36) - 1)) | (1 << 35)).to_bytes(8, "big")
    try:
        x = decode_upload(bytes(data), "upload")
    except VoxnpError:
        return
    assert len(x) < 16000 * 5                                   # the half second the file holds


MP3_BOMB = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))    # a regression fails, not the machine
sys.path.insert(0, sys.argv[1])
import serve_fuzz as F
from voxnp.server.pcm import decode_upload
data = bytearray(F.sample_files()["mp3"])
tag = max(data.find(b"Xing"), data.find(b"Info"))
data[tag + 8:tag + 12] = (0x7FFFFFFF).to_bytes(4, "big")       # the Xing header's frame count
print(len(decode_upload(bytes(data), "upload")))
"""


def test_an_mp3_claiming_billions_of_frames_reads_what_it_holds(tmp_path):
    """Found by the soak (the server grew to 23 GB and was killed): SoundFile.blocks, which
    replaced sf.read's up-front allocation, yields blocks until the header's frame count
    is reached, copies of a stale buffer past the end of the data."""
    import subprocess
    import sys
    from pathlib import Path

    if "mp3" not in F.sample_files():
        pytest.skip("this libsndfile writes no MP3")
    run = subprocess.run([sys.executable, "-c", MP3_BOMB, str(Path(__file__).parent)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert int(run.stdout.split()[-1]) < 16000                  # the half second the file holds
