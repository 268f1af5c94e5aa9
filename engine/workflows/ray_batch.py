"""The batch on a Ray cluster: the same chunks, computed by workers on many machines.

``ray_runner`` makes a ChunkRunner for :func:`engine.workflows.batch.batch_steps`. Everything
that writes stays on the driver, as in the local batch: the record, the results, failures.csv,
the worklist and the exports (one writer, keyed by the record's key), so a cluster run and a
local run of the same folder give the same rows and files, and an interrupted cluster run
resumes from its record like a local one. The workers only read images and compute.

Each worker is a Ray actor that opens the bundle's engine once (an onnxruntime session cannot be
pickled, so the bundle's path and the engine's name are sent, never the model) with as many
threads as the CPUs Ray gave it, and then runs ``batch.analyse_chunk`` on chunk after chunk:
the load, prepare and analyse steps of the local batch. At most ``in_flight`` chunks wait at
each worker (backpressure: the driver never reads a million items ahead), and results are
handed on in chunk order, which keeps a study's images together for its report.

Faults: actors are started with ``max_restarts=0`` and ``max_task_retries=0``, and the driver
resubmits instead. When a worker (or its node) is lost, every chunk it held comes back with
ActorDiedError (or ObjectLostError, if its node took the result with it) and goes to the
surviving workers; the lost worker's results are never read after that, so no image is written
twice. Ray's own restarts were not used: a restarted actor waits for free CPUs, which the other
workers hold for the whole batch, so its chunks would wait forever. A chunk that kills
MAX_ATTEMPTS workers in turn (a file that crashes a decoder) stops the batch with its files named.

Security: a local instance (``address`` None) listens on the loopback interface only, and
Ray's token authentication is left on (it is Ray's default for a new instance); joining a
cluster requires it too unless the site's own RAY_AUTH_MODE says otherwise. ``ray`` is imported
here only, lazily: the packaged app does not ship it.
"""

from __future__ import annotations

import heapq
import logging
import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

from engine.analysis import LoadedModel, load_model
from engine.backends.base import THREADS_VARIABLE, thread_count
from engine.errors import LanternError
from engine.workflows.batch import BatchOptions, ChunkRunner, analyse_chunk

LOOPBACK = "127.0.0.1"
IN_FLIGHT = 2  # chunks queued per worker: one computing, one ready to start (no idle gap between chunks)
START_TIMEOUT_S = 120.0  # with no worker ready by then (none placed, or none could open the model), stop
MAX_ATTEMPTS = 3
# Ray binds a new local instance to the machine's address unless told it is no cluster: this
# variable (read when ray is imported) makes it use the loopback interface, as Ray does on macOS.
_SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

log = logging.getLogger(__name__)


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise LanternError("Ray is not installed: install Lantern with its cluster extra "
                           "(pip install 'lantern[cluster]') on this machine and every node") from exc
    return ray


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


@contextmanager
def ray_connection(address: str | None = None, cpus: int | None = None) -> Iterator[object]:
    """Ray for one batch: a new local instance on loopback (``address`` None; ``cpus`` default
    thread_count()) or the running cluster at ``address`` ("auto", "host:port"). A connection
    the caller already made is used as it is and left open."""
    if "ray" not in sys.modules and (address is None or _is_loopback(address)):
        os.environ.setdefault(_SINGLE_MACHINE, "0")
    if address is not None:  # Ray turns token auth on by itself only for a new or auto-found instance
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    settings = dict(namespace="lantern", log_to_driver=False, logging_level=logging.WARNING)
    try:
        if address is None:
            ray.init(address="local", num_cpus=cpus or thread_count(), include_dashboard=False,
                     _node_ip_address=LOOPBACK, **settings)
        else:
            ray.init(address=address, **settings)
    except Exception as exc:  # ConnectionError, an authentication error, a bad address
        where = "start a local Ray instance" if address is None else f"join the Ray cluster at {address}"
        raise LanternError(f"could not {where} ({_last_line(exc)}); see docs/cluster.md") from exc
    try:
        if address is None and ray.util.get_node_ip_address() != LOOPBACK:
            raise LanternError("the local Ray instance would listen on this machine's network address, not "
                               "only on loopback; start a cluster with 'ray start' and pass its address instead")
        yield ray
    finally:
        ray.shutdown()  # a local instance stops; a cluster only loses this driver (and its workers)


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


class ChunkWorker:
    """One Ray actor: the bundle's engine, opened once, and the batch's chunk step."""

    def __init__(self, bundle: str, engine: str):
        import ray

        cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
        # thread_count() is what every engine uses: the CPUs Ray gave, unless LANTERN_THREADS says fewer.
        os.environ[THREADS_VARIABLE] = str(min(max(1, cpus), thread_count()))
        self.model = load_model(bundle, engine)

    def ready(self) -> tuple[str, int, str]:
        import ray

        return self.model.engine, thread_count(), ray.get_runtime_context().get_node_id()

    def run(self, chunk: list, options: BatchOptions, keep: bool) -> tuple[list, list, float]:
        start = time.perf_counter()
        done, failures = analyse_chunk(chunk, self.model, options, keep)
        return done, failures, time.perf_counter() - start


def _start_workers(ray, model: LoadedModel, wanted: int | None, stats: dict) -> dict:
    """Ask for the workers; returns their ready() answers -> actor. They start while chunks flow:
    the first one ready takes work, so one that cannot be placed (CPUs held by others) or cannot
    open the model (the bundle not at that path on its node) costs no wait."""
    total = int(ray.cluster_resources().get("CPU", 0))
    if total < 1:
        raise LanternError("the Ray cluster has no CPU for the batch's workers")
    count = max(1, min(wanted or total, total))  # each worker needs a whole CPU
    largest = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=1)
    cpus = max(1, min(total // count, largest))  # one worker never spans two nodes
    worker = ray.remote(ChunkWorker).options(num_cpus=cpus, max_restarts=0, max_task_retries=0)
    actors = [worker.remote(str(model.bundle.folder.resolve()), model.engine) for _ in range(count)]
    stats.update(workers=0, cpus_per_worker=cpus, asked=count, started_at=time.perf_counter())
    return {actor.ready.remote(): actor for actor in actors}


def _stream(ray, starting: dict, chunks: list, options: BatchOptions, keep: bool, in_flight: int,
            stats: dict) -> Iterator[tuple[list, list]]:
    """(done, failures) per chunk, in chunk order, with at most ``in_flight`` chunks per worker."""
    from ray.exceptions import ObjectLostError, RayActorError, RayError

    todo = list(range(len(chunks)))  # a heap: a chunk given back goes before later ones
    running: dict = {}  # result ref -> (chunk number, actor)
    load: dict = {}  # ready actor -> chunks it holds
    finished: dict[int, tuple[list, list]] = {}
    attempts, errors = [0] * len(chunks), []
    following, deadline = 0, time.monotonic() + START_TIMEOUT_S
    try:
        while following < len(chunks):
            window = 2 * in_flight * max(1, len(load))  # finished chunks held for order stay few
            for actor in list(load):
                while load[actor] < in_flight and todo and todo[0] < following + window:
                    n = heapq.heappop(todo)
                    running[actor.run.remote(chunks[n], options, keep)] = (n, actor)
                    load[actor] += 1
            waiting = [*running, *starting]
            ready = ray.wait(waiting, num_returns=1, timeout=None if running else
                             max(0.0, deadline - time.monotonic()))[0] if waiting else []
            if not ready:
                raise _no_workers(errors, bool(stats["workers"]))
            for ref in ready:
                if ref in starting:
                    actor = starting.pop(ref)
                    try:
                        node = ray.get(ref)[2]
                    except RayError as exc:
                        errors.append(exc)
                        continue
                    load[actor] = 0
                    stats["workers"] += 1
                    stats.setdefault("nodes", []).append(node)
                    stats.setdefault("start_s", time.perf_counter() - stats["started_at"])
                    continue
                n, actor = running.pop(ref)
                if actor in load:
                    load[actor] -= 1
                try:
                    done, failures, seconds = ray.get(ref)
                except (RayActorError, ObjectLostError) as exc:
                    attempts[n] += 1
                    if attempts[n] >= MAX_ATTEMPTS:
                        raise LanternError(f"a chunk of {len(chunks[n])} images was lost with {MAX_ATTEMPTS} "
                                           f"workers in turn ({_last_line(exc)})", chunks[n][0][1].path) from exc
                    if load.pop(actor, None) is not None:
                        log.warning("a Ray worker was lost (%s); its chunks go to the others", _last_line(exc))
                        _kill(ray, actor)  # unreachable, perhaps not dead: its late results must not come
                    heapq.heappush(todo, n)
                    stats["resubmitted"] = stats.get("resubmitted", 0) + 1
                    continue
                finished[n] = (done, failures)
                stats["worker_s"] = stats.get("worker_s", 0.0) + seconds
            while following in finished:
                yield finished.pop(following)
                following += 1
    finally:  # a finished or cancelled batch frees the CPUs at once, also on a cluster that stays up
        for actor in [*load, *starting.values()]:
            _kill(ray, actor)


def _no_workers(errors: list, had_some: bool) -> LanternError:
    if had_some:
        return LanternError("every Ray worker was lost; what was done is kept: run the batch again to go on")
    cause = _last_line(errors[0]) if errors else f"none started within {START_TIMEOUT_S:.0f} s"
    return LanternError(f"no Ray worker could open the model ({cause}); the bundle and the images must be at "
                        "the same path on every node")


def _kill(ray, actor) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already gone with its node: nothing to free
        pass


def ray_runner(address: str | None = None, workers: int | None = None, *, in_flight: int = IN_FLIGHT,
               stats: dict | None = None) -> ChunkRunner:
    """A ChunkRunner on Ray: a local instance (``address`` None) or a cluster; ``workers``
    default: one per CPU the cluster has. ``stats`` (optional) receives asked and workers (that
    started), their nodes, cpus_per_worker, start_s (until the first was ready), worker_s (their time in chunks) and
    resubmitted (chunks redone after a worker was lost)."""
    stats = {} if stats is None else stats

    def run(chunks: list, model: LoadedModel, options: BatchOptions, keep: bool):
        if not chunks:  # a resumed batch with nothing left needs no cluster
            return
        with ray_connection(address) as ray:
            starting = _start_workers(ray, model, workers, stats)
            yield from _stream(ray, starting, chunks, options, keep, in_flight, stats)
    return run
