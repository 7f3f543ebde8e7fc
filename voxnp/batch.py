"""`voxnp batch`: transcribe a corpus into one output per input, resumably.

A job turns INPUTS (files, directories, glob patterns, lists of paths) into

    OUT/NAME.FORMAT       one per input, written atomically by the worker that transcribed it
    OUT/manifest.jsonl    one line per input, written only by this process (the driver)

A manifest line records what happened to one input:

    {"path": "/data/a/talk.wav", "output": "talk-1c9e02ab.json", "status": "done",  # or "failed"
     "error": null, "audio_s": 61.2, "processing_s": 4.1, "worker": "node3:8812",
     "attempts": 1, "version": "0.1.0", "model": "voxtral-model", "model_id": "0fa9...",
     "weights": "bf16", "format": "json", "input_size": 1958444,
     "input_mtime_ns": 1700000000000000000, "output_sha256": "9b1e..."}

Running the same job again skips every input whose line says `done` and whose output
is still there with that hash (and whose input has not changed); failed inputs are
retried with --retry-failed. A manifest written with another model, weight format or
output format is refused (--force starts over). Lines are appended as inputs finish
and the file is rewritten (atomically) with one line per input at the end of a run,
also after Ctrl-C.

Where the work runs is a runner: `EmbeddedRunner` here (one Worker in this process,
its files decoded `batch` at a time) or `batch_ray.RayRunner` (a pool of Worker
actors on a Ray cluster). Both hand every finished input to the same bookkeeping.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import VoxnpError
from .formats import AUDIO_EXTENSIONS, FORMATS, output_path, render, write_atomic
from .progress import BAR_WIDTH, Progress, _clock

MANIFEST = "manifest.jsonl"
LIST_EXTENSIONS = (".txt", ".lst", ".list")   # an input file with these names lists paths
GLOB_CHARS = "*?["
JOB_KEYS = ("model_id", "weights", "format")   # what a manifest must share with the job


# ---------------------------------------------------------------------------
# the job: inputs, names, options


@dataclass(frozen=True)
class Job:
    """What every worker needs to know: the model and the options of the outputs."""
    output_dir: str            # absolute
    format: str
    model: str                 # the model directory as given (the JSON "model" field)
    model_path: str            # the same, absolute (workers may run elsewhere)
    model_id: str              # a hash of the checkpoint (quant_file.model_identity)
    weights: str
    batch: int
    backend: str = "auto"
    threads: int | None = None

    def key(self) -> dict:
        return {"model_id": self.model_id, "weights": self.weights, "format": self.format}


@dataclass(frozen=True)
class Item:
    """One input: its absolute path, the name of its output, and its size and mtime."""
    path: str
    output: str
    size: int
    mtime_ns: int


def expand(inputs) -> list[str]:
    """Absolute paths of every input, in order, each once.

    A directory gives its audio files (AUDIO_EXTENSIONS), recursively and sorted, hidden
    ones skipped; a pattern with * ? [ gives what the shell would (** included); a file
    ending in .txt, .lst or .list holds one path per line (blank lines and # comments
    skipped, relative paths from the list's folder). A path that does not exist, a
    pattern that matches nothing and a directory without audio are errors.
    """
    paths = []
    for arg in map(str, inputs):
        paths += _expand_one(arg, Path.cwd())
    paths = list(dict.fromkeys(paths))
    if not paths:
        raise VoxnpError("no inputs (give audio files, directories, patterns or a list file)")
    return paths


def _expand_one(arg: str, base: Path, listed_in: Path | None = None) -> list[str]:
    where = f" (listed in {listed_in})" if listed_in else ""
    p = Path(os.path.expanduser(arg))
    p = p if p.is_absolute() else base / p
    if p.is_dir():
        found = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS
                       and f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if not found:
            raise VoxnpError(f"{arg}: no audio files in this directory{where}")
        return found
    if p.is_file():
        if p.suffix.lower() in LIST_EXTENSIONS and listed_in is None:
            lines = [s.strip() for s in p.read_text(encoding="utf-8", errors="replace").splitlines()]
            return [path for s in lines if s and not s.startswith("#")
                    for path in _expand_one(s, p.parent, listed_in=p)]
        return [os.path.abspath(p)]
    if any(c in arg for c in GLOB_CHARS):
        matches = sorted(glob.glob(str(p), recursive=True))
        if not matches:
            raise VoxnpError(f"{arg}: no files match{where}")
        return [path for m in matches for path in _expand_one(m, base, listed_in)]
    raise VoxnpError(f"{arg}: no such file or directory{where}")


def output_names(paths: list[str], fmt: str, known: dict[str, str]) -> dict[str, str]:
    """The output file name of each input: NAME.FORMAT after the input's name.

    Inputs that would share a name (talk.wav in two folders) are each given
    NAME-<8 hex digits of a hash of the path>.FORMAT instead, and a name the manifest
    already gave an input is kept, so names never change between runs of a job.
    """
    names = {p: known[p] for p in paths if p in known}
    plain = {p: output_path(p, None, fmt).name for p in paths if p not in names}
    taken = Counter(plain.values()) + Counter(names.values())
    for p, name in plain.items():
        if taken[name] > 1:
            tag = hashlib.sha256(p.encode()).hexdigest()[:8]
            name = f"{Path(p).stem}-{tag}.{fmt}"
        names[p] = name
    return names


def make_items(paths: list[str], names: dict[str, str]) -> list[Item]:
    items = []
    for p in paths:
        st = os.stat(p)
        items.append(Item(path=p, output=names[p], size=st.st_size, mtime_ns=st.st_mtime_ns))
    return items


# ---------------------------------------------------------------------------
# the manifest


def read_manifest(path: Path) -> dict[str, dict]:
    """path -> its latest line; a line cut short by a crash is ignored."""
    entries: dict[str, dict] = {}
    if not path.exists():
        return entries
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            entries[entry["path"]] = entry
    return entries


def check_manifest(path: Path, entries: dict[str, dict], job: Job) -> None:
    """Refuse a manifest written with another model, weight format or output format."""
    want = job.key()
    for entry in entries.values():
        other = {k: entry.get(k) for k in JOB_KEYS}
        if other != want:
            diff = ", ".join(f"{k} {other[k]} (now {want[k]})" for k in JOB_KEYS if other[k] != want[k])
            raise VoxnpError(f"{path} was written with another model or options: {diff}; "
                             f"pass --force to start over there, or use a new --output-dir")


def is_complete(entry: dict | None, item: Item, out: Path) -> bool:
    """Done, same input, and its output still there with the recorded hash."""
    if not entry or entry.get("status") != "done" or entry.get("output") != item.output:
        return False
    if (entry.get("input_size"), entry.get("input_mtime_ns")) != (item.size, item.mtime_ns):
        return False
    try:
        data = (out / item.output).read_bytes()
    except OSError:
        return False
    return hashlib.sha256(data).hexdigest() == entry.get("output_sha256")


def write_manifest(path: Path, entries: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))


# ---------------------------------------------------------------------------
# the work of one worker


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    """The model, opened once, and the transcription of lists of inputs into their outputs.

    Used as it is by the embedded runner and as a Ray actor by batch_ray.py. A record
    (one per input) is {"status", "error", "audio_s", "processing_s", "worker",
    "output_sha256"}; an input that fails never stops the others.
    """

    def __init__(self, job: Job):
        from .model import load

        self.job = job
        self.model = load(job.model_path, backend=job.backend, threads=job.threads,
                          weights=job.weights, progress=False)
        self.name = worker_name()

    def pid(self) -> int:
        return os.getpid()

    def run(self, items: list[Item]) -> list[tuple[Item, dict]]:
        """(item, record) pairs: what a Ray actor returns for a list of inputs."""
        return list(zip(items, self.records(items)))

    def records(self, items: list[Item]):
        """A record per item, in order, `job.batch` files decoded together."""
        from .stream import transcribe

        done = 0
        try:
            for item, result in zip(items, self.model.transcribe_many([i.path for i in items],
                                                                      batch=self.job.batch)):
                yield self.finish(item, result)
                done += 1
        except Exception:   # a fault while decoding together: the rest one by one, so it is theirs
            for item in items[done:]:
                try:
                    result = transcribe(self.model, item.path)
                except Exception as e:
                    result = e
                yield self.finish(item, result)

    def finish(self, item: Item, result) -> dict:
        """Write one transcript's output; its record."""
        record = {"status": "failed", "error": None, "audio_s": None, "processing_s": 0.0,
                  "worker": self.name, "output_sha256": None}
        if isinstance(result, Exception):
            error = str(result) if isinstance(result, VoxnpError) else f"{type(result).__name__}: {result}"
            return {**record, "error": error.splitlines()[0] if error else type(result).__name__}
        t = result.timings
        document = render(self.job.format, result.text, result.tokens, result.audio_seconds,
                          model=self.job.model)
        record.update(audio_s=round(result.audio_seconds, 3),
                      processing_s=round(t.encoder_s + t.prefill_s + t.decoder_s, 3))
        try:
            write_atomic(Path(self.job.output_dir) / item.output, document)
        except VoxnpError as e:
            return {**record, "error": str(e)}
        return {**record, "status": "done",
                "output_sha256": hashlib.sha256(document.encode("utf-8")).hexdigest()}


class EmbeddedRunner:
    """One Worker in this process: the files of the job decoded `batch` at a time."""

    def run(self, job: Job, items: list[Item], on_record) -> None:
        for item, record in zip(items, Worker(job).records(items)):
            on_record(item, record, 1)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------
# progress and the summary


class BatchProgress(Progress):
    """[####......]  37/120 files  1.24 h audio  18.3x real time  ETA 0:42  2 failed

    Progress counted in input bytes (the ETA assumes bytes ~ audio); speed is the audio
    done per second of wall time, over all workers.
    """

    def __init__(self, files: int, total_bytes: int, enabled: bool):
        super().__init__(max(total_bytes, 1), enabled)
        self.files, self.done_files, self.failed, self.audio_s, self.done_bytes = files, 0, 0, 0.0, 0

    def add(self, item: Item, record: dict) -> None:
        self.done_files += 1
        self.failed += record["status"] == "failed"
        self.audio_s += record["audio_s"] or 0.0
        self.done_bytes += item.size
        self.update(self.done_bytes)

    def line(self, done: float) -> str:
        elapsed = self.clock() - self.t0
        filled = int(BAR_WIDTH * self.done_files / max(self.files, 1))
        parts = ["[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]",
                 f"{self.done_files}/{self.files} files", f"{self.audio_s / 3600:.2f} h audio"]
        if elapsed > 0 and self.audio_s > 0:
            parts.append(f"{self.audio_s / elapsed:.1f}x real time")
        if 0 < done < self.total:
            parts.append(f"ETA {_clock(elapsed * (self.total - done) / done)}")
        if self.failed:
            parts.append(f"{self.failed} failed")
        return "  ".join(parts)


@dataclass
class Summary:
    inputs: int = 0
    done: int = 0               # done in this run
    failed: int = 0             # failed in this run
    skipped: int = 0            # complete from an earlier run
    failed_before: int = 0      # failed in an earlier run, not retried (no --retry-failed)
    audio_s: float = 0.0        # transcribed in this run
    wall_s: float = 0.0
    interrupted: bool = False
    manifest: str = ""
    failures: list = field(default_factory=list)   # (path, error) of this run

    def line(self) -> str:
        speed = f", {self.audio_s / self.wall_s:.1f}x real time" if self.wall_s > 0 and self.audio_s else ""
        return (f"{self.inputs} inputs: {self.done} done, {self.failed} failed, {self.skipped} "
                f"already done, {self.failed_before} failed before | {self.audio_s / 3600:.3f} h "
                f"of audio in {self.wall_s:.1f} s{speed} | {self.manifest}")


# ---------------------------------------------------------------------------
# the job


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_output_dir(output_dir) -> Path:
    """OUT as an absolute path, or a one-line error when it cannot be an output directory."""
    out = Path(os.path.abspath(os.path.expanduser(str(output_dir))))
    if out.exists() and not out.is_dir():
        raise VoxnpError(f"{output_dir}: not a directory (--output-dir)")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise VoxnpError(f"{output_dir}: not writable (--output-dir)")
    return out


def make_job(output_dir: Path, format, model, weights, batch, backend, threads) -> Job:
    from .model import default_model_dir, open_bf16
    from .quant import check_format
    from .quant_file import model_identity
    from .weights import WEIGHTS_FILE

    if format not in FORMATS:
        raise VoxnpError(f"unknown --format '{format}' (choose from {', '.join(FORMATS)})")
    check_format(weights)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise VoxnpError(f"--batch must be a whole number of at least 1, got {batch!r}")
    path = Path(str(model)) if model is not None else default_model_dir()
    open_bf16(path)                                   # a one-line error for a bad model directory
    return Job(output_dir=str(output_dir), format=format, model=str(path),
               model_path=os.path.abspath(path), model_id=model_identity(path / WEIGHTS_FILE),
               weights=weights, batch=batch, backend=backend, threads=threads)


def remove_temporaries(out: Path, names: set[str]) -> None:
    """Temporary files of write_atomic (.NAME.xxxx.tmp) left by a killed worker."""
    for f in out.iterdir():
        if f.name.startswith(".") and f.name.endswith(".tmp") and f.name[1:-4].rpartition(".")[0] in names:
            f.unlink(missing_ok=True)


def run_batch(inputs, output_dir, format="txt", model=None, weights="bf16", ray=None, workers=None,
              retry_failed=False, force=False, batch=4, backend="auto", threads=None,
              progress=None) -> Summary:
    """Transcribe every input into OUTPUT_DIR, with its manifest (see the module docstring).

    ray: None runs here; True starts a local Ray cluster (or joins $RAY_ADDRESS);
    an address ("auto", "HOST:PORT", "ray://HOST:PORT") joins that cluster.
    workers: Ray actors (default: one per node). progress: show the bar (default: when
    stderr is a terminal). Bad input raises VoxnpError before anything is written.
    """
    t0 = time.monotonic()
    paths = expand(inputs)
    out = check_output_dir(output_dir)
    job = make_job(out, format, model, weights, batch, backend, threads)
    manifest = out / MANIFEST
    old = {} if force else read_manifest(manifest)
    check_manifest(manifest, old, job)
    names = output_names(paths, format, {p: e["output"] for p, e in old.items() if "output" in e})
    items = make_items(paths, names)

    summary = Summary(inputs=len(items), manifest=str(manifest))
    todo = []
    for item in items:
        entry = old.get(item.path)
        if is_complete(entry, item, out):
            summary.skipped += 1
        elif (entry and entry.get("status") == "failed" and not retry_failed
              and (entry.get("input_size"), entry.get("input_mtime_ns")) == (item.size, item.mtime_ns)):
            summary.failed_before += 1
        else:
            todo.append(item)

    runner = None
    if todo and ray is not None:
        from .batch_ray import RayRunner

        runner = RayRunner(ray, workers)             # connects first: a bad address writes nothing
    try:
        try:
            out.mkdir(parents=True, exist_ok=True)
            if force:
                manifest.unlink(missing_ok=True)
        except OSError as e:
            raise VoxnpError(f"{output_dir}: cannot create output directory ({e.strerror})") from None
        entries = dict(old)
        from . import __version__

        bar = BatchProgress(len(todo), sum(i.size for i in todo),
                            sys.stderr.isatty() if progress is None else progress)

        def on_record(item: Item, record: dict, attempts: int) -> None:
            entry = {"path": item.path, "output": item.output, **record, "attempts": attempts,
                     "version": __version__, "model": job.model, **job.key(),
                     "input_size": item.size, "input_mtime_ns": item.mtime_ns}
            entries[item.path] = entry
            log_file.write(json.dumps(entry, ensure_ascii=False) + "\n")
            log_file.flush()
            os.fsync(log_file.fileno())
            if record["status"] == "done":
                summary.done += 1
                summary.audio_s += record["audio_s"]
            else:
                summary.failed += 1
                summary.failures.append((item.path, record["error"]))
                bar.close()
                error = record["error"]
                where = "" if error.startswith(item.path) else f"{item.path}: "
                log(f"voxnp: failed: {where}{error}")
            bar.add(item, record)

        with open(manifest, "a", encoding="utf-8") as log_file, bar:
            try:
                if todo:
                    (runner or EmbeddedRunner()).run(job, todo, on_record)
            except KeyboardInterrupt:
                summary.interrupted = True
        order = [entries[i.path] for i in items if i.path in entries]
        current = {i.path for i in items}
        write_manifest(manifest, order + [e for p, e in entries.items() if p not in current])
        remove_temporaries(out, {i.output for i in items} | {MANIFEST})
    finally:
        if runner is not None:
            runner.close()
    summary.wall_s = time.monotonic() - t0
    if summary.interrupted:
        log(f"voxnp: interrupted after {summary.done + summary.failed} of {len(todo)} inputs; "
            f"run the same command again to resume")
        raise KeyboardInterrupt
    return summary


def batch_command(*inputs, output_dir, format, model, weights, ray, workers, retry_failed, force,
                  batch, threads, backend):
    """`voxnp batch` (options: cli.COMMANDS["batch"])."""
    if output_dir is None:
        raise VoxnpError("voxnp batch needs --output-dir DIR (see voxnp batch --help)")
    summary = run_batch(inputs, output_dir, format=format, model=model, weights=weights, ray=ray,
                        workers=workers, retry_failed=retry_failed, force=force, batch=batch,
                        backend=backend, threads=threads)
    log(summary.line())
    failed = summary.failed + summary.failed_before
    if failed:
        raise VoxnpError(f"{failed} of {summary.inputs} inputs failed (their errors are in "
                         f"{summary.manifest}; --retry-failed tries them again)")
