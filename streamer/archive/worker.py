"""The worker side of an archive analysis: an `Analyzer` in each worker process (model loaded once) runs a batch of
recordings through one runner, each recording with its own outputs in a temporary folder and the recorder's wall
clock, and hands back a `FileResult` per recording (status, error, the result files' bytes) for the driver to
publish. Its settings (`AnalysisSettings`) are the same in every worker, and kept in the manifest."""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

from ..core.events import Event, EventAudio, StreamStatus
from ..core.settings import DetectorSettings
from .discovery import RecorderStart, Recording, recorder_start, site_zone

WORKER_BYTES = 1_250_000_000      # one worker process with the default model: 0.9 GB resident, and a margin
RESULTS = "results"               # OUTDIR's folder of per-recording results (manifest.py)
# A recording's results, beside each other under results/: KEY.csv always, the others when asked for.
RESULT_SUFFIXES = {"csv": ".csv", "raven": ".raven.txt", "audacity": ".audacity.txt", "jsonl": ".jsonl",
                   "clips": ".clips"}


@dataclass(frozen=True)
class AnalysisSettings:
    """Everything that decides a recording's results: the detector's settings (the same as replay's) and the
    archive's own — the channel, the site's time zone, which result files. The same in every worker, and kept in
    the manifest so that a rerun with other settings cannot mix two analyses in one OUTDIR."""
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    channel: int | None = None
    tz: str | None = None               # the site's zone: names without one are read in it, times written in it
    outputs: tuple[str, ...] = ("csv",)  # of manifest.RESULT_SUFFIXES
    clip_pictures: bool = True

    def as_json(self) -> str:
        """One flat object (the detector's fields beside the archive's), as manifests have always stored it."""
        flat = {**asdict(self.detector), **{k: v for k, v in asdict(self).items() if k != "detector"}}
        return json.dumps(flat, sort_keys=True)


def default_workers() -> int:
    """One worker per core, as far as memory allows (a worker holds torch and the model: about WORKER_BYTES)."""
    cores = len(os.sched_getaffinity(0))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(cores, memory // WORKER_BYTES))


@dataclass(frozen=True)
class WorkerSettings:
    analysis: AnalysisSettings
    compute: str = "auto"               # auto | onnx | cpu | cuda (`load_scorer`)
    threads: int | None = None          # the scorer's threads per worker (None: its default)


@dataclass
class FileResult:
    """One recording as a worker leaves it: its status and its result files, as bytes for the driver to write."""
    path: str
    key: str
    status: str                         # done | failed
    error: str | None = None            # one line, when failed
    warnings: list[str] = field(default_factory=list)
    audio_s: float = 0.0
    events: int = 0
    recorded_at: str | None = None      # ISO 8601 with offset: when the recorder started the file
    time_from: str | None = None        # where that came from (guano, audiomoth-comment, audiomoth-name, name)
    worker: str = ""                    # host:pid
    files: dict[str, bytes] = field(default_factory=dict)   # name → content, beside results/KEY


class RecordingOutputs:
    """One recording's outputs within a batch: written into a temporary folder, published later by the driver
    under results/ (so a clip's path in the CSV is the one it will have there, relative to OUTDIR)."""

    def __init__(self, outputs, start: datetime | None, folder: Path, published: str):
        self.outputs = outputs                  # birdlive.streamer.sinks.outputs.Outputs
        self.start = start.timestamp() if start is not None else None
        self.folder, self.published = folder, published

    def annotate(self, e: Event, audio: EventAudio) -> Event:
        if self.start is not None:              # fast replay has no clock: the recorder's start + stream time
            e = replace(e, wall_onset=self.start + e.onset_s, wall_offset=self.start + e.offset_s)
        for a in self.outputs.annotators:
            e = a.annotate(e, audio)
        if e.clip:
            e = replace(e, clip=f"{self.published}/{Path(e.clip).relative_to(self.folder).as_posix()}")
        return e


class PerRecording:
    """One runner, several recordings: each event goes through its own recording's annotators and sinks. Serves
    the runner as its one annotator and its one sink."""

    def __init__(self, recordings: dict[str, RecordingOutputs]):
        self.recordings = recordings

    def annotate(self, e: Event, audio: EventAudio) -> Event:
        return self.recordings[e.source].annotate(e, audio)

    def on_event(self, e: Event, audio: EventAudio) -> None:
        for s in self.recordings[e.source].outputs.sinks:
            s.on_event(e, audio)

    def on_status(self, status: StreamStatus) -> None:
        if status.source in self.recordings:
            for s in self.recordings[status.source].outputs.sinks:
                s.on_status(status)

    def close(self) -> None:
        for r in self.recordings.values():
            r.outputs.close()


def apply_process_settings(settings: WorkerSettings) -> None:
    """Per worker process: the site's time zone for every time it writes (its share of the cores goes to its
    scorer: `load_scorer`)."""
    if settings.analysis.tz:
        os.environ["TZ"] = settings.analysis.tz
        time.tzset()


class Analyzer:
    """A worker: the model, loaded once, and the analysis settings. `analyze` runs a batch of recordings through
    one runner (their windows share the network's batches: several files keep a GPU busy), each recording with
    its own outputs in a temporary folder, and hands back each one's status and result files."""

    def __init__(self, settings: WorkerSettings):
        from ..core.runner import stream_factory
        from ..core.scorer import load_scorer
        apply_process_settings(settings)
        self.settings = settings.analysis
        d = self.settings.detector
        # One scorer for every batch: making it (torch: BatchNorm folded into a copy of the network) took 0.1 s,
        # a sixth of the time of a one-minute recording.
        self.scorer = load_scorer(d.model, settings.compute, threads=settings.threads)
        self.cfg = self.scorer.cfg
        self.make_stream = stream_factory(self.cfg, d)
        self.site_tz = site_zone(self.settings.tz)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def analyze(self, batch: list[Recording]) -> list[FileResult]:
        from ..core.runner import Runner
        from ..sources.files import file_specs
        a, d = self.settings, self.settings.detector
        with tempfile.TemporaryDirectory(prefix="birdlive-analyze-") as tmp:
            starts = {r.path: recorder_start(r.path, self.site_tz) for r in batch}
            folders = {r.path: Path(tmp) / str(i) for i, r in enumerate(batch)}
            router = PerRecording({r.path: self._outputs(r, starts[r.path], folders[r.path]) for r in batch})
            try:
                runner = Runner(self.scorer, [router], self.make_stream, max_open=len(batch), annotators=[router],
                                pre_roll_s=d.pre_roll_s, post_roll_s=d.post_roll_s)
                specs = file_specs([r.path for r in batch], self.cfg.sample_rate, channel=a.channel)
                ended = {s.source: s for s in runner.run(specs)}
            finally:
                router.close()
            return [self._result(r, ended.get(r.path), folders[r.path], starts[r.path]) for r in batch]

    def _outputs(self, rec: Recording, start: RecorderStart | None, folder: Path) -> RecordingOutputs:
        from ..sinks.outputs import OutputOptions, build_outputs
        a, d, name = self.settings, self.settings.detector, Path(rec.key).name
        folder.mkdir(parents=True)
        wanted = {fmt: folder / f"{name}{suffix}" if fmt in a.outputs else None
                  for fmt, suffix in RESULT_SUFFIXES.items()}
        outputs = build_outputs(OutputOptions(
            csv=wanted["csv"], raven=wanted["raven"], audacity=wanted["audacity"], jsonl=wanted["jsonl"],
            clips=wanted["clips"], pictures=a.clip_pictures, pre_roll_s=d.pre_roll_s, post_roll_s=d.post_roll_s,
            quiet=True, summaries=False), self.cfg)
        # The driver reports every file's warnings and error, once, above its progress bar: not the workers.
        outputs.sinks = [s for s in outputs.sinks if s is not outputs.report]
        published = (Path(RESULTS) / rec.key).parent.as_posix()
        return RecordingOutputs(outputs, start.time if start is not None else None, folder, published)

    def _result(self, rec: Recording, status: StreamStatus | None, folder: Path,
                start: RecorderStart | None) -> FileResult:
        r = FileResult(rec.path, rec.key, "failed", worker=self.worker)
        if status is None:          # the runner ended without it: a bug, but never a silent success
            r.error = f"{rec.path}: not analysed (the runner ended without it)"
            return r
        r.warnings, r.audio_s, r.events = list(status.warnings), status.audio_s, status.events
        if start is not None:
            r.recorded_at, r.time_from = start.time.isoformat(), start.origin
        if status.state == "done":
            r.status = "done"
        else:
            r.error = status.error or f"{rec.path}: failed"
        if status.audio_s > 0:      # a file that failed mid-way keeps the events it had (as `replay` does)
            r.files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
                       if p.is_file()}
        return r
