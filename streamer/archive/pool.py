"""run_local: archive analysis on this machine's cores, a pool of worker processes (spawned), each with its own
model; a worker that dies breaks the pool, a new one takes over and the batches in flight are tried again."""
from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol

from birdlive.errors import one_line
from birdlive.log import to_stderr

from .discovery import Recording
from .worker import Analyzer, FileResult, WorkerSettings

MAX_TRIES = 3          # a file in flight when its worker process died this often is marked failed


class BatchReport(Protocol):
    """What an executor tells the driver (always from the driver's own thread)."""

    def started(self, batch: list[Recording], worker: str) -> None: ...

    def finished(self, result: FileResult) -> None: ...     # once per recording, done or failed

    def tick(self) -> None: ...                              # at least once a second


_worker: Analyzer | None = None      # one per pool process, made by its initializer


def _init_local_worker(settings: WorkerSettings) -> None:
    global _worker
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the driver's to handle: it ends the workers
    to_stderr()         # a spawned worker starts with no log handler: its warnings as the driver's own would show
    _exit_with_parent()
    _worker = Analyzer(settings)


def _exit_with_parent() -> None:
    """A pool worker holds both ends of its task queue, so a driver killed with `kill -9` would leave it waiting
    forever: a thread ends it when the driver's process is gone."""
    import multiprocessing
    import threading
    from multiprocessing.connection import wait as wait_for_any

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch():
        wait_for_any([parent.sentinel])
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _analyze_local(batch: list[Recording]) -> list[FileResult]:
    assert _worker is not None
    return _worker.analyze(batch)


def run_local(batches: list[list[Recording]], settings: WorkerSettings, workers: int, report: BatchReport) -> None:
    """A pool of `workers` processes (spawned: torch and fork do not mix), each loading the model once. A worker
    that dies (killed, out of memory, a crash in a decoder) breaks the pool: a new pool takes over, and the
    batches that were in flight are tried again, up to MAX_TRIES times each."""
    import multiprocessing
    todo = [(b, 0) for b in reversed(batches)]      # a stack: the first batch on top, retries go first
    while todo:
        pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), _init_local_worker, (settings,))
        in_flight: dict = {}
        try:
            _drain(pool, todo, in_flight, workers, report)
        except BrokenProcessPool:
            for batch, tries in in_flight.values():
                if tries + 1 < MAX_TRIES:
                    todo.append((batch, tries + 1))
                else:
                    error = f"{batch_name(batch)}: its worker process died {MAX_TRIES} times while analysing it"
                    for r in failed_results(batch, error):
                        report.finished(r)
        except BaseException:          # Ctrl-C, SIGTERM: end the workers now, not after their files
            for p in multiprocessing.active_children():
                p.kill()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True, cancel_futures=True)


def _drain(pool: ProcessPoolExecutor, todo: list, in_flight: dict, workers: int, report: BatchReport) -> None:
    """Keep every worker busy with one batch and one queued behind it, until nothing is left. Raises
    BrokenProcessPool when a worker died, with the batches it may have taken down still in `in_flight`."""
    while todo or in_flight:
        while todo and len(in_flight) < 2 * workers:
            batch, tries = todo.pop()
            in_flight[pool.submit(_analyze_local, batch)] = (batch, tries)
            report.started(batch, "local")
        done, _ = wait(in_flight, timeout=1.0, return_when=FIRST_COMPLETED)
        broken = False
        for future in done:
            batch, tries = in_flight.pop(future)
            try:
                results = future.result()
            except BrokenProcessPool:
                in_flight[future], broken = (batch, tries), True
                continue
            except Exception as e:      # a bug in the worker: this batch fails, the others go on
                results = failed_results(batch, unexpected(batch, e))
            for r in results:
                report.finished(r)
        report.tick()
        if broken:
            raise BrokenProcessPool("a worker process died")


def batch_name(batch: list[Recording]) -> str:
    return batch[0].path if len(batch) == 1 else f"{batch[0].path} (and {len(batch) - 1} more in its batch)"


def unexpected(batch: list[Recording], e: BaseException) -> str:
    return one_line(f"{batch_name(batch)}: unexpected {type(e).__name__}: {e} (a bug)")


def failed_results(batch: list[Recording], error: str) -> list[FileResult]:
    return [FileResult(r.path, r.key, "failed", error=error) for r in batch]
