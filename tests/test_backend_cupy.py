"""The cupy backend's logic, run on the CPU through a NumPy stand-in for CuPy.

No GPU is needed (none is on CI): `cupy` is replaced by a module whose arrays are
NumPy arrays, so the device code paths (weight upload and widening, the device KV
mirror, its wrap-around and reset) are checked against the NumPy backend.
"""
import dataclasses
import importlib
import sys
import types

import numpy as np
import pytest

from voxnp.dump import dump_arrays
from voxnp.stream import Stream


@pytest.fixture()
def cupy_backend(monkeypatch):
    fake = types.ModuleType("cupy")
    for name in ("float32", "uint32", "zeros", "concatenate", "where", "exp", "inf"):
        setattr(fake, name, getattr(np, name))
    fake.asarray = lambda a, dtype=None: np.array(a, dtype=dtype)      # a copy, like an upload
    fake.asnumpy = lambda a: np.asarray(a)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    sys.modules.pop("voxnp.kernels_cupy", None)
    module = importlib.import_module("voxnp.kernels_cupy")
    yield module
    sys.modules.pop("voxnp.kernels_cupy", None)
    import voxnp

    if hasattr(voxnp, "kernels_cupy"):
        delattr(voxnp, "kernels_cupy")


@pytest.mark.parametrize("which", ["tiny_model", "window_model"])
def test_cupy_backend_matches_numpy(request, which, cupy_backend, speech):
    model = request.getfixturevalue(which)
    on_gpu = dataclasses.replace(model, ops=cupy_backend)
    ref = dump_arrays(model, speech)
    got = dump_arrays(on_gpu, speech)
    np.testing.assert_array_equal(got["tokens"], ref["tokens"])
    for key in ("enc", "audio_embeds", "logits"):
        np.testing.assert_allclose(got[key], ref[key], atol=1e-4 * np.abs(ref[key]).max(), rtol=0)


def test_cupy_backend_follows_live_restarts(cupy_backend, tiny_model, speech, monkeypatch):
    monkeypatch.setattr(Stream, "LIVE_IDLE_S", 0.5)
    on_gpu = dataclasses.replace(tiny_model, ops=cupy_backend)
    a, b = Stream(tiny_model, live=True, interval=0.0), Stream(on_gpu, live=True, interval=0.0)
    for s in (a, b):
        s.feed(speech)
        s.finish()
    assert [t.id for t in a.get(with_tokens=True)] == [t.id for t in b.get(with_tokens=True)]


def test_missing_cupy_is_a_clear_error(monkeypatch):
    from voxnp.backend import get_backend
    from voxnp.errors import VoxnpError

    import voxnp

    monkeypatch.setitem(sys.modules, "cupy", None)
    sys.modules.pop("voxnp.kernels_cupy", None)
    monkeypatch.delattr(voxnp, "kernels_cupy", raising=False)
    with pytest.raises(VoxnpError, match="CuPy"):
        get_backend("cupy")
