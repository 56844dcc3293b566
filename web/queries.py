"""What the pages ask of the detection database (birdlive.streamer.sinks.database owns its schema): recent events,
a day's species, searches, stream health. Every query is bounded (LIMIT); times are unix seconds, days local.

An event counts as its reviewer says: a rejection or a relabel to "no bird" removes it from the counts, a relabel
moves it to the named species; the newest review of an event is the one that counts.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from birdlive.streamer.sinks.summary import Detection

MAX_ROWS = 200          # the most rows one page shows

# An event with its newest review; `final` is the species the event counts for ('' = no bird).
_EVENTS = """
    SELECT e.*, r.verdict, r.species AS review_species, r.reviewer, r.reviewed,
           CASE WHEN r.verdict = 'relabel' THEN r.species WHEN r.verdict = 'reject' THEN '' ELSE e.species END
               AS final
    FROM events e LEFT JOIN latest_reviews r ON r.event_id = e.id
"""


@dataclass(frozen=True)
class Search:
    """A search's conditions, as checked from the query string (app.py): all of them optional."""
    first_day: date | None = None
    last_day: date | None = None
    species: str | None = None          # a code: as the detector said it, or as a reviewer relabelled it
    min_conf: float = 0.0
    max_conf: float = 1.0
    unreviewed: bool = False
    source: str | None = None


def day_bounds(day: date) -> tuple[float, float]:
    """A local day as [start, end) unix times (a day with a clock change is 23 or 25 hours)."""
    start = datetime.combine(day, datetime.min.time()).astimezone()
    end = datetime.combine(day + timedelta(days=1), datetime.min.time()).astimezone()
    return start.timestamp(), end.timestamp()


def names(conn: sqlite3.Connection) -> dict[str, str]:
    """Species code → common name, from every model that wrote to the database."""
    out: dict[str, str] = {}
    for row in conn.execute("SELECT labels, names FROM models ORDER BY id"):
        out.update(zip(json.loads(row["labels"]), json.loads(row["names"])))
    return out


def recent(conn: sqlite3.Connection, after_id: int = 0, limit: int = 50) -> list[sqlite3.Row]:
    """The newest events (after `after_id`), newest first."""
    return conn.execute(f"SELECT * FROM ({_EVENTS}) WHERE id > ? ORDER BY id DESC LIMIT ?",
                        (after_id, min(limit, MAX_ROWS))).fetchall()


def last_id(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]


def search(conn: sqlite3.Connection, s: Search, limit: int = 50, offset: int = 0) -> list[sqlite3.Row]:
    """Events that meet `s`, newest first."""
    where = ["peak_conf >= ?", "peak_conf <= ?"]
    args: list[float | str] = [s.min_conf, s.max_conf]
    if s.first_day is not None:
        where.append("heard >= ?")
        args.append(day_bounds(s.first_day)[0])
    if s.last_day is not None:
        where.append("heard < ?")
        args.append(day_bounds(s.last_day)[1])
    if s.species is not None:
        where.append("(species = ? OR final = ?)")
        args += [s.species, s.species]
    if s.unreviewed:
        where.append("verdict IS NULL")
    if s.source is not None:
        where.append("source = ?")
        args.append(s.source)
    return conn.execute(f"SELECT * FROM ({_EVENTS}) WHERE {' AND '.join(where)} ORDER BY heard DESC, id DESC "
                        f"LIMIT ? OFFSET ?", (*args, min(limit, MAX_ROWS), offset)).fetchall()


@dataclass(frozen=True)
class DaySpecies:
    species: str
    count: int
    first: float
    last: float
    best: float
    unreviewed: int


def day_species(conn: sqlite3.Connection, day: date) -> list[DaySpecies]:
    """The species a day's events count for, most heard first."""
    start, end = day_bounds(day)
    rows = conn.execute(
        f"SELECT final, COUNT(*) AS n, MIN(heard) AS first, MAX(heard) AS last, MAX(peak_conf) AS best, "
        f"SUM(verdict IS NULL) AS unreviewed FROM ({_EVENTS}) WHERE heard >= ? AND heard < ? AND final != '' "
        f"GROUP BY final ORDER BY n DESC, final LIMIT ?", (start, end, MAX_ROWS * 10)).fetchall()
    return [DaySpecies(r["final"], r["n"], r["first"], r["last"], r["best"], r["unreviewed"]) for r in rows]


def day_detections(conn: sqlite3.Connection, day: date, common: dict[str, str]) -> list[Detection]:
    """A day's counted events as `summary` reads them from a CSV log (for its hour-by-species chart)."""
    start, end = day_bounds(day)
    rows = conn.execute(f"SELECT source, final, onset_s, peak_conf, heard, clip FROM ({_EVENTS}) WHERE heard >= ? "
                        f"AND heard < ? AND final != ''", (start, end)).fetchall()
    return [Detection(r["source"], r["final"], common.get(r["final"], r["final"]), r["onset_s"], r["peak_conf"],
                      datetime.fromtimestamp(r["heard"]).astimezone(), r["clip"]) for r in rows]


def event(conn: sqlite3.Connection, event_id: int) -> sqlite3.Row | None:
    return conn.execute(f"SELECT * FROM ({_EVENTS}) WHERE id = ?", (event_id,)).fetchone()


def streams(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM streams ORDER BY source LIMIT ?", (MAX_ROWS,)).fetchall()


def stream_clip_folders(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT clips FROM streams WHERE clips IS NOT NULL LIMIT 20")]
