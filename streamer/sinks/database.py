"""The detection database (`--db PATH`): every event, each stream's status, the model that made them and the
reviews people give them, in one SQLite file that `birdlive serve` reads and `birdlive finetune` learns from.

SQLite in WAL mode: readers (the web page) never block a writer, several detector processes may write one file
(each write waits up to BUSY_TIMEOUT_S for the others), and a committed event survives `kill -9` and, with
`synchronous=FULL`, a power cut, as the CSV log does. The schema's version is SQLite's `user_version`; MIGRATIONS
is the one list of changes, applied in order to a file made by an older birdlive.

Times are unix seconds (REAL). `heard` is when the bird called as far as anyone knows: the event's wall time
(live input, --realtime replay, analyze's recorder clock), else when the row was written (fast replay).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from birdlive.errors import BirdliveError, OptionError, one_line

from ..core.events import Event, EventAudio, StreamStatus

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0          # how long a write waits for another process's (a detector's writes take ms)
STATUS_EVERY_S = 2.0           # a running stream's status row is refreshed this often (and when it ends)
LOSSES = ("overflows", "dropped_blocks", "reconnects", "clock_steps")   # the source stats that are lost audio
VERDICTS = ("confirm", "reject", "relabel")
NO_BIRD = ""                   # a relabel to "no bird": the species of a relabel that names none

# Each entry takes the schema from version i to i + 1. Append only: a released entry is never edited.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE models (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,                 -- as given to --model ("default": the embedded one)
        labels TEXT NOT NULL,               -- JSON list of its species codes
        names TEXT NOT NULL,                -- JSON list of their common names (as labels where it has none)
        first_used REAL NOT NULL,
        UNIQUE (name, labels)
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,               -- file path or device name
        species TEXT NOT NULL,
        common_name TEXT NOT NULL,
        onset_s REAL NOT NULL,              -- stream seconds
        offset_s REAL NOT NULL,
        peak_conf REAL NOT NULL,
        mean_conf REAL NOT NULL,
        wall_onset REAL,                    -- unix time, where the stream has a wall clock
        wall_offset REAL,
        clip TEXT,                          -- absolute path of its FLAC (a PNG beside it where one was drawn)
        model_id INTEGER REFERENCES models (id),
        written REAL NOT NULL,              -- unix time the row was committed
        heard REAL NOT NULL                 -- wall_onset, else written
    );
    CREATE INDEX events_heard ON events (heard);
    CREATE INDEX events_species_heard ON events (species, heard);
    CREATE TABLE streams (
        source TEXT PRIMARY KEY,
        state TEXT NOT NULL,                -- running | done | failed
        error TEXT,
        level_dbfs REAL NOT NULL,
        realtime_factor REAL NOT NULL,
        audio_s REAL NOT NULL,
        events INTEGER NOT NULL,
        losses TEXT NOT NULL,               -- JSON object: overflows, dropped_blocks, reconnects, clock_steps
        warnings TEXT NOT NULL,             -- JSON list of lines
        clips TEXT,                         -- the folder its clips go to
        model_id INTEGER REFERENCES models (id),
        pid INTEGER NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE reviews (
        id INTEGER PRIMARY KEY,
        event_id INTEGER NOT NULL REFERENCES events (id),
        verdict TEXT NOT NULL CHECK (verdict IN ('confirm', 'reject', 'relabel')),
        species TEXT,                       -- relabel: the right species ('' = no bird); else NULL
        reviewer TEXT NOT NULL,
        reviewed REAL NOT NULL
    );
    CREATE INDEX reviews_event ON reviews (event_id, id);
    -- an event's review is its newest one (the older ones stay, as history)
    CREATE VIEW latest_reviews AS
        SELECT r.* FROM reviews r WHERE r.id = (SELECT MAX(id) FROM reviews WHERE event_id = r.event_id);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: str | Path, read_only: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit: `write`), rows as sqlite3.Row. Read-only
    connections open the file with `mode=ro` and can change nothing; the others migrate it to SCHEMA_VERSION
    (creating it where it is missing). OptionError (one line) for a file that is not a birdlive database."""
    path = Path(path)
    try:
        if read_only:
            conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, isolation_level=None,
                                   timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        if read_only:
            _check_version(conn, path, writable=False)
        else:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")      # a commit is on disk, as a CSV row is after its fsync
            migrate(conn, path)
        return conn
    except sqlite3.DatabaseError as e:
        raise OptionError(f"--db {path}: {_reason(e)}") from None
    except OSError as e:
        raise OptionError(f"--db {path}: {e.strerror or e}") from None


def _reason(e: sqlite3.Error) -> str:
    text = one_line(e)
    return "not a birdlive database (not SQLite)" if "file is not a database" in text else text


def _check_version(conn: sqlite3.Connection, path: Path, writable: bool) -> int:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise OptionError(f"--db {path}: made by a newer birdlive (schema {version}; this one knows up to "
                          f"{SCHEMA_VERSION})")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if version == 0 and tables:
        raise OptionError(f"--db {path}: an SQLite file, but not a birdlive database (it has other tables)")
    if version < SCHEMA_VERSION and not writable:
        raise OptionError(f"--db {path}: schema {version} is older than this birdlive's ({SCHEMA_VERSION}); a "
                          f"detector (or `birdlive serve`) with --db on it brings it up to date")
    return version


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply the migrations the file lacks, in one write transaction (two processes starting at once: the second
    waits, then finds nothing left to do)."""
    with write(conn):
        version = _check_version(conn, path, writable=True)
        for i in range(version, SCHEMA_VERSION):
            for statement in _statements(MIGRATIONS[i]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {i + 1}")


def _statements(script: str) -> list[str]:
    """A migration's statements (executescript would commit the transaction it runs in)."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    return [s for s in out if s]


class write:
    """`with write(conn):` one IMMEDIATE transaction (the write lock from its start: no deadlock between two
    processes that both read first), committed on success and rolled back on an exception."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, value, tb) -> None:
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")


def model_id(conn: sqlite3.Connection, name: str, labels: list[str], names: list[str] | None = None) -> int:
    """The row of the model `name` with these labels (and their common `names`), added where it is new."""
    text = json.dumps(list(labels))
    common = json.dumps([n or label for n, label in zip(names or labels, labels)])
    with write(conn):
        conn.execute("INSERT OR IGNORE INTO models (name, labels, names, first_used) VALUES (?, ?, ?, ?)",
                     (name, text, common, time.time()))
        return conn.execute("SELECT id FROM models WHERE name = ? AND labels = ?", (name, text)).fetchone()[0]


def insert_event(conn: sqlite3.Connection, e: Event, model: int | None, clip: str | None = None) -> int:
    """One event's row (inside the caller's transaction); its id."""
    now = time.time()
    cur = conn.execute(
        "INSERT INTO events (source, species, common_name, onset_s, offset_s, peak_conf, mean_conf, wall_onset, "
        "wall_offset, clip, model_id, written, heard) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (e.source, e.species, e.name, e.onset_s, e.offset_s, e.peak, e.mean, e.wall_onset, e.wall_offset,
         clip if clip is not None else e.clip, model, now, e.wall_onset if e.wall_onset is not None else now))
    return int(cur.lastrowid or 0)


def add_review(conn: sqlite3.Connection, event_id: int, verdict: str, reviewer: str,
               species: str | None = None) -> int:
    """A person's verdict on an event: confirm, reject, or relabel to `species` (NO_BIRD: no bird at all).
    ValueError for an unknown verdict, or an event that is not there."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}")
    if verdict == "relabel" and species is None:
        raise ValueError("a relabel names the species (or NO_BIRD)")
    with write(conn):
        if conn.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone() is None:
            raise ValueError(f"no event {event_id}")
        cur = conn.execute("INSERT INTO reviews (event_id, verdict, species, reviewer, reviewed) VALUES "
                           "(?, ?, ?, ?, ?)", (event_id, verdict, species if verdict == "relabel" else None,
                                               reviewer, time.time()))
        return int(cur.lastrowid or 0)


@dataclass
class _Written:
    at: float
    state: str


class DetectionDatabase:
    """A sink: each event committed (durable) before the next sink sees it, each stream's status every
    STATUS_EVERY_S and when it ends. Clip paths are stored absolute, so that `serve --clips` finds them whatever
    folder the detector ran in."""

    def __init__(self, path: str | Path, model_name: str = "default", labels: list[str] | None = None,
                 names: list[str] | None = None, clips: Path | None = None):
        self.path = Path(path)
        self.model_name, self.labels, self.names = model_name, list(labels or []), list(names or labels or [])
        self.clips = str(Path(clips).resolve()) if clips is not None else None
        self.conn: sqlite3.Connection | None = None
        self.model: int | None = None
        self._status: dict[str, _Written] = {}
        self.rows = 0

    def open(self) -> "DetectionDatabase":
        """Create or migrate the file now (a bad path is refused before any audio is read)."""
        self.conn = connect(self.path)
        self.model = self._guard(lambda c: model_id(c, self.model_name, self.labels, self.names))
        return self

    def _guard(self, work):
        """`work(conn)`; a database that fails (a full disk, a lock held past the timeout) ends the run with
        one line: an event that cannot be stored must not be shown as if it were."""
        if self.conn is None:
            self.open()
        try:
            return work(self.conn)
        except sqlite3.Error as e:
            raise BirdliveError(f"--db {self.path}: cannot write ({_reason(e)})") from None

    def on_event(self, e: Event, audio: EventAudio | None = None) -> None:
        clip = str(Path(e.clip).resolve()) if e.clip else None

        def store(conn: sqlite3.Connection) -> None:
            with write(conn):
                insert_event(conn, e, self.model, clip)
        self._guard(store)
        self.rows += 1

    def on_status(self, s: StreamStatus) -> None:
        last = self._status.get(s.source)
        now = time.monotonic()
        if last is not None and last.state == s.state and now - last.at < STATUS_EVERY_S:
            return
        self._status[s.source] = _Written(now, s.state)
        self._guard(lambda conn: self._write_status(conn, s))

    def _write_status(self, conn: sqlite3.Connection, s: StreamStatus) -> None:
        losses = {k: s.source_stats.get(k, 0) for k in LOSSES}
        with write(conn):
            conn.execute(
                "INSERT OR REPLACE INTO streams (source, state, error, level_dbfs, realtime_factor, audio_s, "
                "events, losses, warnings, clips, model_id, pid, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?, ?)", (s.source, s.state, s.error, s.level_dbfs, s.realtime_factor, s.audio_s, s.events,
                             json.dumps(losses), json.dumps(list(s.warnings)), self.clips, self.model, os.getpid(),
                             time.time()))

    def store_recording(self, source: str, log_csv: str, clip_base: Path, error: str | None = None,
                        audio_s: float = 0.0) -> None:
        """`analyze`: one recording's events (its result CSV's text; clip paths relative to `clip_base`) and its
        status, in one transaction. An earlier analysis of it goes first, except events somebody reviewed."""
        events = [_csv_event(row, clip_base) for row in csv.DictReader(io.StringIO(log_csv))]

        def store(conn: sqlite3.Connection) -> None:
            with write(conn):
                conn.execute("DELETE FROM events WHERE source = ? AND id NOT IN (SELECT event_id FROM reviews)",
                             (source,))
                for e in events:
                    insert_event(conn, e, self.model)
            status = StreamStatus(source, "failed" if error else "done", error=error, audio_s=audio_s,
                                  events=len(events))
            self._write_status(conn, status)
        self._guard(store)
        self.rows += len(events)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _csv_event(row: dict, clip_base: Path) -> Event:
    """An event back from a CSV log's row (csvlog.event_row)."""
    def wall(text: str | None) -> float | None:
        return datetime.fromisoformat(text).timestamp() if text else None
    return Event(row["species"], row["common_name"], float(row["onset_s"]), float(row["offset_s"]),
                 float(row["peak_conf"]), float(row["mean_conf"]), row["source"], wall(row["wall_onset"]),
                 wall(row["wall_offset"]), str((clip_base / row["clip"]).resolve()) if row["clip"] else None)
