"""BF16 numbers as NumPy sees them: uint16 bit patterns, the upper half of a float32.

The checkpoint stores its weights this way, and the decoder's KV rings of the int8 and
q4 formats keep their keys and values this way (kv_cache.py).
"""
from __future__ import annotations

import numpy as np


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to BF16 (nearest, ties to even); returns the uint16 bit patterns.

    Adding 0x7FFF plus the lowest kept bit to the float32 bits and keeping the upper
    16 bits is round-to-nearest-even; overflow rounds to inf; NaN stays a quiet NaN.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    r = u >> 16  # [n] upper halves
    r &= 1  # lowest kept bit: ties go to even
    r += 0x7FFF  # just below half an ulp of bf16
    r += u
    r >>= 16
    bits = r.astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        bits[nan] = (u[nan] >> 16).astype(np.uint16) | 0x0040  # keep sign, set quiet bit
    return bits


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """BF16 bit patterns -> float32 (exact: the bits become the upper half)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
