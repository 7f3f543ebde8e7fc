"""voxnp: Mistral's Voxtral Realtime 4B speech-to-text in NumPy, on the CPU.

    import voxnp
    model = voxnp.load("voxtral-model")
    print(model.transcribe("speech.wav"))
"""
import os as _os

# Thread pools: the OpenMP kernels (Cython, Numba) and OpenBLAS share 2..N cores and
# alternate many times per second. Spinning idle threads of one pool steal the cores the
# other needs, so idle threads of both sleep after a short spin:
# - OpenMP's (measured: the tiny model's encoder ran 10x slower);
# - OpenBLAS's, which spin 2^28 cycles (~0.1 s) by default after each product, through
#   the OpenMP kernels that follow it: 2^4 instead made the full-size encoder's attention
#   1.8x and its linear layers 1.2x faster (bench/bench.py --encoder_only).
# Set before the OpenMP runtime and OpenBLAS load (importing NumPy before voxnp keeps
# OpenBLAS's default); the user's values win.
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .errors import VoxnpError  # noqa: E402
from .model import Model, load  # noqa: E402

__version__ = "0.1.0"


def transcribe(audio, model_dir=None, **options) -> str:
    """Load the model (from model_dir, $VOXNP_MODEL or the default) and transcribe one input."""
    return load(model_dir).transcribe(audio, **options)


__all__ = ["load", "transcribe", "Model", "VoxnpError", "__version__"]
