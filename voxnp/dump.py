"""`voxnp dump`: every intermediate of one transcription, for other implementations' CI.

The .npz holds float32 `mel` [n_mels, T], `enc` [T/2, enc_dim] (encoder output after
its final norm, before grouping), `audio_embeds` [N, dim] (adapter output), int32
`tokens` [n] (every id emitted, EOS included) and float32 `logits` [n, vocab]
(row i produced tokens[i]).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import VoxnpError
from .stream import Stream


def dump_arrays(model, audio: np.ndarray, delay_ms=None, steps=None, teacher=None,
                speculate: int = 0, drafter=None) -> dict:
    s = Stream(model, delay_ms=delay_ms, interval=float("inf"), max_tokens=steps,
               teacher=teacher, record=True, speculate=speculate, drafter=drafter)
    s.feed(audio)
    s.finish()
    r = s.record
    vocab = model.config.decoder.vocab_size
    return {
        "mel": np.concatenate(r.mel, axis=1).astype(np.float32),
        "enc": np.concatenate(r.enc).astype(np.float32),
        "audio_embeds": np.concatenate(r.audio_embeds).astype(np.float32),
        "tokens": np.array([t.id for t in s.tokens], dtype=np.int32),
        "logits": np.stack(r.logits).astype(np.float32) if r.logits else np.zeros((0, vocab), np.float32),
    }


NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file


def read_teacher(path: str | Path) -> np.ndarray:
    path = Path(str(path))
    try:
        with open(path, "rb") as f:
            if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
                raise VoxnpError(f"{path}: not a .npy file (teacher tokens must be a 1-D integer array)")
            f.seek(0)
            ids = np.load(f, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise VoxnpError(f"{path}: cannot read teacher tokens ({getattr(e, 'strerror', None) or e})") from None
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise VoxnpError(f"{path}: teacher tokens must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    return ids.astype(np.int64)


def check_output(path: str | Path) -> Path:
    """The output path, checked before any work: its directory exists and it is not one."""
    path = Path(str(path))
    if not path.parent.is_dir():
        raise VoxnpError(f"{path}: directory {path.parent} does not exist")
    if path.is_dir():
        raise VoxnpError(f"{path}: is a directory, not a file name")
    return path


def write_npz_atomic(path: str | Path, arrays: dict) -> None:
    """Write to a temporary file beside `path`, then rename: never a partial file."""
    path = check_output(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise VoxnpError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, OSError):  # disk full, permissions, ...
            raise VoxnpError(f"{path}: cannot write ({e.strerror or e})") from None
        raise
