"""Quantized weights on disk: converted once from the BF16 checkpoint, then memory-mapped.

A quantized model is one safetensors file holding, for every matrix the plan quantizes
(quant.PLANS for the decoder, quant.ENCODER_PLAN for the encoder), the format's arrays ("decoder.layers.3.wq.q", "...scale", ...). Its
metadata names the weight format, quant.FORMAT_VERSION and the identity of the model
file it was made from (size, header and sampled data, so a copied model still matches
and another model never does). Opening checks all of that and the file's size, then
maps it: no data is read until a kernel touches it.

Where the file lives:
  MODEL/consolidated.<fmt>.safetensors   made by `voxnp quantize MODEL --to <fmt>`; a
        mismatch is an error (voxnp does not overwrite what the user made);
  $VOXNP_CACHE_DIR/weights/ (default ~/.cache/voxnp/weights)   made on first use; a
        stale, truncated or foreign file there is rebuilt with a one-line notice.
        With VOXNP_CACHE_DIR="" the conversion goes to an unlinked temporary file.
Conversion streams tensor by tensor in chunks of rows over every core (NumPy releases
the GIL), writes to a temporary file in the same directory and renames it into place.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
import os
import struct
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import quant
from .errors import VoxnpError
from .weights import SafetensorsFile, Weights, read_header

DTYPES = {np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.float32): "F32", np.dtype(np.int32): "I32"}
IDENTITY_SAMPLES = 16            # 64 KiB pieces of the model file hashed into its identity
CHUNK_WEIGHTS = 1 << 20          # weights quantized per task (a few MB of temporaries each)
CHUNK_ROWS = 16                  # chunks start at whole blocks of i8rows' packed rows


def model_identity(weights_path: Path) -> str:
    """A hash of the model file's size, header and 16 pieces spread over its data."""
    path = Path(weights_path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        h.update(str(size).encode())
        f.seek(0)
        (n,) = struct.unpack("<Q", f.read(8))
        h.update(f.read(min(n, size)))
        for i in range(IDENTITY_SAMPLES):
            f.seek(8 + n + (size - 8 - n) * i // IDENTITY_SAMPLES)
            h.update(f.read(1 << 16))
    return h.hexdigest()


def cache_dir() -> Path | None:
    """$VOXNP_CACHE_DIR/weights, else ~/.cache/voxnp/weights; None if VOXNP_CACHE_DIR is ""."""
    value = os.environ.get("VOXNP_CACHE_DIR")
    if value == "":
        return None
    return (Path(value) if value else Path.home() / ".cache" / "voxnp") / "weights"


def beside_model(model_dir: Path, fmt: str) -> Path:
    return Path(model_dir) / f"consolidated.{fmt}.safetensors"


# ---------------------------------------------------------------------------
# what the file holds


def _plan(weights: Weights, fmt: str) -> list[tuple[str, np.ndarray, quant.Int8 | quant.Q4K]]:
    """(name in the file, BF16 source view, matrix format) for every matrix to quantize."""
    plan = quant.PLANS[fmt]
    out = []
    for i, layer in enumerate(weights.decoder.layers):
        out += [(f"decoder.layers.{i}.{field}", getattr(layer, field), f)
                for field, f in plan.items() if field != "lm_head"]
    out.append(("decoder.lm_head", weights.decoder.lm_head, plan["lm_head"]))
    for i, layer in enumerate(weights.encoder.layers):
        out += [(f"encoder.layers.{i}.{field}", getattr(layer, field), f) for field, f in quant.ENCODER_PLAN.items()]
    return out


def _layout(plan) -> tuple[dict, int]:
    """The safetensors entries of every array, and the data size."""
    entries, offset = {}, 0
    for name, src, f in plan:
        for array, (dtype, shape) in f.arrays(*src.shape).items():
            size = dtype.itemsize * int(np.prod(shape))
            raw = DTYPES.get(dtype)
            if raw is None:                      # q4k meta: stored as its raw bytes
                raw, shape = "U8", (shape[0], shape[1] * dtype.itemsize)
            entries[f"{name}.{array}"] = {"dtype": raw, "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
    return entries, offset


# ---------------------------------------------------------------------------
# conversion


def quantize_model(model_dir, fmt: str, out=None, progress: bool = True) -> Path:
    """`voxnp quantize MODEL --to FMT`: write MODEL/consolidated.FMT.safetensors (or `out`)."""
    from .model import open_bf16

    quant.check_format(fmt)
    if fmt == "bf16":
        raise VoxnpError("bf16 is the checkpoint itself: nothing to quantize (choose int8 or q4)")
    model_dir = Path(str(model_dir))
    _, _, st, weights = open_bf16(model_dir)
    target = Path(out) if out is not None else beside_model(model_dir, fmt)
    _convert(st, weights, fmt, target, progress)
    return target


def _convert(st: SafetensorsFile, weights: Weights, fmt: str, target: Path, progress: bool) -> None:
    """Quantize every planned matrix into `target`, atomically (no partial file is left)."""
    plan = _plan(weights, fmt)
    entries, data_size = _layout(plan)
    metadata = {"voxnp_weights": fmt, "format_version": str(quant.FORMAT_VERSION),
                "model_identity": model_identity(st.path)}
    header = json.dumps({"__metadata__": metadata, **entries}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    start = 8 + len(header)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise VoxnpError(f"{target.parent}: cannot write the {fmt} weights here ({e.strerror}); "
                         f"set VOXNP_CACHE_DIR to a writable directory") from None
    done, total, t0 = 0, sum(int(np.prod(src.shape)) for _, src, _ in plan), time.monotonic()
    try:
        os.fchmod(fd, 0o644)                             # mkstemp makes it private
        os.write(fd, struct.pack("<Q", len(header)) + header)
        workers = os.cpu_count() or 1
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for name, src, f in plan:
                rows = max(1, CHUNK_WEIGHTS // src.shape[1] // CHUNK_ROWS) * CHUNK_ROWS
                pending = deque()                        # at most 2 chunks per core in flight
                for r0 in range(0, src.shape[0], rows):
                    pending.append(pool.submit(_quantize_chunk, src, r0, rows, f, name))
                    if len(pending) >= 2 * workers:
                        done += _write_chunk(fd, start, entries, name, *pending.popleft().result())
                while pending:
                    done += _write_chunk(fd, start, entries, name, *pending.popleft().result())
                if progress:
                    _show(fmt, done, total, t0)
        os.ftruncate(fd, start + data_size)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
    except BaseException as e:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)
        if isinstance(e, OSError):
            raise VoxnpError(f"{target}: cannot write the {fmt} weights ({e.strerror})") from None
        raise
    finally:
        if progress:
            sys.stderr.write("\r\033[K")
    if progress:
        sys.stderr.write(f"{fmt} weights: {target} ({(start + data_size) / 1e9:.2f} GB, "
                         f"{time.monotonic() - t0:.0f} s)\n")


def _quantize_chunk(src: np.ndarray, r0: int, rows: int, f, name: str):
    return r0, quant.quantize(src[r0:r0 + rows], f, name)


def _write_chunk(fd: int, start: int, entries: dict, name: str, r0: int, m: quant.QuantizedMatrix) -> int:
    """Write rows r0.. of each of m's arrays at their place in the file; returns the weights written."""
    for array, values in m.arrays.items():
        row_bytes = values.nbytes // values.shape[0]
        os.pwrite(fd, values.tobytes(), start + entries[f"{name}.{array}"]["data_offsets"][0] + r0 * row_bytes)
    return m.shape[0] * m.shape[1]


def _show(fmt: str, done: int, total: int, t0: float) -> None:
    width = 20
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\rquantizing to {fmt}: [{'#' * filled}{'.' * (width - filled)}] "
                     f"{100 * done // max(total, 1)}%  {time.monotonic() - t0:.0f} s")
    sys.stderr.flush()


# ---------------------------------------------------------------------------
# opening


@dataclasses.dataclass
class QuantizedFile:
    """A mapped quantized-weights file: `path` (it keys per-file caches such as padcache)."""
    path: Path
    format: str
    matrices: dict          # name -> QuantizedMatrix (arrays are views into the map)
    _map: mmap.mmap


def _problem(path: Path, fmt: str, identity: str, plan) -> str | None:
    """Why `path` is not the fmt file of this model (None: it is)."""
    try:
        header = read_header(path)
    except VoxnpError as e:
        return str(e).removeprefix(f"{path}: ")
    meta = header.metadata
    if meta.get("voxnp_weights") != fmt:
        return f"not a voxnp {fmt} weights file"
    if meta.get("format_version") != str(quant.FORMAT_VERSION):
        return f"made by another voxnp (format version {meta.get('format_version')}, this one reads {quant.FORMAT_VERSION})"
    if meta.get("model_identity") != identity:
        return "made from another model"
    entries, size = _layout(plan)
    if header.file_size != header.data_start + size:
        return f"truncated or damaged ({header.file_size} bytes, expected {header.data_start + size})"
    if any(header.entries.get(name) != e for name, e in entries.items()) or len(header.entries) != len(entries):
        return "its tensors do not match the model"
    return None


def _map(path: Path, fmt: str, plan) -> QuantizedFile:
    header = read_header(path)
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    data = np.frombuffer(mapped, dtype=np.uint8)[header.data_start:]
    matrices = {}
    for name, src, f in plan:
        arrays = {}
        for array, (dtype, shape) in f.arrays(*src.shape).items():
            begin, end = header.entries[f"{name}.{array}"]["data_offsets"]
            arrays[array] = data[begin:end].view(dtype).reshape(shape)
        matrices[name] = quant.QuantizedMatrix(f, tuple(src.shape), arrays)
    return QuantizedFile(path=path, format=fmt, matrices=matrices, _map=mapped)


def open_quantized(model_dir: Path, st: SafetensorsFile, weights: Weights, fmt: str,
                   progress: bool = True) -> QuantizedFile:
    """The fmt weights of this model: the file beside it, else the cache (converting once)."""
    plan = _plan(weights, fmt)
    identity = model_identity(st.path)
    mine = beside_model(model_dir, fmt)
    if mine.exists():
        problem = _problem(mine, fmt, identity, plan)
        if problem:
            raise VoxnpError(f"{mine}: {problem}; rerun `voxnp quantize {model_dir} --to {fmt}` or delete it")
        return _map(mine, fmt, plan)
    directory = cache_dir()
    if directory is None:                    # no cache: convert into a file that is gone once unmapped
        with tempfile.TemporaryDirectory(prefix="voxnp-weights-") as tmp:
            path = Path(tmp) / f"{fmt}.safetensors"
            _convert(st, weights, fmt, path, progress)
            return _map(path, fmt, plan)
    path = directory / f"{identity[:24]}.{fmt}.v{quant.FORMAT_VERSION}.safetensors"
    if path.exists():
        problem = _problem(path, fmt, identity, plan)
        if problem is None:
            return _map(path, fmt, plan)
        print(f"voxnp: {path}: {problem}; rebuilding it", file=sys.stderr)
    _convert(st, weights, fmt, path, progress)
    return _map(path, fmt, plan)


def quantized_weights(weights: Weights, qfile: QuantizedFile) -> Weights:
    """The BF16 weights with every planned matrix replaced by its quantized copy; the
    decoder keeps its keys and values in BF16 (kv_cache.py)."""
    m = qfile.matrices
    layers = tuple(dataclasses.replace(layer, **{field: m[f"decoder.layers.{i}.{field}"]
                                                 for field in quant.PLANS[qfile.format] if field != "lm_head"})
                   for i, layer in enumerate(weights.decoder.layers))
    decoder = dataclasses.replace(weights.decoder, layers=layers, lm_head=m["decoder.lm_head"], kv_bf16=True)
    encoder_layers = tuple(dataclasses.replace(layer, **{field: m[f"encoder.layers.{i}.{field}"]
                                                         for field in quant.ENCODER_PLAN})
                           for i, layer in enumerate(weights.encoder.layers))
    encoder = dataclasses.replace(weights.encoder, layers=encoder_layers)
    return dataclasses.replace(weights, decoder=decoder, encoder=encoder)
