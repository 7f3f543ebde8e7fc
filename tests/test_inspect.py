"""`voxnp inspect`: totals, and problems reported (not raised) for damaged model directories."""
from __future__ import annotations

import json
import shutil
import struct

import pytest

from voxnp.errors import VoxnpError
from voxnp.inspect import COMPONENTS, format_report, inspect_command, inspect_model, read_header
from voxnp.weights import ENC, TOK_EMBEDDINGS

WEIGHTS = "consolidated.safetensors"


def rewrite_safetensors(path, drop=(), extra=None):
    """Rewrite a safetensors file without the tensors in `drop` (and with `extra` {name: bytes})."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    meta = header.pop("__metadata__", None)
    blobs = {name: data[e["data_offsets"][0]:e["data_offsets"][1]]
             for name, e in header.items() if name not in drop}
    entries = {name: header[name] for name in blobs}
    for name, blob in (extra or {}).items():
        blobs[name] = blob
        entries[name] = {"dtype": "BF16", "shape": [len(blob) // 2]}
    out_header, out_data, offset = {"__metadata__": meta} if meta else {}, [], 0
    for name, blob in blobs.items():
        out_header[name] = dict(entries[name], data_offsets=[offset, offset + len(blob)])
        out_data.append(blob)
        offset += len(blob)
    text = json.dumps(out_header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(out_data))


@pytest.fixture
def model_copy(tiny_dir, tmp_path):
    return shutil.copytree(tiny_dir, tmp_path / "model")


def test_totals_are_sums(tiny_dir):
    info = inspect_model(tiny_dir)
    rows = info["tensors"]
    assert len(rows) == info["total"]["tensors"] == len(read_header(tiny_dir / WEIGHTS).entries)
    for c in COMPONENTS:
        mine = [r for r in rows if r["component"] == c]
        assert mine, c
        assert info["totals"][c]["params"] == sum(r["params"] for r in mine)
        assert info["totals"][c]["bytes"] == sum(r["bytes"] for r in mine)
    assert info["total"]["params"] == sum(t["params"] for t in info["totals"].values())
    assert info["total"]["bytes"] == sum(r["bytes"] for r in rows) == 2 * info["total"]["params"]
    assert next(r for r in rows if r["name"] == TOK_EMBEDDINGS)["component"] == "embeddings"


def test_tiny_checkpoint_has_no_problems(tiny_dir, capsys):
    info = inspect_model(tiny_dir)
    assert info["problems"] == []
    cfg = info["config"]
    assert cfg["decoder"]["vocab_size"] == cfg["tokenizer"]["vocab_size"]
    assert cfg["tokenizer"]["n_special_tokens"] == 1000
    assert cfg["tokenizer"]["audio"]["transcription_delay_ms"] == 480
    report = format_report(info)
    assert "no problems found" in report and TOK_EMBEDDINGS in report and "total" in report
    assert TOK_EMBEDDINGS not in format_report(info, tensors=False)
    inspect_command(str(tiny_dir), json=True)  # no SystemExit
    assert json.loads(capsys.readouterr().out)["problems"] == []


def test_params_disagreeing_with_weights(model_copy, capsys):
    params = json.loads((model_copy / "params.json").read_text())
    params["dim"] += 8
    (model_copy / "params.json").write_text(json.dumps(params))
    info = inspect_model(model_copy)  # reports, does not raise
    problems = "\n".join(info["problems"])
    assert "'norm.weight' has shape" in problems
    assert f"'{TOK_EMBEDDINGS}' has shape" in problems
    assert "layers.0.attention.wq.weight" in problems
    with pytest.raises(SystemExit) as e:
        inspect_command(str(model_copy), tensors=False)
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert "problems:" in out and "'norm.weight' has shape" in out


def test_missing_and_extra_tensors(model_copy):
    gone = f"{ENC}transformer.layers.1.attention.wk.weight"
    rewrite_safetensors(model_copy / WEIGHTS, drop=[gone], extra={"bogus.weight": b"\0" * 8})
    info = inspect_model(model_copy)
    assert f"missing tensor '{gone}'" in info["problems"]
    assert "unexpected tensor 'bogus.weight'" in info["problems"]
    assert len(info["problems"]) == 2


def test_truncated_file(model_copy):
    path = model_copy / WEIGHTS
    path.write_bytes(path.read_bytes()[:-100])
    problems = inspect_model(model_copy)["problems"]
    assert len(problems) == 1 and "truncated" in problems[0] and "first '" in problems[0]


def test_missing_files_are_problems(model_copy):
    (model_copy / "params.json").unlink()
    (model_copy / WEIGHTS).unlink()
    info = inspect_model(model_copy)
    assert any("params.json" in p for p in info["problems"])
    assert any(WEIGHTS in p for p in info["problems"])
    assert info["config"] is None and info["total"]["tensors"] == 0
    assert "problems:" in format_report(info)


def test_unusable_inputs_raise(tmp_path):
    with pytest.raises(VoxnpError, match="not found"):
        inspect_model(tmp_path / "nowhere")
    (tmp_path / WEIGHTS).write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(VoxnpError, match="not JSON"):
        inspect_model(tmp_path)
