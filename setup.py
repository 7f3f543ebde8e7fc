"""Build voxnp: pure Python plus one Cython extension (voxnp._kernels, OpenMP)."""
import os

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

# One build for any x86-64: the kernels pick their instruction set at run time
# (voxnp/_cpu.h, voxnp/cpu.py), so no -march=native; VOXNP_ARCH_FLAGS adds flags.
# Floating point exactly as written (no contraction, no reassociation): each
# kernel's order of operations is its contract (every row bit-identical to a one-row call).
ARCH = os.environ.get("VOXNP_ARCH_FLAGS", "").split()
FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-fopenmp"] + ARCH
HEADERS = ["voxnp/_cpu.h", "voxnp/_bf16.h", "voxnp/_bf16_simd.h", "voxnp/_quant.h", "voxnp/_quant_simd.h",
           "voxnp/_igemm.h", "voxnp/_attention.h", "voxnp/_attention_simd.h"]

SERVE = ["starlette>=0.37", "uvicorn>=0.30", "python-multipart>=0.0.9", "websockets>=14"]  # voxnp serve
RAY = ["ray>=2.60"]
# NVRTC alone (no GPU, no driver): the tests compile the cupy backend's CUDA source to PTX
NVRTC = ['nvidia-cuda-nvrtc-cu12>=12.4; sys_platform == "linux" and '
         '(platform_machine == "x86_64" or platform_machine == "aarch64")']  # voxnp batch --ray (tested with 2.60; older ActorPools reuse dead actors)

setup(
    name="voxnp",
    version="0.1.0",
    description="Voxtral Realtime 4B speech-to-text on the CPU in NumPy/Numba",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["voxnp", "voxnp.*"]),
    package_data={"voxnp.server": ["static/*"]},          # the page `voxnp serve` serves at /
    ext_modules=cythonize(
        [Extension("voxnp._kernels", ["voxnp/_kernels.pyx"], extra_compile_args=FLAGS,
                   include_dirs=["voxnp"], depends=HEADERS,
                   extra_link_args=["-fopenmp"])],
        compiler_directives={"language_level": "3"},
    ),
    install_requires=["numpy>=1.24", "scipy>=1.10", "numba>=0.59", "safetensors>=0.4",
                      "soundfile>=0.12", "soxr>=0.3", "fire>=0.5", "threadpoolctl>=3",
                      "huggingface_hub>=0.20"],   # `voxnp download`
    extras_require={
        # the tests cover the server (driven by the real `openai` client, fuzzed with Hypothesis)
        # and Ray batch jobs; selenium drives Debian's chromium (the page); sounddevice:
        # --from-mic through PulseAudio
        "test": ["pytest>=7", "hypothesis>=6.100", "mistral_common>=1.5", "openai[realtime]>=1.102",
                 "selenium>=4.11", "sounddevice>=0.4",
                 "Cython>=3.0"] + SERVE + RAY + NVRTC,   # Cython: a test runs setup.py build_py
        "mic": ["sounddevice>=0.4"],
        "gpu": ["cupy-cuda12x>=13"],
        "bench": ["mistral_common>=1.5"],
        "serve": SERVE,
        "ray": RAY,
    },
    entry_points={"console_scripts": ["voxnp = voxnp.cli:main"]},
)
