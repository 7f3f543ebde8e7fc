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
