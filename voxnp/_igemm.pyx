# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""The encoder's many-row int8 product (_igemm.h), ahead of time compiled (Cython + OpenMP).

Built without -fassociative-math, so the float epilogue rounds exactly as the NumPy
definition (quant.Int8Rows.product) whatever the kernel set.
"""
from libc.stdint cimport int8_t, int32_t, int64_t

cdef extern from "_igemm.h" nogil:
    int IG_BLOCK
    int IG_QUAD
    int IG_PORTABLE, IG_AVX2, IG_AVXVNNI, IG_AVX512VNNI
    int ig_best_isa()
    int ig_matmul(const int8_t* wp, const float* ws, const int32_t* wsum, int64_t n, int64_t kp,
                  const float* x, int64_t M, int64_t k, float* y, int threads, int isa)

KERNEL_SETS = ("portable", "avx2", "avxvnni", "avx512vnni")   # index = the C enum


def best_kernel_set():
    """The fastest kernel set of this CPU for the int8 encoder product."""
    return KERNEL_SETS[ig_best_isa()]


def matmul_i8rows(const int8_t[:, ::1] q, const float[::1] scale, const int32_t[::1] qsum,
                  const float[:, ::1] x, float[:, ::1] y, int threads=1, str kernel_set=""):
    """y [M, n] = x [M, k] times the packed int8 matrix (q [np, kp], scale and qsum [np]).

    kernel_set: one of KERNEL_SETS this CPU runs ("" = the best).
    """
    cdef Py_ssize_t n = y.shape[1], npad = q.shape[0], kp = q.shape[1], M = x.shape[0], k = x.shape[1]
    cdef int isa = ig_best_isa() if not kernel_set else KERNEL_SETS.index(kernel_set)
    cdef int rc
    if isa > ig_best_isa():
        raise ValueError(f"matmul_i8rows: this CPU has no {kernel_set} instructions")
    if npad % IG_BLOCK or kp % IG_QUAD or not (npad - IG_BLOCK < n <= npad) or not (kp - IG_QUAD < k <= kp) \
            or y.shape[0] != M or scale.shape[0] != npad or qsum.shape[0] != npad:
        raise ValueError(f"matmul_i8rows: W {npad}x{kp}, scale {scale.shape[0]}, qsum {qsum.shape[0]}, "
                         f"x {M}x{k}, y {y.shape[0]}x{n}")
    if M == 0 or n == 0:
        return
    with nogil:
        rc = ig_matmul(&q[0, 0], &scale[0], &qsum[0], n, kp, &x[0, 0], M, k, &y[0, 0], threads, isa)
    if rc:
        raise MemoryError()
