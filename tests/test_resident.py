"""The decoder's matrices copied into huge-page memory (voxnp/resident.py)."""
from __future__ import annotations

import numpy as np
import pytest

import voxnp
from voxnp import resident
from voxnp.dump import dump_arrays
from voxnp.errors import VoxnpError
from voxnp.quant import QuantizedMatrix


def decoder_arrays(m):
    d = m.weights.decoder
    out = []
    for layer in d.layers:
        for f in resident.DECODER_MATRICES:
            w = getattr(layer, f)
            out += list(w.arrays.values()) if isinstance(w, QuantizedMatrix) else [w]
    return out


def test_copies_are_equal_read_only_and_aligned():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 255, (37, 5), dtype=np.uint8), rng.standard_normal((3, 7)).astype(np.float32),
              np.zeros((0, 4), np.int8), rng.integers(0, 9, (1000, 300), dtype=np.uint16)]
    copies = resident.copy_to_huge_pages(arrays)
    for a, c in zip(arrays, copies):
        assert c.dtype == a.dtype and c.shape == a.shape and c.flags.c_contiguous
        np.testing.assert_array_equal(c, a)
        assert not c.flags.writeable and not np.shares_memory(a, c)
        assert c.ctypes.data % resident.ALIGN == 0


@pytest.mark.parametrize("fmt", ["q4", "int8"])
def test_resident_decoder_gives_the_same_bits_as_the_mapped_one(tiny_dir, speech, fmt):
    mapped = voxnp.load(tiny_dir, weights=fmt, resident=False)
    copied = voxnp.load(tiny_dir, weights=fmt, resident=True)
    for a, b in zip(decoder_arrays(mapped), decoder_arrays(copied)):
        assert not np.shares_memory(a, b)
        np.testing.assert_array_equal(a, b)
    want, got = dump_arrays(mapped, speech), dump_arrays(copied, speech)
    np.testing.assert_array_equal(got["tokens"], want["tokens"])
    np.testing.assert_array_equal(got["logits"], want["logits"])


def test_default_copies_the_quantized_formats_only(monkeypatch):
    monkeypatch.delenv("VOXNP_RESIDENT", raising=False)
    assert resident.wanted("q4", "auto") and resident.wanted("int8", "numba")
    assert not resident.wanted("bf16", "auto") and not resident.wanted("q4", "cupy")
    monkeypatch.setenv("VOXNP_RESIDENT", "0")
    assert not resident.wanted("q4", "auto")
    monkeypatch.setenv("VOXNP_RESIDENT", "1")
    assert resident.wanted("bf16", "auto")


def test_bad_setting_is_a_one_line_error(tiny_dir, monkeypatch):
    monkeypatch.setenv("VOXNP_RESIDENT", "yes")
    with pytest.raises(VoxnpError, match="VOXNP_RESIDENT='yes'"):
        voxnp.load(tiny_dir, weights="q4")
