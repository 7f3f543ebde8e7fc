"""Bad input through the real command: one `voxnp: error:` line naming the file, exit 1, no traceback.

Each case runs `python -m voxnp` in a subprocess (about a second each), on a copy of the tiny
checkpoint damaged in one way, or on a damaged audio or teacher file. `dump` must leave
neither OUT.npz nor its temporary file behind.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import shared_audio

PARAMS, TEKKEN, WEIGHTS = "params.json", "tekken.json", "consolidated.safetensors"
RATE = 16000


def voxnp(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "voxnp", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def assert_error(r: subprocess.CompletedProcess, *words) -> str:
    """A failed run: non-zero, no traceback, one `voxnp: error:` line holding every word.

    A word may be a tuple of alternatives (any one of them will do).
    """
    assert r.returncode != 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("voxnp: error: "), line
    for word in words:
        options = word if isinstance(word, tuple) else (word,)
        assert any(str(o).lower() in line.lower() for o in options), (options, line)
    return line


# ---------------------------------------------------------------------------
# files to damage


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    """One second of real speech, 16 kHz 16-bit."""
    x, rate = sf.read(shared_audio("jfk.wav"), dtype="float32")
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    sf.write(path, x[RATE:2 * RATE], rate, subtype="PCM_16")
    return path


@pytest.fixture
def model(tiny_dir, tmp_path) -> Path:
    """A private copy of the tiny checkpoint, free to damage."""
    return Path(shutil.copytree(tiny_dir, tmp_path / "model"))


def read_safetensors(path: Path) -> tuple[dict, dict]:
    """-> (header without __metadata__, {name: raw bytes})."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n:]
    return header, {k: data[e["data_offsets"][0]:e["data_offsets"][1]] for k, e in header.items()}


def write_safetensors(path: Path, header: dict, blobs: dict) -> None:
    """Our own writer: entries in header order, offsets recomputed from the blobs."""
    entries, offset = {}, 0
    for name, e in header.items():
        entries[name] = {"dtype": e["dtype"], "shape": e["shape"],
                         "data_offsets": [offset, offset + len(blobs[name])]}
        offset += len(blobs[name])
    head = json.dumps(entries).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs[n] for n in header))


def edit_json(path: Path, edit) -> None:
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))


def encoder_args(p: dict) -> dict:
    return p["multimodal"]["whisper_model_args"]["encoder_args"]


def cut(path: Path, keep) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    path.write_bytes(raw[:keep(len(raw), n)])


def corrupt_header(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[8:12] = b"\x00\xff{["  # the header's first bytes: neither UTF-8 nor JSON
    path.write_bytes(bytes(raw))


def _wrong_shape(d: Path):
    header, blobs = read_safetensors(d / WEIGHTS)
    header["norm.weight"]["shape"] = [32]           # [64] in params.json
    blobs["norm.weight"] = blobs["norm.weight"][:64]
    write_safetensors(d / WEIGHTS, header, blobs)


def _wrong_dtype(d: Path):
    header, blobs = read_safetensors(d / WEIGHTS)
    header["norm.weight"]["dtype"] = "F32"
    blobs["norm.weight"] = np.ones(64, np.float32).tobytes()
    write_safetensors(d / WEIGHTS, header, blobs)


def _wrong_byte_count(d: Path):
    header, blobs = read_safetensors(d / WEIGHTS)
    blobs["norm.weight"] = blobs["norm.weight"][:100]  # 100 bytes for 64 BF16 values
    write_safetensors(d / WEIGHTS, header, blobs)


def _missing_tensor(d: Path):
    header, blobs = read_safetensors(d / WEIGHTS)
    del header["layers.1.feed_forward.w2.weight"]
    write_safetensors(d / WEIGHTS, header, blobs)


def _header_entry_without_offsets(d: Path):
    head = json.dumps({"norm.weight": {"dtype": "BF16", "shape": [64]}}).encode()
    (d / WEIGHTS).write_bytes(struct.pack("<Q", len(head)) + head)


# (case id, damage(model_dir), words the error line must hold)
MODEL_CASES = [
    ("no-params", lambda d: (d / PARAMS).unlink(), (PARAMS, "missing")),
    ("no-tekken", lambda d: (d / TEKKEN).unlink(), (TEKKEN, "missing")),
    ("no-weights", lambda d: (d / WEIGHTS).unlink(), (WEIGHTS, "missing")),
    ("params-not-json", lambda d: (d / PARAMS).write_text('{"dim": 64,'), (PARAMS, "JSON")),
    ("params-a-list", lambda d: (d / PARAMS).write_text("[1, 2]"), (PARAMS, ("object", "invalid"))),
    ("params-no-n_heads", lambda d: edit_json(d / PARAMS, lambda p: p.pop("n_heads")),
     (PARAMS, "missing", "n_heads")),
    ("params-no-encoder-dim", lambda d: edit_json(d / PARAMS, lambda p: encoder_args(p).pop("dim")),
     (PARAMS, "missing", "dim")),
    ("params-dim-not-a-number", lambda d: edit_json(d / PARAMS, lambda p: p.update(dim="abc")),
     (PARAMS, "invalid", "abc")),
    ("params-zero-kv-heads", lambda d: edit_json(d / PARAMS, lambda p: p.update(n_kv_heads=0)),
     (PARAMS, "n_kv_heads")),
    ("params-dim", lambda d: edit_json(d / PARAMS, lambda p: p.update(dim=32)),
     (WEIGHTS, "tensor", "shape", "params.json")),
    ("params-more-layers", lambda d: edit_json(d / PARAMS, lambda p: p.update(n_layers=3)),
     (WEIGHTS, "missing tensor", "layers.2.", "params.json")),
    ("params-fewer-layers", lambda d: edit_json(d / PARAMS, lambda p: p.update(n_layers=1)),
     (WEIGHTS, "unexpected tensor", "layers.1.", "params.json")),
    ("params-encoder-hidden_dim", lambda d: edit_json(d / PARAMS, lambda p: encoder_args(p).update(hidden_dim=128)),
     (WEIGHTS, "feed_forward", "shape", "params.json")),
    ("weights-cut-in-data", lambda d: cut(d / WEIGHTS, lambda size, n: 8 + n + (size - 8 - n) // 2),
     (WEIGHTS, "truncated")),
    ("weights-cut-in-header", lambda d: cut(d / WEIGHTS, lambda size, n: 8 + n // 2),
     (WEIGHTS, ("truncated", "corrupt"))),
    ("weights-3-bytes", lambda d: cut(d / WEIGHTS, lambda size, n: 3), (WEIGHTS, "truncated")),
    ("weights-header-not-json", lambda d: corrupt_header(d / WEIGHTS), (WEIGHTS, "corrupt", "JSON")),
    ("weights-header-bad-entry", _header_entry_without_offsets, (WEIGHTS, "corrupt", "norm.weight")),
    ("weights-wrong-shape", _wrong_shape, (WEIGHTS, "norm.weight", "shape")),
    ("weights-wrong-dtype", _wrong_dtype, (WEIGHTS, "norm.weight", "F32", "BF16")),
    ("weights-wrong-byte-count", _wrong_byte_count, (WEIGHTS, "norm.weight", "bytes")),
    ("weights-missing-tensor", _missing_tensor, (WEIGHTS, "missing tensor", "layers.1.feed_forward.w2")),
    ("tekken-not-json", lambda d: (d / TEKKEN).write_text("not json"), (TEKKEN, "JSON")),
    ("tekken-no-vocab", lambda d: edit_json(d / TEKKEN, lambda t: t.pop("vocab")), (TEKKEN, "vocab")),
    ("tekken-short-vocab", lambda d: edit_json(d / TEKKEN, lambda t: t.update(vocab=t["vocab"][:100])),
     (TEKKEN, "vocab_size")),
]


@pytest.mark.parametrize("damage,words", [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_bad_model_dir(model, wav, damage, words):
    damage(model)
    assert_error(voxnp(wav, "--model", model, "--backend", "numpy"), *words)


def test_missing_model_dir(tmp_path, wav):
    assert_error(voxnp(wav, "--model", tmp_path / "nowhere"), "nowhere", "not found")


def test_model_is_a_file(tmp_path, wav):
    (tmp_path / "model").write_text("x")
    assert_error(voxnp(wav, "--model", tmp_path / "model"), "model", "not a directory")


# ---------------------------------------------------------------------------
# audio


def _nan_wav(path: Path):
    x = np.zeros(RATE // 10, np.float32)
    x[100] = np.nan
    sf.write(path, x, RATE, subtype="FLOAT")


AUDIO_CASES = [
    ("missing", None, ("not found",)),
    ("text", lambda p: p.write_text("hello, this is not audio\n"), (("format", "not an audio"),)),
    ("empty", lambda p: sf.write(p, np.zeros(0, np.float32), RATE, subtype="PCM_16"), ("no audio",)),
    ("50-samples", lambda p: sf.write(p, np.zeros(50, np.float32), RATE, subtype="PCM_16"), ("too short",)),
    ("60-samples-at-8k", lambda p: sf.write(p, np.zeros(60, np.float32), 8000, subtype="PCM_16"),
     ("too short",)),  # 120 samples once resampled to 16 kHz
    ("nan", _nan_wav, ("NaN",)),
]


@pytest.mark.parametrize("make,words", [c[1:] for c in AUDIO_CASES], ids=[c[0] for c in AUDIO_CASES])
def test_bad_audio(tiny_dir, tmp_path, make, words):
    path = tmp_path / "input.wav"
    if make is not None:
        make(path)
    assert_error(voxnp(path, "--model", tiny_dir, "--backend", "numpy"), str(path), *words)


def test_directory_without_audio(tiny_dir, tmp_path):
    """A directory is expanded to the audio files in it; with none, it is an error."""
    empty = tmp_path / "recordings"
    empty.mkdir()
    (empty / "notes.txt").write_text("no audio here")
    assert_error(voxnp(empty, "--model", tiny_dir, "--backend", "numpy"), str(empty), "no audio")


def test_load_audio_of_a_directory(tmp_path):
    from voxnp import VoxnpError
    from voxnp.audio import load_audio

    with pytest.raises(VoxnpError, match="directory"):
        load_audio(tmp_path)


def test_one_hop_of_audio_is_enough(tiny_dir, tmp_path):
    """160 samples (one 10 ms hop, audio.MIN_SAMPLES) is the shortest accepted input."""
    path = tmp_path / "short.wav"
    sf.write(path, np.zeros(160, np.float32), RATE, subtype="PCM_16")
    r = voxnp(path, "--model", tiny_dir, "--backend", "numpy", "--silent")
    assert r.returncode == 0 and r.stderr == "", r.stderr


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read anything")
def test_unreadable_audio(tiny_dir, tmp_path, wav):
    path = tmp_path / "locked.wav"
    shutil.copy(wav, path)
    path.chmod(0)
    try:
        assert_error(voxnp(path, "--model", tiny_dir, "--backend", "numpy"), str(path),
                     ("permission", "cannot read"))
    finally:
        path.chmod(0o644)


def test_no_arguments():
    assert_error(voxnp(), "no input")


def test_one_bad_file_among_good_ones(tiny_dir, tmp_path, wav):
    """The good files are transcribed, each bad one gets its line, and the status says it failed."""
    import voxnp as api

    x, _ = sf.read(wav, dtype="float32")
    other = tmp_path / "other.wav"
    sf.write(other, x[: RATE // 2], RATE, subtype="PCM_16")
    missing, text = tmp_path / "missing.wav", tmp_path / "notes.wav"
    text.write_text("not audio")
    m = api.load(tiny_dir, backend="numpy")
    expected = [m.transcribe(str(wav)).lstrip(), m.transcribe(str(other)).lstrip()]
    assert all(expected)

    r = voxnp(wav, missing, text, other, "--model", tiny_dir, "--backend", "numpy", "--silent")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.splitlines() == expected
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("voxnp: error: ") for line in lines), r.stderr
    assert str(missing) in lines[0] and "not found" in lines[0]
    assert str(text) in lines[1]


@pytest.mark.parametrize("how", ["closed-at-once", "head-c-1"])
def test_reader_closes_stdout(tiny_dir, wav, how):
    """`voxnp FILE | head -c 1`: the reader goes away; voxnp stops quietly."""
    cmd = [sys.executable, "-m", "voxnp", str(wav), "--model", str(tiny_dir), "--backend", "numpy"]
    if how == "closed-at-once":
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        p.stdout.close()
        err = p.stderr.read()
        p.wait(timeout=300)
    else:
        shell = shlex.join(cmd) + " | head -c 1 >/dev/null; exit ${PIPESTATUS[0]}"
        p = subprocess.run(["bash", "-c", shell], stderr=subprocess.PIPE, text=True, timeout=300)
        err = p.stderr
    for bad in ("Traceback", "Exception ignored", "BrokenPipeError", "voxnp: error"):
        assert bad not in err, err
    assert p.returncode >= 0, "killed by a signal"


# ---------------------------------------------------------------------------
# dump: every failure leaves the output directory as it was


@pytest.fixture
def out_dir(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def dump(model_dir, audio, out, *args):
    return voxnp("dump", model_dir, audio, out, "--backend", "numpy", *args)


def assert_nothing_written(out_dir: Path):
    assert sorted(p.name for p in out_dir.iterdir()) == [], "dump left a file behind"


def teacher(tmp_path: Path, name: str, value) -> Path:
    path = tmp_path / name
    if isinstance(value, bytes):
        path.write_bytes(value)
    elif isinstance(value, dict):
        np.savez(path, **value)
    else:
        np.save(path, value)
    return path


TEACHER_CASES = [
    ("text", "ids.npy", b"1000 1001 1002\n", ("not a .npy",)),
    ("npz", "ids.npz", {"ids": np.arange(1000, 1003)}, ("not a .npy",)),
    ("2-d", "ids.npy", np.full((2, 3), 1000), ("1-D",)),
    ("float", "ids.npy", np.array([1000.0, 1001.0]), ("integer", "float")),
    ("above-vocab", "ids.npy", np.array([1000, 4096]), ("4096", "vocabulary")),
    ("negative", "ids.npy", np.array([1000, -1]), ("-1", "vocabulary")),
]


@pytest.mark.parametrize("name,value,words", [c[1:] for c in TEACHER_CASES], ids=[c[0] for c in TEACHER_CASES])
def test_dump_bad_teacher(tiny_dir, wav, tmp_path, out_dir, name, value, words):
    path = teacher(tmp_path, name, value)
    assert_error(dump(tiny_dir, wav, out_dir / "o.npz", "--teacher", path), path.name, *words)
    assert_nothing_written(out_dir)


def test_dump_missing_teacher(tiny_dir, wav, tmp_path, out_dir):
    assert_error(dump(tiny_dir, wav, out_dir / "o.npz", "--teacher", tmp_path / "none.npy"),
                 "none.npy", ("no such file", "not found"))
    assert_nothing_written(out_dir)


@pytest.mark.parametrize("args,words", [(("--steps", "-1"), ("--steps", "-1")),
                                        (("--delay", "100"), ("delay", "100")),
                                        (("--delay", "soon"), ("delay", "soon"))],
                         ids=["steps-negative", "delay-not-multiple", "delay-not-a-number"])
def test_dump_bad_option(tiny_dir, wav, out_dir, args, words):
    assert_error(dump(tiny_dir, wav, out_dir / "o.npz", *args), *words)
    assert_nothing_written(out_dir)


def test_dump_bad_audio_and_model(tiny_dir, tmp_path, out_dir, wav):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    assert_error(dump(tiny_dir, bad, out_dir / "o.npz"), str(bad))
    assert_nothing_written(out_dir)
    assert_error(dump(tmp_path / "nomodel", wav, out_dir / "o.npz"), "nomodel", "not found")
    assert_nothing_written(out_dir)


def test_dump_output_directory_missing(tiny_dir, wav, tmp_path):
    out = tmp_path / "no" / "such" / "dir" / "o.npz"
    assert_error(dump(tiny_dir, wav, out), "o.npz", "does not exist")
    assert not (tmp_path / "no").exists()


def test_dump_output_is_a_directory(tiny_dir, wav, out_dir):
    target = out_dir / "o.npz"
    target.mkdir()
    assert_error(dump(tiny_dir, wav, target), "o.npz", "directory")
    assert [p.name for p in out_dir.iterdir()] == ["o.npz"] and not any(target.iterdir())


def test_dump_writes_only_the_npz(tiny_dir, wav, out_dir):
    """The good path for contrast: exactly OUT.npz, no temporary file left beside it."""
    r = dump(tiny_dir, wav, out_dir / "o.npz", "--steps", "2")
    assert r.returncode == 0, r.stderr
    assert [p.name for p in out_dir.iterdir()] == ["o.npz"]
    with np.load(out_dir / "o.npz") as z:
        assert z["tokens"].shape == (2,) and z["logits"].shape == (2, 4096)


def test_write_failure_leaves_nothing(tmp_path, monkeypatch):
    """A write that dies half way (disk full) is an error and removes its temporary file."""
    import errno

    from voxnp import VoxnpError
    from voxnp import dump as dump_mod

    def savez(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(dump_mod.np, "savez", savez)
    with pytest.raises(VoxnpError, match="o.npz.*No space left"):
        dump_mod.write_npz_atomic(tmp_path / "o.npz", {"a": np.zeros(3)})
    assert list(tmp_path.iterdir()) == []
