"""The decoder's matrices copied into memory backed by 2 MB pages.

A decoder step reads every decoder matrix once (2.3 GB in q4), so its speed is the speed
at which the weights stream from memory. Mapped from their file, the weights lie in the
page cache's 4 KB pages: the core's prefetcher stops at every 4 KB boundary and each page
costs a TLB entry, and the quantized kernels read ~20-25 GB/s where the same bytes in
2 MB pages read ~27-29 (bench/decoder_speed.py measures both). `model.load` therefore
copies the decoder's matrices once into anonymous memory advised for transparent huge
pages (madvise MADV_HUGEPAGE): by default for int8 and q4, whose files were converted for
speed; bf16 keeps the checkpoint's instant map. VOXNP_RESIDENT=1 copies bf16's too,
VOXNP_RESIDENT=0 keeps every format mapped (no copy, less memory).

The copy costs about a second per 2 GB at load, and the pages are the process's own
(the file's page cache can be reclaimed). The encoder's matrices stay mapped: hundreds
of rows per call make them compute-bound.
"""
from __future__ import annotations

import dataclasses
import mmap
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import VoxnpError
from .quant import QuantizedMatrix
from .weights import Weights

HUGE_PAGE = 2 << 20
ALIGN = 64                       # each array starts on a cache line
DECODER_MATRICES = ("wq", "wk", "wv", "wo", "w1", "w3", "w2")


def wanted(weights_format: str, backend_name: str) -> bool:
    """Whether `load` copies the decoder: $VOXNP_RESIDENT (0 or 1), else int8/q4 on the CPU."""
    setting = os.environ.get("VOXNP_RESIDENT", "").strip()
    if setting not in ("", "0", "1"):
        raise VoxnpError(f"VOXNP_RESIDENT={setting!r}: use 1 (copy the decoder's weights "
                         f"into memory) or 0 (keep them mapped)")
    if backend_name == "cupy":
        return False                                      # the GPU holds its own copy
    return setting == "1" if setting else weights_format != "bf16"


def copy_to_huge_pages(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Read-only copies of `arrays`, packed into one anonymous region advised for 2 MB pages."""
    offsets, total = [], 0
    for a in arrays:
        offsets.append(total)
        total += -(-a.nbytes // ALIGN) * ALIGN
    region = mmap.mmap(-1, total + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = np.frombuffer(region, np.uint8)                    # the views keep the region alive
    start = -base.ctypes.data % HUGE_PAGE                     # the first 2 MB boundary
    if hasattr(mmap, "MADV_HUGEPAGE"):                        # Linux; elsewhere plain pages
        try:
            region.madvise(mmap.MADV_HUGEPAGE, start, total)
        except OSError:
            pass                                              # huge pages off: still a copy
    copies = [base[start + offset:start + offset + a.nbytes].view(a.dtype).reshape(a.shape)
              for a, offset in zip(arrays, offsets)]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:    # copyto lets go of the GIL
        list(pool.map(np.copyto, copies, arrays))
    for view in copies:
        view.flags.writeable = False
    return copies


def _arrays_of(m) -> list[np.ndarray]:
    return list(m.arrays.values()) if isinstance(m, QuantizedMatrix) else [m]


def _rebuilt(m, copies):
    """m (a BF16 view or a QuantizedMatrix) with its arrays taken in order from `copies`."""
    if isinstance(m, QuantizedMatrix):
        return QuantizedMatrix(m.format, m.shape, {name: next(copies) for name in m.arrays})
    return next(copies)


def decoder_in_memory(weights: Weights) -> Weights:
    """`weights` with the decoder layers' matrices and the LM head in huge-page memory."""
    decoder = weights.decoder
    matrices = [getattr(layer, f) for layer in decoder.layers for f in DECODER_MATRICES] + [decoder.lm_head]
    copies = iter(copy_to_huge_pages([a for m in matrices for a in _arrays_of(m)]))
    layers = tuple(dataclasses.replace(layer, **{f: _rebuilt(getattr(layer, f), copies) for f in DECODER_MATRICES})
                   for layer in decoder.layers)
    lm_head = _rebuilt(decoder.lm_head, copies)
    return dataclasses.replace(weights, decoder=dataclasses.replace(decoder, layers=layers, lm_head=lm_head))
