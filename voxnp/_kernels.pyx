# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""Ahead-of-time compiled kernels (Cython + OpenMP).

The BF16 matrix product for a few rows is the decoder's hot loop: each step streams
all ~6.9 GB of decoder weights once, so it must run at memory bandwidth. Compiled ahead
of time it needs no JIT warm-up (cold start), and GCC vectorises the widening
(uint16 -> uint32 << 16 -> float32) and the FMA reduction with AVX2; measured
faster than the Numba version of the same loop (bench/ reports the bandwidth).
"""
from cython.parallel cimport prange
from libc.stdint cimport uint16_t, uint32_t
from libc.string cimport memcpy


cdef inline float bf16_to_float(uint16_t bits) noexcept nogil:
    """A BF16 value is the upper half of a float32: shift it into place, reinterpret."""
    cdef uint32_t u = (<uint32_t>bits) << 16
    cdef float f
    memcpy(&f, &u, 4)
    return f


cdef inline float dot_bf16(const uint16_t* w, const float* x, Py_ssize_t k) noexcept nogil:
    cdef float acc = 0
    cdef Py_ssize_t j
    for j in range(k):
        acc += bf16_to_float(w[j]) * x[j]
    return acc


cdef enum:
    ROWS = 8                            # rows per block: 8 weight streams in flight at once


cdef void dot_rows(const uint16_t* w, Py_ssize_t k, const float* x, float* y) noexcept nogil:
    """y[i] = W[i] . x for the ROWS consecutive rows at w (each x[j] loaded once)."""
    cdef float acc[ROWS]
    cdef Py_ssize_t i, j
    cdef float xj
    for i in range(ROWS):
        acc[i] = 0
    for j in range(k):
        xj = x[j]
        for i in range(ROWS):
            acc[i] += bf16_to_float(w[i * k + j]) * xj
    for i in range(ROWS):
        y[i] = acc[i]


cdef Py_ssize_t PARALLEL_MIN_WEIGHTS = 1 << 18   # 512 KiB of BF16


def matmul_bf16(const uint16_t[:, ::1] w, const float[:, ::1] x, float[:, ::1] y, int threads=0):
    """y[m, r] = sum_j float32(W[r, j]) * x[m, j]: BF16 bits W [n, k], x [M, k], y [M, n].

    For few rows of x (a decoder step has one): the weights are streamed from memory
    once, widened in registers. Rows of W go in blocks of 8 (eight memory streams in
    flight per core: measured +25% bandwidth over one row at a time); a block stays in
    L1/L2 while it meets every row of x. Blocks are split across `threads` OpenMP
    threads (one thread for matrices under 256 K weights, where waking threads costs
    more than it saves).
    """
    cdef Py_ssize_t n = w.shape[0], k = w.shape[1], M = x.shape[0], b, r, m
    cdef Py_ssize_t n_blocks = n // ROWS
    if x.shape[1] != k or y.shape[0] != M or y.shape[1] != n:
        raise ValueError(f"matmul_bf16: W {n}x{k}, x {M}x{x.shape[1]}, y {y.shape[0]}x{y.shape[1]}")
    if n == 0 or M == 0:
        return
    if k == 0:
        y[:, :] = 0
        return
    if threads <= 0 or n * k < PARALLEL_MIN_WEIGHTS:
        threads = 1
    with nogil:
        for b in prange(n_blocks, schedule="static", num_threads=threads):
            for m in range(M):
                dot_rows(&w[b * ROWS, 0], k, &x[m, 0], &y[m, b * ROWS])
        for r in range(n_blocks * ROWS, n):
            for m in range(M):
                y[m, r] = dot_bf16(&w[r, 0], &x[m, 0], k)
