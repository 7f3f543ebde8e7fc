"""Run-time CPU dispatch (issue #17): the kernel sets this CPU runs, VOXNP_CPU, and the
BF16 product on every set against the same NumPy definition."""
import os
import subprocess
import sys

import numpy as np
import pytest

from voxnp import cpu, ops
from voxnp._kernels import matmul_bf16
from voxnp.errors import VoxnpError

SETS = cpu.available()
rng = np.random.default_rng(17)


def bf16(shape):
    return (rng.standard_normal(shape, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def test_sets_are_ordered_and_portable_always_runs():
    assert cpu.KERNEL_SETS[0] == "portable" and SETS[0] == "portable"
    assert SETS == [s for s in cpu.KERNEL_SETS if s in SETS]
    assert cpu.best() == SETS[-1]
    assert cpu.active() in SETS


def test_forcing_a_set_and_restoring_it():
    before = cpu.active()
    with cpu.using("portable"):
        assert cpu.active() == "portable"
    assert cpu.active() == before


@pytest.mark.parametrize("name,message", [("avx9000", "unknown"), ("", None)])
def test_env_var(monkeypatch, name, message):
    monkeypatch.setenv("VOXNP_CPU", name)
    before = cpu.active()
    try:
        if message:
            with pytest.raises(VoxnpError, match=message):
                cpu.choose()
        else:
            assert cpu.choose() == cpu.best()
    finally:
        cpu.choose(before)


def test_a_set_the_cpu_lacks_is_a_one_line_error(monkeypatch):
    missing = [s for s in cpu.KERNEL_SETS if s not in SETS]
    if not missing:                         # this CPU runs every set: pretend it lacks the top one
        runs = cpu._kernels.cpu_runs
        monkeypatch.setattr(cpu._kernels, "cpu_runs", lambda name: name != cpu.KERNEL_SETS[-1] and runs(name))
    lacking = missing[0] if missing else cpu.KERNEL_SETS[-1]
    with pytest.raises(VoxnpError, match="lacks"):
        cpu.choose(lacking)
    if missing:                             # the CLI, on a CPU that really lacks it
        env = dict(os.environ, VOXNP_CPU=lacking)
        r = subprocess.run([sys.executable, "-m", "voxnp", "--model", "/nonexistent", "x.wav"],
                           capture_output=True, text=True, env=env)
        assert r.returncode != 0
        assert r.stderr.strip().count("\n") == 0 and "VOXNP_CPU" in r.stderr and "Traceback" not in r.stderr


def test_cli_unknown_set_is_a_one_line_error(tmp_path):
    env = dict(os.environ, VOXNP_CPU="avx9000")
    r = subprocess.run([sys.executable, "-m", "voxnp", "--model", str(tmp_path), "x.wav"],
                       capture_output=True, text=True, env=env)
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "VOXNP_CPU" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("name", SETS)
@pytest.mark.parametrize("n,k", [(1, 1), (13, 7), (37, 53), (300, 1031), (96, 4096)])
def test_bf16_product_on_every_set(name, n, k):
    """Every set: close to the NumPy definition, each row bit-identical to a one-row call
    at any thread count and grouping."""
    w, x = bf16((n, k)), rng.standard_normal((8, k), dtype=np.float32)
    with cpu.using(name):
        one = np.empty((8, n), np.float32)
        for m in range(8):
            matmul_bf16(w, x[m:m + 1].copy(), one[m:m + 1], 1)
        np.testing.assert_allclose(one, ops.linear(x, w), rtol=1e-5, atol=1e-5 * np.sqrt(k))
        for T in range(1, 9):
            for threads in (1, 2):
                y = np.full((T, n), np.nan, np.float32)
                matmul_bf16(w, x[:T].copy(), y, threads)
                np.testing.assert_array_equal(y, one[:T], err_msg=f"{name} T={T}")


def test_bf16_avx2_and_portable_share_the_order():
    """The portable twin emulates the 8 AVX2 lanes: the same bits."""
    if "avx2" not in SETS:
        pytest.skip("this CPU has no AVX2")
    w, x = bf16((45, 1001)), rng.standard_normal((3, 1001), dtype=np.float32)
    out = {}
    for name in ("portable", "avx2"):
        out[name] = np.empty((3, 45), np.float32)
        with cpu.using(name):
            matmul_bf16(w, x, out[name], 2)
    np.testing.assert_array_equal(out["portable"], out["avx2"])


def test_a_cpu_without_avx2_runs_the_portable_twin_with_a_notice(monkeypatch, capsys):
    before = cpu.active()
    monkeypatch.setattr(cpu._kernels, "cpu_runs", lambda name: name == "portable")
    monkeypatch.delenv("VOXNP_CPU", raising=False)
    try:
        assert cpu.choose() == "portable"
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "AVX2" in err and "portable" in err
        with pytest.raises(VoxnpError, match="lacks"):
            cpu.choose("avx2")
    finally:
        monkeypatch.undo()
        cpu.choose(before)
