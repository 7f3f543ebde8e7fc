"""Shared fixtures: tiny random checkpoints in the published format, audio samples."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # `import reference` (the independent NumPy forward pass)

SHARED_AUDIO = TESTS.parent.parent / "shared" / "audio"

# the left-padding state cache (voxnp/padcache.py) goes to a private directory per run
os.environ["VOXNP_CACHE_DIR"] = tempfile.mkdtemp(prefix="voxnp-test-cache-")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from voxnp.checkpoint import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("tiny"), preset="tiny", seed=0, overwrite=True)


@pytest.fixture(scope="session")
def window_dir(tmp_path_factory) -> Path:
    """Sliding windows of 20 (decoder) and 12 (encoder) positions: rings wrap within seconds."""
    from voxnp.checkpoint import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("window"), preset="tiny-window", seed=1, overwrite=True)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    import voxnp

    return voxnp.load(tiny_dir)


@pytest.fixture(scope="session")
def window_model(window_dir):
    import voxnp

    return voxnp.load(window_dir)


@pytest.fixture()
def without_sounddevice(tmp_path, monkeypatch):
    """Subprocesses started in the test cannot import sounddevice (a module of that name
    first on their path raises ImportError), whether or not it is installed."""
    hide = tmp_path / "hide-sounddevice"
    hide.mkdir()
    (hide / "sounddevice.py").write_text('raise ImportError("sounddevice hidden by the test")\n')
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hide), os.environ.get("PYTHONPATH")])))


def shared_audio(name: str) -> Path:
    path = SHARED_AUDIO / name
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests need ../shared/audio beside the checkout")
    return path


@pytest.fixture(scope="session")
def speech() -> np.ndarray:
    """3 s of real speech (jfk.wav from 1 s on), float32 16 kHz."""
    from voxnp.audio import load_audio

    return load_audio(shared_audio("jfk.wav"))[16000:64000]
