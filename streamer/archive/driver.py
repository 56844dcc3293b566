"""Archive analysis: a season of recorder files through the streaming detector, resumably, on every core.

    inputs ─ find_recordings ─→ Manifest (OUTDIR/manifest.sqlite: one row per file, the single record of what is
             finished) ─ batches of unfinished files ─→ an executor: run_local (a process pool, here) or run_ray
             (distributed.py) ─→ an Analyzer in each worker (model loaded once): the runner over a batch of
             files, each with its own outputs and the recorder's wall clock ─→ a FileResult per file (status,
             error, the result files' bytes) ─→ the driver publishes the files (temporary name, then rename),
             marks the row, and at the end rebuilds OUTDIR/detections.csv and OUTDIR/errors.csv from the manifest.

Only the driver writes OUTDIR: workers send their results back (over a pipe, or through Ray's object store), so a
worker needs no shared disk for output and a killed worker leaves nothing half-written. A row is finished only
after its files are in place, so a `kill -9` of the driver loses at most the files in flight, and the combined
CSV, made from the per-file results of finished rows, holds every file exactly once whatever was retried.
"""
from __future__ import annotations

import csv
import json
import os
import re
import socket
import sqlite3
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Callable, Iterable, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from birdlive.errors import OptionError

from ..core.events import Event, EventAudio, StreamStatus

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".mp3"}      # what `replay` reads (libsndfile)
RESULTS = "results"
COMBINED = "detections.csv"
ERRORS = "errors.csv"
MANIFEST = "manifest.sqlite"
# A recording's results, beside each other under results/: KEY.csv always, the others when asked for.
RESULT_SUFFIXES = {"csv": ".csv", "raven": ".raven.txt", "audacity": ".audacity.txt", "jsonl": ".jsonl",
                   "clips": ".clips"}
WORKER_BYTES = 1_250_000_000      # one worker process with the default model: 0.9 GB resident, and a margin
MAX_TRIES = 3          # a file in flight when its worker process died this often is marked failed


# --------------------------------------------------------------------------------------------- discovery

@dataclass(frozen=True)
class Recording:
    path: str          # absolute
    key: str           # path below the inputs' common folder: where its results go (results/KEY.csv)
    size: int
    mtime: float


def find_recordings(inputs: Iterable[str | Path], outdir: Path | None = None) -> list[Recording]:
    """Audio files named on the command line, and those under folders (recursive), sorted by key; none from
    `outdir` (clips are audio too). Keys are paths relative to the common folder of the inputs, so a season's
    layout (site/date/file) is kept in the results."""
    inputs = list(inputs)
    files: dict[Path, None] = {}
    roots = []
    for given in inputs:
        p = Path(given).expanduser()
        if not p.exists():
            raise OptionError(f"{given}: no such file or folder")
        p = p.resolve()
        if p.is_dir():
            roots.append(p)
            files.update((f, None) for f in sorted(p.rglob("*")) if f.suffix.lower() in AUDIO_EXTENSIONS
                         and f.is_file() and not (outdir is not None and f.is_relative_to(outdir)))
        else:
            roots.append(p.parent)
            files[p] = None
    if not files:
        raise OptionError(f"no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) in {', '.join(map(str, inputs))}")
    common = Path(os.path.commonpath(roots))
    recordings = []
    for f in files:
        st = f.stat()
        recordings.append(Recording(str(f), f.relative_to(common).as_posix(), st.st_size, st.st_mtime))
    return sorted(recordings, key=lambda r: r.key)


def header_duration(path: str) -> float | None:
    """Seconds of audio the file's header announces (for progress and ETA); None where it cannot be read."""
    import soundfile as sf
    try:
        info = sf.info(path)
        return info.frames / info.samplerate if info.samplerate else None
    except Exception:   # a corrupt file: its worker reports why, in one line
        return None


# --------------------------------------------------------------------------------------------- recorder time

# AudioMoth: "Recorded at 05:30:00 01/05/2024 (UTC+1) by AudioMoth 24F319055FDF2D8B at medium gain …"
_AUDIOMOTH_COMMENT = re.compile(r"Recorded at (\d\d):(\d\d):(\d\d) (\d\d)/(\d\d)/(\d{4}) "
                                r"\(UTC(?:([+-])(\d{1,2})(?::?(\d\d))?)?\)")
# AudioMoth names files YYYYMMDD_HHMMSS.WAV; Song Meters put a prefix first: SITE_YYYYMMDD_HHMMSS.wav
_NAME_TIME = re.compile(r"^(?:(.+)_)?(\d{8})_(\d{6})(?:\D.*)?$")


@dataclass(frozen=True)
class RecorderStart:
    time: datetime     # timezone-aware
    origin: str        # guano | audiomoth-comment | audiomoth-name | name


def recorder_start(path: str, site_tz: tzinfo | None) -> RecorderStart | None:
    """When the recorder started this file: GUANO metadata, then the AudioMoth comment, then the file name.

    AudioMoth writes its names in UTC unless it was set to a local offset, which its comment then states; a
    Song Meter names files in the local time it was set to, which nothing in the file records: `site_tz`. A
    GUANO timestamp without a zone is read in `site_tz` too (None: this machine's local zone)."""
    for probe in (_guano_start, _audiomoth_comment_start):
        try:
            found = probe(path, site_tz)
        except Exception:        # unreadable metadata is no time, not a failure: the audio decides that
            found = None
        if found is not None:
            return found
    return name_start(Path(path).stem, site_tz)


def name_start(stem: str, site_tz: tzinfo | None) -> RecorderStart | None:
    m = _NAME_TIME.match(stem)
    if not m:
        return None
    try:
        t = datetime.strptime(m.group(2) + m.group(3), "%Y%m%d%H%M%S")
    except ValueError:           # 20241399_…: digits, not a date
        return None
    if m.group(1) is None:       # a bare AudioMoth name: UTC
        return RecorderStart(t.replace(tzinfo=timezone.utc), "audiomoth-name")
    return RecorderStart(_in_zone(t, site_tz), "name")


def _guano_start(path: str, site_tz: tzinfo | None) -> RecorderStart | None:
    if not path.lower().endswith(".wav"):
        return None
    import guano
    t = guano.GuanoFile(path).get("Timestamp")
    if not isinstance(t, datetime):
        return None
    return RecorderStart(t if t.tzinfo else _in_zone(t, site_tz), "guano")


def _audiomoth_comment_start(path: str, site_tz: tzinfo | None) -> RecorderStart | None:
    import soundfile as sf
    with sf.SoundFile(path) as f:
        comment = f.comment or ""
    m = _AUDIOMOTH_COMMENT.search(comment)
    if not m:
        return None
    hh, mi, ss, dd, mo, yyyy, sign, oh, om = m.groups()
    offset = timedelta(hours=int(oh or 0), minutes=int(om or 0)) * (-1 if sign == "-" else 1)
    t = datetime(int(yyyy), int(mo), int(dd), int(hh), int(mi), int(ss), tzinfo=timezone(offset))
    return RecorderStart(t, "audiomoth-comment")


def _in_zone(naive: datetime, zone: tzinfo | None) -> datetime:
    # astimezone() on a naive time reads it as local time, daylight saving included
    return naive.replace(tzinfo=zone) if zone is not None else naive.astimezone()


def site_zone(name: str | None) -> tzinfo | None:
    """--tz: an IANA zone name; None is this machine's local zone."""
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise OptionError(f"--tz: unknown time zone {name!r} (an IANA name like Europe/Berlin or UTC)") from None


# --------------------------------------------------------------------------------------------- settings, results

@dataclass(frozen=True)
class DetectorSettings:
    """Everything that decides a recording's results: the same in every worker, and kept in the manifest so that
    a rerun with other settings cannot mix two analyses in one OUTDIR."""
    model: str | None = None            # checkpoint, resolved; None: the embedded default
    model_version: str = ""             # size and mtime of its weights: a retrained checkpoint is another model
    hop_s: float = 1.0
    threshold_on: float | None = None
    threshold_off: float | None = None
    min_duration_s: float | None = None
    merge_gap_s: float | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_conf: float = 0.0
    channel: int | None = None
    species_thresholds: tuple[tuple[int, float, float | None], ...] = ()    # --thresholds FILE, as read
    tz: str | None = None               # the site's zone: names without one are read in it, times written in it
    outputs: tuple[str, ...] = ("csv",)  # of RESULT_SUFFIXES
    clip_pictures: bool = True
    pre_roll_s: float = 1.5
    post_roll_s: float = 1.5

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def detector_settings(model: str | Path | None = None, thresholds: str | Path | None = None, hop_s: float = 1.0,
                      tz: str | None = None, **options) -> DetectorSettings:
    """Settings from the user's options, checked here, in the driver, before any worker starts: the checkpoint
    (one error line if it is not one), the hop, the thresholds file, the time zone. The model's path is
    resolved and its weights' size and mtime recorded, so that a retrained checkpoint counts as another model."""
    site_zone(tz)
    from birdlive.model import DEFAULT_CHECKPOINT, load_config
    from birdlive.model.checkpoint import checkpoint_paths

    from ..core.stream import check_hop, default_params
    from ..core.thresholds import load_thresholds
    path = Path(model).expanduser().resolve() if model is not None else None
    cfg = load_config(path or DEFAULT_CHECKPOINT)
    check_hop(cfg, hop_s)
    species = load_thresholds(thresholds, cfg.labels, cfg.names) if thresholds is not None else {}
    default_params(cfg, options.get("threshold_on"), options.get("threshold_off"), species)   # pairs in order
    weights = checkpoint_paths(path or DEFAULT_CHECKPOINT)[0].stat()
    return DetectorSettings(model=str(path) if path else None, hop_s=hop_s, tz=tz,
                            model_version=f"{weights.st_size}:{weights.st_mtime_ns}",
                            species_thresholds=tuple((i, on, off) for i, (on, off) in sorted(species.items())),
                            **options)


def default_workers() -> int:
    """One worker per core, as far as memory allows (a worker holds torch and the model: about WORKER_BYTES)."""
    cores = len(os.sched_getaffinity(0))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(cores, memory // WORKER_BYTES))


@dataclass(frozen=True)
class WorkerSettings:
    detector: DetectorSettings
    compute: str = "auto"               # auto | cpu | cuda
    threads: int | None = None          # torch threads per worker (None: torch's default)


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


# --------------------------------------------------------------------------------------------- manifest

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, key TEXT NOT NULL UNIQUE, size INTEGER NOT NULL, mtime REAL NOT NULL,
    duration_s REAL, status TEXT NOT NULL DEFAULT 'pending', error TEXT, audio_s REAL, events INTEGER,
    recorded_at TEXT, time_from TEXT, worker TEXT, started_at REAL, finished_at REAL);
CREATE TABLE IF NOT EXISTS job (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Manifest:
    """OUTDIR/manifest.sqlite: one row per input — size, mtime, status (pending, running, done, failed), error,
    audio seconds, events, worker. Only the driver writes it; each change is committed at once (WAL), so after a
    `kill -9` it says exactly which files are done."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")   # with WAL: durable across a process kill, and fast
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def check_settings(self, settings: DetectorSettings) -> None:
        """The first run stores its settings; a later one with other settings would mix two analyses."""
        row = self.db.execute("SELECT value FROM job WHERE name = 'settings'").fetchone()
        if row is None:
            with self.db:
                self.db.execute("INSERT INTO job VALUES ('settings', ?)", (settings.as_json(),))
            return
        old, new = json.loads(row["value"]), json.loads(settings.as_json())
        changed = [f"{k} {old.get(k)!r} → {new[k]!r}" for k in new if old.get(k) != new[k]]
        if changed:
            raise OptionError(f"the output folder holds an analysis with other settings ({'; '.join(changed)}): "
                              f"use another --out")

    def sync(self, recordings: list[Recording], results: Path, probe: Callable[[str], float | None]) -> None:
        """New files become pending; a file whose size or mtime changed is redone; `running` rows (a driver that
        was killed) and `done` rows whose result file is gone are pending again."""
        known = {r["path"]: r for r in self.db.execute("SELECT path, key, size, mtime, status FROM files")}
        with self.db:
            for rec in recordings:
                row = known.get(rec.path)
                if row is None:
                    self._insert(rec, probe)
                elif (row["size"], row["mtime"]) != (rec.size, rec.mtime):
                    self.db.execute("UPDATE files SET size = ?, mtime = ?, duration_s = ?, status = 'pending', "
                                    "error = NULL WHERE path = ?", (rec.size, rec.mtime, probe(rec.path), rec.path))
                elif row["status"] == "running" or (row["status"] == "done" and
                                                    not result_csv(results, rec.key).exists()):
                    self.db.execute("UPDATE files SET status = 'pending' WHERE path = ?", (rec.path,))

    def _insert(self, rec: Recording, probe: Callable[[str], float | None]) -> None:
        try:
            self.db.execute("INSERT INTO files (path, key, size, mtime, duration_s) VALUES (?, ?, ?, ?, ?)",
                            (rec.path, rec.key, rec.size, rec.mtime, probe(rec.path)))
        except sqlite3.IntegrityError:
            other = self.db.execute("SELECT path FROM files WHERE key = ?", (rec.key,)).fetchone()
            raise OptionError(f"{rec.path} and {other['path']}, analysed into this output folder before, would "
                              f"share the results name {rec.key}: use another --out") from None

    def todo(self, recordings: list[Recording], retry_failed: bool = False) -> list[tuple[Recording, float | None]]:
        """The recordings not finished yet, with their header durations. A file that failed is finished unless it
        changed (a corrupt file stays corrupt), or `retry_failed`."""
        again = {"pending", "running", "failed"} if retry_failed else {"pending", "running"}
        rows = {r["path"]: r for r in self.db.execute("SELECT path, status, duration_s FROM files")}
        return [(rec, rows[rec.path]["duration_s"]) for rec in recordings if rows[rec.path]["status"] in again]

    def mark_running(self, batch: list[Recording], worker: str) -> None:
        with self.db:
            self.db.executemany("UPDATE files SET status = 'running', worker = ?, started_at = ? WHERE path = ?",
                                [(worker, time.time(), r.path) for r in batch])

    def mark_finished(self, r: FileResult) -> None:
        with self.db:
            self.db.execute("UPDATE files SET status = ?, error = ?, audio_s = ?, events = ?, recorded_at = ?, "
                            "time_from = ?, worker = ?, finished_at = ? WHERE path = ?",
                            (r.status, r.error, r.audio_s, r.events, r.recorded_at, r.time_from, r.worker or None,
                             time.time(), r.path))

    def rows(self, *statuses: str, paths: set[str] | None = None) -> list[sqlite3.Row]:
        marks = ", ".join("?" * len(statuses))
        rows = self.db.execute(f"SELECT * FROM files WHERE status IN ({marks}) ORDER BY key", statuses).fetchall()
        return [r for r in rows if paths is None or r["path"] in paths]


def result_csv(results: Path, key: str) -> Path:
    return results / f"{key}.csv"


# --------------------------------------------------------------------------------------------- the worker side

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
    """Per worker process: the site's time zone for every time it writes, and its share of the cores."""
    if settings.detector.tz:
        os.environ["TZ"] = settings.detector.tz
        time.tzset()
    if settings.threads:
        import torch
        torch.set_num_threads(settings.threads)


class Analyzer:
    """A worker: the model, loaded once, and the detector settings. `analyze` runs a batch of recordings through
    one runner (their windows share the network's batches: several files keep a GPU busy), each recording with
    its own outputs in a temporary folder, and hands back each one's status and result files."""

    def __init__(self, settings: WorkerSettings):
        from birdlive.model import DEFAULT_CHECKPOINT, load_checkpoint, pick_device

        from ..core.events import EventFilter
        from ..core.stream import default_params
        apply_process_settings(settings)
        d = self.settings = settings.detector
        self.net = load_checkpoint(d.model or DEFAULT_CHECKPOINT, device=pick_device(settings.compute))
        self.params = default_params(self.net.cfg, threshold_on=d.threshold_on, threshold_off=d.threshold_off,
                                     species_thresholds={i: (on, off) for i, on, off in d.species_thresholds}
                                     or None, min_duration_s=d.min_duration_s, merge_gap_s=d.merge_gap_s)
        self.event_filter = EventFilter(list(d.include), list(d.exclude), d.min_conf)
        self.site_tz = site_zone(d.tz)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        # One scorer for every batch: making it (BatchNorm folded into a copy of the network) took 0.1 s, a
        # sixth of the time of a one-minute recording.
        from ..core.scorer import SharedScorer
        self.scorer = SharedScorer(self.net)

    def analyze(self, batch: list[Recording]) -> list[FileResult]:
        from ..core.runner import Runner, file_specs
        from ..core.stream import StreamState
        d, cfg = self.settings, self.net.cfg
        with tempfile.TemporaryDirectory(prefix="birdlive-analyze-") as tmp:
            starts = {r.path: recorder_start(r.path, self.site_tz) for r in batch}
            folders = {r.path: Path(tmp) / str(i) for i, r in enumerate(batch)}
            router = PerRecording({r.path: self._outputs(r, starts[r.path], folders[r.path]) for r in batch})
            try:
                runner = Runner(self.scorer, [router], lambda name: StreamState(
                    name, cfg, hop_s=d.hop_s, params=self.params, event_filter=self.event_filter),
                    max_open=len(batch), annotators=[router], pre_roll_s=d.pre_roll_s, post_roll_s=d.post_roll_s)
                specs = file_specs([r.path for r in batch], self.net.cfg.sample_rate, channel=d.channel)
                ended = {s.source: s for s in runner.run(specs)}
            finally:
                router.close()
            return [self._result(r, ended.get(r.path), folders[r.path], starts[r.path]) for r in batch]

    def _outputs(self, rec: Recording, start: RecorderStart | None, folder: Path) -> RecordingOutputs:
        from ..sinks.outputs import OutputOptions, build_outputs
        d, name = self.settings, Path(rec.key).name
        folder.mkdir(parents=True)
        wanted = {fmt: folder / f"{name}{suffix}" if fmt in d.outputs else None
                  for fmt, suffix in RESULT_SUFFIXES.items()}
        outputs = build_outputs(OutputOptions(
            csv=wanted["csv"], raven=wanted["raven"], audacity=wanted["audacity"], jsonl=wanted["jsonl"],
            clips=wanted["clips"], pictures=d.clip_pictures, pre_roll_s=d.pre_roll_s, post_roll_s=d.post_roll_s,
            quiet=True, summaries=False), self.net.cfg)
        # The driver reports every file's warnings and error, once, above its progress bar: not the workers.
        outputs.sinks = [s for s in outputs.sinks if s is not outputs.report]
        published = (Path(RESULTS) / rec.key).parent.as_posix()
        return RecordingOutputs(outputs, start and start.time, folder, published)

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


# --------------------------------------------------------------------------------------------- executors

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
    return " ".join(f"{batch_name(batch)}: unexpected {type(e).__name__}: {e} (a bug)".split())


def failed_results(batch: list[Recording], error: str) -> list[FileResult]:
    return [FileResult(r.path, r.key, "failed", error=error) for r in batch]


# --------------------------------------------------------------------------------------------- the driver

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
                 progress: ArchiveProgress | None):
        self.results = outdir / RESULTS
        self.manifest, self.tally, self.durations, self.progress = manifest, tally, durations, progress

    def started(self, batch: list[Recording], worker: str) -> None:
        self.manifest.mark_running(batch, worker)

    def finished(self, result: FileResult) -> None:
        remove_results(self.results, result.key)        # an earlier version's must not linger beside these
        publish(self.results, result)
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


def publish(results: Path, r: FileResult) -> None:
    """Each result file under its final name only once complete. No fsync: a killed process loses nothing the
    kernel has, and after a power cut the manifest (committed after this) cannot claim more than is there."""
    folder = (results / r.key).parent
    for name, data in r.files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)


def remove_results(results: Path, key: str) -> None:
    import glob
    import shutil
    target = results / key
    for p in target.parent.glob(f"{glob.escape(target.name)}.*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def write_combined(outdir: Path, manifest: Manifest) -> None:
    """OUTDIR/detections.csv from the per-file results of every finished recording (done, or failed mid-way with
    the events it had), in key order: each file exactly once, whatever was retried or killed on the way.
    Replaced in one rename."""
    results, header = outdir / RESULTS, None
    fd, tmp = tempfile.mkstemp(prefix=f".{COMBINED}.", suffix=".part", dir=outdir)
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        for row in manifest.rows("done", "failed"):
            path = result_csv(results, row["key"])
            if row["status"] == "failed" and not path.exists():
                continue
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                first = next(reader, None)
                if header is None and first is not None:
                    header = first
                    writer.writerow(header)
                writer.writerows(reader)
    os.replace(tmp, outdir / COMBINED)


def write_errors(outdir: Path, manifest: Manifest) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{ERRORS}.", suffix=".part", dir=outdir)
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["path", "error"])
        writer.writerows((row["path"], row["error"]) for row in manifest.rows("failed"))
    os.replace(tmp, outdir / ERRORS)


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


def analyze_archive(recordings: list[Recording], out: Path, detector: DetectorSettings, execute: Execute,
                    progress: ArchiveProgress | None = None, batch_files: int = 1,
                    retry_failed: bool = False) -> ArchiveSummary:
    """Analyse the `recordings` (find_recordings) not yet finished in the output folder `out` (prepare_outdir);
    Ctrl-C (KeyboardInterrupt) stops the run with everything finished so far kept. Returns the summary; the
    combined CSV and errors.csv are rewritten from the manifest however the run ended."""
    manifest = Manifest(out / MANIFEST)
    try:
        manifest.check_settings(detector)
        manifest.sync(recordings, out / RESULTS, header_duration)
        todo = manifest.todo(recordings, retry_failed)
        durations = {rec.path: d for rec, d in todo}
        tally = Tally(len(todo), sum(d or 0.0 for d in durations.values()), skipped=len(recordings) - len(todo))
        driver = ArchiveDriver(out, manifest, tally, durations, progress)
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
