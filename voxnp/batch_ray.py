"""The Ray runner of `voxnp batch`: a pool of Worker actors, each holding the model once.

Each actor is a `voxnp.batch.Worker`: it opens the model (memory-mapped, so actors on
one node share the page cache), takes `batch` inputs at a time from a
`ray.util.ActorPool`, decodes them together, writes their outputs itself (OUT must be a
directory every node sees) and returns their records; the driver keeps the manifest.

An actor that dies (killed, out of memory, its node lost) takes the inputs it was
working on with it. They are handed out again one by one, so an input that kills
workers takes only itself down, at most MAX_ATTEMPTS times each (then it is recorded
as failed), and a new actor replaces the dead one (at most MAX_ATTEMPTS per worker
asked for). Outputs are written atomically, so a death never leaves half a file, and
only the driver writes manifest lines, one per input.

The only module that imports ray.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
from collections import Counter

from .batch import Item, Job, Worker
from .errors import VoxnpError

MAX_ATTEMPTS = 3             # times an input is handed to a worker before it is recorded as failed
CONNECT_TIMEOUT_S = 5.0      # to reach a cluster's address before asking Ray to join it
QUIET = dict(log_to_driver=False, logging_level=logging.ERROR)


def import_ray():
    try:
        import ray
        from ray.util import ActorPool  # noqa: F401
    except ImportError:
        raise VoxnpError('--ray needs Ray: pip install "voxnp[ray]"') from None
    return ray


def check_reachable(address: str) -> None:
    """HOST:PORT (or ray://HOST:PORT) must accept a connection: Ray itself would retry
    for minutes before giving up on an address where nothing listens."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise VoxnpError(f"--ray {address}: not a Ray address (HOST:PORT, ray://HOST:PORT or auto)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise VoxnpError(f"--ray {address}: cannot reach a Ray cluster there "
                         f"({e.strerror or 'timed out'})") from None


class RayRunner:
    """Joins (or starts) a Ray cluster on creation; `run` transcribes a job's items there."""

    def __init__(self, address=True, workers: int | None = None):
        self.ray = import_ray()
        self.started = False          # this runner started the cluster (and stops it)
        self.actors: list = []
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise VoxnpError(f"--workers must be a whole number of at least 1, got {workers!r}")
        self.workers = workers
        if not self.ray.is_initialized():
            self.connect(address)

    def connect(self, address) -> None:
        """True/None: $RAY_ADDRESS, else a new local cluster (even where one runs);
        "auto": a running cluster found by Ray; otherwise HOST:PORT or ray://HOST:PORT."""
        ray = self.ray
        if address in (True, None, ""):
            address = os.environ.get("RAY_ADDRESS") or None
        try:
            if address is None:
                ray.init(address="local", include_dashboard=False, **QUIET)
                self.started = True
                return
            if address not in ("auto", "local"):
                check_reachable(str(address))
            ray.init(address=str(address), **QUIET)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise VoxnpError(f"--ray {address}: {str(e).splitlines()[0]}") from None

    def plan(self, job: Job) -> tuple[int, Job]:
        """How many actors, and the job as each runs it (threads = the CPUs it is given):
        one actor per node unless --workers; the cluster's CPUs shared between them."""
        ray = self.ray
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        n = self.workers or max(1, len(nodes))
        node_cpus = max([int(n_.get("Resources", {}).get("CPU", 1)) for n_ in nodes] or [1])
        cpus = max(1, min(int(ray.cluster_resources().get("CPU", 1)) // n, node_cpus))
        return n, dataclasses.replace(job, threads=job.threads or cpus)

    def spawn(self, job: Job):
        actor = self.remote_worker.remote(job)
        self.actors.append(actor)
        return actor

    def run(self, job: Job, items: list[Item], on_record) -> None:
        from ray.exceptions import ActorDiedError, RayActorError
        from ray.util import ActorPool

        n, job = self.plan(job)
        self.remote_worker = self.ray.remote(Worker).options(
            num_cpus=job.threads, max_restarts=0, max_task_retries=0)
        pool = ActorPool([self.spawn(job) for _ in range(n)])
        running: dict[str, list[Item]] = {}   # actor id -> the inputs it is working on
        attempts = Counter()                   # input path -> times handed to a worker
        alive, replacements, waiting = n, 0, 0  # live actors, actors added, chunks not returned

        def call(actor, chunk):
            running[actor._actor_id.hex()] = chunk
            return actor.run.remote(chunk)

        def submit(chunk):
            nonlocal waiting
            for item in chunk:
                attempts[item.path] += 1
            pool.submit(call, chunk)
            waiting += 1

        for start in range(0, len(items), job.batch):
            submit(items[start:start + job.batch])
        while waiting:
            try:
                results = pool.get_next_unordered()
                waiting -= 1
            except RayActorError as e:
                waiting -= 1
                chunk = running.pop(e.actor_id, [])
                init_failed = getattr(e, "actor_init_failed", False)
                for item in chunk:
                    if init_failed:
                        attempts[item.path] -= 1       # not the input's fault: hand it out again
                    if attempts[item.path] < MAX_ATTEMPTS:
                        submit([item])
                    else:
                        on_record(item, {"status": "failed", "audio_s": None, "processing_s": 0.0,
                                         "worker": None, "output_sha256": None,
                                         "error": f"the worker died each of the {MAX_ATTEMPTS} times "
                                                  f"it was given this input (killed, out of memory?)"},
                                  attempts[item.path])
                if isinstance(e, ActorDiedError):
                    alive -= 1
                    if not init_failed and replacements < MAX_ATTEMPTS * n:
                        pool.push(self.spawn(job))
                        alive, replacements = alive + 1, replacements + 1
                if alive == 0 and waiting:
                    raise VoxnpError(f"no Ray worker left to run the job: {str(e).splitlines()[0]}") from None
                continue
            for item, record in results:
                on_record(item, record, attempts[item.path])

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:   # already gone
                pass
        self.actors = []
        if self.started:
            self.ray.shutdown()
            self.started = False
