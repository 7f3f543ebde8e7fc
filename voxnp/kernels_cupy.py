"""The NVIDIA GPU backend (CuPy): the ops of `ops.py` with activations on the device.

    voxnp speech.wav --backend cupy        # pip install "voxnp[gpu]" (CuPy for CUDA 12/13)

`get_backend("cupy")` returns a `CupyBackend`, whose `xp` is the `cupy` module: the
model code (encoder.py, decoder.py, stream.py) builds its activations, norms, RoPE,
softmax and KV rings with it, so they stay on the GPU, and a decoder pass hands back
only each row's token id. What the backend owns:

- `DeviceWeights`: the checkpoint on the GPU as BF16 bits (uint16), uploaded once
  (8.9 GB for the real model), every weight a view into it; float32 copies only of
  the vectors (norms, biases);
- `linear`: up to FEW_ROWS rows (a decoder step, speculative rows, a few streams) go
  through `bf16_rows`, a kernel that widens each weight exactly (bits << 16) while it
  streams it and accumulates in float32; more rows (encoder, prefill) run float32
  cuBLAS on blocks of weight rows widened into a scratch buffer (measured on an H200:
  as fast as float32 copies of the encoder's matrices, which would cost 2.6 GB). Nothing
  is rounded to bf16 or tf32;
- the decoder's attention: every sequence of a pass appended to its ring and attended
  over it in two kernels; the encoder's reads the visible window of a ring in place.

The custom kernels (CUDA source below) sit behind `CudaKernels`, whose methods have
NumPy twins in `KernelTwins`: the tests run the backend through a NumPy stand-in for
CuPy with the twins (no GPU on CI), and bench/gpu.py checks kernels against twins on
a GPU.
"""
from __future__ import annotations

import re

import numpy as np

from . import ops
from .errors import VoxnpError

FEW_ROWS = 8                 # rows through the BF16 kernel; more go to cuBLAS (float32)
SCRATCH_FLOATS = 1 << 25     # widened weight rows per cuBLAS call: 128 MiB, a whole [9216, 3072]
QUERY_CHUNK = 256            # encoder queries scored at once (bounds the scores' memory)
RESERVE_BYTES = 2 << 30      # activations, rings of one stream, scratch, CUDA context
UPLOAD_CHUNK = 1 << 28       # bytes per host-to-device copy of the checkpoint


def import_cupy():
    """The cupy module, with a GPU behind it; else a one-line VoxnpError saying which is missing."""
    try:
        import cupy
    except ImportError:
        raise VoxnpError("the cupy backend needs CuPy: pip install \"voxnp[gpu]\" "
                         "(or cupy-cuda12x / cupy-cuda13x)") from None
    except Exception as e:  # a broken install: CUDA libraries missing, ...
        raise VoxnpError(f"the cupy backend could not load CuPy: {_first_line(e)}") from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, no device
        raise VoxnpError(f"the cupy backend needs an NVIDIA GPU, and CUDA finds none ({_first_line(e)})") from None
    if n == 0:
        raise VoxnpError("the cupy backend needs an NVIDIA GPU, and CUDA finds none")
    return cupy


def _first_line(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


# ---------------------------------------------------------------------------
# the custom kernels (CUDA) and their NumPy twins

CUDA_SOURCE = r"""
// voxnp's CUDA kernels: one module, compiled by NVRTC (through CuPy) on first use.
// Every kernel has a NumPy twin in kernels_cupy.KernelTwins.

// y[t, n] = sum_k x[t, k] * float32(W[n, k]) for T <= MAX_T rows of x.
// One warp computes ROWS weight rows; lane l reads the row in 16-byte pieces
// (8 BF16) when `vec`, else one BF16 at a time. A BF16 widens exactly: bits << 16.
// Each row t's sum has the same order whatever T is (fmaf per element, then a
// butterfly over the lanes), so T rows give what T one-row calls give.
#define MAX_T 8
#define ROWS 2
extern "C" __global__ void bf16_rows(const float* __restrict__ x, const unsigned short* __restrict__ w,
                                     float* __restrict__ y, int T, int N, int K, int vec)
{
    const int lane = threadIdx.x & 31;
    const int n0 = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * ROWS;
    if (n0 >= N) return;
    float acc[ROWS][MAX_T];
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int t = 0; t < MAX_T; ++t) acc[r][t] = 0.0f;
    if (vec) {
        for (int i = lane; i < K / 8; i += 32) {
            float wf[ROWS][8];
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                uint4 b = make_uint4(0, 0, 0, 0);
                if (n0 + r < N) b = __ldg(reinterpret_cast<const uint4*>(w + (size_t)(n0 + r) * K) + i);
                wf[r][0] = __uint_as_float(b.x << 16); wf[r][1] = __uint_as_float(b.x & 0xffff0000u);
                wf[r][2] = __uint_as_float(b.y << 16); wf[r][3] = __uint_as_float(b.y & 0xffff0000u);
                wf[r][4] = __uint_as_float(b.z << 16); wf[r][5] = __uint_as_float(b.z & 0xffff0000u);
                wf[r][6] = __uint_as_float(b.w << 16); wf[r][7] = __uint_as_float(b.w & 0xffff0000u);
            }
#pragma unroll
            for (int t = 0; t < MAX_T; ++t) {
                if (t < T) {
                    const float4* xt = reinterpret_cast<const float4*>(x + (size_t)t * K) + 2 * i;
                    const float4 a = __ldg(xt), c = __ldg(xt + 1);
#pragma unroll
                    for (int r = 0; r < ROWS; ++r) {
                        float s = acc[r][t];
                        s = fmaf(wf[r][0], a.x, s); s = fmaf(wf[r][1], a.y, s);
                        s = fmaf(wf[r][2], a.z, s); s = fmaf(wf[r][3], a.w, s);
                        s = fmaf(wf[r][4], c.x, s); s = fmaf(wf[r][5], c.y, s);
                        s = fmaf(wf[r][6], c.z, s); s = fmaf(wf[r][7], c.w, s);
                        acc[r][t] = s;
                    }
                }
            }
        }
    } else {
        for (int k = lane; k < K; k += 32) {
            float wf[ROWS];
#pragma unroll
            for (int r = 0; r < ROWS; ++r)
                wf[r] = n0 + r < N ? __uint_as_float(((unsigned int)w[(size_t)(n0 + r) * K + k]) << 16) : 0.0f;
#pragma unroll
            for (int t = 0; t < MAX_T; ++t)
                if (t < T) {
                    const float a = x[(size_t)t * K + k];
#pragma unroll
                    for (int r = 0; r < ROWS; ++r) acc[r][t] = fmaf(wf[r], a, acc[r][t]);
                }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int t = 0; t < MAX_T; ++t) {
            float s = acc[r][t];
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
            if (lane == 0 && t < T && n0 + r < N) y[(size_t)t * N + n0 + r] = s;
        }
}

#define GRID_STRIDE(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); \
         i += (long long)gridDim.x * blockDim.x)

// y = float32(w): BF16 bits widen exactly.
extern "C" __global__ void widen(const unsigned short* __restrict__ w, float* __restrict__ y, long long n)
{
    GRID_STRIDE(i, n) y[i] = __uint_as_float(((unsigned int)w[i]) << 16);
}

// y = x/2 (1 + erf(x / sqrt 2)), the exact GELU.
extern "C" __global__ void gelu(const float* __restrict__ x, float* __restrict__ y, long long n)
{
    GRID_STRIDE(i, n) y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

// y = silu(g) * u = g / (1 + exp(-g)) * u, the SwiGLU gate.
extern "C" __global__ void swiglu(const float* __restrict__ g, const float* __restrict__ u,
                                  float* __restrict__ y, long long n)
{
    GRID_STRIDE(i, n) y[i] = __fmul_rn(__fdiv_rn(g[i], 1.0f + expf(-g[i])), u[i]);
}

__device__ __forceinline__ float warp_sum(float s)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    return s;
}

// One block per row r of x [R, D]: y = x / sqrt(mean(x^2) + eps) * w.
extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w,
                                    float* __restrict__ y, int D, float eps)
{
    __shared__ float part[32];
    const float* xr = x + (size_t)blockIdx.x * D;
    float* yr = y + (size_t)blockIdx.x * D;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float s = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) s = fmaf(xr[i], xr[i], s);
    s = warp_sum(s);
    if (lane == 0) part[warp] = s;
    __syncthreads();
    if (warp == 0) {
        s = warp_sum(lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0f);
        if (lane == 0) part[0] = s;
    }
    __syncthreads();
    const float root = sqrtf(part[0] / (float)D + eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) yr[i] = __fmul_rn(__fdiv_rn(xr[i], root), w[i]);
}

// Interleaved RoPE of x [T, H, 2*half]: pair j of every head of row t turns by
// pos[t] * inv_freq[j] (the angle, its cosine and sine in double, then float).
extern "C" __global__ void rope(const float* __restrict__ x, float* __restrict__ y,
                                const long long* __restrict__ pos, const float* __restrict__ inv_freq,
                                int H, int half, long long n_pairs)
{
    GRID_STRIDE(i, n_pairs) {
        const int j = (int)(i % half);
        const long long t = i / half / H;
        const double angle = (double)pos[t] * (double)inv_freq[j];
        const float c = (float)cos(angle), s = (float)sin(angle);
        const float e = x[2 * i], o = x[2 * i + 1];
        y[2 * i] = __fsub_rn(__fmul_rn(e, c), __fmul_rn(o, s));
        y[2 * i + 1] = __fadd_rn(__fmul_rn(e, s), __fmul_rn(o, c));
    }
}

// The decoder's attention for S sequences in one pass. Row t of q [R, H, hd] and of the new
// k, v [R, Hkv, hd] belongs to sequence s, the last one whose first row <= t. Two int64
// tables [S, 3] describe the sequences: rings (the addresses of its rings k, v [Hkv,
// capacity, hd], the capacity) and where (its first row, that row's position, the first
// position its ring still holds): the same `where` serves every layer of a pass.
__device__ __forceinline__ int sequence_of(const long long* where, int S, int t)
{
    int s = 0;
    while (s + 1 < S && where[(s + 1) * 3] <= t) ++s;
    return s;
}

// Each new key and value goes to slot (position % capacity) of its sequence's ring.
extern "C" __global__ void ring_append(const float* __restrict__ k, const float* __restrict__ v,
                                       const long long* __restrict__ rings, const long long* __restrict__ where,
                                       int S, int Hkv, int hd, long long n)
{
    GRID_STRIDE(i, n) {
        const int d = (int)(i % hd), g = (int)(i / hd % Hkv), t = (int)(i / hd / Hkv);
        const int s = sequence_of(where, S, t);
        const long long position = where[3 * s + 1] + (t - where[3 * s]), capacity = rings[3 * s + 2];
        const size_t slot = ((size_t)g * capacity + (size_t)(position % capacity)) * hd + d;
        reinterpret_cast<float*>(rings[3 * s])[slot] = k[i];
        reinterpret_cast<float*>(rings[3 * s + 1])[slot] = v[i];
    }
}

// Row t (at position pos) sees positions lo = max(first_valid, pos - window + 1) .. pos of
// its ring. Grid (H, R, splits): block z takes the keys lo + z*ATT_CHUNK onwards (at most
// ATT_CHUNK of them); each of its 8 warps keeps an online softmax over every 8th key (lane
// l holds dims l, l+32, ...; any hd up to 256), then the warps merge. With one split the
// block writes the output; with more it writes its part (weighted values, their max score,
// their sum of weights) to partial [R, H, splits, hd + 2], and merge_parts combines them.
#define ATT_WARPS 8
#define ATT_MAX_PER_LANE 8
#define ATT_CHUNK 256
#define NEG_INF __int_as_float(0xff800000)
extern "C" __global__ void attend_rings(const float* __restrict__ q, const long long* __restrict__ rings,
                                        const long long* __restrict__ where, float* __restrict__ out,
                                        float* __restrict__ partial, int S, int H, int Hkv, int hd,
                                        int window, float scale)
{
    __shared__ float m_w[ATT_WARPS], l_w[ATT_WARPS];
    __shared__ float acc_w[ATT_WARPS][32 * ATT_MAX_PER_LANE];
    const int h = blockIdx.x, t = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = h / (H / Hkv);
    const int s = sequence_of(where, S, t);
    const float* ring_k = reinterpret_cast<const float*>(rings[3 * s]);
    const float* ring_v = reinterpret_cast<const float*>(rings[3 * s + 1]);
    const long long capacity = rings[3 * s + 2], pos = where[3 * s + 1] + (t - where[3 * s]);
    const long long lo = max(where[3 * s + 2], pos - window + 1) + (long long)blockIdx.z * ATT_CHUNK;
    const long long hi = min(pos, lo + ATT_CHUNK - 1);
    const float* qr = q + ((size_t)t * H + h) * hd;
    float qv[ATT_MAX_PER_LANE], acc[ATT_MAX_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATT_MAX_PER_LANE; ++i) {
        qv[i] = lane + 32 * i < hd ? qr[lane + 32 * i] * scale : 0.0f;
        acc[i] = 0.0f;
    }
    float mx = NEG_INF, l = 0.0f;
    for (long long p = lo + warp; p <= hi; p += ATT_WARPS) {
        const size_t base = ((size_t)g * capacity + (size_t)(p % capacity)) * hd;
        float sc = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_MAX_PER_LANE; ++i)
            if (lane + 32 * i < hd) sc = fmaf(qv[i], ring_k[base + lane + 32 * i], sc);
        sc = warp_sum(sc);
        const float m_new = fmaxf(mx, sc);
        const float keep = expf(mx - m_new), weight = expf(sc - m_new);
        l = l * keep + weight;
#pragma unroll
        for (int i = 0; i < ATT_MAX_PER_LANE; ++i)
            if (lane + 32 * i < hd) acc[i] = fmaf(weight, ring_v[base + lane + 32 * i], acc[i] * keep);
        mx = m_new;
    }
    if (lane == 0) { m_w[warp] = mx; l_w[warp] = l; }
#pragma unroll
    for (int i = 0; i < ATT_MAX_PER_LANE; ++i)
        if (lane + 32 * i < hd) acc_w[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    float top = NEG_INF;
    for (int w = 0; w < ATT_WARPS; ++w) top = fmaxf(top, m_w[w]);
    float total = 0.0f;
    for (int w = 0; w < ATT_WARPS; ++w) total += l_w[w] > 0.0f ? l_w[w] * expf(m_w[w] - top) : 0.0f;
    const size_t row_head = (size_t)t * H + h;
    float* part = partial + (row_head * gridDim.z + blockIdx.z) * (hd + 2);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float sum = 0.0f;
        for (int w = 0; w < ATT_WARPS; ++w)
            if (l_w[w] > 0.0f) sum = fmaf(acc_w[w][d], expf(m_w[w] - top), sum);
        if (gridDim.z == 1) out[row_head * hd + d] = sum / total;
        else part[d] = sum;
    }
    if (gridDim.z > 1 && threadIdx.x == 0) { part[hd] = top; part[hd + 1] = total; }
}

// out [R, H, hd] from the splits' parts of attend_rings: block (h, t).
extern "C" __global__ void merge_parts(const float* __restrict__ partial, float* __restrict__ out,
                                       int H, int hd, int splits)
{
    const size_t row_head = (size_t)blockIdx.y * H + blockIdx.x;
    const float* parts = partial + row_head * splits * (hd + 2);
    float top = NEG_INF, total = 0.0f;
    for (int z = 0; z < splits; ++z)
        if (parts[z * (hd + 2) + hd + 1] > 0.0f) top = fmaxf(top, parts[z * (hd + 2) + hd]);
    for (int z = 0; z < splits; ++z) {
        const float* p = parts + z * (hd + 2);
        if (p[hd + 1] > 0.0f) total = fmaf(p[hd + 1], expf(p[hd] - top), total);
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float sum = 0.0f;
        for (int z = 0; z < splits; ++z) {
            const float* p = parts + z * (hd + 2);
            if (p[hd + 1] > 0.0f) sum = fmaf(p[d], expf(p[hd] - top), sum);
        }
        out[row_head * hd + d] = sum / total;
    }
}
"""
KERNEL_NAMES = ("bf16_rows", "widen", "gelu", "swiglu", "rms_norm", "rope", "ring_append", "attend_rings", "merge_parts")
_BF16_ROWS_PER_WARP = 2
_WARPS_PER_BLOCK = 4
_ELEMENTWISE_THREADS = 256
_ATTENTION_THREADS = 256      # ATT_WARPS warps
_ATTENTION_MAX_HEAD_DIM = 256  # 32 lanes x ATT_MAX_PER_LANE
_ATTENTION_CHUNK = 256         # ATT_CHUNK: keys per block of attend_rings
_TABLES_KEPT = 4096            # sequence tables kept on the device (a few bytes each)


def compile_error_line(log: str) -> str:
    """One line for a failed compile: the kernel holding the first error and the error.
    NVRTC logs errors as `NAME.cu(LINE): error: TEXT`."""
    found = re.search(r"\((\d+)\): (?:catastrophic )?error:\s*(.*)", log)
    if not found:
        return f"the cupy backend's CUDA kernels could not be built: {_first_line(Exception(log))}"
    line, text = int(found.group(1)), found.group(2).strip()
    kernel = "voxnp's CUDA module"
    for source_line in CUDA_SOURCE.splitlines()[:line]:
        declared = re.search(r"__global__ void (\w+)\(", source_line)
        if declared:
            kernel = f"kernel {declared.group(1)}"
    return f"the cupy backend's {kernel} failed to compile (line {line}): {text}"


class CudaKernels:
    """The backend's custom kernels: `CUDA_SOURCE` compiled once (NVRTC, cached by CuPy)."""

    def __init__(self, cp):
        self.cp = cp
        try:
            module = cp.RawModule(code=CUDA_SOURCE)
            self._f = {name: module.get_function(name) for name in KERNEL_NAMES}
            self._tables = {}
        except Exception as e:   # cupy.cuda.compiler.CompileException, a driver without NVRTC, ...
            raise VoxnpError(compile_error_line(str(e))) from None

    def _elementwise(self, name, n, *args):
        blocks = max(1, min(-(-n // _ELEMENTWISE_THREADS), 65536))
        self._f[name]((blocks,), (_ELEMENTWISE_THREADS,), args + (np.int64(n),))

    def bf16_rows(self, x, w):
        """x [T, K] float32 (T <= FEW_ROWS), w [N, K] BF16 bits -> x @ float32(w).T [T, N]."""
        cp = self.cp
        T, K = x.shape
        N = w.shape[0]
        x = cp.ascontiguousarray(x, dtype=cp.float32)
        if x.data.ptr % 16:
            x = x.copy()
        vec = int(K % 8 == 0 and w.data.ptr % 16 == 0)
        y = cp.empty((T, N), cp.float32)
        warps = -(-N // _BF16_ROWS_PER_WARP)
        blocks = -(-warps // _WARPS_PER_BLOCK)
        self._f["bf16_rows"]((blocks,), (32 * _WARPS_PER_BLOCK,),
                             (x, w, y, np.int32(T), np.int32(N), np.int32(K), np.int32(vec)))
        return y

    def widen(self, w, out=None):
        """float32(w) for BF16 bits w (any shape), written into the front of `out` if given."""
        w = self.cp.ascontiguousarray(w)
        y = self.cp.empty(w.shape, np.float32) if out is None else out[:w.size].reshape(w.shape)
        self._elementwise("widen", w.size, w, y)
        return y

    def gelu(self, x):
        """Exact GELU, x/2 (1 + erf(x / sqrt 2)), in float32."""
        x = self.cp.ascontiguousarray(x, dtype=np.float32)
        y = self.cp.empty_like(x)
        self._elementwise("gelu", x.size, x, y)
        return y

    def swiglu(self, gate, up):
        """silu(gate) * up, one pass."""
        cp = self.cp
        gate, up = cp.ascontiguousarray(gate, dtype=np.float32), cp.ascontiguousarray(up, dtype=np.float32)
        y = cp.empty_like(gate)
        self._elementwise("swiglu", gate.size, gate, up, y)
        return y

    def rms_norm(self, x, w, eps: float):
        """x [..., D] / sqrt(mean(x^2) + eps) * w [D] (float32), one block per row."""
        cp = self.cp
        x = cp.ascontiguousarray(x, dtype=np.float32)
        D = x.shape[-1]
        y = cp.empty_like(x)
        self._f["rms_norm"]((max(1, x.size // D),), (256,), (x, w, y, np.int32(D), np.float32(eps)))
        return y

    def rope(self, x, positions, inv_freq):
        """Interleaved RoPE of x [T, H, hd] at positions [T] (int64) with inv_freq [hd/2]."""
        cp = self.cp
        x = cp.ascontiguousarray(x, dtype=np.float32)
        T, H, hd = x.shape
        y = cp.empty_like(x)
        pos = cp.ascontiguousarray(positions, dtype=np.int64)
        self._elementwise("rope", T * H * (hd // 2), x, y, pos, inv_freq, np.int32(H), np.int32(hd // 2))
        return y

    def append_and_attend(self, q, k, v, rings, rows, first_positions, first_valid, window: int):
        """Sequence s's rows (rows[s]) of k, v [R, Hkv, hd] go into its rings (ring_k, ring_v
        [Hkv, capacity, hd]) from position first_positions[s] on, then every row of q
        [R, H, hd] attends over its ring, positions first_valid[s] on. -> [R, H, hd]"""
        cp = self.cp
        R, H, hd = q.shape
        Hkv = k.shape[1]
        if hd > _ATTENTION_MAX_HEAD_DIM:
            raise ValueError(f"the ring attention kernel takes heads of up to {_ATTENTION_MAX_HEAD_DIM}, got {hd}")
        table = self._table(tuple((rk.data.ptr, rv.data.ptr, rk.shape[1]) for rk, rv in rings))
        where = self._table(tuple((r.start, p, f) for r, p, f in zip(rows, first_positions, first_valid)))
        S = np.int32(len(rows))
        k, v = cp.ascontiguousarray(k, dtype=np.float32), cp.ascontiguousarray(v, dtype=np.float32)
        self._elementwise("ring_append", k.size, k, v, table, where, S, np.int32(Hkv), np.int32(hd))
        # the most keys a row sees sets the splits (blocks per row and head)
        seen = max(min(window, p + (r.stop - r.start) - f) for r, p, f in zip(rows, first_positions, first_valid))
        splits = -(-seen // _ATTENTION_CHUNK)
        q = cp.ascontiguousarray(q, dtype=np.float32)
        out = cp.empty_like(q)
        partial = cp.empty((R, H, splits, hd + 2) if splits > 1 else 1, np.float32)
        self._f["attend_rings"]((H, R, splits), (_ATTENTION_THREADS,),
                                (q, table, where, out, partial, S, np.int32(H), np.int32(Hkv), np.int32(hd),
                                 np.int32(window), np.float32(1.0 / np.sqrt(hd))))
        if splits > 1:
            self._f["merge_parts"]((H, R), (128,), (partial, out, np.int32(H), np.int32(hd), np.int32(splits)))
        return out

    def _table(self, values: tuple):
        """A small int64 table on the device, uploaded once per distinct content: the
        rings of a layer change only when they grow, and one `where` serves all layers of
        a pass, so a pass uploads one table, not one per layer (each upload waits for the GPU)."""
        table = self._tables.get(values)
        if table is None:
            if len(self._tables) >= _TABLES_KEPT:
                self._tables.clear()
            table = self._tables[values] = self.cp.asarray(np.array(values, dtype=np.int64))
        return table


class KernelTwins:
    """The plain NumPy definitions of `CudaKernels` (same signatures): the tests run
    the backend through a NumPy stand-in for CuPy with these, and hold the CUDA
    kernels to them on a GPU (bench/gpu.py)."""

    def bf16_rows(self, x, w):
        return ops.linear(np.asarray(x, np.float32), w)

    def widen(self, w, out=None):
        y = (np.asarray(w).astype(np.uint32) << 16).view(np.float32)
        if out is None:
            return y
        out[:w.size] = y.reshape(-1)
        return out[:w.size].reshape(w.shape)

    def gelu(self, x):
        return ops.gelu(x)

    def swiglu(self, gate, up):
        return ops.swiglu(gate, up)

    def rms_norm(self, x, w, eps: float):
        ms = np.mean(np.square(x), axis=-1, keepdims=True)
        return (x / np.sqrt(ms + np.float32(eps)) * w).astype(np.float32)

    def rope(self, x, positions, inv_freq):
        return ops.rope(x, np.asarray(positions), np.asarray(inv_freq))

    def append_and_attend(self, q, k, v, rings, rows, first_positions, first_valid, window: int):
        R, H, hd = q.shape
        Hkv = k.shape[1]
        out = np.empty((R, H, hd), np.float32)
        for (ring_k, ring_v), r, first, lowest in zip(rings, rows, first_positions, first_valid):
            capacity = ring_k.shape[1]
            slots = (first + np.arange(r.stop - r.start)) % capacity
            ring_k[:, slots], ring_v[:, slots] = k[r].transpose(1, 0, 2), v[r].transpose(1, 0, 2)
            for t in range(r.start, r.stop):
                pos = first + t - r.start
                seen = np.arange(max(lowest, pos - window + 1), pos + 1) % capacity   # visible slots
                for h in range(H):
                    g = h // (H // Hkv)
                    scores = ring_k[g, seen] @ q[t, h] / np.float32(np.sqrt(hd))     # [n]
                    p = np.exp(scores - scores.max())
                    out[t, h] = (p / p.sum()) @ ring_v[g, seen]
        return out


# ---------------------------------------------------------------------------
# the checkpoint on the device


class DeviceWeights:
    """Device copies of the host weights the model passes to the ops (owned by the backend).

    A weight is a view into a memory-mapped checkpoint: the whole mapped buffer goes to
    the GPU once, as bytes, and each weight becomes a view into that copy (no second
    copy of anything). An array not inside such a buffer is copied alone. Every entry
    keeps its host array, so an id is never mistaken for a recycled one.
    """

    def __init__(self, cp, kernels):
        self.cp = cp
        self.kernels = kernels
        self._buffers: dict[int, tuple] = {}   # id(host buffer) -> (buffer, device bytes, shift)
        self._bits: dict[int, tuple] = {}      # id(host view) -> (view, device BF16 bits)
        self._float32: dict[int, tuple] = {}   # id(host view) -> (view, device float32)

    def bits(self, w: np.ndarray):
        """The device uint16 array holding the BF16 weight w (same shape)."""
        entry = self._bits.get(id(w))
        if entry is None or entry[0] is not w:
            entry = (w, self._upload(w))
            self._bits[id(w)] = entry
        return entry[1]

    def float32(self, w: np.ndarray):
        """A device float32 copy of the BF16 weight w (norms, biases)."""
        entry = self._float32.get(id(w))
        if entry is None or entry[0] is not w:
            entry = (w, self.kernels.widen(self.bits(w)))
            self._float32[id(w)] = entry
        return entry[1]

    def constant(self, a: np.ndarray):
        """A device copy of a small host array that is not BF16 (RoPE frequencies)."""
        entry = self._float32.get(id(a))
        if entry is None or entry[0] is not a:
            entry = (a, self.cp.asarray(a))
            self._float32[id(a)] = entry
        return entry[1]


    def _upload(self, w: np.ndarray):
        root = w
        while isinstance(root.base, np.ndarray):
            root = root.base
        start = w.__array_interface__["data"][0] - root.__array_interface__["data"][0]
        inside = (root is not w and w.flags.c_contiguous and root.flags.c_contiguous
                  and 0 <= start and start + w.nbytes <= root.nbytes)
        if not inside:
            return self.cp.asarray(np.ascontiguousarray(w))
        entry = self._buffers.get(id(root))
        if entry is None or entry[0] is not root:
            # shift the copy so that the tensors (at a common offset mod 16) start 16-byte aligned
            shift = -start % 16
            entry = (root, self._copy_buffer(root, shift), shift)
            self._buffers[id(root)] = entry
        _, device, shift = entry
        begin = shift + start
        return device[begin:begin + w.nbytes].view(np.uint16).reshape(w.shape)

    def _copy_buffer(self, root: np.ndarray, shift: int):
        """The whole host buffer on the device, after `shift` bytes; checks the memory first."""
        cp = self.cp
        need = root.nbytes + RESERVE_BYTES
        free, total = cp.cuda.runtime.memGetInfo()
        if need > free:
            raise VoxnpError(f"too little GPU memory for the model: it needs ~{need / 1e9:.1f} GB "
                             f"({root.nbytes / 1e9:.1f} GB of BF16 weights, {RESERVE_BYTES / 1e9:.1f} GB "
                             f"working memory), the GPU has {free / 1e9:.1f} GB free of {total / 1e9:.1f} GB")
        flat = root.reshape(-1).view(np.uint8)
        device = cp.empty(shift + flat.size, np.uint8)
        for a in range(0, flat.size, UPLOAD_CHUNK):
            b = min(flat.size, a + UPLOAD_CHUNK)
            device[shift + a:shift + b] = cp.asarray(flat[a:b])
        return device


# ---------------------------------------------------------------------------
# the backend


class CupyBackend:
    """The ops of `ops.py` on an NVIDIA GPU (same signatures; arrays are CuPy's)."""

    FEW_ROWS = FEW_ROWS

    def __init__(self, cp=None, kernels=None):
        self.xp = cp if cp is not None else import_cupy()   # the array namespace of activations
        self.kernels = kernels if kernels is not None else CudaKernels(self.xp)
        self.weights = DeviceWeights(self.xp, self.kernels)
        self._scratch = None                                  # widened weight rows for cuBLAS

    def to_numpy(self, a) -> np.ndarray:
        return self.xp.asnumpy(a)

    # -- linear layers

    def prepare(self, weights) -> None:
        """Upload the checkpoint now (weights: the model's), so that a GPU with too little
        memory is reported when the model is loaded, not at its first product."""
        self.weights.bits(weights.decoder.norm)

    def linear(self, x, w, bias=None):
        """y = x @ W.T (+ b): x [..., in] float32, W [out, in] BF16 (host view) -> [..., out]."""
        xp = self.xp
        n_out, n_in = w.shape
        rows = x.reshape(-1, n_in)
        T = rows.shape[0]
        if T <= FEW_ROWS:
            y = self.kernels.bf16_rows(rows, self.weights.bits(w))                 # [T, out]
        else:
            y = self._widened_blocks(rows, w)                                      # cuBLAS, float32
        if bias is not None:
            y = y + self.weights.float32(bias)
        return xp.ascontiguousarray(y).reshape(*x.shape[:-1], n_out)

    def _widened_blocks(self, rows, w):
        """Many rows: blocks of weight rows widened into the scratch buffer, then cuBLAS."""
        xp = self.xp
        n_out, n_in = w.shape
        bits = self.weights.bits(w)
        block = max(1, min(n_out, SCRATCH_FLOATS // n_in))
        if self._scratch is None or self._scratch.size < block * n_in:
            self._scratch = xp.empty(block * n_in, np.float32)
        xt = xp.ascontiguousarray(rows.T)                                          # [in, T]
        yt = xp.empty((n_out, rows.shape[0]), np.float32)                          # [out, T]
        for r0 in range(0, n_out, block):
            r1 = min(n_out, r0 + block)
            yt[r0:r1] = self.kernels.widen(bits[r0:r1], self._scratch) @ xt
        return yt.T

    # -- elementwise ops and norms

    def rms_norm(self, x, weight, eps: float):
        """x / sqrt(mean(x^2) + eps) * w over the last axis, in float32 (one kernel)."""
        return self.kernels.rms_norm(x, self.weights.float32(weight), eps)

    def gelu(self, x):
        return self.kernels.gelu(x)

    def swiglu(self, gate, up):
        return self.kernels.swiglu(gate, up)

    def embed(self, table, ids):
        """Rows of a BF16 embedding table [vocab, dim] -> float32 [n, dim] on the device."""
        index = self.xp.asarray(np.asarray(ids, dtype=np.int64))
        return self.kernels.widen(self.weights.bits(table)[index])

    rope_frequencies = staticmethod(ops.rope_frequencies)

    def rope(self, x, positions, inv_freq):
        """`ops.rope` in one kernel (angles, cosines and sines in float64)."""
        return self.kernels.rope(x, self.xp.asarray(positions), self.weights.constant(inv_freq))

    # -- attention over the rings (read in place: the visible window only)

    def attention(self, q, k, v, cache, window: int):
        """Same contract as `ops.attention` (the encoder: new keys not yet appended)."""
        T, H, hd = q.shape
        L = cache.length
        kh, vh = k.transpose(1, 0, 2), v.transpose(1, 0, 2)                      # [Hkv, T, hd]
        out = self.xp.empty((T, H, hd), np.float32)
        for c0 in range(0, T, QUERY_CHUNK):
            c1 = min(T, c0 + QUERY_CHUNK)
            first_old = max(L + c0 - window + 1, L - cache.n_valid())
            parts = [(cache.k[:, s:s + n], cache.v[:, s:s + n], p) for p, s, n in cache.slot_runs(first_old, L)]
            n0 = max(0, c0 - window + 1)
            parts.append((kh[:, n0:c1], vh[:, n0:c1], L + n0))                   # the block's own keys
            out[c0:c1] = self._attend(q[c0:c1], parts, L + c0, window)
        return out.reshape(T, H * hd)

    def append_and_attend(self, q, k, v, caches, rows, window: int):
        """Same contract as `ops.append_and_attend`: every sequence in one append and one
        attention kernel (a pass costs the same few launches for 1 or 8 streams)."""
        R, H, hd = q.shape
        firsts = []
        for cache, r in zip(caches, rows):
            T = int(r.stop - r.start)
            firsts.append(cache.reserve(T))                      # the kernel writes the slots
            cache.check_last_visible(T)
        rings = [(cache.k, cache.v) for cache in caches]
        lowest = [cache.length - cache.n_valid() for cache in caches]          # oldest position held
        out = self.kernels.append_and_attend(q, k, v, rings, rows, firsts, lowest, window)
        return out.reshape(R, H * hd)

    def _attend(self, q, parts, first_pos: int, window: int):
        """Queries at first_pos.. [C, H, hd] over key runs [(k, v [Hkv, n, hd], first position)]
        with the causal sliding-window mask. -> [C, H, hd]."""
        xp = self.xp
        C, H, hd = q.shape
        Hkv = parts[0][0].shape[0]
        group = H // Hkv
        qg = (q * np.float32(1.0 / np.sqrt(hd))).transpose(1, 0, 2).reshape(Hkv, group * C, hd)  # [Hkv, g*C, hd]
        scores = xp.concatenate([qg @ kp.transpose(0, 2, 1) for kp, _, _ in parts], axis=2)   # [Hkv, g*C, N]
        key_pos = xp.concatenate([xp.arange(p, p + kp.shape[1]) for kp, _, p in parts])      # [N]
        q_pos = first_pos + xp.arange(C)                                                      # [C]
        visible = (key_pos[None, :] <= q_pos[:, None]) & (key_pos[None, :] > q_pos[:, None] - window)
        scores = xp.where(visible, scores.reshape(Hkv, group, C, -1), np.float32(-np.inf))                # [Hkv, g, C, N]
        scores = xp.exp(scores - scores.max(axis=-1, keepdims=True))
        scores = (scores / scores.sum(axis=-1, keepdims=True)).reshape(Hkv, group * C, -1)
        out = xp.zeros((Hkv, group * C, hd), np.float32)
        start = 0
        for _, vp, _ in parts:
            n = vp.shape[1]
            out += scores[:, :, start:start + n] @ vp                                         # [Hkv, g*C, hd]
            start += n
        return out.reshape(Hkv, group, C, hd).transpose(2, 0, 1, 3).reshape(C, H, hd)
