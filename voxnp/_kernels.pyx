# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""Ahead-of-time compiled kernels (Cython + OpenMP).

The BF16 matrix-vector product is the decoder's hot loop: each step streams all
~6.9 GB of decoder weights once, so it must run at memory bandwidth. Compiled ahead
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


def matvec_bf16(const uint16_t[:, ::1] w, const float[::1] x, float[::1] y, int threads=0):
    """y[r] = sum_j float32(W[r, j]) * x[j] for BF16 bits W [n, k], x [k], y [n] (float32).

    Rows are split across `threads` OpenMP threads (0 = OpenMP's default).
    """
    cdef Py_ssize_t n = w.shape[0], k = w.shape[1], r
    if x.shape[0] != k or y.shape[0] != n:
        raise ValueError(f"matvec_bf16: W {n}x{k}, x {x.shape[0]}, y {y.shape[0]}")
    if n == 0:
        return
    if threads <= 0:
        with nogil:
            for r in prange(n, schedule="static", chunksize=64):
                y[r] = dot_bf16(&w[r, 0], &x[0], k)
    else:
        with nogil:
            for r in prange(n, schedule="static", chunksize=64, num_threads=threads):
                y[r] = dot_bf16(&w[r, 0], &x[0], k)
