"""voxnp: Mistral's Voxtral Realtime 4B speech-to-text in NumPy, on the CPU.

    import voxnp
    model = voxnp.load("voxtral-model")
    print(model.transcribe("speech.wav"))
"""
from .errors import VoxnpError
from .model import Model, load

__version__ = "0.1.0"


def transcribe(audio, model_dir=None, **options) -> str:
    """Load the model (from model_dir, $VOXNP_MODEL or the default) and transcribe one input."""
    return load(model_dir).transcribe(audio, **options)


__all__ = ["load", "transcribe", "Model", "VoxnpError", "__version__"]
