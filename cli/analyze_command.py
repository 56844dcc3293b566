"""`birdlive analyze DIR_OR_FILES… --out OUTDIR`: a season of recordings, resumably, on every core or a Ray
cluster; a thin wrapper over `birdlive.streamer.archive` (`.ray` for `--ray`).

Registered by app.py: app.command("analyze")(analyze).
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from .options import GIVEN, ClipPicturesOpt, ComputeOpt, DetectorOptions, detector_options

PLAIN_EVERY_S = 10.0        # a progress line this often when stderr is not a terminal
GPU_BATCH_FILES = 8         # recordings a GPU worker analyses together: enough windows to fill its batches


@detector_options
def analyze(
    inputs: List[Path] = typer.Argument(..., help="Recordings, and folders searched recursively for them: WAV, "
                                                  "FLAC, OGG, MP3."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: results/ (per recording), detections.csv "
                                                      "(all of them), errors.csv, manifest.sqlite."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1, help="Worker processes, each with its "
                                          "own model (default: one per core; with --ray: one per CPU of the "
                                          "cluster, or per --gpus-per-worker of its GPUs)."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help="Run on a Ray cluster: auto (the one "
                                      "this machine belongs to), ray://HOST:PORT, HOST:PORT, or local (a new one "
                                      "on this machine). Needs birdlive[ray]."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", min=0.0, help="With --ray: GPUs each worker "
                                          "takes (0.5: two workers share one)."),
    batch_files: Optional[int] = typer.Option(None, "--batch-files", min=1, help="Recordings a worker analyses "
                                              f"together, their windows in shared batches (default: 1 on a CPU, "
                                              f"{GPU_BATCH_FILES} on a GPU)."),
    tz: Optional[str] = typer.Option(None, "--tz", help="The recorders' time zone (IANA, e.g. America/Puerto_Rico): "
                                     "file-name times without a zone (Song Meter) are read in it and wall times "
                                     "are written in it. Default: this machine's. AudioMoth names are UTC unless "
                                     "the file's comment gives another offset."),
    raven: bool = typer.Option(False, "--raven", help="Also a Raven Pro selection table per recording."),
    audacity: bool = typer.Option(False, "--audacity", help="Also an Audacity label track per recording."),
    jsonl: bool = typer.Option(False, "--jsonl", help="Also JSON Lines (one object per event) per recording."),
    clips: bool = typer.Option(False, "--clips", help="Also each event's audio (FLAC) and spectrogram (PNG), in a "
                                                      "folder per recording."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Try the files that failed before again (by "
                                      "default only files that changed since are redone)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="A progress bar (default when "
                                            f"stderr is a terminal) or a plain line every {PLAIN_EVERY_S:g} s."),
    detector: DetectorOptions = GIVEN, compute: str = ComputeOpt,
    channel: Optional[int] = typer.Option(None, help="Use this channel of multichannel files instead of a mix."),
    clip_pictures: bool = ClipPicturesOpt,
    db: Optional[Path] = typer.Option(None, "--db", help="Also store every recording's events in this SQLite "
                                      "database (`birdlive serve` shows it; clips with --clips)."),
):
    """Analyse an archive of recordings (a season of AudioMoth or Song Meter files): one result file per recording
    and one combined CSV, with the recorder's wall-clock times.

    Resumable: the same command again skips finished files and redoes the rest (and files that changed). A file
    that cannot be read is listed in OUTDIR/errors.csv and the batch goes on; the exit status is 1 if any
    failed."""
    from birdlive.streamer import archive
    from birdlive.streamer.archive.discovery import site_zone

    out_dir = archive.prepare_outdir(out)                   # the cheap checks first: no model loaded for these
    recordings = archive.find_recordings(inputs, out_dir)
    site_zone(tz)
    asked = {"raven": raven, "audacity": audacity, "jsonl": jsonl, "clips": clips}
    formats = ("csv",) + tuple(f for f, on in asked.items() if on)
    settings = archive.AnalysisSettings(detector.settings(), channel=channel, tz=tz, outputs=formats,
                                        clip_pictures=clip_pictures)
    database = _database(db, settings.detector.model)
    execute, batch_files = _executor(settings, workers, ray, gpus_per_worker, batch_files, compute)
    signal.signal(signal.SIGTERM, signal.default_int_handler)     # SIGTERM stops like Ctrl-C: finished files kept
    if ray is not None:         # Ray keeps trying an address that does not answer: say what is being waited for
        print(f"connecting to the Ray cluster at {ray}", file=sys.stderr, flush=True)
    try:
        summary = archive.analyze_archive(recordings, out_dir, settings, execute, _progress(progress), batch_files,
                                          retry_failed, db=database)
    finally:
        if database is not None:
            database.close()
    print(summary.line(), file=sys.stderr, flush=True)
    if summary.interrupted:
        print(f"interrupted: {summary.tally.files - summary.tally.done - summary.tally.failed} files left; the "
              f"same command goes on from here", file=sys.stderr, flush=True)
        raise typer.Exit(130)
    if summary.failed:
        raise typer.Exit(1)


def _database(path: Optional[Path], model):
    """The detection database, opened (or refused in one line) before any worker starts."""
    if path is None:
        return None
    from birdlive.model import DEFAULT_CHECKPOINT, load_config
    from birdlive.streamer.sinks.database import DetectionDatabase
    cfg = load_config(model or DEFAULT_CHECKPOINT)
    return DetectionDatabase(path, str(model or "default"), list(cfg.labels), list(cfg.names)).open()


def _executor(analysis, workers: Optional[int], ray: Optional[str], gpus_per_worker: float,
              batch_files: Optional[int], compute: str):
    """run_local or run_ray with its settings bound, and the batch size that suits its workers."""
    from birdlive.errors import OptionError
    from birdlive.streamer.archive import WorkerSettings, default_workers, run_local
    if ray is not None:
        from birdlive.streamer.archive.ray import run_ray
        settings = WorkerSettings(analysis, compute, threads=1)        # a Ray worker holds one CPU
        batch = batch_files or (GPU_BATCH_FILES if gpus_per_worker > 0 else 1)
        return (lambda batches, report: run_ray(batches, settings, ray, report, workers, gpus_per_worker)), batch
    if gpus_per_worker:
        raise OptionError("--gpus-per-worker is for --ray; a local run uses the GPU with --compute")
    from birdlive.model import DEFAULT_CHECKPOINT
    from birdlive.streamer.core.scorer import pick_backend
    on_gpu = pick_backend(analysis.detector.model or DEFAULT_CHECKPOINT, compute).startswith("cuda")
    if on_gpu:
        from birdlive.model import pick_device
        pick_device(compute)                            # OptionError: cuda asked for, none there
    n = workers or (2 if on_gpu else default_workers())    # on a GPU: one decodes while the other's windows run
    settings = WorkerSettings(analysis, compute, threads=max(1, len(os.sched_getaffinity(0)) // n))
    batch = batch_files or (GPU_BATCH_FILES if on_gpu else 1)
    return (lambda batches, report: run_local(batches, settings, n, report)), batch


def _progress(wanted: Optional[bool]):
    from rich.console import Console
    console = Console(stderr=True)
    fancy = console.is_terminal if wanted is None else wanted
    return RichProgress(console) if fancy else PlainProgress()


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h"


def _eta(tally) -> str:
    eta = tally.eta_s
    if eta is None:
        return "–"
    return time.strftime("%H:%M:%S", time.gmtime(eta)) if eta < 86400 else f"{eta / 86400:.1f} d"


def _report_file(result, say) -> None:
    """A file's warnings and its failure, one line each, as it finishes."""
    for w in result.warnings:
        say(f"warning: {w}")
    if result.error:
        say(f"error: {result.error}")


class RichProgress:
    """On a terminal: files, hours of audio, audio hours per wall hour, ETA; warnings and errors above the bar."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        self.bar = Progress(TextColumn("analyze"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
                            TextColumn("{task.fields[audio]}"), TextColumn("{task.fields[speed]}"),
                            TextColumn("ETA {task.fields[eta]}"), console=console, transient=False)
        self.task = None

    def update(self, tally, result) -> None:
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task("analyze", total=tally.files, audio="", speed="", eta="–")
        if result is not None:
            _report_file(result, lambda line: self.bar.console.print(line, highlight=False, markup=False))
        self.bar.update(self.task, completed=tally.done + tally.failed,
                        audio=f"{_hours(tally.audio_finished_s)} / {_hours(tally.audio_s)} audio",
                        speed=f"{tally.speed:.0f} audio-h per wall-h", eta=_eta(tally))

    def close(self) -> None:
        if self.task is not None:
            self.bar.stop()


class PlainProgress:
    """Piped: warnings and errors as they come, and a progress line every PLAIN_EVERY_S seconds."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.last = time.monotonic()

    def update(self, tally, result) -> None:
        if result is not None:
            _report_file(result, self._say)
        if time.monotonic() - self.last >= PLAIN_EVERY_S:
            self.last = time.monotonic()
            self._say(f"analyze: {tally.done + tally.failed}/{tally.files} files, {_hours(tally.audio_finished_s)} "
                      f"/ {_hours(tally.audio_s)} audio, {tally.speed:.0f} audio-h per wall-h, ETA {_eta(tally)}")

    def _say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        pass
