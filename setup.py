"""Build voxnp: pure Python plus one Cython extension (voxnp._kernels, OpenMP)."""
import os

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

# Vectorise the float reductions without -ffast-math (which would flush denormals
# process-wide). -march=native: the package is built on the machine that runs it;
# set VOXNP_ARCH_FLAGS="" (or e.g. "-mavx2 -mfma") for a portable build.
ARCH = os.environ.get("VOXNP_ARCH_FLAGS", "-march=native").split()
FLAGS = ["-O3", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros",
         "-fno-trapping-math", "-fopenmp"] + ARCH

SERVE = ["starlette>=0.37", "uvicorn>=0.30", "python-multipart>=0.0.9", "websockets>=14"]  # voxnp serve
RAY = ["ray>=2.60"]  # voxnp batch --ray (tested with 2.60; older ActorPools reuse dead actors)

setup(
    name="voxnp",
    version="0.1.0",
    description="Voxtral Realtime 4B speech-to-text on the CPU in NumPy/Numba",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["voxnp", "voxnp.*"]),
    ext_modules=cythonize(
        [Extension("voxnp._kernels", ["voxnp/_kernels.pyx"], extra_compile_args=FLAGS,
                   include_dirs=["voxnp"], depends=["voxnp/_bf16.h", "voxnp/_quant.h"],
                   extra_link_args=["-fopenmp"])],
        compiler_directives={"language_level": "3"},
    ),
    install_requires=["numpy>=1.24", "scipy>=1.10", "numba>=0.59", "safetensors>=0.4",
                      "soundfile>=0.12", "soxr>=0.3", "fire>=0.5", "threadpoolctl>=3",
                      "huggingface_hub>=0.20"],   # `voxnp download`
    extras_require={
        # the tests cover the server (driven by the real `openai` client, fuzzed with Hypothesis)
        # and Ray batch jobs
        "test": ["pytest>=7", "hypothesis>=6.100", "mistral_common>=1.5", "openai[realtime]>=1.102"] + SERVE + RAY,
        "mic": ["sounddevice>=0.4"],
        "gpu": ["cupy-cuda12x>=13"],
        "bench": ["mistral_common>=1.5"],
        "serve": SERVE,
        "ray": RAY,
    },
    entry_points={"console_scripts": ["voxnp = voxnp.cli:main"]},
)
