"""`birdlive summary`: the per-species table and the activity chart, from a real replay's CSV and from hand-written
logs with wall times across several hours."""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import matplotlib.image
import pytest

from birdlive.errors import OptionError
from birdlive.streamer import CsvEventLog, file_specs, make_runner
from birdlive.streamer.sinks.summary import activity_chart, heard_at, hour_grid, read_event_logs, summarize
from tests.common import RECORDING, ROOT, TINY, birdlive, read_events_csv

OLD_COLUMNS = ["source", "species", "common_name", "onset_s", "offset_s", "duration_s", "peak_conf", "mean_conf",
               "wall_onset", "wall_offset"]                    # a log from before the `clip` column


@pytest.fixture(scope="module")
def replay_csv(tmp_path_factory) -> Path:
    from birdlive.model import load_checkpoint
    net = load_checkpoint(TINY)
    path = tmp_path_factory.mktemp("replay") / "night.csv"
    log = CsvEventLog(path).open()
    make_runner(net, [log]).run(file_specs([RECORDING], net.cfg.sample_rate))
    log.close()
    return path


def write_log(path: Path, rows: list[tuple], clip: bool = True) -> Path:
    """rows: (species, common name, wall_onset ISO or "", onset_s, peak[, clip])."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(OLD_COLUMNS + (["clip"] if clip else []))
        for sp, name, wall, onset, peak, *rest in rows:
            w.writerow(["USB mic", sp, name, onset, onset + 1, 1.0, peak, peak - 0.1, wall, "", *rest][
                       :len(OLD_COLUMNS) + clip])
    return path


@pytest.fixture
def dawn_logs(tmp_path) -> list[Path]:
    """Two rotated logs of one recorder: the first from before clips existed, the second with clips."""
    day1 = write_log(tmp_path / "night-2024-05-01.csv", [
        ("tawowl1", "Tawny Owl", "2024-05-01T23:10:00.000+02:00", 100.0, 0.61),
        ("tawowl1", "Tawny Owl", "2024-05-01T23:55:12.500+02:00", 2812.5, 0.83),
    ], clip=False)
    day2 = write_log(tmp_path / "night-2024-05-02.csv", [
        ("tawowl1", "Tawny Owl", "2024-05-02T01:05:00.000+02:00", 7000.0, 0.55, ""),
        ("eurrob1", "European Robin", "2024-05-02T04:01:00.000+02:00", 17000.0, 0.91, "clips/robin-1.flac"),
        ("eurrob1", "European Robin", "2024-05-02T04:20:00.000+02:00", 18140.0, 0.97, "clips/robin-2.flac"),
        ("eurrob1", "European Robin", "2024-05-02T05:02:30.000+02:00", 20660.0, 0.88, "clips/robin-3.flac"),
        ("blackb1", "Common Blackbird", "2024-05-02T04:45:00.000+02:00", 19640.0, 0.45, "clips/bb-1.flac"),
        ("blackb1", "Common Blackbird", "2024-05-02T04:46:00.000+02:00", 19700.0, 0.75, "clips/bb-2.flac"),
        ("blackb1", "Common Blackbird", "2024-05-02T06:30:00.000+02:00", 25940.0, 0.68, "clips/bb-3.flac"),
        ("blackb1", "Common Blackbird", "2024-05-02T06:31:00.000+02:00", 26000.0, 0.66, "clips/bb-4.flac"),
    ])
    return [day1, day2]


def test_summary_of_a_real_replay_matches_its_csv(replay_csv):
    rows = read_events_csv(replay_csv)
    summary = summarize(read_event_logs([replay_csv]))
    counts = Counter(r["species"] for r in rows)
    assert [(s.species, s.count) for s in summary] == sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    for s in summary:
        mine = [r for r in rows if r["species"] == s.species]
        assert s.first.onset_s == min(float(r["onset_s"]) for r in mine)
        assert s.last.onset_s == max(float(r["onset_s"]) for r in mine)
        assert s.best_conf == max(float(r["peak_conf"]) for r in mine)
        assert s.first.wall_onset is None and s.best_clip is None       # fast replay: stream time, no clips
    assert heard_at(summary[0].first).startswith("0:00:")


def test_cli_summary_piped_is_tab_separated(replay_csv):
    r = birdlive("summary", replay_csv, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [line.split("\t") for line in r.stdout.splitlines()]
    assert lines[0] == ["species", "code", "count", "first heard", "last heard", "best conf", "best clip"]
    assert sum(int(line[2]) for line in lines[1:]) == len(read_events_csv(replay_csv))


def test_wall_times_across_hours_and_days(dawn_logs):
    summary = summarize(read_event_logs(dawn_logs))
    assert [(s.name, s.count) for s in summary] == [("Common Blackbird", 4), ("European Robin", 3),
                                                     ("Tawny Owl", 3)]
    robin = summary[1]
    assert (heard_at(robin.first), heard_at(robin.last)) == ("2024-05-02 04:01:00", "2024-05-02 05:02:30")
    assert (robin.best_conf, robin.best_clip) == (0.97, "clips/robin-2.flac")
    owl = summary[2]
    assert heard_at(owl.first) == "2024-05-01 23:10:00" and heard_at(owl.last) == "2024-05-02 01:05:00"
    assert owl.best_clip is None                 # its best event is in the log from before clips
    grid = hour_grid(read_event_logs(dawn_logs))
    assert grid.wall_clock and grid.counts.shape == (3, 24)
    assert grid.names == ["Common Blackbird", "European Robin", "Tawny Owl"]
    assert {h: int(n) for h, n in enumerate(grid.counts[0]) if n} == {4: 2, 6: 2}
    assert {h: int(n) for h, n in enumerate(grid.counts[2]) if n} == {1: 1, 23: 2}   # the recorder's own hours


def test_min_conf_drops_weak_detections(dawn_logs):
    summary = summarize(read_event_logs(dawn_logs, min_conf=0.7))
    assert [(s.name, s.count) for s in summary] == [("European Robin", 3), ("Common Blackbird", 1),
                                                     ("Tawny Owl", 1)]
    with pytest.raises(OptionError, match="min-conf"):
        read_event_logs(dawn_logs, min_conf=1.5)


def test_activity_chart_is_a_picture_of_the_night(dawn_logs, tmp_path):
    png = activity_chart(read_event_logs(dawn_logs), tmp_path / "activity.png")
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 150      # wide: 24 hour columns
    pictures = ROOT.parent / "notes" / "pictures"                           # for people to look at
    if pictures.parent.is_dir():
        pictures.mkdir(exist_ok=True)
        activity_chart(read_event_logs(dawn_logs), pictures / "activity.png")


def test_stream_time_chart_says_so(replay_csv, tmp_path):
    rows = read_event_logs([replay_csv])
    grid = hour_grid(rows)
    assert not grid.wall_clock and grid.counts.shape[1] == 1 and grid.counts.sum() == len(rows)
    activity_chart(rows, tmp_path / "stream.png")
    assert (tmp_path / "stream.png").stat().st_size > 0
    with pytest.raises(OptionError, match="picture type"):
        activity_chart(rows, tmp_path / "stream.xyz")


def test_empty_log_gives_an_empty_summary_and_a_chart_that_says_so(tmp_path):
    log = write_log(tmp_path / "quiet.csv", [])
    assert summarize(read_event_logs([log])) == []
    activity_chart(read_event_logs([log]), tmp_path / "quiet.png")
    assert (tmp_path / "quiet.png").stat().st_size > 0


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("date,temperature\n2024-05-01,12\n", "not a birdlive event log (no column source, species, onset_s, peak_conf)"),
    (",".join(OLD_COLUMNS) + "\nmic,robin,Robin,soon,2,1,0.9,0.8,,\n", "line 2: onset_s is 'soon', not a number"),
    (",".join(OLD_COLUMNS) + "\nmic,robin,Robin,1,2,1,0.9,0.8,dawn,\n", "wall_onset 'dawn' is not an ISO 8601"),
    (b"fLaC\x00\x00\x00\x22\xff\xfe\x80\x81", "not a birdlive event log"),
])
def test_missing_or_garbled_log_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "night.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        read_event_logs([path])
    assert "\n" not in str(e.value)


def test_cli_garbled_log_is_one_error_line(tmp_path):
    path = tmp_path / "night.csv"
    path.write_text("date,temperature\n")
    r = birdlive("summary", path, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"error: {path}: not a birdlive event log (no column source, species, "
                                             f"onset_s, peak_conf)"]
