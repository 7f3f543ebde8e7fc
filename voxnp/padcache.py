"""The state of a stream after its left padding, kept on disk between runs.

Every stream starts with 32 tokens of silence (SPEC §3.2); what the network computes
from them depends only on the model and the delay. `Stream` computes it once per model
and delay and reuses a copy; this module also keeps it in a file, so that a new
process starts transcribing at once instead of first running the encoder over the
padding and 31 prefill positions (seconds on the full-size model).

Files live in $VOXNP_CACHE_DIR (default ~/.cache/voxnp/left-padding); set
VOXNP_CACHE_DIR to an empty string to keep nothing on disk. A file is named after the
weights file (path, size, modification time), the delay and voxnp's version, so a
changed model or a new voxnp never reads a stale one; a damaged file is ignored.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def cache_dir() -> Path | None:
    value = os.environ.get("VOXNP_CACHE_DIR")
    if value == "":
        return None
    return Path(value) if value else Path.home() / ".cache" / "voxnp" / "left-padding"


def cache_file(weights_path: Path, delay: int) -> Path | None:
    from . import __version__

    directory = cache_dir()
    if directory is None:
        return None
    st = os.stat(weights_path)
    key = f"{os.path.realpath(weights_path)}|{st.st_size}|{st.st_mtime_ns}|{delay}|{__version__}"
    return directory / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"


def save(path: Path, snap: dict) -> None:
    """Write a snapshot (see Stream._snapshot) atomically; failures are not fatal."""
    arrays = {"mel_buf": snap["mel"][0], "embeds": snap["embeds"],
              "history": np.stack(snap["history"]) if snap["history"] else snap["embeds"][:0],
              "enc_mel_tail": snap["enc"]["mel_tail"], "enc_conv1_tail": snap["enc"]["conv1_tail"],
              "enc_ungrouped": snap["enc"]["ungrouped"]}
    for part in ("enc", "dec"):
        for i, (k, v, _) in enumerate(snap[part]["caches"]):
            arrays[f"{part}_k{i}"], arrays[f"{part}_v{i}"] = k, v
    meta = {"mel": list(snap["mel"][1:]), "n_samples": snap["n_samples"],
            "enc_n_positions": snap["enc"]["n_positions"], "dec_n_positions": snap["dec"]["n_positions"],
            "enc_lengths": [c[2] for c in snap["enc"]["caches"]],
            "dec_lengths": [c[2] for c in snap["dec"]["caches"]]}
    arrays["meta"] = np.array(json.dumps(meta))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp", suffix=".npz", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass


def load(path: Path) -> dict | None:
    """The snapshot in `path`, or None if there is none (or it is unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            a = {name: z[name] for name in z.files}
        meta = json.loads(str(a["meta"]))
        caches = {part: [(a[f"{part}_k{i}"], a[f"{part}_v{i}"], n)
                         for i, n in enumerate(meta[f"{part}_lengths"])] for part in ("enc", "dec")}
        return {"mel": (a["mel_buf"], *meta["mel"]), "embeds": a["embeds"], "history": list(a["history"]),
                "n_samples": meta["n_samples"],
                "enc": {"mel_tail": a["enc_mel_tail"], "conv1_tail": a["enc_conv1_tail"],
                        "ungrouped": a["enc_ungrouped"], "n_positions": meta["enc_n_positions"],
                        "caches": caches["enc"]},
                "dec": {"n_positions": meta["dec_n_positions"], "caches": caches["dec"]}}
    except (OSError, KeyError, ValueError, TypeError):
        return None
