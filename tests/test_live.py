"""Live input: stdin WAV/raw parsing, the live session's restarts, and the CLI through a real pipe."""
import io
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import soundfile as sf

from conftest import shared_audio
from voxnp.audio import load_audio
from voxnp.errors import VoxnpError
from voxnp.live import PcmDecoder, SilenceGate, parse_wav_header, stdin_audio
from voxnp.stream import Stream, transcribe

SAMPLE = "5s_dont_worry_about_him.wav"


def wav_bytes(x, rate, subtype="PCM_16", channels=1):
    buf = io.BytesIO()
    sf.write(buf, np.tile(x[:, None], (1, channels)) if channels > 1 else x, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def ffmpeg_style(wav: bytes) -> bytes:
    """The header ffmpeg writes to a pipe: RIFF and data sizes unset (0xFFFFFFFF)."""
    data_at = wav.index(b"data")
    out = bytearray(wav)
    out[4:8] = b"\xff\xff\xff\xff"
    out[data_at + 4:data_at + 8] = b"\xff\xff\xff\xff"
    return bytes(out)


def read_via_pipe(payload: bytes, piece: int = 7) -> np.ndarray:
    """Run stdin_audio on a real pipe written in small pieces (partial reads)."""
    r, w = os.pipe()

    def writer():
        for i in range(0, len(payload), piece):
            os.write(w, payload[i:i + piece])
        os.close(w)

    t = threading.Thread(target=writer)
    t.start()
    try:
        chunks = list(stdin_audio(r))
    finally:
        t.join()
        os.close(r)
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


@pytest.fixture(scope="module")
def sample_pcm():
    return (np.random.default_rng(0).integers(-20000, 20000, 4000)).astype(np.int16)


def test_wav_with_unset_sizes_and_tiny_reads(sample_pcm):
    x = sample_pcm / np.float32(32768)
    wav = wav_bytes(x, 16000)
    np.testing.assert_array_equal(read_via_pipe(ffmpeg_style(wav), piece=7), x)
    np.testing.assert_array_equal(read_via_pipe(wav, piece=4096), x)


def test_raw_s16le_and_odd_trailing_byte(sample_pcm, capfd):
    raw = sample_pcm.tobytes()
    np.testing.assert_array_equal(read_via_pipe(raw + b"\x01", piece=333), sample_pcm / np.float32(32768))
    assert "ignored 1 trailing byte" in capfd.readouterr().err


@pytest.mark.parametrize("rate,channels,subtype", [(44100, 2, "PCM_16"), (8000, 1, "FLOAT"), (16000, 1, "FLOAT")])
def test_wav_stdin_prepared_like_files(tmp_path, rate, channels, subtype):
    t = np.arange(rate * 2) / rate
    x = (0.4 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    wav = wav_bytes(x, rate, subtype, channels)
    (tmp_path / "a.wav").write_bytes(wav)
    from_file = load_audio(tmp_path / "a.wav")
    from_pipe = read_via_pipe(wav, piece=1000)
    # streaming soxr may differ from one-shot soxr in the last few samples only
    n = min(len(from_file), len(from_pipe))
    assert abs(len(from_file) - len(from_pipe)) <= 2
    np.testing.assert_allclose(from_pipe[:n - 64], from_file[:n - 64], atol=2 / 32768)


def test_bad_wav_headers():
    good = wav_bytes(np.zeros(100, np.float32), 16000)
    with pytest.raises(VoxnpError, match="truncated WAV header"):
        read_via_pipe(good[:30])
    pcm24 = wav_bytes(np.zeros(100, np.float32), 16000, subtype="PCM_24")
    with pytest.raises(VoxnpError, match="unsupported WAV format"):
        read_via_pipe(pcm24)
    with pytest.raises(VoxnpError, match="WAVE"):
        parse_wav_header(b"RIFF\x00\x00\x00\x00AVI LIST")
    with pytest.raises(VoxnpError, match="empty"):
        read_via_pipe(b"")
    assert parse_wav_header(good[:20]) is None          # needs more bytes


def test_pcm_decoder_chunking_is_exact_for_16k():
    pcm = np.arange(-500, 500, dtype=np.int16).tobytes()
    d = PcmDecoder()
    out = np.concatenate([d.push(pcm[i:i + 3]) for i in range(0, len(pcm), 3)])
    np.testing.assert_array_equal(out, np.arange(-500, 500) / np.float32(32768))


def test_silence_gate_skips_long_silence_and_flushes_once(tiny_model):
    s = Stream(tiny_model, live=True, interval=0.0)
    gate = SilenceGate()
    speech = 0.1 * np.ones(3200, np.float32)
    silence = np.zeros(16000 * 3, np.float32)
    out = gate.filter(np.concatenate([speech, silence]), s)
    assert len(out) == 0 or len(out) <= 3200 + int(0.6 * 16000)
    assert gate.flushed
    assert len(gate.filter(speech, s)) == 3200 and not gate.flushed


def test_live_session_keeps_no_history_but_same_tokens(tiny_model, speech):
    offline = [t.id for t in transcribe(tiny_model, speech).tokens]
    s = Stream(tiny_model, live=True, interval=0.3)
    got = []
    for i in range(0, len(speech), 3000):
        s.feed(speech[i:i + 3000])
        got += [t.id for t in s.get(with_tokens=True)]
    s.finish()
    got += [t.id for t in s.get(with_tokens=True)]
    assert s.tokens == [] and got == offline


@pytest.fixture(scope="module")
def eos_model(tiny_model):
    """The tiny model with its LM head rigged so that every step's argmax is EOS (id 2)."""
    import dataclasses
    import types

    ops = tiny_model.ops
    head = tiny_model.weights.decoder.tok_embeddings

    def linear(x, w, bias=None):
        y = ops.linear(x, w, bias)
        if w is head:
            y[..., 2] = y.max() + 10.0
        return y

    rigged = types.SimpleNamespace(**{k: getattr(ops, k) for k in dir(ops) if not k.startswith("__")})
    rigged.linear = linear
    return dataclasses.replace(tiny_model, ops=rigged)


def test_offline_stops_at_eos_but_live_restarts(eos_model, speech):
    offline = transcribe(eos_model, speech)
    assert [t.id for t in offline.tokens][-1] == 2 and len(offline.tokens) < 5
    s = Stream(eos_model, live=True, interval=0.5)
    for i in range(0, len(speech), 8000):
        s.feed(speech[i:i + 8000])
    assert s.restarts > 5 and not s.done          # EOS mid-stream restarted the decoder
    s.finish()
    assert s.done


def test_live_idle_restart(tiny_model, speech, monkeypatch):
    monkeypatch.setattr(Stream, "LIVE_IDLE_S", 0.0)   # every control token counts as "idle"
    s = Stream(tiny_model, live=True, interval=0.0)
    s.feed(speech)
    assert s.restarts == s.n_tokens > 0           # each step "idled": each one restarted


def run_cli(args, stdin_bytes, model_dir):
    return subprocess.run([sys.executable, "-m", "voxnp", *args, "--model", str(model_dir), "--silent"],
                          input=stdin_bytes, capture_output=True, timeout=300)


def test_cli_stdin_wav_and_raw_match_file_mode(tiny_dir):
    path = shared_audio(SAMPLE)
    file_mode = subprocess.run([sys.executable, "-m", "voxnp", str(path), "--model", str(tiny_dir), "--silent"],
                               capture_output=True, timeout=300)
    assert file_mode.returncode == 0, file_mode.stderr.decode()
    wav = path.read_bytes()
    raw = (load_audio(path) * 32768).astype(np.int16).tobytes()
    for payload in (wav, ffmpeg_style(wav), raw):
        out = run_cli(["--stdin"], payload, tiny_dir)
        assert out.returncode == 0, out.stderr.decode()
        assert out.stdout == file_mode.stdout
        assert b"Traceback" not in out.stderr


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_cli_stdin_from_real_ffmpeg(tiny_dir):
    path = shared_audio(SAMPLE)
    file_mode = subprocess.run([sys.executable, "-m", "voxnp", str(path), "--model", str(tiny_dir), "--silent"],
                               capture_output=True, timeout=300)
    for fmt in (["-f", "wav"], ["-f", "s16le", "-ac", "1", "-ar", "16000"]):
        ff = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), *fmt, "-"], capture_output=True, check=True)
        out = run_cli(["--stdin"], ff.stdout, tiny_dir)
        assert out.returncode == 0 and out.stdout == file_mode.stdout


def test_cli_stdin_errors(tiny_dir):
    out = run_cli(["--stdin"], b"RIFF\x10\x00\x00\x00WAVEfmt ", tiny_dir)
    assert out.returncode != 0 and b"truncated WAV header" in out.stderr and b"Traceback" not in out.stderr
    out = run_cli(["--stdin"], b"", tiny_dir)
    assert out.returncode != 0 and b"empty" in out.stderr


def test_cli_from_mic_without_sounddevice_is_a_clear_error(tiny_dir, without_sounddevice):
    out = subprocess.run([sys.executable, "-m", "voxnp", "--from-mic", "--model", str(tiny_dir)],
                         capture_output=True, timeout=120)
    assert out.returncode != 0 and b"sounddevice" in out.stderr and b"Traceback" not in out.stderr
