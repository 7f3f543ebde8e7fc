"""`voxnp batch` in this process (issue #14): outputs, manifest, resuming, faults, bad input.

The corpus: 12 inputs on the tiny checkpoint, names repeated across folders, a nested
folder, a list file and a glob, and one junk file. Every output must equal what
`voxnp FILE --format json --output-dir ...` writes for that file. The Ray runner is
tested on the same corpus in test_batch_ray.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from conftest import shared_audio
from test_cli import assert_error, voxnp
from voxnp import batch as vb
from voxnp import cli
from voxnp.errors import VoxnpError

FAST = ("--backend", "numpy")   # as in test_cli: no Numba compile in a fresh process
RATE = 16000
# (folder, name, seconds of jfk.wav from 1 s on); one/two/three repeat across folders
CLIPS = [("a", "one.wav", 1.0), ("a", "two.wav", 1.5), ("a", "three.flac", 2.0),
         ("b", "one.wav", 2.5), ("b", "two.wav", 1.2), ("c", "one.flac", 1.8),
         ("c", "four.wav", 1.1), ("c/deep", "five.wav", 2.2), ("c/deep", "three.wav", 1.4),
         ("listed", "six.wav", 1.3), ("listed", "seven.wav", 0.9)]
JUNK = ("b", "junk.wav")


def make_corpus(root: Path) -> list[str]:
    """Write the corpus under root; the command-line inputs that name all 12 files."""
    x = sf.read(shared_audio("jfk.wav"), dtype="float32")[0][RATE:]
    for i, (folder, name, seconds) in enumerate(CLIPS):
        (root / folder).mkdir(parents=True, exist_ok=True)
        start = 1600 * i
        sf.write(root / folder / name, x[start:start + int(seconds * RATE)], RATE)
    (root / JUNK[0] / JUNK[1]).write_bytes(b"RIFF not really a wave file" * 40)
    (root / "a" / ".hidden.wav").write_bytes(b"skipped: hidden")
    (root / "list.txt").write_text("# the listed folder\nlisted/six.wav\n\nlisted/seven.wav\n")
    return [str(root / "a"), str(root / "b" / "*.wav"), str(root / "c"), str(root / "list.txt")]


def all_inputs(root: Path) -> list[str]:
    return [str(root / f / n) for f, n, _ in CLIPS] + [str(root / JUNK[0] / JUNK[1])]


def reference_outputs(root: Path, out: Path, tiny_dir) -> dict[str, str]:
    """input path -> what `voxnp FILE --format json` writes for it (files of one run have
    different names)."""
    groups: list[dict[str, Path]] = []
    for folder, name, _ in CLIPS:
        f = root / folder / name
        group = next((g for g in groups if f.stem not in g), None)
        if group is None:
            groups.append(group := {})
        group[f.stem] = f
    refs = {}
    for i, group in enumerate(groups):
        r = voxnp(*group.values(), "--format", "json", "--output-dir", out / str(i), "--model", tiny_dir,
                  "--silent", *FAST)
        assert r.returncode == 0, r.stderr
        refs.update({str(f): (out / str(i) / f"{stem}.json").read_text() for stem, f in group.items()})
    return refs


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / vb.MANIFEST).read_text().splitlines()]


def check_job(out: Path, root: Path, refs: dict[str, str]) -> list[dict]:
    """Every input once in the manifest, in order; outputs equal the references; junk failed."""
    lines = manifest(out)
    assert sorted(e["path"] for e in lines) == sorted(all_inputs(root))
    for e in lines:
        assert set(e) >= {"path", "output", "status", "error", "audio_s", "processing_s", "worker",
                          "version", "model", "model_id", "weights", "format"}
        if e["path"].endswith(JUNK[1]):
            assert e["status"] == "failed" and "junk.wav" in e["error"]
            assert not (out / e["output"]).exists()
        else:
            assert e["status"] == "done" and e["error"] is None and e["audio_s"] > 0, e
            assert (out / e["output"]).read_text() == refs[e["path"]], e["path"]
    outputs = [e["output"] for e in lines]
    assert len(set(outputs)) == len(outputs)
    done = [e["output"] for e in lines if e["status"] == "done"]
    assert sorted(p.name for p in out.iterdir()) == sorted([vb.MANIFEST] + done)   # no temporaries
    return lines


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("corpus")
    inputs = make_corpus(root)
    refs = reference_outputs(root, tmp_path_factory.mktemp("refs"), tiny_dir)
    return root, inputs, refs


def run(inputs, out, tiny_dir, **options):
    return vb.run_batch(inputs, out, format=options.pop("format", "json"), model=str(tiny_dir),
                        backend="numpy", progress=False, **options)


# ---------------------------------------------------------------------------
# the embedded job


@pytest.fixture(scope="module")
def first_run(corpus, tiny_dir, tmp_path_factory):
    root, inputs, refs = corpus
    out = tmp_path_factory.mktemp("job") / "out"
    summary = run(inputs, out, tiny_dir)
    return out, summary


def test_outputs_equal_voxnp_file(corpus, first_run):
    root, _, refs = corpus
    out, summary = first_run
    assert (summary.inputs, summary.done, summary.failed, summary.skipped) == (12, 11, 1, 0)
    lines = check_job(out, root, refs)
    assert [e["path"] for e in lines] == vb.expand(corpus[1])   # input order
    names = {e["path"]: e["output"] for e in lines}
    assert names[str(root / "listed" / "six.wav")] == "six.json"
    assert names[str(root / "c" / "four.wav")] == "four.json"
    ones = [names[str(root / d / n)] for d, n in (("a", "one.wav"), ("b", "one.wav"), ("c", "one.flac"))]
    assert all(n.startswith("one-") and n.endswith(".json") for n in ones) and len(set(ones)) == 3


def test_second_run_recomputes_nothing(corpus, first_run, tiny_dir, monkeypatch):
    out, _ = first_run
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    monkeypatch.setattr(vb.Worker, "__init__", lambda *a: pytest.fail("a model was loaded"))
    summary = run(corpus[1], out, tiny_dir)
    assert (summary.done, summary.failed, summary.skipped, summary.failed_before) == (0, 0, 11, 1)
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    assert {k: v for k, v in after.items() if k != vb.MANIFEST} == \
           {k: v for k, v in before.items() if k != vb.MANIFEST}
    assert after[vb.MANIFEST][1] == before[vb.MANIFEST][1]


def test_resume_redoes_missing_or_changed_outputs(corpus, first_run, tiny_dir, tmp_path):
    root, inputs, refs = corpus
    out = tmp_path / "out"
    run(inputs, out, tiny_dir)
    lines = manifest(out)
    (out / lines[0]["output"]).unlink()                      # gone
    (out / lines[1]["output"]).write_text("edited by hand")  # not what was recorded
    (out / "manifest.jsonl").write_text((out / "manifest.jsonl").read_text() + '{"path": "/cut sh')
    summary = run(inputs, out, tiny_dir)
    assert (summary.done, summary.skipped, summary.failed_before) == (2, 9, 1)
    check_job(out, root, refs)
    summary = run(inputs, out, tiny_dir, retry_failed=True)
    assert (summary.done, summary.failed, summary.skipped) == (0, 1, 11)
    assert [e["attempts"] for e in manifest(out)] == [1] * 12
    check_job(out, root, refs)


def test_interrupted_job_resumes(corpus, tiny_dir, tmp_path, monkeypatch):
    """Ctrl-C after 4 inputs: 4 manifest lines, outputs whole; the next run does the rest."""
    root, inputs, refs = corpus
    out = tmp_path / "out"
    finish = vb.Worker.finish
    calls = []

    def finish_then_interrupt(self, item, result):
        calls.append(item.path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return finish(self, item, result)

    monkeypatch.setattr(vb.Worker, "finish", finish_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(inputs, out, tiny_dir)
    assert [e["path"] for e in manifest(out)] == calls[:4]
    written = [e["output"] for e in manifest(out) if e["status"] == "done"]
    assert sorted(p.name for p in out.iterdir()) == sorted([vb.MANIFEST] + written)
    monkeypatch.setattr(vb.Worker, "finish", finish)
    summary = run(inputs, out, tiny_dir)
    assert (summary.done, summary.failed, summary.skipped, summary.failed_before) == (8, 0, 3, 1)
    check_job(out, root, refs)


def test_a_fault_while_decoding_together_is_only_its_files(corpus, tiny_dir, tmp_path, monkeypatch):
    """A crash inside the batched decoder: the files are redone one by one, each on its own."""
    root, _, refs = corpus
    inputs = [str(root / "a" / "two.wav"), str(root / "c" / "four.wav")]

    def broken(self, *a, **k):
        raise RuntimeError("decoder exploded")
        yield

    from voxnp.model import Model
    monkeypatch.setattr(Model, "transcribe_many", broken)
    summary = run(inputs, tmp_path / "out", tiny_dir)
    assert (summary.done, summary.failed) == (2, 0)
    for e in manifest(tmp_path / "out"):
        assert (tmp_path / "out" / e["output"]).read_text() == refs[e["path"]]


def test_other_formats_and_names(corpus, tiny_dir, tmp_path):
    root, _, _ = corpus
    summary = run([str(root / "c")], tmp_path / "out", tiny_dir, format="srt")
    assert summary.done == 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["five.srt", "four.srt", "manifest.jsonl", "one.srt", "three.srt"])


# ---------------------------------------------------------------------------
# pieces


def test_expand(corpus, tmp_path):
    root, inputs, _ = corpus
    got = vb.expand(inputs + [str(root / "a" / "one.wav")])          # a repeat is taken once
    assert got == [str(root / n) for n in (
        "a/one.wav", "a/three.flac", "a/two.wav", "b/junk.wav", "b/one.wav", "b/two.wav",
        "c/deep/five.wav", "c/deep/three.wav", "c/four.wav", "c/one.flac", "listed/six.wav",
        "listed/seven.wav")]
    assert vb.expand([str(root / "**" / "f*.wav")]) == [str(root / "c/deep/five.wav"), str(root / "c/four.wav")]
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.lst").write_text(f"{root}/a/one.wav\nmissing.wav\n")
    for args, words in ((["nope.wav"], "nope.wav: no such file"), ([str(tmp_path / "empty")], "no audio"),
                        ([str(tmp_path / "x*.wav")], "no files match"),
                        ([str(tmp_path / "bad.lst")], "missing.wav: no such file or directory (listed in")):
        with pytest.raises(VoxnpError, match=words.replace("(", r"\(")):
            vb.expand(args)


def test_output_names_are_stable():
    paths = ["/x/a/talk.wav", "/x/b/talk.wav", "/x/c/solo.wav"]
    names = vb.output_names(paths, "txt", {})
    assert names["/x/c/solo.wav"] == "solo.txt"
    assert names["/x/a/talk.wav"] != names["/x/b/talk.wav"] and names["/x/a/talk.wav"].startswith("talk-")
    assert vb.output_names(list(reversed(paths)), "txt", {}) == names
    # a later run adds another talk.wav and another solo.wav: the names given before stay
    more = vb.output_names(paths + ["/x/d/talk.wav", "/x/d/solo.wav"], "txt", names)
    assert {p: more[p] for p in paths} == names
    assert more["/x/d/solo.wav"].startswith("solo-") and len(set(more.values())) == 5


def test_ray_option_parsing():
    for words, value, args in ((["--ray"], True, ["in/"]), (["--ray", "auto"], "auto", ["in/"]),
                               (["--ray", "10.0.0.5:6379"], "10.0.0.5:6379", ["in/"]),
                               (["--ray", "ray://head:10001"], "ray://head:10001", ["in/"]),
                               (["--ray=head:6379"], "head:6379", ["in/"]), ([], None, ["in/"])):
        for before in (True, False):
            line = ["batch"] + (words + ["in/"] if before else ["in/"] + words) + ["--output-dir", "o"]
            request = cli.parse(line)
            assert (request.values["ray"], request.arguments) == (value, args), line
    assert cli.parse(["batch", "--ray", "in/", "b.wav", "--output-dir", "o"]).arguments == ["in/", "b.wav"]


# ---------------------------------------------------------------------------
# the command: a whole job, and bad input (one line, non-zero, nothing written)


def test_command(corpus, tiny_dir, tmp_path):
    root, inputs, refs = corpus
    r = voxnp("batch", *inputs, "--output-dir", tmp_path / "out", "--format", "json", "-m", tiny_dir, *FAST)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "12 inputs: 11 done, 1 failed" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("voxnp: error: 1 of 12 inputs failed")
    check_job(tmp_path / "out", root, refs)
    r = voxnp("batch", root / "listed", "--output-dir", tmp_path / "ok", "-m", tiny_dir, *FAST)
    assert r.returncode == 0 and "2 inputs: 2 done" in r.stderr, r.stderr


def test_bad_input(corpus, first_run, tiny_dir, tmp_path):
    root, inputs, _ = corpus
    a_file = tmp_path / "file"
    a_file.write_text("x")
    out = tmp_path / "new"
    job = ("-m", tiny_dir, *FAST)
    for args, words in (((root / "nope.wav", "--output-dir", out), ("nope.wav", "no such file")),
                        ((str(root / "z*.wav"), "--output-dir", out), ("no files match",)),
                        ((root / "a",), ("--output-dir",)),
                        ((root / "a", "--output-dir", a_file), ("not a directory",)),
                        ((root / "a", "--output-dir", "/proc/voxnp-out"), ("/proc/voxnp-out",)),
                        ((root / "a", "--output-dir", out, "-m", tmp_path / "nomodel"), ("nomodel",)),
                        ((root / "a", "--output-dir", out, "--workers", "0"), ("--workers",))):
        assert_error(voxnp("batch", *job, *args), *words)
        assert not out.exists()
    # a manifest written with another format: refused, nothing touched; --force starts over
    done, _ = first_run
    before = {p.name: p.read_bytes() for p in done.iterdir()}
    assert_error(voxnp("batch", *inputs, "--output-dir", done, "--format", "txt", *job),
                 "manifest.jsonl", "format json (now txt)", "--force", "--output-dir")
    assert {p.name: p.read_bytes() for p in done.iterdir()} == before
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, data in before.items():
        (copy / name).write_bytes(data)
    r = voxnp("batch", root / "listed", "--output-dir", copy, "--format", "txt", "--force", *job)
    assert r.returncode == 0, r.stderr
    assert [e["format"] for e in manifest(copy)] == ["txt", "txt"]
