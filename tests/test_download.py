"""`voxnp download`: default location, skipping complete files, offline errors (no network used)."""
from __future__ import annotations

import shutil
import sys

import pytest

import voxnp.model
from voxnp import download as dl
from voxnp.errors import VoxnpError

huggingface_hub = pytest.importorskip("huggingface_hub")


def _forbid(*args, **kwargs):
    raise AssertionError(f"hf_hub_download must not be called (got {args} {kwargs})")


def test_download_dir_honours_voxnp_home(monkeypatch, tmp_path):
    monkeypatch.setenv("VOXNP_HOME", str(tmp_path))
    assert dl.download_dir() == tmp_path / "Voxtral-Mini-4B-Realtime-2602"
    monkeypatch.delenv("VOXNP_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dl.download_dir() == tmp_path / "home" / ".cache" / "voxnp" / "Voxtral-Mini-4B-Realtime-2602"


def test_complete_model_is_not_fetched(monkeypatch, tiny_dir, tmp_path, capsys):
    dest = tmp_path / "model"
    shutil.copytree(tiny_dir, dest)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _forbid)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # complete files need no network at all
    assert dl.download(dest) == dest
    dl.download_command(str(dest))
    assert str(dest) in capsys.readouterr().err


def test_truncated_weights_are_fetched_again(monkeypatch, tiny_dir, tmp_path):
    dest = tmp_path / "model"
    shutil.copytree(tiny_dir, dest)
    weights = dest / "consolidated.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[:-10])
    assert not dl.is_complete(weights) and dl.is_complete(dest / "params.json")
    fetched = []

    def fake(repo_id, filename, local_dir, **kwargs):
        assert repo_id == dl.REPO_ID
        assert not (dest / filename).exists()  # the partial file was removed first
        fetched.append(filename)
        (dest / filename).write_bytes(whole)
        return str(dest / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert dl.download(dest, progress=False) == dest
    assert fetched == ["consolidated.safetensors"]
    assert dl.is_complete(weights)


def test_offline_env_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _forbid)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VoxnpError) as e:
        dl.download(tmp_path / "model", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and dl.REPO_ID in msg and "HF_HUB_OFFLINE" in msg
    assert str(tmp_path / "model") in msg and "by hand" in msg


@pytest.mark.parametrize("error", [
    lambda: huggingface_hub.errors.LocalEntryNotFoundError("cannot find the requested files"),
    lambda: huggingface_hub.errors.OfflineModeIsEnabled("offline"),
    lambda: ConnectionError("Name or service not known"),
])
def test_connection_error_gives_clear_error(monkeypatch, tmp_path, error):
    def fail(*args, **kwargs):
        raise error()

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    dest = tmp_path / "model"
    with pytest.raises(VoxnpError) as e:
        dl.download(dest, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and dl.REPO_ID in msg and "cannot reach" in msg
    assert str(dest) in msg and "consolidated.safetensors" in msg
    assert not any(p.is_file() for p in dest.iterdir())  # nothing left under a final name


def test_interrupted_copy_leaves_no_partial_file(monkeypatch, tmp_path):
    dest = tmp_path / "model"

    def half_then_interrupt(repo_id, filename, local_dir, **kwargs):
        (dest / filename).write_bytes(b"{\"dim\": ")  # as a non-atomic copy would
        raise KeyboardInterrupt

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", half_then_interrupt)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(KeyboardInterrupt):
        dl.download(dest, progress=False)
    assert not (dest / "params.json").exists()


def test_missing_huggingface_hub(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import raises ImportError
    with pytest.raises(VoxnpError, match="pip install huggingface_hub"):
        dl.download(tmp_path / "model", progress=False)


def test_default_model_dir(monkeypatch, tmp_path, tiny_dir):
    monkeypatch.chdir(tmp_path)  # no ./voxtral-model here
    monkeypatch.setenv("VOXNP_MODEL", str(tiny_dir))
    assert voxnp.model.default_model_dir() == tiny_dir
    monkeypatch.delenv("VOXNP_MODEL")
    home = tmp_path / "home"
    monkeypatch.setenv("VOXNP_HOME", str(home))
    shutil.copytree(tiny_dir, home / "Voxtral-Mini-4B-Realtime-2602")
    found = voxnp.model.default_model_dir()
    assert found == home / "Voxtral-Mini-4B-Realtime-2602"
    assert voxnp.load(found).config.decoder.dim > 0
