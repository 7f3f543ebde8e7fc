# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""Ahead-of-time compiled kernels (Cython + OpenMP).

The BF16 matrix product for a few rows is the decoder's hot loop: each step streams
all ~6.9 GB of decoder weights once, so it must run at memory bandwidth. It is written
with intrinsics in _bf16.h (register tiles of weight rows x activation rows, an order
of reduction that does not depend on the row count) and compiled ahead of time, so it
needs no JIT warm-up (cold start). The quantized formats' kernels are in _quant.h.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint16_t, uint32_t


# --- run-time CPU dispatch (see _cpu.h; voxnp/cpu.py chooses the set at import) ---

cdef extern from "_cpu.h" nogil:
    int KSET_COUNT
    const char* kset_names[]
    int cpu_runs_set(int s)


cdef int _kset = 0           # the kernel set every product below uses (index into kset_names)


def kernel_sets():
    """The kernel sets this build has, lowest first (names; see _cpu.h)."""
    return [kset_names[i].decode() for i in range(KSET_COUNT)]


def cpu_runs(str name):
    """True if this CPU (and its operating system) runs kernel set `name`."""
    return bool(cpu_runs_set(kernel_sets().index(name)))


def use_kernel_set(str name):
    """Make every product use kernel set `name` (which this CPU must run)."""
    global _kset
    i = kernel_sets().index(name)
    if not cpu_runs_set(i):
        raise ValueError(f"this CPU does not run the {name} kernels")
    _kset = i


def kernel_set():
    """The kernel set in use."""
    return kset_names[_kset].decode()


cdef extern from "_bf16.h" nogil:
    int BF16_BLOCK
    void bf16_rows(int kset, const uint16_t* w, int64_t k, int64_t r0, int64_t r1,
                   const float* x, int64_t M, float* y, int64_t n)


cdef Py_ssize_t PARALLEL_MIN_WEIGHTS = 1 << 18   # 512 KiB of BF16


def matmul_bf16(const uint16_t[:, ::1] w, const float[:, ::1] x, float[:, ::1] y, int threads=0):
    """y[m, r] = sum_j float32(W[r, j]) * x[m, j]: BF16 bits W [n, k], x [M, k], y [M, n].

    For few rows of x (a decoder step has one; speculation and batched streams up to 8):
    the weights are streamed from memory once and widened in registers, and each block
    of weight rows meets every row of x while it is in registers or L1 (see _bf16.h).
    Each row's result is bit-identical to a call with that row alone, at any thread
    count. Blocks of weight rows are split across `threads` OpenMP threads (one thread
    for matrices under 256 K weights, where waking threads costs more than it saves).
    """
    cdef Py_ssize_t n = w.shape[0], k = w.shape[1], M = x.shape[0], b
    cdef Py_ssize_t rb = BF16_BLOCK
    cdef Py_ssize_t n_blocks = (n + rb - 1) // rb
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
            bf16_rows(_kset, &w[0, 0], k, b * rb, min(n, (b + 1) * rb), &x[0, 0], M, &y[0, 0], n)


# --- quantized kernels (see _quant.h) ---
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t

cdef extern from "_quant.h" nogil:
    int Q8_BLOCK
    int Q4K_BLOCK
    int q8_matmul(const int8_t* q, const float* scale, int64_t n, int64_t kp, const float* x,
                  int64_t T, int64_t k, float* y, int threads, int kset)
    int q4k_matmul(const uint8_t* qs, const uint8_t* meta, int64_t n, int64_t kp, const float* x,
                   int64_t T, int64_t k, float* y, int threads, int kset)
    void q8_dequantize(const int8_t* q, const float* scale, int64_t kp, int64_t k,
                       int64_t r0, int64_t r1, float* out)
    void q4k_dequantize(const uint8_t* qs, const uint8_t* meta, int64_t kp, int64_t k,
                        int64_t r0, int64_t r1, float* out)


cdef int _check_rows(str what, Py_ssize_t n, Py_ssize_t kp, Py_ssize_t block, Py_ssize_t k,
                     Py_ssize_t T, Py_ssize_t yT, Py_ssize_t yn) except -1:
    if kp % block or not (kp - block < k <= kp) or yT != T or yn != n or T > 8:
        raise ValueError(f"{what}: W {n}x{kp} (blocks of {block}), x {T}x{k}, y {yT}x{yn} (T <= 8)")
    return 0


def matmul_q8(const int8_t[:, ::1] q, const float[:, ::1] scale, const float[:, ::1] x, float[:, ::1] y,
              int threads=0):
    """y [T, n] = x [T, k] times the int8 matrix (q [n, kp], scale [n, kp/128]); T <= 8.

    quant.Int8.product by _quant.h: each row's result is the same whatever T and threads.
    """
    cdef Py_ssize_t n = q.shape[0], kp = q.shape[1], T = x.shape[0], k = x.shape[1]
    cdef int rc
    _check_rows("matmul_q8", n, kp, Q8_BLOCK, k, T, y.shape[0], y.shape[1])
    if scale.shape[0] != n or scale.shape[1] != kp // Q8_BLOCK:
        raise ValueError(f"matmul_q8: scale {scale.shape[0]}x{scale.shape[1]} for W {n}x{kp}")
    if n == 0 or T == 0:
        return
    with nogil:
        rc = q8_matmul(&q[0, 0], &scale[0, 0], n, kp, &x[0, 0], T, k, &y[0, 0], threads, _kset)
    if rc:
        raise MemoryError()


def matmul_q4k(const uint8_t[:, ::1] qs, const uint8_t[:, ::1] meta, const float[:, ::1] x, float[:, ::1] y,
               int threads=0):
    """y [T, n] = x [T, k] times the q4k matrix (qs [n, kp/2], meta bytes [n, kp/256 * 24]); T <= 8."""
    cdef Py_ssize_t n = qs.shape[0], kp = 2 * qs.shape[1], T = x.shape[0], k = x.shape[1]
    cdef int rc
    _check_rows("matmul_q4k", n, kp, Q4K_BLOCK, k, T, y.shape[0], y.shape[1])
    if meta.shape[0] != n or meta.shape[1] != kp // Q4K_BLOCK * 24:
        raise ValueError(f"matmul_q4k: meta {meta.shape[0]}x{meta.shape[1]} for W {n}x{kp}")
    if n == 0 or T == 0:
        return
    with nogil:
        rc = q4k_matmul(&qs[0, 0], &meta[0, 0], n, kp, &x[0, 0], T, k, &y[0, 0], threads, _kset)
    if rc:
        raise MemoryError()


def dequantize_q8(const int8_t[:, ::1] q, const float[:, ::1] scale, Py_ssize_t r0, Py_ssize_t r1,
                  float[:, ::1] out):
    """out[:r1-r0, :] = float32 rows r0..r1 of the int8 matrix (out [>= r1-r0, k])."""
    if not (0 <= r0 <= r1 <= q.shape[0]) or out.shape[0] < r1 - r0 or not (q.shape[1] - Q8_BLOCK < out.shape[1] <= q.shape[1]):
        raise ValueError("dequantize_q8: bad rows or output shape")
    if r1 > r0 and out.shape[1]:
        with nogil:
            q8_dequantize(&q[0, 0], &scale[0, 0], q.shape[1], out.shape[1], r0, r1, &out[0, 0])


def dequantize_q4k(const uint8_t[:, ::1] qs, const uint8_t[:, ::1] meta, Py_ssize_t r0, Py_ssize_t r1,
                   float[:, ::1] out):
    """out[:r1-r0, :] = float32 rows r0..r1 of the q4k matrix (out [>= r1-r0, k])."""
    cdef Py_ssize_t kp = 2 * qs.shape[1]
    if not (0 <= r0 <= r1 <= qs.shape[0]) or out.shape[0] < r1 - r0 or not (kp - Q4K_BLOCK < out.shape[1] <= kp):
        raise ValueError("dequantize_q4k: bad rows or output shape")
    if r1 > r0 and out.shape[1]:
        with nogil:
            q4k_dequantize(&qs[0, 0], &meta[0, 0], kp, out.shape[1], r0, r1, &out[0, 0])


# --- the encoder's many-row int8 product (see _igemm.h) ---

cdef extern from "_igemm.h" nogil:
    int IG_BLOCK
    int IG_QUAD
    int ig_matmul(const int8_t* wp, const float* ws, const int32_t* wsum, int64_t n, int64_t kp,
                  const float* x, int64_t M, int64_t k, float* y, int threads, int kset)


def matmul_i8rows(const int8_t[:, ::1] q, const float[::1] scale, const int32_t[::1] qsum,
                  const float[:, ::1] x, float[:, ::1] y, int threads=1):
    """y [M, n] = x [M, k] times the packed int8 matrix (q [np, kp], scale and qsum [np]),
    any number of rows: quant.Int8Rows.product, the same bits on every kernel set."""
    cdef Py_ssize_t n = y.shape[1], npad = q.shape[0], kp = q.shape[1], M = x.shape[0], k = x.shape[1]
    cdef int rc
    if npad % IG_BLOCK or kp % IG_QUAD or not (npad - IG_BLOCK < n <= npad) or not (kp - IG_QUAD < k <= kp) \
            or y.shape[0] != M or scale.shape[0] != npad or qsum.shape[0] != npad:
        raise ValueError(f"matmul_i8rows: W {npad}x{kp}, scale {scale.shape[0]}, qsum {qsum.shape[0]}, "
                         f"x {M}x{k}, y {y.shape[0]}x{n}")
    if M == 0 or n == 0:
        return
    with nogil:
        rc = ig_matmul(&q[0, 0], &scale[0], &qsum[0], n, kp, &x[0, 0], M, k, &y[0, 0], threads, _kset)
    if rc:
        raise MemoryError()


# --- fused windowed attention for blocks of positions (see _attention.h) ---

cdef extern from "_attention.h" nogil:
    int att_window(const float* q, int64_t H, int64_t T, int hd, const float* k, const float* v,
                   int64_t Hkv, int64_t S, const int64_t* key_pos, int64_t first_pos,
                   int64_t window, int64_t chunk, float* out, int threads, int kset)
    int att_ring(const float* q, int64_t T, int64_t H, int hd, const void* ring_k, const void* ring_v,
                 int bf16, int64_t Hkv, int64_t cap, int64_t length, int64_t window, float* out,
                 int threads, int kset)


def attention_window(const float[:, :, ::1] q, const float[:, :, ::1] k, const float[:, :, ::1] v,
                     const int64_t[::1] key_pos, int64_t first_pos, int64_t window, int64_t chunk,
                     float[:, :, ::1] out, int threads=1):
    """out [T, H, hd] = sliding-window attention of q [H, T, hd] (scaled) over the keys and
    values k, v [Hkv, S, hd] at the ascending positions key_pos [S]; query t is at
    first_pos + t and sees the keys with pos - window < key_pos <= pos."""
    cdef Py_ssize_t H = q.shape[0], T = q.shape[1], hd = q.shape[2], Hkv = v.shape[0], S = v.shape[1]
    cdef int rc
    if (k.shape[0] != Hkv or k.shape[1] != S or k.shape[2] != hd or v.shape[2] != hd
            or key_pos.shape[0] != S or Hkv == 0 or H % Hkv or chunk < 1
            or out.shape[0] != T or out.shape[1] != H or out.shape[2] != hd):
        raise ValueError("attention_window: inconsistent shapes")
    if T == 0 or H == 0:
        return
    with nogil:
        rc = att_window(&q[0, 0, 0], H, T, hd, &k[0, 0, 0], &v[0, 0, 0], Hkv, S, &key_pos[0],
                        first_pos, window, chunk, &out[0, 0, 0], threads, _kset)
    if rc:
        raise MemoryError()


def attention_ring(const float[:, :, ::1] q, ring_k, ring_v, int64_t length, int64_t window,
                   float[:, :, ::1] out, int threads=1):
    """out [T, H, hd] = the last T positions' queries q [T, H, hd] (already appended to the
    ring) over the ring ring_k, ring_v [Hkv, cap, hd] in place, float32 or BF16 bits
    (uint16); query t is at length - T + t and sees the window before it (the decoder's
    step, T <= 8)."""
    cdef const float[:, :, ::1] kf, vf
    cdef const uint16_t[:, :, ::1] kh, vh
    cdef const void *pk
    cdef const void *pv
    cdef int bf16 = ring_k.dtype.itemsize == 2              # BF16 bits (uint16), else float32
    if bf16:
        kh, vh = ring_k, ring_v
        pk, pv = &kh[0, 0, 0], &vh[0, 0, 0]
    else:
        kf, vf = ring_k, ring_v
        pk, pv = &kf[0, 0, 0], &vf[0, 0, 0]
    cdef Py_ssize_t T = q.shape[0], H = q.shape[1], hd = q.shape[2], Hkv = ring_k.shape[0], cap = ring_k.shape[1]
    cdef int rc
    cdef int64_t oldest = length - T - window + 1          # the oldest key any query sees ...
    if (ring_v.dtype != ring_k.dtype or ring_v.shape[0] != Hkv or ring_v.shape[1] != cap
            or ring_k.shape[2] != hd or ring_v.shape[2] != hd
            or Hkv == 0 or H % Hkv or window < 1 or T > 8 or length < T or oldest < length - cap  # ... in the ring
            or out.shape[0] != T or out.shape[1] != H or out.shape[2] != hd):
        raise ValueError("attention_ring: inconsistent shapes")
    if T == 0 or H == 0:
        return
    with nogil:
        rc = att_ring(&q[0, 0, 0], T, H, hd, pk, pv, bf16, Hkv, cap, length, window,
                      &out[0, 0, 0], threads, _kset)
    if rc:
        raise MemoryError()

def _best_set():
    """The highest kernel set this CPU runs (the default)."""
    return max(i for i in range(KSET_COUNT) if cpu_runs_set(i))


_kset = _best_set()
