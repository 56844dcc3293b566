"""The detection database (`--db`): what replay, listen and analyze store, its schema and migrations, several
writers at once, and `kill -9` mid-run (every printed event is in the file), all with real `birdlive` processes."""
import os
import sqlite3
import subprocess
import time

import pytest

from birdlive.errors import OptionError
from birdlive.streamer import Event
from birdlive.streamer.sinks import database
from birdlive.streamer.sinks.database import SCHEMA_VERSION, DetectionDatabase, add_review, connect

from tests.common import BIRDLIVE, RECORDING, TINY, birdlive, read_events_csv


def _events(db) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM events ORDER BY id").fetchall()


def test_replay_stores_what_the_csv_has_with_clips_status_and_model(tmp_path):
    db, log = tmp_path / "birds.sqlite", tmp_path / "night.csv"
    r = birdlive("replay", RECORDING, "--model", TINY, "--db", db, "--csv", log, "--clips", tmp_path / "clips",
                 "--no-live", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows, csv_rows = _events(db), read_events_csv(log)
    assert [(e["species"], f"{e['onset_s']:.2f}", f"{e['peak_conf']:.3f}") for e in rows] == \
        [(c["species"], c["onset_s"], c["peak_conf"]) for c in csv_rows]
    assert all(os.path.isabs(e["clip"]) and os.path.exists(e["clip"]) for e in rows)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        (state, n, rtf, clips, model), = conn.execute(
            "SELECT s.state, s.events, s.realtime_factor, s.clips, m.name FROM streams s JOIN models m "
            "ON m.id = s.model_id").fetchall()
    assert (state, n, clips, model) == ("done", len(rows), str(tmp_path / "clips"), str(TINY)) and rtf > 1


def test_two_detectors_write_one_database_at_once(tmp_path):
    db = tmp_path / "shared.sqlite"
    procs = [subprocess.Popen([*BIRDLIVE, "replay", str(RECORDING), "--model", str(TINY), "--db", str(db),
                               "--no-live"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    printed = sum(len([ln for ln in out.splitlines() if "peak" in ln]) for out, _ in outs)
    assert printed > 0 and len(_events(db)) == printed


def test_kill_9_mid_run_loses_no_printed_event_and_a_restart_goes_on(tmp_path):
    db = tmp_path / "k.sqlite"
    args = [*BIRDLIVE, "replay", str(RECORDING), "--model", str(TINY), "--db", str(db), "--clips",
            str(tmp_path / "clips"), "--no-live", "--realtime"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    printed = []
    while len(printed) < 3:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        if "peak" in line:
            printed.append(line)
    proc.kill()                                 # SIGKILL: no handler, no close
    proc.wait(10)
    stored = _events(db)
    assert len(stored) >= len(printed)
    for line, row in zip(printed, stored):
        assert row["species"] in line and f"{row['onset_s']:.2f}" in line and os.path.exists(row["clip"])
    r = birdlive("replay", RECORDING, "--model", TINY, "--db", db, "--no-live")      # the same file again
    assert r.returncode == 0, r.stderr
    assert len(_events(db)) == len(stored) + len([ln for ln in r.stdout.splitlines() if "peak" in ln])


def test_analyze_stores_each_recording_once_however_often_it_is_redone(tmp_path):
    db, out = tmp_path / "a.sqlite", tmp_path / "out"
    for extra in ([], ["--retry-failed"]):
        r = birdlive("analyze", RECORDING, "--out", out, "--model", TINY, "--db", db, "--clips", "--workers", "1",
                     "--no-progress", *extra)
        assert r.returncode == 0, r.stderr
    rows, combined = _events(db), read_events_csv(out / "detections.csv")
    assert len(rows) == len(combined) > 0
    assert all(os.path.exists(e["clip"]) for e in rows)
    (out / "manifest.sqlite").unlink()          # analysed again from scratch: replaced, not doubled …
    with connect(db) as conn:
        add_review(conn, rows[0]["id"], "confirm", "tester")
    birdlive("analyze", RECORDING, "--out", out, "--model", TINY, "--db", db, "--workers", "1", "--no-progress")
    again = _events(db)
    assert len(again) == len(rows) + 1 and again[0]["id"] == rows[0]["id"]    # … except what was reviewed


@pytest.mark.parametrize("content, says", [
    (b"species,onset_s\n", "not a birdlive database (not SQLite)"),
    (None, "an SQLite file, but not a birdlive database (it has other tables)")])
def test_a_file_that_is_not_ours_is_one_line(tmp_path, content, says):
    path = tmp_path / "other.sqlite"
    if content is None:
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE t (x)")
    else:
        path.write_bytes(content)
    r = birdlive("replay", RECORDING, "--model", TINY, "--db", path, "--no-live")
    assert r.returncode == 1 and r.stderr.strip() == f"error: --db {path}: {says}"


def test_migrations_bring_an_older_file_up_to_date_and_a_newer_one_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "m.sqlite"
    extra = "CREATE TABLE notes (event_id INTEGER, text TEXT);"
    monkeypatch.setattr(database, "MIGRATIONS", database.MIGRATIONS[:1])
    monkeypatch.setattr(database, "SCHEMA_VERSION", 1)
    connect(path).close()
    with pytest.raises(OptionError, match="older than this birdlive's"):
        monkeypatch.setattr(database, "MIGRATIONS", database.MIGRATIONS + [extra])
        monkeypatch.setattr(database, "SCHEMA_VERSION", 2)
        connect(path, read_only=True)
    conn = connect(path)                        # a writer migrates it
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.execute("SELECT * FROM notes").fetchall()
    conn.close()
    monkeypatch.setattr(database, "MIGRATIONS", database.MIGRATIONS[:1])
    monkeypatch.setattr(database, "SCHEMA_VERSION", 1)
    with pytest.raises(OptionError, match="made by a newer birdlive"):
        connect(path)


def test_read_only_connection_cannot_write_and_the_newest_review_counts(tmp_path):
    sink = DetectionDatabase(tmp_path / "r.sqlite", labels=["a", "b"]).open()
    sink.on_event(Event("a", "A", 1.0, 2.0, 0.9, 0.8, "mic", wall_onset=time.time()))
    sink.close()
    ro = connect(tmp_path / "r.sqlite", read_only=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.execute("INSERT INTO reviews (event_id, verdict, reviewer, reviewed) VALUES (1, 'confirm', 'x', 0)")
    rw = connect(tmp_path / "r.sqlite")
    add_review(rw, 1, "confirm", "ann")
    add_review(rw, 1, "relabel", "bob", species=database.NO_BIRD)
    with pytest.raises(ValueError):
        add_review(rw, 99, "confirm", "ann")
    (latest,) = ro.execute("SELECT verdict, species, reviewer FROM latest_reviews").fetchall()
    assert tuple(latest) == ("relabel", "", "bob")
