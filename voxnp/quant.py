"""Quantized weight formats: each one a small type, with its readable NumPy definition.

A weight matrix W [out, in] is either a BF16 view (weights.py) or a `QuantizedMatrix`;
`ops.linear` and `kernels.linear` dispatch on that and the model code never knows.
Every format is one table entry, as in ggml: the block size, how to quantize, how to
dequantize, and the product, written here in NumPy as the definition; the fast twins
are in _quant.h (a variant per kernel set, cpu.py) and the tests hold them to these.

Formats of one matrix (rows padded with zeros to whole blocks):
  int8  symmetric int8, one float32 scale per group of 128 inputs:
        w = scale * q, q in [-127, 127]                       1.03 bytes per weight
  q4k   4-bit, K-quant-like: super-blocks of 256 inputs with a float32 scale d and
        min dmin, and 8 sub-blocks of 32 with 6-bit scale sc and min mn:
        w = d * sc * q - dmin * mn, q in [0, 15]              0.59 bytes per weight

Products. The activations are quantized too, per block of the weight format (one
float32 scale each: x = xs * xq), so each block's dot product is an exact integer sum;
the float result is the sum over blocks of (weight scale * xs) times that integer.
  int8  pairs with int16 activations (|xq| <= 32767): their own error stays near 1e-5
        (outlier channels included), so the weight rounding is all that matters.
  q4k   pairs with int8 activations (|xq| <= 127), as ggml's Q4_K with Q8_K: 15
        levels per sub-block of weights against 127 per block of activations, so the
        weights' rounding still dominates (bench/quant.py's matmul proxy), and bytes
        let the kernels multiply the 4-bit weights without widening them to 16 bits
        (maddubs: 64 weights per instruction), which halves their work per weight.

Model formats (`PLANS`): which matrix format each decoder matrix gets. "int8" is int8
everywhere; "q4" is q4k for q/k/v and the feed-forward, int8 for the attention output
and the tied head (the matrices whose 4-bit error collapses the output, see README).
bf16 is the reference and has no plan: its matrices stay BF16 views.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import VoxnpError
from .weights import bf16_to_f32

WEIGHT_FORMATS = ("bf16", "int8", "q4")
FORMAT_VERSION = 2                  # bumped whenever a format's bytes change (old files are rebuilt)

ACT_LEVELS = 32767                  # activations of int8 matrices: int16, symmetric
ACT_LEVELS_Q4K = 127                # activations of q4k matrices: int8, symmetric
ACT_FLOOR = np.float32(1e-30)       # a block of activations smaller than this is zero
FEW_ROWS = 8                        # up to this many activation rows: the fused kernel
SCRATCH_FLOATS = 1 << 20            # more rows: weights dequantized this much at a time for BLAS


def check_format(name) -> str:
    """The weight format's name, or a one-line error listing the known ones."""
    if name not in WEIGHT_FORMATS:
        raise VoxnpError(f"unknown weight format {name!r} (choose from {', '.join(WEIGHT_FORMATS)})")
    return name


def _round_up_f32(x: np.ndarray) -> np.ndarray:
    """float32 values >= x (float64): a scale never rounds below what its block needs."""
    y = x.astype(np.float32)
    return np.where(y.astype(np.float64) < x, np.nextafter(y, np.float32(np.inf)), y)


def _padded(w: np.ndarray, block: int) -> np.ndarray:
    """w [n, k] float32 -> [n, kp] with zeros up to a whole number of blocks."""
    n, k = w.shape
    kp = -(-k // block) * block
    return w if kp == k else np.pad(w, ((0, 0), (0, kp - k)))


def quantize_activations(x: np.ndarray, block: int, levels: int = ACT_LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """x [T, k] float32 -> xq [T, kp], xs float32 [T, kp / block]: x = xs * xq.

    xs = max|x| / levels per block, xq = rint(x * (levels / max|x|)): int16 for
    levels 32767, int8 for 127. A block with a NaN
    or an infinity gets xs = NaN (the product is NaN, as in BF16); a block below
    ACT_FLOOR is zero.
    """
    blocks = _padded(x.astype(np.float32, copy=False), block).reshape(x.shape[0], -1, block)  # [T, nb, B]
    finite = np.isfinite(blocks).all(axis=2)                                               # [T, nb]
    amax = np.where(finite, np.abs(np.where(np.isfinite(blocks), blocks, 0)).max(axis=2), 0)
    live = finite & (amax >= ACT_FLOOR)
    safe = np.where(live, amax, 1).astype(np.float32)
    inv = np.float32(levels) / safe                                                        # float32
    xq = np.where(live[:, :, None], np.rint(np.where(np.isfinite(blocks), blocks, 0) * inv[:, :, None]), 0)
    xs = np.where(live, safe / np.float32(levels), np.where(finite, 0, np.nan)).astype(np.float32)
    return xq.astype(np.int16 if levels > 127 else np.int8).reshape(x.shape[0], -1), xs


def _block_dots(xq: np.ndarray, wq: np.ndarray, block: int) -> np.ndarray:
    """Exact integer dot products per block: xq [T, kp], wq [n, kp] -> [T, n, kp / block].

    Computed in float64 by BLAS: every product and partial sum is an integer below 2^53.
    """
    T, n = xq.shape[0], wq.shape[0]
    xb = xq.reshape(T, -1, block).transpose(1, 0, 2).astype(np.float64)     # [nb, T, B]
    wb = wq.reshape(n, -1, block).transpose(1, 2, 0).astype(np.float64)     # [nb, B, n]
    return (xb @ wb).transpose(1, 2, 0)                                      # [T, n, nb]


# ---------------------------------------------------------------------------
# int8: symmetric, one scale per group of 128 inputs


class Int8:
    name = "int8"
    block = 128                    # inputs per group (and per activation block)

    def bytes_per_weight(self) -> float:
        return 1 + 4 / self.block

    def arrays(self, n: int, k: int) -> dict[str, tuple[np.dtype, tuple]]:
        """The stored arrays of an [n, k] matrix: name -> (dtype, shape)."""
        kp = -(-k // self.block) * self.block
        return {"q": (np.dtype(np.int8), (n, kp)), "scale": (np.dtype(np.float32), (n, kp // self.block))}

    def quantize(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """w [n, k] float32 -> q int8 [n, kp], scale float32 [n, kp/128]; |w - scale q| <= scale/2."""
        n = w.shape[0]
        g = _padded(w, self.block).reshape(n, -1, self.block)                  # [n, ng, 128]
        amax = np.abs(g).max(axis=2).astype(np.float64)                        # [n, ng]
        scale = _round_up_f32(amax / 127)                                       # so |q| <= 127
        safe = np.where(scale > 0, scale, 1).astype(np.float64)
        q = np.clip(np.rint(g / safe[:, :, None]), -127, 127)
        return {"q": q.astype(np.int8).reshape(n, -1), "scale": scale}

    def dequantize(self, m: "QuantizedMatrix") -> np.ndarray:
        """float32 [n, k]: scale * q."""
        n, k = m.shape
        q = m.arrays["q"].reshape(n, -1, self.block).astype(np.float32)
        return (q * m.arrays["scale"][:, :, None]).reshape(n, -1)[:, :k]

    def product(self, x: np.ndarray, m: "QuantizedMatrix") -> np.ndarray:
        """x [T, k] float32 -> [T, n]: sum over groups g of (scale_g * xs_g) * (q_g . xq_g)."""
        xq, xs = quantize_activations(x, self.block)                           # [T, kp], [T, ng]
        dots = _block_dots(xq, m.arrays["q"], self.block)                      # [T, n, ng] exact
        scales = (m.arrays["scale"][None, :, :] * xs[:, None, :]).astype(np.float32)  # [T, n, ng]
        return (scales.astype(np.float64) * dots).sum(axis=2).astype(np.float32)

    def kernel(self, m: "QuantizedMatrix", x: np.ndarray, y: np.ndarray, threads: int) -> None:
        """y [T, n] = product(x [T, k], m) by _quant.h (T <= FEW_ROWS; the kernel set of cpu.py)."""
        from ._kernels import matmul_q8

        matmul_q8(m.arrays["q"], m.arrays["scale"], x, y, threads)

    def kernel_dequantize(self, m: "QuantizedMatrix", r0: int, r1: int, out: np.ndarray) -> None:
        """out[:r1-r0, :k] = dequantize(m)[r0:r1] by _quant.h."""
        from ._kernels import dequantize_q8

        dequantize_q8(m.arrays["q"], m.arrays["scale"], r0, r1, out)


# ---------------------------------------------------------------------------
# q4k: 4-bit, super-blocks of 256 with 8 sub-blocks of 32 (6-bit scales and mins)

Q4K_META = np.dtype([("d", "<f4"), ("dmin", "<f4"), ("sc", "u1", 8), ("mn", "u1", 8)])  # 24 bytes


class Q4K:
    name = "q4k"
    block = 256                    # inputs per super-block (and per activation block)
    sub = 32                       # inputs per sub-block
    levels = 15                    # q in [0, 15]
    scale_levels = 63              # sc, mn in [0, 63] (6 bits, kept in a byte each)

    def bytes_per_weight(self) -> float:
        return 0.5 + Q4K_META.itemsize / self.block

    def arrays(self, n: int, k: int) -> dict[str, tuple[np.dtype, tuple]]:
        kp = -(-k // self.block) * self.block
        return {"qs": (np.dtype(np.uint8), (n, kp // 2)), "meta": (Q4K_META, (n, kp // self.block))}

    def quantize(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """w [n, k] float32 -> packed nibbles [n, kp/2] and per-super-block meta [n, kp/256].

        Each sub-block covers [lo, hi] (0 included) with 16 levels: the min is rounded
        up to a multiple of dmin and the step up to a multiple of d, so every weight
        lies within the levels and |w - dequant(w)| <= step/2, step = d * sc.
        """
        n = w.shape[0]
        s = _padded(w, self.block).reshape(n, -1, 8, self.sub).astype(np.float64)  # [n, nsb, 8, 32]
        lo = np.minimum(s.min(axis=3), 0)                                           # [n, nsb, 8]
        hi = np.maximum(s.max(axis=3), 0)
        dmin = _round_up_f32((-lo).max(axis=2) / self.scale_levels)                # [n, nsb]
        mn = self._multiples(-lo, dmin)                                             # [n, nsb, 8]
        offset = dmin[:, :, None] * mn                                              # >= -lo
        need = (hi + offset) / self.levels                                          # smallest step
        d = _round_up_f32(need.max(axis=2) / self.scale_levels)
        sc = self._multiples(need, d)
        step = d[:, :, None] * sc                                                   # >= need
        safe = np.where(step > 0, step, 1)
        q = np.clip(np.rint((s + offset[..., None]) / safe[..., None]), 0, self.levels).astype(np.uint8)
        q = q.reshape(n, -1, 4, 2, self.sub)          # 64 inputs = 32 bytes: low nibbles, then high
        meta = np.zeros(d.shape, Q4K_META)
        meta["d"], meta["dmin"], meta["sc"], meta["mn"] = d, dmin, sc, mn
        return {"qs": (q[:, :, :, 0] | (q[:, :, :, 1] << 4)).reshape(n, -1), "meta": meta}

    def _multiples(self, x: np.ndarray, unit: np.ndarray) -> np.ndarray:
        """ceil(x / unit) in [0, 63] (0 where unit is 0): x [n, nsb, 8], unit [n, nsb]."""
        u = unit.astype(np.float64)[:, :, None]
        m = np.ceil(x / np.where(u > 0, u, 1))
        return np.clip(np.where(u > 0, m, 0), 0, self.scale_levels).astype(np.uint8)

    def _unpack(self, qs: np.ndarray) -> np.ndarray:
        """Packed nibbles [n, kp/2] -> q [n, kp/32, 32] (sub-blocks in order)."""
        b = qs.reshape(qs.shape[0], -1, 4, 1, self.sub)                    # [n, nsb, 4, 1, 32]
        q = np.concatenate([b & 15, b >> 4], axis=3)                       # [n, nsb, 4, 2, 32]
        return q.reshape(qs.shape[0], -1, self.sub)

    def dequantize(self, m: "QuantizedMatrix") -> np.ndarray:
        """float32 [n, k]: (d sc) q - (dmin mn) per sub-block."""
        n, k = m.shape
        meta = m.arrays["meta"]
        step = (meta["d"][:, :, None] * meta["sc"]).reshape(n, -1, 1)        # [n, nsub, 1] float32
        offset = (meta["dmin"][:, :, None] * meta["mn"]).reshape(n, -1, 1)
        q = self._unpack(m.arrays["qs"]).astype(np.float32)
        return (q * step - offset).reshape(n, -1)[:, :k]

    def product(self, x: np.ndarray, m: "QuantizedMatrix") -> np.ndarray:
        """x [T, k] -> [T, n]: per super-block, (d xs) sum_j sc_j (q_j . xq_j) - (dmin xs) sum_j mn_j sum(xq_j)."""
        T, n = x.shape[0], m.shape[0]
        meta = m.arrays["meta"]                                                 # [n, nsb]
        xq, xs = quantize_activations(x, self.block, ACT_LEVELS_Q4K)           # int8 [T, kp], [T, nsb]
        q = self._unpack(m.arrays["qs"]).reshape(n, -1)                         # [n, kp]
        dots = _block_dots(xq, q, self.sub).reshape(T, n, -1, 8)               # [T, n, nsb, 8] exact
        qsum = (dots * meta["sc"][None]).sum(axis=3)                            # [T, n, nsb]
        xsum = xq.reshape(T, -1, 8, self.sub).astype(np.int64).sum(axis=3)     # [T, nsb, 8]
        msum = (xsum[:, None] * meta["mn"][None]).sum(axis=3)                   # [T, n, nsb]
        d_x = (meta["d"][None] * xs[:, None]).astype(np.float32)                # [T, n, nsb]
        dmin_x = (meta["dmin"][None] * xs[:, None]).astype(np.float32)
        y = d_x.astype(np.float64) * qsum - dmin_x.astype(np.float64) * msum
        return y.sum(axis=2).astype(np.float32)

    def kernel(self, m: "QuantizedMatrix", x: np.ndarray, y: np.ndarray, threads: int) -> None:
        from ._kernels import matmul_q4k

        matmul_q4k(m.arrays["qs"], self._meta_bytes(m), x, y, threads)

    def kernel_dequantize(self, m: "QuantizedMatrix", r0: int, r1: int, out: np.ndarray) -> None:
        from ._kernels import dequantize_q4k

        dequantize_q4k(m.arrays["qs"], self._meta_bytes(m), r0, r1, out)

    def _meta_bytes(self, m: "QuantizedMatrix") -> np.ndarray:
        """meta as raw bytes [n, nsb * 24] for the C kernels (struct q4k_meta)."""
        return m.arrays["meta"].view(np.uint8).reshape(m.shape[0], -1)


# ---------------------------------------------------------------------------
# i8rows: the encoder's format, int8 with one scale per output row, packed for VNNI


class Int8Rows:
    """Many-row products (the encoder: hundreds of positions per call) on the CPU's int8
    dot products: symmetric int8 weights with one float32 scale per output row, and the
    activations quantized per row at each call (CTranslate2's scheme):

        y[m, n] = float32(sum_j xq[m, j] wq[n, j]) * (xs[m] * ws[n])
        xs[m] = max_j |x[m, j]| / 127, xq = rint(x / xs)     (int8, per row)

    The integer sums are exact, so every kernel set of _igemm.h gives these bits.
    Stored packed for the kernels: "q" [np, kp] int8 holds blocks of 16 output rows with
    the inputs in quads ([np/16][kp/4][16][4]: 16 rows of the array are one block, so
    slicing rows at multiples of 16 slices blocks); "scale" and "qsum" (sum of a row's
    q) [np]; np, kp: n, k rounded up to 16 and 4.
    """
    name = "i8rows"
    block = 16                     # output rows per packed block
    quad = 4                       # inputs per packed group
    levels = 127

    def bytes_per_weight(self) -> float:
        return 1.0

    def arrays(self, n: int, k: int) -> dict[str, tuple[np.dtype, tuple]]:
        npad, kp = -(-n // self.block) * self.block, -(-k // self.quad) * self.quad
        return {"q": (np.dtype(np.int8), (npad, kp)), "scale": (np.dtype(np.float32), (npad,)),
                "qsum": (np.dtype(np.int32), (npad,))}

    def quantize(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """w [n, k] float32 -> packed q, per-row scale, per-row sum of q; |w - scale q| <= scale/2."""
        n, k = w.shape
        (_, (npad, kp)) = self.arrays(n, k)["q"]
        wp = np.zeros((npad, kp), np.float32)
        wp[:n, :k] = w
        amax = np.abs(wp).max(axis=1).astype(np.float64)                       # [np]
        scale = _round_up_f32(amax / self.levels)
        safe = np.where(scale > 0, scale, 1).astype(np.float64)
        q = np.clip(np.rint(wp / safe[:, None]), -self.levels, self.levels).astype(np.int8)
        return {"q": self._pack(q), "scale": scale, "qsum": q.sum(axis=1, dtype=np.int32)}

    def _pack(self, q: np.ndarray) -> np.ndarray:
        """Plain rows [np, kp] -> packed [np/16][kp/4][16][4], as an [np, kp] array."""
        npad, kp = q.shape
        return np.ascontiguousarray(q.reshape(npad // 16, 16, kp // 4, 4).transpose(0, 2, 1, 3)).reshape(npad, kp)

    def unpack(self, packed: np.ndarray) -> np.ndarray:
        """Packed [np, kp] -> plain rows of q [np, kp]."""
        npad, kp = packed.shape
        return packed.reshape(npad // 16, kp // 4, 16, 4).transpose(0, 2, 1, 3).reshape(npad, kp)

    def dequantize(self, m: "QuantizedMatrix") -> np.ndarray:
        n, k = m.shape
        return (self.unpack(m.arrays["q"]).astype(np.float32) * m.arrays["scale"][:, None])[:n, :k]

    def quantize_activations(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x [M, k] float32 -> xq int8 [M, k], xs float32 [M]: x ~ xs * xq, each row one
        block of the module's quantize_activations (a row with a NaN or an infinity gets
        xs = NaN, an all-zero row xs = 0)."""
        xq, xs = quantize_activations(x, x.shape[1], self.levels)
        return xq, xs[:, 0]

    def product(self, x: np.ndarray, m: "QuantizedMatrix") -> np.ndarray:
        """x [M, k] float32 -> [M, n]: float32(exact integer dot) * (xs * ws)."""
        n, k = m.shape
        xq, xs = self.quantize_activations(x)
        q = self.unpack(m.arrays["q"])[:n, :k]
        dots = xq.astype(np.float64) @ q.T.astype(np.float64)                   # exact: < 2^53
        scales = (xs[:, None] * m.arrays["scale"][None, :n]).astype(np.float32)
        return dots.astype(np.float32) * scales

    def kernel(self, m: "QuantizedMatrix", x: np.ndarray, y: np.ndarray, threads: int) -> None:
        """y [M, n] = product(x [M, k], m) by _igemm.h (any number of rows; the kernel set of cpu.py)."""
        from ._kernels import matmul_i8rows

        matmul_i8rows(m.arrays["q"], m.arrays["scale"], m.arrays["qsum"], x, y, threads)


INT8, Q4K_FORMAT, INT8_ROWS = Int8(), Q4K(), Int8Rows()
MATRIX_FORMATS = {f.name: f for f in (INT8, Q4K_FORMAT, INT8_ROWS)}

# Per model format: the matrix format of each decoder matrix (fields of DecoderLayerWeights)
# and of the tied head (DecoderWeights.lm_head). Norms, ada-norm MLPs and the token
# embedding table stay as they are.
PLANS = {
    "int8": {"wq": INT8, "wk": INT8, "wv": INT8, "wo": INT8, "w1": INT8, "w3": INT8, "w2": INT8,
             "lm_head": INT8},
    "q4": {"wq": Q4K_FORMAT, "wk": Q4K_FORMAT, "wv": Q4K_FORMAT, "wo": INT8,
           "w1": Q4K_FORMAT, "w3": Q4K_FORMAT, "w2": Q4K_FORMAT, "lm_head": INT8},
}
# Every quantized model format also runs the encoder layers' matrices (fields of
# EncoderLayerWeights) on int8 dot products: they are multiplied by hundreds of rows at
# once, so compute, not the bytes read, is their cost, and 4 bits would save nothing.
# The conv stem, the biases and the adapter stay BF16.
ENCODER_PLAN = {field: INT8_ROWS for field in ("wq", "wk", "wv", "wo", "w1", "w3", "w2")}


@dataclass(frozen=True, eq=False)
class QuantizedMatrix:
    """A weight matrix W [out, in] in a quantized format (its arrays usually mmap'd)."""
    format: Int8 | Q4K | Int8Rows
    shape: tuple[int, int]            # (out, in) of the matrix it stands for
    arrays: dict                      # the format's arrays (see its `arrays()`), rows padded

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


def quantize(w: np.ndarray, fmt: Int8 | Q4K, name: str = "weight") -> QuantizedMatrix:
    """A BF16 view (uint16) or float32 matrix [n, k] in format `fmt` (in memory).

    NaN or infinite weights are refused, naming the tensor.
    """
    f = bf16_to_f32(w) if w.dtype == np.uint16 else np.asarray(w, dtype=np.float32)
    if not np.isfinite(f).all():
        raise VoxnpError(f"{name}: NaN or infinite weights cannot be quantized")
    return QuantizedMatrix(fmt, tuple(f.shape), fmt.quantize(f))


def dequantize(m: QuantizedMatrix) -> np.ndarray:
    """float32 [out, in]: the matrix the format stores."""
    return m.format.dequantize(m)


# ---------------------------------------------------------------------------
# the products: readable (ops.linear) and fast (kernels.linear)


def _finish(y: np.ndarray, x: np.ndarray, n_out: int, bias) -> np.ndarray:
    if bias is not None:
        y = y + bf16_to_f32(bias)
    return np.ascontiguousarray(y, dtype=np.float32).reshape(*x.shape[:-1], n_out)


def _in_float(rows: np.ndarray, fmt) -> bool:
    """Whether a product of `rows` multiplies float activations by dequantized weights: more
    than FEW_ROWS rows (a prompt) in the decoder's formats; i8rows always quantizes them."""
    return rows.shape[0] > FEW_ROWS and fmt is not INT8_ROWS


def reference_linear(x: np.ndarray, w: QuantizedMatrix, bias=None, rows_per_pass: int = 4096) -> np.ndarray:
    """y = x @ W.T (+ b) by the format's NumPy definition: x [..., in] -> [..., out].

    As in fast_linear, the decoder's formats multiply more than FEW_ROWS rows (a prompt)
    as float activations times the dequantized weights; fewer rows by their product.
    """
    n, k = w.shape
    rows = x.reshape(-1, k).astype(np.float32, copy=False)
    y = np.empty((rows.shape[0], n), np.float32)
    in_float = _in_float(rows, w.format)
    for r0 in range(0, n, rows_per_pass):          # bounded memory for the 131072-row head
        part = QuantizedMatrix(w.format, (min(n, r0 + rows_per_pass) - r0, k),
                               {a: v[r0:r0 + rows_per_pass] for a, v in w.arrays.items()})
        y[:, r0:r0 + part.shape[0]] = rows @ dequantize(part).T if in_float else w.format.product(rows, part)
    return _finish(y, x, n, bias)


def fast_linear(x: np.ndarray, w: QuantizedMatrix, bias=None, threads: int = 1) -> np.ndarray:
    """The same product by the compiled kernels: x [..., in] -> [..., out].

    i8rows (the encoder's format): its int8 GEMM, any number of rows. The decoder's
    formats: up to FEW_ROWS rows, the fused kernel (weights read once for all rows; each
    row's result bit-identical to a call with that row alone); more rows (a prompt):
    blocks of weight rows dequantized to float32 and multiplied by BLAS (float
    activations).
    """
    n, k = w.shape
    rows = np.ascontiguousarray(x.reshape(-1, k), dtype=np.float32)
    if not _in_float(rows, w.format):
        y = np.empty((rows.shape[0], n), np.float32)
        w.format.kernel(w, rows, y, threads)
        return _finish(y, x, n, bias)
    yt = np.empty((n, rows.shape[0]), np.float32)                           # [out, T]
    xt = np.ascontiguousarray(rows.T)                                         # [in, T]
    block = max(1, SCRATCH_FLOATS // k)
    scratch = np.empty((min(n, block), k), np.float32)
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        w.format.kernel_dequantize(w, r0, r1, scratch)
        np.matmul(scratch[:r1 - r0], xt, out=yt[r0:r1])
    return _finish(yt.T, x, n, bias)
