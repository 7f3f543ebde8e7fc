"""Audio in: files, raw PCM, resampling, and the offline padding (SPEC §3.1–3.2).

This module knows nothing about the model; it turns whatever the user has into
mono float32 samples at the model's rate, prepared exactly as the reference
pipeline prepares them.
"""
from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .errors import VoxnpError

MODEL_RATE = 16000  # Hz; the model's sampling rate (params.json audio_encoding_args)
MIN_SAMPLES = MODEL_RATE * 10 // 1000  # 160 = one 10 ms mel hop; shorter input is rejected
RAW_EXTENSIONS = (".raw", ".pcm", ".s16le")  # headerless s16le 16 kHz mono, as ffmpeg -f s16le writes


def int16_round_trip(x: np.ndarray) -> np.ndarray:
    """Quantise to 16-bit PCM and back, as writing/reading a PCM_16 WAV does.

    soundfile (libsndfile) writes float -> int16 as round(x * 32767) with clipping
    and reads int16 -> float as v / 32768; we go through it so the result is what
    the reference pipeline gets, bit for bit.
    """
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, MODEL_RATE, format="WAV", subtype="PCM_16")
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32")
    return y


def prepare(samples: np.ndarray, rate: int) -> np.ndarray:
    """Any float samples ([n] or [n, channels]) at any rate -> mono float32 at 16 kHz.

    SPEC §3.1: channel mean, soxr "HQ" resampling when the rate differs, then a
    16-bit round trip (skipped for 16 kHz int16 input, where it is the identity).
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    if rate != MODEL_RATE:
        import soxr

        x = soxr.resample(x, rate, MODEL_RATE, quality="HQ").astype(np.float32)
    return int16_round_trip(x)


def load_audio(path: str | Path, raw: bool = False) -> np.ndarray:
    """Read an audio file -> float32 16 kHz mono.

    WAV/FLAC/OGG/MP3 go through soundfile, other containers through ffmpeg. A name
    ending in RAW_EXTENSIONS (any case), or any name when `raw` is true, is headerless
    signed 16-bit little-endian PCM, mono at 16 kHz.
    """
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise VoxnpError(f"{path}: file not found")
    if path.is_dir():
        raise VoxnpError(f"{path}: is a directory with no audio files")
    try:
        open(path, "rb").close()  # soundfile reports a permission problem as an unknown format
    except OSError as e:
        raise VoxnpError(f"{path}: cannot read ({e.strerror or e})") from None
    if raw or path.suffix.lower() in RAW_EXTENSIONS:
        x, rate = read_raw(path), MODEL_RATE
    else:
        try:
            x, rate = read_soundfile(path)
        except sf.LibsndfileError as e:
            x, rate = _decode_with_ffmpeg(path, str(e))
        except OSError as e:
            raise VoxnpError(f"{path}: cannot read ({e.strerror or e})") from None
    if x.size == 0:
        raise VoxnpError(f"{path}: contains no audio samples")
    if not np.all(np.isfinite(x)):
        raise VoxnpError(f"{path}: contains NaN or infinite samples")
    x = prepare(x, rate)
    if len(x) < MIN_SAMPLES:
        raise VoxnpError(f"{path}: too short ({len(x)} samples at {MODEL_RATE} Hz, "
                         f"need at least {MIN_SAMPLES} = 10 ms)")
    return x


def read_soundfile(path: Path, block_bytes: int = 4 * 1024 * 1024) -> tuple[np.ndarray, int]:
    """(float32 samples [n] or [n, channels], rate) through soundfile, read in blocks of at
    most `block_bytes` until a block comes short: memory follows the samples the file
    holds, not the count its header claims (sf.read allocates that count up front, and
    SoundFile.blocks runs to it: a damaged FLAC or MP3 header claiming billions of
    samples asked for tens of GB)."""
    import soundfile as sf

    with sf.SoundFile(path) as f:
        channels, rate = f.channels, f.samplerate
        frames = max(1, block_bytes // (4 * channels))
        blocks = []
        while True:
            block = f.read(frames, dtype="float32", always_2d=True)
            if len(block):
                blocks.append(block)
            if len(block) < frames:
                break
    x = np.concatenate(blocks) if blocks else np.zeros((0, channels), np.float32)
    return (x[:, 0] if channels == 1 else x), rate


def read_raw(path: Path) -> np.ndarray:
    """A headerless s16le 16 kHz mono file -> float32 samples (2 bytes per sample)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise VoxnpError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(data) % 2:
        raise VoxnpError(f"{path}: odd byte count ({len(data)} bytes); raw s16le audio "
                         "has 2 bytes per sample")
    return s16le_to_float(data)


def _decode_with_ffmpeg(path: Path, why: str) -> tuple[np.ndarray, int]:
    """Fallback for containers soundfile cannot read (m4a, mp4, ...)."""
    if shutil.which("ffmpeg") is None:
        raise VoxnpError(f"{path}: not a format soundfile can read ({why.strip()}); "
                         "install ffmpeg to decode other containers")
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "s16le",
           "-ac", "1", "-ar", str(MODEL_RATE), "-"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise VoxnpError(f"{path}: not an audio file ({msg[-1] if msg else 'ffmpeg failed'})")
    return s16le_to_float(proc.stdout), MODEL_RATE


def s16le_to_float(data: bytes) -> np.ndarray:
    """Raw signed 16-bit little-endian PCM -> float32 in [-1, 1) (v / 32768)."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32768.0)


def pad_offline(audio: np.ndarray, samples_per_token: int, left_tokens: int, right_tokens: int) -> np.ndarray:
    """SPEC §3.2: left_tokens of silence, zeros up to a whole token, right_tokens more.

    N = left + ceil(n / 1280) + right tokens of 1280 samples each.
    """
    n = len(audio)
    n_audio_tokens = -(-n // samples_per_token)
    total = (left_tokens + n_audio_tokens + right_tokens) * samples_per_token
    out = np.zeros(total, dtype=np.float32)
    start = left_tokens * samples_per_token
    out[start:start + n] = audio
    return out
