"""Which compiled kernel set runs: the best this CPU has, or a lower one forced by VOXNP_CPU.

voxnp is built once for any x86-64 CPU; each compiled kernel (_bf16.h, _quant.h) has a
variant per instruction set, and the set is chosen at run time (_cpu.h detects the
features). Sets, lowest first: portable, avx2 (AVX2 + FMA), avxvnni, avx512,
avx512vnni, avx512bf16, amx. `VOXNP_CPU=avx2` (any set the CPU runs) forces one, e.g. to
compare speeds or to reproduce another machine's results; a set the CPU lacks is a
one-line error. A CPU without AVX2/FMA runs the portable kernels, with a notice.

Adding a kernel: compile its variants inside VOXNP_TARGET_BEGIN(VOXNP_T_<SET>) ...
VOXNP_TARGET_END (_cpu.h), take the set (`_kset` in _kernels.pyx) as an argument and
switch on it, falling back to the nearest lower variant the kernel has.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from .errors import VoxnpError

try:
    from . import _kernels
except ImportError:  # pragma: no cover - a source checkout that was never built
    raise VoxnpError("voxnp's compiled kernels are missing: install with `pip install .` "
                     "(or `pip install -e .` in a checkout)") from None

ENV = "VOXNP_CPU"
KERNEL_SETS = tuple(_kernels.kernel_sets())    # lowest first
SIMD_FLOOR = "avx2"                             # below it: the portable C twins

_chosen: str | None = None


def available() -> list[str]:
    """The kernel sets this CPU runs, lowest first."""
    return [s for s in KERNEL_SETS if _kernels.cpu_runs(s)]


def best() -> str:
    """The highest kernel set this CPU runs."""
    return available()[-1]


def choose(name: str | None = None) -> str:
    """Use kernel set `name` (default: $VOXNP_CPU, else the best); returns it.

    Unknown names and sets this CPU lacks are one-line errors.
    """
    global _chosen
    source = "kernel set"
    if name is None:
        source, name = ENV, os.environ.get(ENV, "").strip().lower()
    name = name or best()
    if name not in KERNEL_SETS:
        raise VoxnpError(f"{source} {name!r} is unknown (choose from {', '.join(KERNEL_SETS)})")
    if name not in available():
        raise VoxnpError(f"{source} {name!r}: this CPU lacks it (it runs {', '.join(available())})")
    if name == "portable" and SIMD_FLOOR not in available():
        print("voxnp: this CPU has no AVX2/FMA: running the portable kernels (slower)", file=sys.stderr)
    _kernels.use_kernel_set(name)
    _chosen = name
    return name


def active() -> str:
    """The kernel set in use (chosen on first call: $VOXNP_CPU or the best)."""
    return _chosen if _chosen is not None else choose()


def compiled():
    """The compiled kernels module, with its kernel set chosen."""
    active()
    return _kernels


@contextmanager
def using(name: str):
    """Run the block on kernel set `name`, then restore the previous one (tests, benches)."""
    before = active()
    choose(name)
    try:
        yield name
    finally:
        choose(before)


def describe() -> str:
    """One line: the kernel set in use and those the CPU runs."""
    return f"kernels {active()} (this CPU runs {', '.join(available())})"
