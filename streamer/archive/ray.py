"""Archive analysis on a Ray cluster: the local pool's job (pool.py) with Ray doing the scheduling, the retries
and the data movement.

    driver (`birdlive analyze --ray ADDRESS`): manifest, batches ─ analyze.remote(batch) ─→ Ray actors, one per
    worker slot, each an archive.Analyzer (model loaded once, on a CPU or a GPU) ─ FileResults through Ray's
    object store ─→ driver: result files written, manifest row marked.

A worker process that dies is restarted by Ray (`max_restarts`) and the batches it held are run again
(`max_task_retries`); the manifest is the single record of what is done, so a retried batch is published once.
Each node reads the recordings itself: the paths must be the same on every node (a shared or synced volume);
only the results (a few kilobytes per recording) travel back. Ray is imported only here, only with `--ray`.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from contextlib import contextmanager

from birdlive.errors import OptionError, one_line

from .discovery import Recording
from .pool import MAX_TRIES, BatchReport, batch_name, failed_results, unexpected
from .worker import Analyzer, WorkerSettings

log = logging.getLogger(__name__)

BATCHES_PER_WORKER = 2      # one running, one waiting in the actor's queue: no worker idles between batches


class RayAnalyzer(Analyzer):
    """The local pool's worker as a Ray actor; `whoami` tells the driver which process (host:pid) it is."""

    def whoami(self) -> str:
        return self.worker


def run_ray(batches: list[list[Recording]], settings: WorkerSettings, address: str, report: BatchReport,
            workers: int | None = None, gpus_per_worker: float = 0.0) -> None:
    """Run `batches` on the Ray cluster at `address` (`auto`, `ray://host:port`, `host:port`, or `local` for a
    new single-machine cluster), with `workers` actors (default: one per CPU of the cluster, or per
    `gpus_per_worker` of its GPUs)."""
    ray = _connect(address)
    try:
        actor_class = ray.remote(RayAnalyzer).options(
            num_cpus=1, num_gpus=gpus_per_worker,
            max_restarts=-1,                        # a lost worker (or node) is replaced …
            max_task_retries=MAX_TRIES - 1)         # … and the batches it held are run again
        n = workers or _slots(ray, gpus_per_worker)
        actors = [actor_class.remote(settings) for _ in range(n)]
        names = dict(zip(actors, ray.get([a.whoami.remote() for a in actors])))
        _drain(ray, batches, actors, names, report)
    finally:
        ray.shutdown()


AUTH_HELP = ("give the head and this driver one token: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=FILE "
             "(or RAY_AUTH_TOKEN) in the environment of both (README: Archive analysis, Ray)")


def _connect(address: str):
    try:
        import ray
    except ImportError:
        raise OptionError("--ray needs Ray: pip install 'birdlive[ray]'") from None
    # A cluster this command starts (`local`) does not report usage to anyone unless the user said so.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with _native_stderr_captured() as native_log:
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                     **({"include_dashboard": False} if address == "local" else {}))
            error = None
        except (ConnectionError, ValueError, RuntimeError) as e:
            error = e
    said = "".join(native_log)
    if error is None:
        for line in said.splitlines():
            log.debug("ray: %s", line)
        return ray
    if "Unauthenticated" in said or "InvalidAuthToken" in said:
        raise OptionError(f"--ray {address}: the Ray cluster refused this driver's authentication token; "
                          f"{AUTH_HELP}") from None
    raise OptionError(f"--ray {address}: cannot connect to a Ray cluster ({one_line(error)})") from None


@contextmanager
def _native_stderr_captured():
    """Ray's C++ core writes its connection retries to file descriptor 2, once a second for half a minute when
    a cluster refuses the driver: keep them off the user's terminal and read them back to say why in one line."""
    text: list[str] = []                   # filled when the block ends
    with tempfile.TemporaryFile("w+", errors="replace") as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield text
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text.append(captured.read())


def _slots(ray, gpus_per_worker: float) -> int:
    resources = ray.cluster_resources()
    if gpus_per_worker > 0:
        slots = int(resources.get("GPU", 0) / gpus_per_worker)
        if slots < 1:
            raise OptionError(f"--gpus-per-worker {gpus_per_worker:g}: the cluster has "
                              f"{resources.get('GPU', 0):g} GPUs")
        return slots
    return max(1, int(resources.get("CPU", 1)))


def _drain(ray, batches: list[list[Recording]], actors: list, names: dict, report: BatchReport) -> None:
    """Keep BATCHES_PER_WORKER batches queued on every actor; hand each result to the driver as it arrives."""
    todo = list(reversed(batches))
    free = [a for a in actors for _ in range(BATCHES_PER_WORKER)]
    in_flight: dict = {}                            # ObjectRef → (actor, batch)
    while todo or in_flight:
        while todo and free:
            actor, batch = free.pop(), todo.pop()
            in_flight[actor.analyze.remote(batch)] = (actor, batch)
            report.started(batch, names[actor])
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
        for ref in ready:
            actor, batch = in_flight.pop(ref)
            free.append(actor)
            try:
                results = ray.get(ref)
            except ray.exceptions.RayTaskError as e:    # an exception in the worker: a bug, this batch only
                results = failed_results(batch, unexpected(batch, e.cause or e))
            except ray.exceptions.RayError as e:        # its worker died MAX_TRIES times, or the node is gone
                results = failed_results(batch, f"{batch_name(batch)}: its Ray worker was lost {MAX_TRIES} times "
                                                f"({type(e).__name__})")
            for r in results:
                report.finished(r)
        report.tick()
