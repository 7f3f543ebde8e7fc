"""Audio as clients send it: uploaded files and base64 PCM16 websocket chunks.

Both end as float32 mono 16 kHz samples for a Stream. Uploads go through
audio.load_audio (the CLI's reader: soundfile, else ffmpeg), so a file sent to the
server gives the CLI's samples bit for bit.
"""
from __future__ import annotations

import base64
import binascii
import os
import tempfile

import numpy as np

from ..audio import MODEL_RATE, load_audio, s16le_to_float
from ..errors import VoxnpError


def decode_upload(data: bytes, name: str) -> np.ndarray:
    """An uploaded file's bytes -> float32 16 kHz mono (format detected from the bytes).

    Raises VoxnpError with a message that names the upload, not the temporary file.
    """
    fd, tmp = tempfile.mkstemp(prefix="voxnp-upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return load_audio(tmp)
    except VoxnpError as e:
        raise VoxnpError(str(e).replace(tmp, name)) from None
    finally:
        os.unlink(tmp)


class PcmChunks:
    """base64 PCM16 little-endian mono chunks -> float32 samples at 16 kHz.

    Chunks may split a sample: an odd trailing byte waits for the next chunk.
    Input at another rate (OpenAI's realtime default is 24 kHz) goes through one
    streaming resampler, so the chunking does not change the samples; end() returns
    its tail and starts a fresh one (a commit ends an item's audio).
    """

    def __init__(self, rate: int = MODEL_RATE):
        self.rate = rate
        self._odd = b""
        self._resampler = None

    def decode(self, audio_b64) -> np.ndarray:
        """Raises ValueError on anything that is not base64 text."""
        if not isinstance(audio_b64, str):
            raise ValueError("`audio` must be a base64 string")
        try:
            data = base64.b64decode(audio_b64, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("`audio` is not valid base64") from None
        data = self._odd + data
        cut = len(data) - len(data) % 2
        self._odd = data[cut:]
        return self._to_model_rate(s16le_to_float(data[:cut]))

    def end(self) -> np.ndarray:
        """The resampler's tail (an odd byte left over is dropped)."""
        self._odd = b""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        self._resampler = None
        return tail.astype(np.float32)

    def _to_model_rate(self, x: np.ndarray) -> np.ndarray:
        if self.rate == MODEL_RATE:
            return x
        if self._resampler is None:
            import soxr

            self._resampler = soxr.ResampleStream(self.rate, MODEL_RATE, 1, dtype="float32", quality="HQ")
        return self._resampler.resample_chunk(x).astype(np.float32)
