"""OUTDIR, the one place an archive analysis writes: results/ (a recording's result files, beside each other),
detections.csv and errors.csv (rebuilt from the manifest), and manifest.sqlite, the single record of what is
finished. Only the driver writes here."""
from __future__ import annotations

import csv
import json
import sqlite3
import time
from pathlib import Path
from typing import Callable

from birdlive.errors import OptionError
from birdlive.files import atomic_path

from .discovery import Recording
from .worker import RESULTS, AnalysisSettings, FileResult

COMBINED = "detections.csv"
ERRORS = "errors.csv"
MANIFEST = "manifest.sqlite"


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

    def check_settings(self, settings: AnalysisSettings) -> None:
        """The first run stores its settings; a later one with other settings would mix two analyses."""
        row = self.db.execute("SELECT value FROM job WHERE name = 'settings'").fetchone()
        if row is None:
            with self.db:
                self.db.execute("INSERT INTO job VALUES ('settings', ?)", (settings.as_json(),))
            return
        old, new = json.loads(row["value"]), json.loads(settings.as_json())
        # a setting newer than the manifest is the same analysis while it is empty (off)
        changed = [f"{k} {old.get(k)!r} → {new[k]!r}" for k in new if old.get(k) != new[k] and (k in old or new[k])]
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


def publish(results: Path, r: FileResult) -> None:
    """Each result file under its final name only once complete. No fsync: a killed process loses nothing the
    kernel has, and after a power cut the manifest (committed after this) cannot claim more than is there."""
    folder = (results / r.key).parent
    for name, data in r.files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target, durable=False) as tmp:
            tmp.write_bytes(data)


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
    with atomic_path(outdir / COMBINED, durable=False) as tmp, open(tmp, "w", newline="", encoding="utf-8") as out:
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


def write_errors(outdir: Path, manifest: Manifest) -> None:
    with atomic_path(outdir / ERRORS, durable=False) as tmp, open(tmp, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["path", "error"])
        writer.writerows((row["path"], row["error"]) for row in manifest.rows("failed"))
