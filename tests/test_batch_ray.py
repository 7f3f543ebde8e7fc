"""`voxnp batch --ray` (issue #14): a local Ray cluster of 2 CPUs, 2 worker actors, the
corpus of test_batch.py (12 inputs, repeated names, one junk file) on the tiny checkpoint.

Outputs equal `voxnp FILE`'s and the embedded job's manifest; a worker killed mid-job
still leaves every input done exactly once; a second run recomputes nothing; the
command line starts its own cluster or refuses an address where none answers.
CI installs the `ray` extra: these tests run there (no skip when Ray is missing).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

import pytest
import ray

from test_batch import FAST, check_job, corpus, first_run, manifest  # noqa: F401 (fixtures)
from test_cli import assert_error, voxnp
from voxnp import batch as vb
from voxnp.batch_ray import RayRunner

SAME = ("path", "output", "status", "error", "audio_s", "model", "model_id", "weights", "format",
        "version", "input_size", "input_mtime_ns", "output_sha256")   # all but who, how long, tries


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module (a few seconds to start)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    yield
    ray.shutdown()


def run_on_ray(inputs, out, tiny_dir, **options):
    return vb.run_batch(inputs, out, format="json", model=str(tiny_dir), backend="numpy", ray=True,
                        workers=2, progress=False, **options)


def test_two_workers_equal_voxnp_file_and_embedded(cluster, corpus, first_run, tiny_dir, tmp_path):
    root, inputs, refs = corpus
    out = tmp_path / "out"
    summary = run_on_ray(inputs, out, tiny_dir, batch=2)
    assert (summary.done, summary.failed) == (11, 1)
    lines = check_job(out, root, refs)
    embedded = manifest(first_run[0])
    assert [{k: e[k] for k in SAME} for e in lines] == [{k: e[k] for k in SAME} for e in embedded]
    assert len({e["worker"] for e in lines}) == 2              # both actors took work
    summary = run_on_ray(inputs, out, tiny_dir)                # again: nothing to do, no actor
    assert (summary.done, summary.failed, summary.skipped, summary.failed_before) == (0, 0, 11, 1)
    assert manifest(out) == lines


def test_killed_worker(cluster, corpus, tiny_dir, tmp_path):
    """SIGKILL one actor after its first file: its current file goes to another worker,
    every input is in the manifest once, no partial output is left."""
    root, inputs, refs = corpus
    out = tmp_path / "out"
    result = {}
    job = threading.Thread(target=lambda: result.update(summary=run_on_ray(inputs, out, tiny_dir, batch=1)))
    job.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and job.is_alive() and time.monotonic() < deadline:
        path = out / vb.MANIFEST
        lines = path.read_text().splitlines() if path.exists() else []
        done = [line for line in lines if '"status": "done"' in line]
        if done:
            killed = int(done[0].split('"worker": "')[1].split('"')[0].rpartition(":")[2])
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.01)
    job.join(timeout=120)
    assert killed is not None and not job.is_alive()
    assert (result["summary"].done, result["summary"].failed) == (11, 1)
    lines = check_job(out, root, refs)
    assert any(e["attempts"] == 2 for e in lines)              # the killed worker's file, again
    assert len({e["worker"] for e in lines}) >= 2


def test_command_starts_a_local_cluster(corpus, tiny_dir, tmp_path):
    root, _, refs = corpus
    r = voxnp("batch", root / "listed", "--ray", "--workers", "1", "--output-dir", tmp_path / "out",
              "--format", "json", "-m", tiny_dir, *FAST)
    assert r.returncode == 0, r.stderr
    assert "2 inputs: 2 done" in r.stderr
    for e in manifest(tmp_path / "out"):
        assert (tmp_path / "out" / e["output"]).read_text() == refs[e["path"]]


def test_unreachable_address(corpus, tiny_dir, tmp_path):
    root, _, _ = corpus
    for address, words in (("127.0.0.1:9", ("127.0.0.1:9", "cannot reach")),
                           ("nohost", ("nohost", "not a ray address"))):
        r = voxnp("batch", root / "listed", "--ray=" + address, "--output-dir", tmp_path / "out",
                  "-m", tiny_dir, *FAST)
        assert_error(r, *words)
        assert not (tmp_path / "out").exists()


def test_bad_workers():
    with pytest.raises(vb.VoxnpError, match="--workers"):
        RayRunner(True, workers=0)
