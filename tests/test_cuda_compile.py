"""The cupy backend's CUDA source compiles with NVRTC, here on a machine with no GPU.

NVRTC (the library CuPy compiles RawModule code with) turns CUDA C into PTX without a
driver or a device; the test extra installs it from PyPI (nvidia-cuda-nvrtc-cu12).
Each architecture the backend is meant for is compiled, any error or warning in the
log fails the test, and the PTX must define every kernel the backend looks up.
"""
import ctypes
import pathlib

import pytest

from voxnp import kernels_cupy

ARCHITECTURES = ("compute_80", "compute_90")   # A100, H100/H200


def libnvrtc():
    try:
        import nvidia.cuda_nvrtc as package
    except ImportError:
        pytest.skip("NVRTC is not installed (the test extra has nvidia-cuda-nvrtc-cu12 on Linux x86-64/aarch64)")
    found = sorted(p for d in package.__path__ for p in pathlib.Path(d, "lib").glob("libnvrtc.so*"))
    if not found:
        pytest.skip("the nvidia-cuda-nvrtc package holds no libnvrtc.so")
    lib = ctypes.CDLL(str(found[0]))
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib


def compile_to_ptx(lib, source: str, name: str, options: list[str]) -> tuple[int, str, str]:
    """(NVRTC result, compile log, PTX) of one program."""
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None) == 0
    try:
        opts = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
        result = lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        ptx = b""
        if result == 0:
            lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetPTX(prog, buf)
            ptx = buf.value
        return result, log.value.decode(errors="replace"), ptx.decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cuda_source_compiles_without_warnings(arch):
    lib = libnvrtc()
    result, log, ptx = compile_to_ptx(lib, kernels_cupy.CUDA_SOURCE, "voxnp_kernels.cu",
                                      [f"--gpu-architecture={arch}", "--std=c++17"])
    assert result == 0, f"NVRTC: {lib.nvrtcGetErrorString(result).decode()}\n{log}"
    assert "warning" not in log.lower(), log
    for name in kernels_cupy.KERNEL_NAMES:
        assert f".entry {name}(" in ptx, f"the PTX for {arch} defines no kernel {name}"


def test_compile_errors_are_reported():
    """The harness itself: broken CUDA fails with its line in the log (so a pass means something)."""
    lib = libnvrtc()
    result, log, _ = compile_to_ptx(lib, 'extern "C" __global__ void k(float* y) { y[0] = undefined_name; }',
                                    "broken.cu", ["--gpu-architecture=compute_90"])
    assert result != 0 and "undefined_name" in log
    result, log, _ = compile_to_ptx(lib, 'extern "C" __global__ void k(float* y) { int unused = 1; y[0] = 0; }',
                                    "warns.cu", ["--gpu-architecture=compute_90"])
    assert result == 0 and "warning" in log.lower()


def test_a_compile_error_is_one_line_naming_the_kernel():
    lines = kernels_cupy.CUDA_SOURCE.splitlines()
    at = next(i for i, line in enumerate(lines, 1) if "__global__ void rope(" in line) + 3
    log = f"/tmp/x/voxnp_kernels.cu({at}): error: identifier \"cosx\" is undefined\n\n1 error detected"
    message = kernels_cupy.compile_error_line(log)
    assert "\n" not in message and "kernel rope" in message and 'identifier "cosx" is undefined' in message
    assert "could not be built: nvrtc: library not found" in \
        kernels_cupy.compile_error_line("nvrtc: library not found\nmore")


def test_cli_reports_a_failed_compile_in_one_line(monkeypatch, capsys, tiny_dir):
    import sys

    from conftest import shared_audio
    from test_backend_cupy import stand_in_cupy

    from voxnp.cli import main

    fake = stand_in_cupy()

    def broken(code):
        raise RuntimeError("/tmp/k/voxnp_kernels.cu(30): error: expected a \";\"")
    fake.RawModule = broken
    monkeypatch.setitem(sys.modules, "cupy", fake)
    rc = main([str(shared_audio("jfk.wav")), "--model", str(tiny_dir), "--backend", "cupy"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "kernel bf16_rows failed to compile (line 30)" in err[0], err
