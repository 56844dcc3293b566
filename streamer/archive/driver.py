"""Archive analysis: a season of recorder files through the streaming detector, resumably, on every core.

    inputs ─ find_recordings ─→ Manifest (OUTDIR/manifest.sqlite: one row per file, the single record of what is
             finished) ─ batches of unfinished files ─→ an executor: run_local (a process pool, here) or run_ray
             (ray.py) ─→ an Analyzer in each worker (model loaded once): the runner over a batch of
             files, each with its own outputs and the recorder's wall clock ─→ a FileResult per file (status,
             error, the result files' bytes) ─→ the driver publishes the files (temporary name, then rename),
             marks the row, and at the end rebuilds OUTDIR/detections.csv and OUTDIR/errors.csv from the manifest.

Only the driver writes OUTDIR: workers send their results back (over a pipe, or through Ray's object store), so a
worker needs no shared disk for output and a killed worker leaves nothing half-written. A row is finished only
after its files are in place, so a `kill -9` of the driver loses at most the files in flight, and the combined
CSV, made from the per-file results of finished rows, holds every file exactly once whatever was retried.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from birdlive.errors import OptionError

from ..sinks.database import DetectionDatabase
from .discovery import Recording, header_duration
from .manifest import (ERRORS, MANIFEST, RESULTS, Manifest, publish, remove_results, write_combined,
                       write_errors)
from .pool import BatchReport
from .worker import AnalysisSettings, FileResult


@dataclass
class Tally:
    """This run's work, for the progress display and the summary."""
    files: int                          # recordings to analyse in this run
    audio_s: float                      # their audio, as their headers announce it
    skipped: int = 0                    # finished (done or failed) in an earlier run
    done: int = 0
    failed: int = 0
    audio_done_s: float = 0.0           # audio analysed so far (what the workers read)
    audio_finished_s: float = 0.0       # header seconds of the files finished so far (for the ETA)
    t0: float = field(default_factory=time.perf_counter)

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def speed(self) -> float:
        """Audio hours per wall hour (the same number as audio seconds per wall second)."""
        return self.audio_done_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        rate = self.audio_finished_s / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return max(0.0, self.audio_s - self.audio_finished_s) / rate if rate > 0 else None


class ArchiveProgress(Protocol):
    def update(self, tally: Tally, result: FileResult | None) -> None: ...    # a file finished, or a tick (None)

    def close(self) -> None: ...


@dataclass
class ArchiveSummary:
    files: int                          # recordings among the inputs
    failed: int                         # of those, failed now
    tally: Tally                        # this run
    outdir: Path
    interrupted: bool = False

    def line(self) -> str:
        failed = f"{self.failed} failed" + (f" (see {self.outdir / ERRORS})" if self.failed else "")
        before = f" ({self.tally.skipped} finished before)" if self.tally.skipped else ""
        return (f"{self.files} files{before}, {failed}, {self.tally.audio_done_s / 3600:.2f} h audio in "
                f"{self.tally.elapsed_s / 60:.1f} min")


class ArchiveDriver:
    """The one writer of OUTDIR: publishes each recording's result files (temporary name, then rename), then
    marks its manifest row; keeps the tally and tells the progress display."""

    def __init__(self, outdir: Path, manifest: Manifest, tally: Tally, durations: dict[str, float | None],
                 progress: ArchiveProgress | None, db: DetectionDatabase | None = None):
        self.outdir, self.results = outdir, outdir / RESULTS
        self.manifest, self.tally, self.durations, self.progress = manifest, tally, durations, progress
        self.db = db

    def started(self, batch: list[Recording], worker: str) -> None:
        self.manifest.mark_running(batch, worker)

    def finished(self, result: FileResult) -> None:
        remove_results(self.results, result.key)        # an earlier version's must not linger beside these
        publish(self.results, result)
        if self.db is not None:     # before the manifest: a kill between the two redoes the file, stored again
            log = result.files.get(f"{Path(result.key).name}.csv", b"").decode("utf-8")
            self.db.store_recording(result.path, log, self.outdir, result.error, result.audio_s)
        self.manifest.mark_finished(result)
        t = self.tally
        t.done += result.status == "done"
        t.failed += result.status != "done"
        t.audio_done_s += result.audio_s
        t.audio_finished_s += self.durations.get(result.path) or result.audio_s
        if self.progress is not None:
            self.progress.update(t, result)

    def tick(self) -> None:
        if self.progress is not None:
            self.progress.update(self.tally, None)


def prepare_outdir(outdir: str | Path) -> Path:
    out = Path(outdir).expanduser().resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / RESULTS).mkdir(exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except FileExistsError:
        raise OptionError(f"--out {outdir}: a file, not a folder") from None
    except OSError as e:
        raise OptionError(f"--out {outdir}: cannot write there ({e.strerror or e})") from None
    return out


def make_batches(todo: list[Recording], batch_files: int) -> list[list[Recording]]:
    return [todo[i:i + batch_files] for i in range(0, len(todo), batch_files)]


Execute = Callable[[list[list[Recording]], BatchReport], None]     # run_local or run_ray, settings bound


def analyze_archive(recordings: list[Recording], out: Path, settings: AnalysisSettings, execute: Execute,
                    progress: ArchiveProgress | None = None, batch_files: int = 1,
                    retry_failed: bool = False, db: DetectionDatabase | None = None) -> ArchiveSummary:
    """Analyse the `recordings` (find_recordings) not yet finished in the output folder `out` (prepare_outdir);
    Ctrl-C (KeyboardInterrupt) stops the run with everything finished so far kept. Returns the summary; the
    combined CSV and errors.csv are rewritten from the manifest however the run ended."""
    manifest = Manifest(out / MANIFEST)
    try:
        manifest.check_settings(settings)
        manifest.sync(recordings, out / RESULTS, header_duration)
        todo = manifest.todo(recordings, retry_failed)
        durations = {rec.path: d for rec, d in todo}
        tally = Tally(len(todo), sum(d or 0.0 for d in durations.values()), skipped=len(recordings) - len(todo))
        driver = ArchiveDriver(out, manifest, tally, durations, progress, db)
        interrupted = False
        try:
            if todo:
                execute(make_batches([rec for rec, _ in todo], batch_files), driver)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if progress is not None:
                progress.close()
            write_combined(out, manifest)
            write_errors(out, manifest)
        paths = {r.path for r in recordings}
        return ArchiveSummary(len(recordings), len(manifest.rows("failed", paths=paths)), tally, out, interrupted)
    finally:
        manifest.close()
