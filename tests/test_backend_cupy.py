"""The cupy backend's logic, run on the CPU through a NumPy stand-in for CuPy.

No GPU is needed (none is on CI): `cupy` is replaced by a module whose functions are
NumPy's, whose arrays are a NumPy subclass (`OnDevice`, so a test can see what stayed
"on the device"), and which counts the copies between host and device. The custom
CUDA kernels cannot run here: the backend is given their NumPy twins
(`kernels_cupy.KernelTwins`), so these tests cover everything around them -- the
checkpoint upload and its views, the few-row / kept / widened-block dispatch, the
device KV rings and their wrap-around, attention over ring runs, snapshots, restarts,
batching -- and the CUDA source itself is checked only by bench/gpu.py on a GPU.
"""
import dataclasses
import sys
import types

import numpy as np
import pytest

from voxnp import kernels_cupy
from voxnp.dump import dump_arrays
from voxnp.errors import VoxnpError
from voxnp.kv_cache import KVCache
from voxnp.scheduler import Scheduler
from voxnp.stream import Stream, transcribe, transcribe_many


class OnDevice(np.ndarray):
    """An array of the stand-in's device."""


def _on_device(result):
    return result.view(OnDevice) if isinstance(result, np.ndarray) else result


def stand_in_cupy(devices=1, free_bytes=80 << 30):
    """A module that behaves like cupy for the backend, with NumPy underneath."""
    fake = types.ModuleType("cupy")
    fake.copies = {"up": 0, "down": 0}

    def __getattr__(name):
        f = getattr(np, name)
        if callable(f) and not isinstance(f, type):
            return lambda *a, **k: _on_device(f(*a, **k))
        return f

    def asarray(a, dtype=None):
        if isinstance(a, OnDevice):
            return a if dtype is None else a.astype(dtype, copy=False)
        fake.copies["up"] += 1
        return np.array(a, dtype=dtype).view(OnDevice)

    def array(a, dtype=None):
        if not isinstance(a, OnDevice):
            fake.copies["up"] += 1
        return np.array(a, dtype=dtype).view(OnDevice)

    def asnumpy(a):
        fake.copies["down"] += 1
        return np.array(a).view(np.ndarray)

    def no_cuda(*args, **kwargs):
        def run(*a, **k):
            raise AssertionError("the stand-in cannot run CUDA source: give the backend KernelTwins")
        return run

    def device_count():
        if isinstance(devices, Exception):
            raise devices
        return devices

    fake.__getattr__ = __getattr__
    fake.asarray, fake.array, fake.asnumpy = asarray, array, asnumpy
    fake.RawModule = lambda code: types.SimpleNamespace(get_function=no_cuda)
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(
        getDeviceCount=device_count, memGetInfo=lambda: (free_bytes, 80 << 30)))
    return fake


class StandInKernels(kernels_cupy.KernelTwins):
    """The twins, their results on the stand-in's device."""

    def __getattribute__(self, name):
        f = super().__getattribute__(name)
        if name in kernels_cupy.KERNEL_NAMES:
            return lambda *a, **k: _on_device(f(*a, **k))
        return f


@pytest.fixture()
def fake_cupy(monkeypatch):
    fake = stand_in_cupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    return fake


@pytest.fixture()
def cupy_backend(fake_cupy):
    return kernels_cupy.CupyBackend(fake_cupy, StandInKernels())


def on_gpu(model, backend):
    return dataclasses.replace(model, ops=backend, left_padding={})


@pytest.mark.parametrize("which", ["tiny_model", "window_model"])
def test_cupy_backend_matches_numpy(request, which, cupy_backend, speech):
    model = request.getfixturevalue(which)
    ref = dump_arrays(model, speech)
    got = dump_arrays(on_gpu(model, cupy_backend), speech)
    np.testing.assert_array_equal(got["tokens"], ref["tokens"])
    for key in ("enc", "audio_embeds", "logits"):
        assert type(got[key]) is np.ndarray                       # brought back to the host
        np.testing.assert_allclose(got[key], ref[key], atol=1e-4 * np.abs(ref[key]).max(), rtol=0)


def test_speculation_and_alternatives_on_the_device(cupy_backend, window_model, speech):
    ref = transcribe(window_model, speech, alt=0.9, speculate=0)
    got = transcribe(on_gpu(window_model, cupy_backend), speech, alt=0.9, speculate=3)
    assert [t.id for t in got.tokens] == [t.id for t in ref.tokens]
    assert [[a for a, _ in t.alternatives] for t in got.tokens] == \
           [[a for a, _ in t.alternatives] for t in ref.tokens]


def test_batched_streams_on_the_device(cupy_backend, tiny_model, speech):
    clips = [speech[:16000 * (2 + i % 2)] for i in range(5)]
    alone = [transcribe(tiny_model, c).tokens for c in clips]
    together = list(transcribe_many(on_gpu(tiny_model, cupy_backend), clips, batch=4))
    assert [[t.id for t in r.tokens] for r in together] == [[t.id for t in a] for a in alone]


def test_cupy_backend_follows_live_restarts(cupy_backend, tiny_model, speech, monkeypatch):
    monkeypatch.setattr(Stream, "LIVE_IDLE_S", 0.5)
    a = Stream(tiny_model, live=True, interval=0.0)
    b = Stream(on_gpu(tiny_model, cupy_backend), live=True, interval=0.0)
    for s in (a, b):
        s.feed(speech)
        s.finish()
    assert b.restarts == a.restarts
    assert [t.id for t in a.get(with_tokens=True)] == [t.id for t in b.get(with_tokens=True)]


def test_a_decoder_pass_brings_back_only_token_ids(cupy_backend, fake_cupy, tiny_model, speech):
    model = on_gpu(tiny_model, cupy_backend)
    s = Stream(model, interval=float("inf"), scheduled=True)
    s.feed(speech)
    s.flush_pending()                                       # the encoder: activations stay there
    assert isinstance(s._embeds, OnDevice)
    assert all(isinstance(c.k, OnDevice) for c in s.decoder_state.caches)
    sched = Scheduler(model)
    assert sched.step([s])                                  # prefill and the first step
    before = dict(fake_cupy.copies)
    for _ in range(5):
        assert sched.step([s])
    assert fake_cupy.copies["down"] - before["down"] == 5   # one array of ids per pass
    assert fake_cupy.copies["up"] - before["up"] <= 5 * 2   # the fed token's id, the positions


def test_linear_paths_agree(cupy_backend, tiny_model, monkeypatch):
    from voxnp import ops

    w = tiny_model.weights.decoder.layers[0].w1                      # a view into the checkpoint
    x = np.random.default_rng(0).standard_normal((70, w.shape[1])).astype(np.float32)
    expect = ops.linear(x, w)
    monkeypatch.setattr(kernels_cupy, "SCRATCH_FLOATS", 3 * w.shape[1])  # several widened blocks
    for T in (1, 8, 9, 70):
        got = cupy_backend.linear(cupy_backend.xp.asarray(x[:T]), w)
        assert isinstance(got, OnDevice)
        np.testing.assert_allclose(got, expect[:T], rtol=1e-5, atol=1e-5)
    cupy_backend.keep_float32([w])                                       # the kept float32 copy
    np.testing.assert_allclose(cupy_backend.linear(cupy_backend.xp.asarray(x), w), expect, rtol=1e-5, atol=1e-5)
    assert cupy_backend.weights.has_float32(w)
    bits = cupy_backend.weights.bits(w)
    assert bits.base is not None and bits.nbytes == w.nbytes             # a view into the uploaded file
    np.testing.assert_array_equal(bits, w)


def test_device_ring_wraps_like_the_host_ring(fake_cupy):
    rng = np.random.default_rng(1)
    host, dev = KVCache(5, 2, 3, spare=2), KVCache(5, 2, 3, spare=2, xp=fake_cupy)
    for n in (1, 3, 4, 1, 6, 2, 9):
        kv = rng.standard_normal((n, 2, 3)).astype(np.float32)
        host.append(kv, kv)
        dev.append(fake_cupy.asarray(kv), fake_cupy.asarray(kv))
        for a, b in zip(host.ordered(), dev.ordered()):
            np.testing.assert_array_equal(a, b)
    dev.truncate(dev.length - 2)
    snap = dev.snapshot()
    again = KVCache(5, 2, 3, spare=2, xp=fake_cupy)
    again.restore(tuple(np.asarray(a) if hasattr(a, "shape") else a for a in snap))
    np.testing.assert_array_equal(again.ordered()[0], dev.ordered()[0])


# -- bad input: no CuPy, no GPU, too little memory -----------------------------------


def test_missing_cupy_is_a_clear_error(monkeypatch):
    from voxnp.backend import get_backend

    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(VoxnpError, match="CuPy"):
        get_backend("cupy")


@pytest.mark.parametrize("devices", [0, RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected\nmore")])
def test_no_gpu_is_a_clear_error(monkeypatch, devices):
    from voxnp.backend import get_backend

    monkeypatch.setitem(sys.modules, "cupy", stand_in_cupy(devices=devices))
    with pytest.raises(VoxnpError, match="NVIDIA GPU") as e:
        get_backend("cupy")
    assert "\n" not in str(e.value)


def test_too_little_gpu_memory_is_one_line_and_exit_1(monkeypatch, tiny_dir, capsys):
    from conftest import shared_audio
    from voxnp.cli import main

    monkeypatch.setitem(sys.modules, "cupy", stand_in_cupy(free_bytes=1 << 30))
    rc = main([str(shared_audio("jfk.wav")), "--model", str(tiny_dir), "--backend", "cupy"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and "too little GPU memory" in err[0] and "1.1 GB free" in err[0]


# ---------------------------------------------------------------------------
# the twins are the definitions they stand for (bench/gpu.py holds the CUDA kernels to them)


def test_twins_equal_the_ops_definitions():
    from voxnp import ops

    rng = np.random.default_rng(3)
    twins = kernels_cupy.KernelTwins()
    x = rng.standard_normal((5, 96), dtype=np.float32)
    w = (rng.standard_normal(96, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)   # BF16 bits
    np.testing.assert_array_equal(twins.rms_norm(x, twins.widen(w), 1e-5), ops.rms_norm(x, w, 1e-5))
    g, u = rng.standard_normal((2, 3, 40), dtype=np.float32)
    np.testing.assert_array_equal(twins.swiglu(g, u), ops.silu(g) * u)
    q = rng.standard_normal((3, 4, 64), dtype=np.float32)
    positions = np.array([7, 8, 9000])
    inv_freq = ops.rope_frequencies(64, 1e6)
    np.testing.assert_array_equal(twins.rope(q, positions, inv_freq), ops.rope(q, positions, inv_freq))


@pytest.mark.parametrize("appended, window", [(5, 16), (40, 16), (70, 13)])
def test_append_and_attend_twin_is_the_ops_definition(appended, window):
    """Two sequences in one pass (3 rows and 1 row) over rings that have wrapped."""
    from voxnp import ops

    rng = np.random.default_rng(appended)
    H, Hkv, hd = 8, 2, 32
    caches = {name: [KVCache(window, Hkv, hd, spare=4) for _ in range(2)] for name in ("ops", "twin")}
    for s, n in enumerate((appended, appended // 2 + 1)):
        for _ in range(n):
            k, v = rng.standard_normal((2, 1, Hkv, hd), dtype=np.float32)
            caches["ops"][s].append(k, v)
            caches["twin"][s].append(k, v)
    rows = [slice(0, 3), slice(3, 4)]
    q = rng.standard_normal((4, H, hd), dtype=np.float32)
    k, v = rng.standard_normal((2, 4, Hkv, hd), dtype=np.float32)
    want = ops.append_and_attend(q, k, v, caches["ops"], rows, window)
    twin = caches["twin"]
    firsts = [c.length for c in twin]
    lowest = [max(0, f + r.stop - r.start - c.capacity) for c, r, f in zip(twin, rows, firsts)]
    got = kernels_cupy.KernelTwins().append_and_attend(q, k, v, [(c.k, c.v) for c in twin], rows, firsts,
                                                       lowest, window)
    np.testing.assert_allclose(got.reshape(4, H * hd), want, rtol=1e-5, atol=1e-6)
    for a, b in zip(caches["ops"], twin):
        np.testing.assert_array_equal(a.k, b.k)
        np.testing.assert_array_equal(a.v, b.v)


def test_device_rings_grow_until_full_then_wrap(fake_cupy):
    """A device ring starts small and doubles before its first wrap; reads never change."""
    from voxnp import kv_cache

    rng = np.random.default_rng(1)
    host, device = KVCache(600, 2, 32, spare=8), KVCache(600, 2, 32, spare=8, xp=fake_cupy)
    assert device.capacity == kv_cache.DEVICE_START + 8 and host.capacity == 608
    capacities = []
    for n in (1, 300, 5, 400, 700):
        k, v = rng.standard_normal((2, n, 2, 32), dtype=np.float32)
        host.append(k, v)
        device.append(k, v)
        capacities.append(device.capacity)
        for a, b in zip(host.ordered(), device.ordered()):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert capacities == [264, 528, 528, 608, 608]


def test_left_padding_snapshot_is_reused_on_the_device(cupy_backend, tiny_model, speech):
    """Streams started from the kept left-padding snapshot (positions as plain ints: a NumPy
    scalar brought to the host became a shared 0-d array that every ring advanced)."""
    model = dataclasses.replace(tiny_model, ops=cupy_backend, left_padding={})
    for n in (16000, 32000, 24000):
        assert [t.id for t in transcribe(model, speech[:n]).tokens] == \
               [t.id for t in transcribe(tiny_model, speech[:n]).tokens]
    (snap,) = model.left_padding.values()
    assert all(type(c[2]) is int for c in snap["dec"]["caches"] + snap["enc"]["caches"])
