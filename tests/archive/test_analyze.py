"""`birdlive analyze`: recorder times, bad files among good ones, resuming after `kill -9`, a worker that dies.

Everything runs the real command on real files with the tiny fixture model and two local worker processes
(tests/test_ray.py runs the same job on a real Ray cluster)."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import soundfile as sf

from birdlive.streamer.archive.discovery import find_recordings, name_start, recorder_start

from tests.common import BIRDLIVE, RECORDING, TINY, birdlive, match_events, read_events_csv, read_truth

RECORDING_S = 40.0          # recordings/synthetic_calls.flac


# --------------------------------------------------------------------------------------------- helpers

def run_analyze(inputs, out, *extra, workers=2):
    return birdlive("analyze", *inputs, "--out", out, "--model", TINY, "--workers", workers, "--no-progress",
                    *extra)


def long_recording(path: Path, repeats: int) -> Path:
    """recordings/synthetic_calls.flac played `repeats` times over: a file that takes a while to analyse."""
    y, sr = sf.read(RECORDING, dtype="float32")
    sf.write(path, np.tile(y, repeats), sr)
    return path


def manifest_rows(out: Path) -> dict[str, dict]:
    """The manifest as another process sees it while the command runs ({} before its table exists)."""
    if not (out / "manifest.sqlite").exists():
        return {}
    db = sqlite3.connect(out / "manifest.sqlite", timeout=30)
    db.row_factory = sqlite3.Row
    try:
        return {r["key"]: dict(r) for r in db.execute("SELECT * FROM files")}
    except sqlite3.OperationalError:        # created, its table not yet
        return {}
    finally:
        db.close()


def wait_for(predicate, timeout=120.0, what="condition"):
    """Polls `predicate` every 50 ms until it returns something true; fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def rows_by_source(path: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in read_events_csv(path):
        out.setdefault(r["source"], []).append(r)
    return out


def assert_each_file_once(out: Path, files: list[Path]) -> None:
    """detections.csv holds each recording's own result rows exactly once, and nothing else."""
    combined = rows_by_source(out / "detections.csv")
    assert set(combined) <= {str(f) for f in files}
    for f in files:
        own = read_events_csv(out / "results" / f"{f.name}.csv")
        assert own, f"no events in {f.name}"
        assert combined[str(f)] == own


# --------------------------------------------------------------------------------------------- recorder time

def test_start_time_from_file_names():
    utc, berlin = timezone.utc, ZoneInfo("Europe/Berlin")
    moth = name_start("20240501_053000", berlin)            # AudioMoth: its names are UTC
    assert (moth.time, moth.origin) == (datetime(2024, 5, 1, 5, 30, tzinfo=utc), "audiomoth-name")
    meter = name_start("SITE_20240501_053000", berlin)      # Song Meter: the site's local time
    assert meter.time == datetime(2024, 5, 1, 3, 30, tzinfo=utc) and meter.origin == "name"
    assert name_start("S4A01234_20240105_053000_000", berlin).time.utcoffset() == timedelta(hours=1)  # winter
    assert name_start("20241399_053000", berlin) is None     # digits, but no date
    assert name_start("dawn chorus", berlin) is None


def test_start_time_from_audiomoth_comment_and_guano(tmp_path):
    guano = pytest.importorskip("guano")
    moth = tmp_path / "20240501_043000.WAV"                 # name in UTC+1 local time, as the comment says
    with sf.SoundFile(moth, "w", 48000, 1) as f:
        f.comment = "Recorded at 05:30:00 01/05/2024 (UTC+1) by AudioMoth 24F319055FDF2D8B at medium gain"
        f.write(np.zeros(4800, np.float32))
    t = recorder_start(str(moth), None)
    assert t.origin == "audiomoth-comment"
    assert t.time == datetime(2024, 5, 1, 4, 30, tzinfo=timezone.utc)
    half = tmp_path / "half.wav"
    with sf.SoundFile(half, "w", 48000, 1) as f:
        f.comment = "Recorded at 21:00:00 24/02/2020 (UTC-3:30) by AudioMoth 248E2C045BEA5A7D"
        f.write(np.zeros(4800, np.float32))
    assert recorder_start(str(half), None).time == datetime(2020, 2, 25, 0, 30, tzinfo=timezone.utc)

    bat = tmp_path / "SITE_20240501_000000.wav"             # GUANO wins over the name
    sf.write(bat, np.zeros(4800, np.float32), 48000)
    g = guano.GuanoFile(str(bat))
    g["Timestamp"] = datetime(2024, 5, 1, 5, 30, 0, tzinfo=timezone(timedelta(hours=-4)))
    g.write(make_backup=False)
    t = recorder_start(str(bat), ZoneInfo("Europe/Berlin"))
    assert t.origin == "guano" and t.time == datetime(2024, 5, 1, 9, 30, tzinfo=timezone.utc)


def test_discovery_is_recursive_and_keys_keep_the_layout(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.WAV", "a/b/y.flac", "a/b/z.mp3", "a/notes.txt", "top.ogg"):
        (tmp_path / name).write_bytes(b"x")
    keys = [r.key for r in find_recordings([tmp_path / "a", tmp_path / "top.ogg"])]
    assert keys == ["a/b/y.flac", "a/b/z.mp3", "a/x.WAV", "top.ogg"]


# --------------------------------------------------------------------------------------------- the command

def test_bad_files_do_not_stop_the_batch_and_a_rerun_redoes_only_what_changed(tmp_path):
    src = tmp_path / "season"
    (src / "site1").mkdir(parents=True)
    moth = src / "site1" / "20240501_053000.flac"
    meter = src / "SITE2_20240501_060000.flac"
    shutil.copy(RECORDING, moth)
    shutil.copy(RECORDING, meter)
    shutil.copy(RECORDING, src / "plain.flac")
    (src / "corrupt.flac").write_bytes(RECORDING.read_bytes()[:30000] + bytes(range(256)) * 40)
    (src / "empty.wav").write_bytes(b"")
    (src / "notes.wav").write_text("not audio\n")
    (src / "readme.txt").write_text("ignored: not an audio extension\n")
    out = tmp_path / "out"

    r = run_analyze([src], out, "--tz", "America/Puerto_Rico", "--jsonl")
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"6 files, 3 failed (see {out / 'errors.csv'}), ")
    with open(out / "errors.csv", newline="") as f:
        errors = {Path(row["path"]).name: row["error"] for row in csv.DictReader(f)}
    assert set(errors) == {"corrupt.flac", "empty.wav", "notes.wav"}
    assert "empty" in errors["empty.wav"] and "not an audio file" in errors["notes.wav"]
    for line in errors.values():
        assert f"error: {line}" in r.stderr
    rows = manifest_rows(out)
    assert {k: v["status"] for k, v in rows.items()} == {
        "site1/20240501_053000.flac": "done", "SITE2_20240501_060000.flac": "done", "plain.flac": "done",
        "corrupt.flac": "failed", "empty.wav": "failed", "notes.wav": "failed"}
    assert rows["plain.flac"]["audio_s"] == pytest.approx(RECORDING_S)

    # every good file: its own result files, the true calls, and the combined CSV holding each once
    truth = read_truth()
    combined = rows_by_source(out / "detections.csv")
    for f in (moth, meter, src / "plain.flac"):
        own = read_events_csv(out / "results" / f"{f.relative_to(src)}.csv")
        _, missed, spurious = match_events(truth, [(e["species"], float(e["onset_s"]), float(e["offset_s"]))
                                                   for e in own])
        assert not missed and not spurious
        assert combined[str(f)] == own
        assert (out / "results" / f"{f.relative_to(src)}.jsonl").read_text().count("\n") == len(own)
    assert set(combined) <= {str(moth), str(meter), str(src / "plain.flac"), str(src / "corrupt.flac")}

    # wall times: AudioMoth names are UTC, Song Meter names the site's local time; written in the site's zone
    first = combined[str(moth)][0]
    onset = datetime(2024, 5, 1, 5, 30, tzinfo=timezone.utc) + timedelta(seconds=float(first["onset_s"]))
    assert first["wall_onset"] == onset.astimezone(ZoneInfo("America/Puerto_Rico")).isoformat(timespec="milliseconds")
    assert combined[str(meter)][0]["wall_onset"].startswith("2024-05-01T06:00:01") and \
        combined[str(meter)][0]["wall_onset"].endswith("-04:00")
    assert combined[str(src / "plain.flac")][0]["wall_onset"] == ""

    # rerun after repairing one file: only that file is analysed; the others keep their results untouched
    shutil.copy(RECORDING, src / "corrupt.flac")
    r = run_analyze([src], out, "--tz", "America/Puerto_Rico", "--jsonl")
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("6 files (5 finished before), 2 failed")
    again = manifest_rows(out)
    assert again["corrupt.flac"]["status"] == "done"
    for key in ("plain.flac", "site1/20240501_053000.flac", "empty.wav", "notes.wav"):
        assert again[key]["finished_at"] == rows[key]["finished_at"]
    assert len(rows_by_source(out / "detections.csv")[str(src / "corrupt.flac")]) == len(combined[str(moth)])


def test_kill_9_of_the_driver_loses_only_files_in_flight(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    files = [long_recording(src / f"rec{i}.flac", repeats=6) for i in range(6)]   # 4 min each
    out = tmp_path / "out"
    cmd = [*BIRDLIVE, "analyze", str(src), "--out", str(out), "--model", str(TINY), "--workers", "1",
           "--no-progress"]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: any(r["status"] == "done" for r in manifest_rows(out).values()),
                 what="a first finished file")
        driver.kill()                   # SIGKILL: no handler runs, nothing is flushed
        driver.wait(10)
        before = manifest_rows(out)
        done_before = {k: r["finished_at"] for k, r in before.items() if r["status"] == "done"}
        assert 1 <= len(done_before) < len(files)
        # the orphaned worker notices its driver is gone and leaves
        wait_for(lambda: not _group_alive(driver.pid), timeout=60, what="the worker to exit")
    finally:
        _kill_group(driver.pid)

    r = run_analyze([src], out, workers=1)
    assert r.returncode == 0, r.stderr
    assert f"{len(files)} files ({len(done_before)} finished before), 0 failed" in r.stderr
    after = manifest_rows(out)
    assert all(row["status"] == "done" for row in after.values())
    for key, finished_at in done_before.items():
        assert after[key]["finished_at"] == finished_at         # not redone
    assert_each_file_once(out, files)


def test_a_worker_that_dies_mid_run_loses_no_file(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    files = [long_recording(src / f"rec{i}.flac", repeats=4) for i in range(6)]
    out = tmp_path / "out"
    cmd = [*BIRDLIVE, "analyze", str(src), "--out", str(out), "--model", str(TINY), "--workers", "2",
           "--no-progress"]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        wait_for(lambda: any(r["status"] == "done" for r in manifest_rows(out).values()),
                 what="a first finished file")
        victim = manifest_rows(out)
        assert sum(r["status"] != "done" for r in victim.values()) >= 2
        worker = wait_for(lambda: _pool_workers(driver.pid), what="the pool's workers")[0]
        os.kill(worker, signal.SIGKILL)
        stdout, stderr = driver.communicate(timeout=300)
    finally:
        _kill_group(driver.pid)
    assert driver.returncode == 0, stderr
    assert all(r["status"] == "done" for r in manifest_rows(out).values())
    assert_each_file_once(out, files)


def test_option_errors_are_one_line(tmp_path):
    r = run_analyze([tmp_path / "nowhere"], tmp_path / "out")
    assert r.returncode == 1 and r.stderr.strip() == f"error: {tmp_path / 'nowhere'}: no such file or folder"
    (tmp_path / "afile").write_text("x")
    r = run_analyze([RECORDING], tmp_path / "afile" / "out")
    assert r.returncode == 1 and r.stderr.startswith("error: --out ") and "cannot write there" in r.stderr
    r = run_analyze([RECORDING], tmp_path / "out", "--tz", "Mars/Olympus")
    assert r.returncode == 1 and "unknown time zone" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_other_settings_cannot_mix_into_one_output_folder(tmp_path):
    out = tmp_path / "out"
    r = run_analyze([RECORDING], out, workers=1)
    assert r.returncode == 0, r.stderr
    r = run_analyze([RECORDING], out, "--threshold-on", "0.9", workers=1)
    assert r.returncode == 1 and "other settings (threshold_on None → 0.9)" in r.stderr


# --------------------------------------------------------------------------------------------- processes

def _pool_workers(pid: int) -> list[int]:
    """The driver's worker processes (not multiprocessing's resource tracker, its other child)."""
    try:
        children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return [c for c in children if b"spawn_main" in _cmdline(c)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _kill_group(pgid: int) -> None:
    """Whatever is left of the process group the test started (the command and its workers)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
