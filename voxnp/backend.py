"""Chooses the implementation of the ops: the only module that knows there are several.

- "numpy": `ops.py`, the plain definitions (slow, for reading and testing);
- "numba": `kernels.py`, the fast CPU kernels (default);
- "cupy":  `kernels_cupy.CupyBackend`, NVIDIA GPUs (optional `cupy` package).
"auto" is "numba". All share one interface: linear, rms_norm, gelu, swiglu, embed,
rope, rope_frequencies, attention, append_and_attend; `xp`, the array
namespace activations and KV rings live in (numpy, or cupy), and `to_numpy`, which
brings an array back to the host (token ids, dumps, snapshots).
"""
from __future__ import annotations

import os

from .errors import VoxnpError

BACKENDS = ("auto", "numba", "numpy", "cupy")


def get_backend(name: str = "auto", threads: int | None = None):
    name = (name or "auto").lower()
    if name not in BACKENDS:
        raise VoxnpError(f"unknown backend '{name}' (choose from {', '.join(BACKENDS)})")
    set_threads(threads)
    if name == "numpy":
        from . import ops

        return ops
    if name == "cupy":
        from .kernels_cupy import CupyBackend

        return CupyBackend()   # a one-line VoxnpError without CuPy or a GPU
    from . import kernels

    return kernels


def set_threads(threads: int | None) -> int:
    """Threads for Numba kernels and BLAS: `threads`, else $VOXNP_THREADS, else all cores."""
    source = "--threads"
    if threads is None:
        source, threads = "VOXNP_THREADS", os.environ.get("VOXNP_THREADS") or (os.cpu_count() or 1)
    try:
        threads = int(threads)
    except (TypeError, ValueError):
        raise VoxnpError(f"{source} must be a whole number of threads, got {threads!r}") from None
    if threads < 1:
        raise VoxnpError(f"{source} must be at least 1, got {threads}")
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:
        pass
    return threads
