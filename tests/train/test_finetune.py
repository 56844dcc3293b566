"""`birdlive finetune`: from a database's reviews to a checkpoint `--model` takes, with the tiny model on three
copies of the synthetic recording (real `birdlive replay --db` and `birdlive finetune` processes)."""
import hashlib
import shutil
import sqlite3

import pytest

from birdlive.streamer.sinks.database import add_review, connect

from tests.common import RECORDING, TINY, birdlive, read_events_csv

pytestmark = pytest.mark.training


@pytest.fixture
def site(tmp_path):
    """Three recordings replayed into one database; returns (database, recordings, validation recording)."""
    recordings = []
    for name in ("north", "south", "west"):
        recordings.append(tmp_path / f"{name}.flac")
        shutil.copy(RECORDING, recordings[-1])
    db = tmp_path / "site.sqlite"
    r = birdlive("replay", *recordings, "--model", TINY, "--db", db, "--no-live")
    assert r.returncode == 0, r.stderr
    # finetune.split: whole recordings by the hash of their path; with three, one goes to validation
    val = min(map(str, recordings), key=lambda s: hashlib.sha1(s.encode()).hexdigest())
    return db, recordings, val


def _review(db, verdict_of) -> int:
    conn = connect(db)
    events = conn.execute("SELECT id, source, species FROM events").fetchall()
    for e in events:
        add_review(conn, e["id"], verdict_of(e), "test")
    conn.close()
    return len(events)


def test_rejected_species_is_learnt_and_the_run_is_a_model(site, tmp_path):
    db, recordings, _ = site
    _review(db, lambda e: "reject" if e["species"] == "trill" else "confirm")
    r = birdlive("finetune", "--db", db, "--model", TINY, "--run", tmp_path / "run", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "replaced" in r.stderr and f"--model {tmp_path / 'run'}" in r.stderr
    # the species only ever confirmed: nothing says where they are absent, and the user is told so
    assert "warning: finetune: no review says where downsweep, two_tone, upsweep is absent" in r.stderr
    r = birdlive("replay", recordings[0], "--model", tmp_path / "run", "--csv", tmp_path / "after.csv", "--no-live")
    assert r.returncode == 0, r.stderr
    after = read_events_csv(tmp_path / "after.csv")
    assert not [e for e in after if e["species"] == "trill"]              # the birder said: no trills here
    assert {"upsweep", "downsweep", "two_tone"} <= {e["species"] for e in after}   # and kept the others


def test_a_model_worse_on_the_validation_reviews_is_not_written(site, tmp_path):
    db, _, val = site
    # the validation recording's trills confirmed, the others' rejected: what it learns is wrong there
    _review(db, lambda e: "confirm" if e["species"] != "trill" or e["source"] == val else "reject")
    r = birdlive("finetune", "--db", db, "--model", TINY, "--run", tmp_path / "run", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "kept the model" in r.stderr and not (tmp_path / "run" / "best.safetensors").exists()
    assert (tmp_path / "run" / "finetune.json").exists()


def test_too_few_reviews_is_one_line(site, tmp_path):
    db, _, _ = site
    with sqlite3.connect(db) as conn:
        (first,) = conn.execute("SELECT MIN(id) FROM events").fetchone()
    add_review(connect(db), first, "confirm", "test")
    r = birdlive("finetune", "--db", db, "--model", TINY, "--run", tmp_path / "run")
    assert r.returncode == 1 and r.stderr.startswith("error: --db") and "at least 10" in r.stderr
    assert len(r.stderr.splitlines()) == 1
