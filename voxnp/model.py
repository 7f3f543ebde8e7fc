"""A loaded model: config, memory-mapped weights, tokenizer and the chosen kernels.

`load()` reads only params.json, tekken.json and the safetensors header, checks every
tensor against the config, and builds zero-copy views; the 8.9 GB of weights are
paged in by the kernels as they use them.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backend import get_backend
from .config import ModelConfig, load_config
from .errors import VoxnpError
from .ops import rope_frequencies
from .tokenizer import Tokenizer, read_tekken
from .weights import WEIGHTS_FILE, SafetensorsFile, Weights, load_weights

DEFAULT_MODEL_DIR = "voxtral-model"
MODEL_FILES = ("params.json", "tekken.json", WEIGHTS_FILE)


def default_model_dir() -> Path:
    """--model, else $VOXNP_MODEL, else ./voxtral-model, else the download location."""
    env = os.environ.get("VOXNP_MODEL")
    if env:
        return Path(env)
    local = Path(DEFAULT_MODEL_DIR)
    if local.is_dir():
        return local
    from .download import download_dir

    return download_dir()


@dataclass
class Model:
    path: Path
    config: ModelConfig
    weights: Weights
    tokenizer: Tokenizer
    ops: object                   # the kernel module chosen by backend.get_backend
    encoder_inv_freq: np.ndarray  # RoPE frequencies, fixed per model
    decoder_inv_freq: np.ndarray
    file: SafetensorsFile | object   # the weights file read last (its path keys padcache):
                                     # the checkpoint, or the quant_file.QuantizedFile
    left_padding: dict = field(default_factory=dict)  # delay -> stream state after the left padding

    def stream(self, **options):
        """A streaming session (see `voxnp.stream.Stream` for the options)."""
        from .stream import Stream

        return Stream(self, **options)

    def transcribe(self, audio, delay_ms: float | None = None, on_token=None, **options) -> str:
        """Text of a whole recording: a path, or float32 samples at 16 kHz. Options as
        for `stream` (e.g. speculate=2, drafter=...)."""
        from .stream import transcribe

        return transcribe(self, audio, delay_ms=delay_ms, on_token=on_token, **options).text

    def transcribe_many(self, inputs, batch: int = 4, **options):
        """Transcripts (voxnp.stream.Transcript) of several recordings, in input order,
        up to `batch` decoded together; an unreadable input yields its VoxnpError."""
        from .stream import transcribe_many

        return transcribe_many(self, inputs, batch=batch, **options)


def open_bf16(path: Path):
    """Check a model directory and map its BF16 checkpoint: (tekken, config, file, weights)."""
    if not path.exists():
        raise VoxnpError(f"{path}: model directory not found (run `voxnp download` or pass --model)")
    if not path.is_dir():
        raise VoxnpError(f"{path}: not a directory")
    for name in MODEL_FILES:
        if not (path / name).is_file():
            raise VoxnpError(f"{path / name}: missing model file")
    tekken = read_tekken(path / "tekken.json")
    config = load_config(path, tekken)
    st = SafetensorsFile(path / WEIGHTS_FILE)
    return tekken, config, st, load_weights(st, config)


def load(model_dir: str | Path | None = None, backend: str = "auto", threads: int | None = None,
         weights: str = "bf16", progress: bool | None = None, resident: bool | None = None) -> Model:
    """Open a model directory (params.json, tekken.json, consolidated.safetensors).

    weights: "bf16" (the checkpoint, the reference), "int8" or "q4": the decoder's
    matrices quantized (see quant.py), converted once and mapped (see quant_file.py);
    progress: show the conversion's progress bar (default: when stderr is a terminal);
    resident: copy the decoder's matrices into huge-page memory for faster steps
    (default: $VOXNP_RESIDENT, else for int8 and q4 on the CPU; see resident.py).
    """
    from . import quant, quant_file, resident as resident_mod

    path = Path(str(model_dir)) if model_dir is not None else default_model_dir()  # fire may pass a number
    quant.check_format(weights)
    if weights != "bf16" and backend == "cupy":
        raise VoxnpError(f"--weights {weights} runs on the CPU backends only (use bf16 with cupy)")
    tekken, config, st, bf16 = open_bf16(path)
    file, model_weights = st, bf16
    if weights != "bf16":
        file = quant_file.open_quantized(path, st, bf16, weights,
                                         progress=sys.stderr.isatty() if progress is None else progress)
        model_weights = quant_file.quantized_weights(bf16, file)
    if resident is None:
        resident = resident_mod.wanted(weights, backend)
    if resident:
        model_weights = resident_mod.decoder_in_memory(model_weights)
    tokenizer = Tokenizer(tekken, config.decoder.vocab_size, path / "tekken.json")
    ops = get_backend(backend, threads=threads)
    prepare = getattr(ops, "prepare", None)               # the GPU backend uploads the weights
    if prepare is not None:
        prepare(model_weights)
    return Model(
        path=path, config=config, weights=model_weights, tokenizer=tokenizer, ops=ops,
        encoder_inv_freq=rope_frequencies(config.encoder.head_dim, config.encoder.rope_theta),
        decoder_inv_freq=rope_frequencies(config.decoder.head_dim, config.decoder.rope_theta),
        file=file,
    )
