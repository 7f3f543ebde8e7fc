"""voxnp: Mistral's Voxtral Realtime 4B speech-to-text in NumPy, on the CPU.

    import voxnp
    model = voxnp.load("voxtral-model")
    print(model.transcribe("speech.wav"))
"""
import os as _os

# Thread pools: the OpenMP kernels (Cython, Numba) and OpenBLAS share 2..N cores and
# alternate many times per second. Spinning idle OpenMP threads would steal the cores
# BLAS needs (measured: the tiny model's encoder ran 10x slower), so idle threads sleep
# after a short spin. Set before the OpenMP runtime loads; the user's value wins.
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from .errors import VoxnpError  # noqa: E402
from .model import Model, load  # noqa: E402

__version__ = "0.1.0"


def transcribe(audio, model_dir=None, **options) -> str:
    """Load the model (from model_dir, $VOXNP_MODEL or the default) and transcribe one input."""
    return load(model_dir).transcribe(audio, **options)


__all__ = ["load", "transcribe", "Model", "VoxnpError", "__version__"]
