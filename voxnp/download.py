"""`voxnp download`: fetch the published model files from Hugging Face.

The model directory is the three files of `mistralai/Voxtral-Mini-4B-Realtime-2602`
(SPEC §1). They are fetched with `huggingface_hub.hf_hub_download(..., local_dir=DIR)`,
which downloads into a temporary `.incomplete` file under `DIR/.cache/huggingface/` and
renames it only when complete, so the final name never holds a partial file. A file
that is already complete is not fetched again, and no network is needed to find that out.

Default location: `$VOXNP_HOME/Voxtral-Mini-4B-Realtime-2602` when VOXNP_HOME is set,
else `~/.cache/voxnp/Voxtral-Mini-4B-Realtime-2602`.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from .errors import VoxnpError
from .weights import read_header

REPO_ID = "mistralai/Voxtral-Mini-4B-Realtime-2602"
FILES = ("params.json", "tekken.json", "consolidated.safetensors")
MODEL_NAME = REPO_ID.split("/")[1]  # the directory name: Voxtral-Mini-4B-Realtime-2602
REPO_URL = f"https://huggingface.co/{REPO_ID}"


def download_dir() -> Path:
    """The default model location: $VOXNP_HOME/<model>, else ~/.cache/voxnp/<model>."""
    home = os.environ.get("VOXNP_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "voxnp"
    return base / MODEL_NAME


def is_complete(path: Path) -> bool:
    """True if `path` holds a whole model file.

    consolidated.safetensors: the header parses and the file ends exactly where the
    last tensor's data ends. JSON files: the file parses as JSON.
    """
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix == ".safetensors":
        try:
            header = read_header(path)
        except VoxnpError:
            return False
        return header.file_size == header.data_start + header.data_end
    try:
        with open(path, encoding="utf-8") as f:
            json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True


def _manual_hint(dest: Path) -> str:
    return (f"download {', '.join(FILES)} from {REPO_URL} by hand into {dest} "
            f"(or pass --model DIR)")


def _is_network_error(e: BaseException) -> bool:
    """Connection trouble of any kind (offline mode included), as opposed to an HTTP answer."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if isinstance(e, HfHubHTTPError):
        return False  # the Hub answered (404, 401, 5xx...): not a connection problem
    if isinstance(e, (LocalEntryNotFoundError, ConnectionError, TimeoutError)):
        return True   # LocalEntryNotFoundError: "cannot reach the Hub and not in the cache"
    # the HTTP client's own transport errors (httpx in huggingface_hub >= 1.0, requests before)
    return type(e).__module__.split(".")[0] in ("httpx", "requests", "urllib3") and any(
        c.__name__ in ("TransportError", "ConnectionError", "RequestException", "TimeoutException")
        for c in type(e).__mro__)


def _root_reason(e: BaseException) -> str:
    """The first line of the innermost cause ("[Errno -2] Name or service not known")."""
    seen = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    for err in reversed(seen):
        if str(err):
            return str(err).splitlines()[0]
    return type(seen[-1]).__name__


@contextlib.contextmanager
def _progress_bars(enabled: bool):
    """Turn huggingface_hub's tqdm bars off for the duration (they are on by default)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not enabled and not was_disabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()


def _fetch(hf_hub_download, name: str, dest: Path) -> None:
    """One file; a partial file under the final name is removed whatever happens."""
    final = dest / name
    if final.exists():
        final.unlink()  # not complete (checked by the caller): would be trusted offline
    try:
        hf_hub_download(repo_id=REPO_ID, filename=name, local_dir=str(dest))
    except BaseException:
        # huggingface_hub renames a finished temp file, but copying from its own cache
        # (~/.cache/huggingface) writes the final name directly: never leave that half done.
        if final.exists() and not is_complete(final):
            final.unlink()
        raise
    if not is_complete(final):
        raise VoxnpError(f"{final}: downloaded from {REPO_ID} but incomplete or corrupt; "
                         f"run `voxnp download` again")


def download(dest: str | Path | None = None, progress: bool = True) -> Path:
    """Fetch params.json, tekken.json and consolidated.safetensors; return the directory.

    Files already complete in `dest` (default `download_dir()`) are kept as they are.
    Raises VoxnpError when huggingface_hub is missing, the Hub cannot be reached
    (HF_HUB_OFFLINE=1 included) or the download fails.
    """
    dest = Path(str(dest)).expanduser() if dest is not None else download_dir()  # fire may pass a number
    if dest.exists() and not dest.is_dir():
        raise VoxnpError(f"{dest}: exists and is not a directory")
    missing = [name for name in FILES if not is_complete(dest / name)]
    for name in FILES:
        if name not in missing and progress:
            print(f"{name}: already complete", file=sys.stderr)
    if not missing:
        return dest
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise VoxnpError('downloading needs huggingface_hub (a dependency of voxnp; '
                         'pip install huggingface_hub), or ' + _manual_hint(dest)) from None
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true"):
        raise VoxnpError(f"cannot download {REPO_ID}: HF_HUB_OFFLINE is set; unset it, or "
                         + _manual_hint(dest))
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VoxnpError(f"{dest}: cannot create directory ({e.strerror})") from None
    with _progress_bars(progress):
        for name in missing:
            try:
                _fetch(hf_hub_download, name, dest)
            except VoxnpError:
                raise
            except Exception as e:
                if _is_network_error(e):
                    raise VoxnpError(f"cannot reach huggingface.co to download {REPO_ID} "
                                     f"({_root_reason(e)}); check the connection, or "
                                     + _manual_hint(dest)) from None
                if isinstance(e, OSError) and not hasattr(e, "response") and e.strerror:
                    raise VoxnpError(f"{dest / name}: cannot write ({e.strerror})") from None
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise VoxnpError(f"downloading {name} from {REPO_ID} failed ({reason}); "
                                 + _manual_hint(dest)) from None
    return dest


def download_command(dir=None):
    """Download Voxtral Realtime 4B (params.json, tekken.json, consolidated.safetensors; 8.9 GB).

    Files already downloaded are kept; an interrupted download leaves no partial file
    under the final name.

    Args:
      dir: directory to download into (default $VOXNP_HOME/Voxtral-Mini-4B-Realtime-2602,
        else ~/.cache/voxnp/Voxtral-Mini-4B-Realtime-2602, which voxnp finds by itself)
    """
    path = download(dir)
    print(f"model ready in {path}", file=sys.stderr)
    return None
