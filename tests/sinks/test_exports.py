"""Raven, Audacity and JSON Lines exports, read back by the tools' maintained readers (crowsetta's `raven` and
`aud-seq` formats, json), after a normal close, after `kill -9`, and from a real run beside the CSV log."""
import json
import os
import re
import signal
from datetime import datetime
from pathlib import Path

import crowsetta
import pytest
import soundfile as sf

from birdlive.errors import OptionError
from birdlive.model import load_checkpoint
from birdlive.streamer import CsvEventLog, Event, file_specs, make_runner
from birdlive.streamer.sinks.exports import AudacityLabels, JsonlEvents, RavenTable

from tests.common import RECORDING, TINY, Collect, read_events_csv, read_truth

# crowsetta 5.1 still calls DataFrame.rename(inplace=True), which pandas 3.1 deprecates: its noise, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.rename")

FMIN, FMAX = 50.0, 14000.0
WALL = 1_760_000_000.123        # a unix time with milliseconds


def some_events() -> list[Event]:
    """Two sources (a real file and a microphone), odd times, a non-ASCII name, a name with a tab in it."""
    rec = os.path.relpath(RECORDING)        # as a user types it: Raven's Begin Path must make it absolute
    return [
        Event("upsweep", "upsweep", 1.5, 1.957, 0.91234, 0.6, source=rec),
        Event("parmaj", "Mésange charbonnière", 3601.2345, 3603.0, 0.5, 0.41, source="USB mic",
              wall_onset=WALL, wall_offset=WALL + 1.7655, clip="clips/parmaj-1.flac"),
        Event("two_tone", "two\ttone", 7.0, 7.439, 0.75, 0.7071, source=rec),
    ]


def write_all(tmp_path, events, close=True):
    sinks = [RavenTable(tmp_path / "sel.txt", FMIN, FMAX), AudacityLabels(tmp_path / "labels.txt"),
             JsonlEvents(tmp_path / "events.jsonl")]
    for e in events:
        for s in sinks:
            s.on_event(e, None)
    if close:
        for s in sinks:
            s.close()
    return tmp_path / "sel.txt", tmp_path / "labels.txt", tmp_path / "events.jsonl"


def read_raven(path):
    return crowsetta.Transcriber(format="raven").from_file(path, annot_col="Species Code")


def read_audacity(path):
    return crowsetta.Transcriber(format="aud-seq").from_file(path)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def check_raven(path, events, band=(FMIN, FMAX)):
    raven = read_raven(path)
    boxes, df = raven.to_bbox(), raven.df
    assert len(boxes) == len(events)
    assert list(df["Selection"]) == list(range(1, len(events) + 1))
    assert set(df["View"]) == {"Spectrogram 1"} and set(df["Channel"]) == {1}
    for box, (_, row), e in zip(boxes, df.iterrows(), events):
        assert box.onset == pytest.approx(e.onset_s, abs=1e-3) and box.offset == pytest.approx(e.offset_s, abs=1e-3)
        assert (box.low_freq, box.high_freq) == band
        assert box.label == e.species
        assert row["Common Name"] == e.name.replace("\t", " ")
        assert row["Confidence"] == pytest.approx(e.peak, abs=1e-4)
        assert row["Mean Confidence"] == pytest.approx(e.mean, abs=1e-4)
        src = Path(e.source)
        assert row["Begin Path"] == (os.path.abspath(src) if src.is_file() else e.source)
        assert row["File Offset (s)"] == pytest.approx(e.onset_s, abs=1e-3)


def check_audacity(path, events, prefix=lambda e: ""):
    labels = read_audacity(path)
    assert list(labels.start_times) == pytest.approx([e.onset_s for e in events], abs=1e-3)
    assert list(labels.end_times) == pytest.approx([e.offset_s for e in events], abs=1e-3)
    assert list(labels.labels) == [f"{prefix(e)}{e.name.replace(chr(9), ' ')} {e.peak:.2f}" for e in events]


def check_jsonl(records, events):
    assert len(records) == len(events)
    for r, e in zip(records, events):
        assert (r["source"], r["species"], r["common_name"], r["clip"]) == (e.source, e.species, e.name, e.clip)
        assert (r["onset_s"], r["offset_s"], r["peak_conf"], r["mean_conf"]) == (e.onset_s, e.offset_s, e.peak, e.mean)
        assert r["duration_s"] == pytest.approx(e.duration_s)
        assert (r["wall_onset_unix"], r["wall_offset_unix"]) == (e.wall_onset, e.wall_offset)
        for iso, unix in ((r["wall_onset"], e.wall_onset), (r["wall_offset"], e.wall_offset)):
            if unix is None:
                assert iso is None
            else:       # local time, with its UTC offset, to the millisecond
                t = datetime.fromisoformat(iso)
                assert t.utcoffset() is not None and t.timestamp() == pytest.approx(unix, abs=1e-3)


def test_each_export_reads_back_with_every_field(tmp_path):
    events = some_events()
    raven, audacity, jsonl = write_all(tmp_path, events)
    check_raven(raven, events)
    check_audacity(audacity, events)
    check_jsonl(read_jsonl(jsonl), events)


def test_audacity_labels_name_the_recording_when_several_share_the_track(tmp_path):
    events = some_events()
    sink = AudacityLabels(tmp_path / "labels.txt", show_source=True)
    for e in events:
        sink.on_event(e, None)
    sink.close()
    check_audacity(tmp_path / "labels.txt", events, prefix=lambda e: f"{Path(e.source).name}: ")


def test_a_run_with_no_events_leaves_a_valid_empty_table(tmp_path):
    raven, audacity, jsonl = write_all(tmp_path, [])
    assert raven.read_text().splitlines()[0].split("\t")[:7] == [
        "Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)"]
    assert len(raven.read_text().splitlines()) == 1
    assert audacity.read_text() == "" and jsonl.read_text() == ""


def test_every_row_is_readable_after_kill_9(tmp_path):
    """A process that writes its events and is killed with SIGKILL, before any close: all of them are there."""
    events = some_events()
    pid = os.fork()
    if pid == 0:                            # the child: write, then die without closing or exiting cleanly
        try:
            write_all(tmp_path, events, close=False)
            os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    raven, audacity, jsonl = tmp_path / "sel.txt", tmp_path / "labels.txt", tmp_path / "events.jsonl"
    check_raven(raven, events)
    check_audacity(audacity, events)
    check_jsonl(read_jsonl(jsonl), events)


def test_tables_are_rewritten_per_run_and_the_jsonl_log_appended(tmp_path):
    first, second = some_events()[:2], some_events()[2:]
    write_all(tmp_path, first)
    raven, audacity, jsonl = write_all(tmp_path, second)
    check_raven(raven, second)                      # one header, selections from 1 again
    check_audacity(audacity, second)
    check_jsonl(read_jsonl(jsonl), first + second)


def test_a_jsonl_line_torn_by_a_crash_does_not_swallow_the_next_run(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"species": "upsw', encoding="utf-8")     # the last write of a killed run, cut short
    events = some_events()
    sink = JsonlEvents(path)
    for e in events:
        sink.on_event(e, None)
    sink.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == '{"species": "upsw'
    check_jsonl([json.loads(line) for line in lines[1:]], events)


@pytest.mark.parametrize("make, option", [(lambda p: RavenTable(p, FMIN, FMAX), "--raven"),
                                          (AudacityLabels, "--audacity"), (JsonlEvents, "--jsonl")])
def test_an_unwritable_path_is_one_option_error(tmp_path, make, option):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    below_a_file = a_file / "sub" / "out.txt"
    for bad, reason in ((tmp_path, "Is a directory"), (below_a_file, f"{a_file} is a file, not a folder")):
        with pytest.raises(OptionError, match=re.escape(f"{option} {bad}: cannot write ({reason})") + "$"):
            make(bad)


def test_a_table_whose_header_cannot_be_written_is_refused_before_the_run():
    with pytest.raises(OptionError, match=r"^--raven /dev/full: cannot write \(No space left on device\)$"):
        RavenTable("/dev/full", FMIN, FMAX)


def test_a_full_disk_is_one_warning_and_never_stops_the_run(log_lines):
    """/dev/full fails every write with ENOSPC: the sink says so once and keeps taking events without raising, so
    the runner goes on and the sinks after it still get each event."""
    sink = AudacityLabels("/dev/full")
    for e in some_events():
        sink.on_event(e, None)
    sink.close()
    warnings = log_lines().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: --audacity /dev/full: cannot write (")


def test_a_real_run_exports_what_the_csv_log_holds(tmp_path):
    """The tiny model over two recordings at once (the project's clip and a stretch of it): the three exports hold
    exactly the events the runner gave (within 1 ms), and agree with the CSV log of the same run."""
    net = load_checkpoint(TINY)
    x, rate = sf.read(RECORDING, dtype="float32")
    part = tmp_path / "part.flac"
    sf.write(part, x[10 * rate:35 * rate], rate)

    got = Collect()
    sinks = [CsvEventLog(tmp_path / "log.csv").open(), RavenTable(tmp_path / "sel.txt", net.cfg.fmin, net.cfg.fmax),
             AudacityLabels(tmp_path / "labels.txt", show_source=True), JsonlEvents(tmp_path / "events.jsonl"), got]
    runner = make_runner(net, sinks, max_open=2)
    try:
        statuses = runner.run(file_specs([RECORDING, part], net.cfg.sample_rate))
    finally:
        for s in sinks:
            s.close()
    assert [s.state for s in statuses] == ["done", "done"]
    events = got.events
    assert len({e.source for e in events}) == 2 and len(events) >= len(read_truth())

    check_raven(tmp_path / "sel.txt", events, band=(net.cfg.fmin, net.cfg.fmax))
    check_audacity(tmp_path / "labels.txt", events, prefix=lambda e: f"{Path(e.source).name}: ")
    records = read_jsonl(tmp_path / "events.jsonl")
    check_jsonl(records, events)

    rows = read_events_csv(tmp_path / "log.csv")
    raven = read_raven(tmp_path / "sel.txt").df
    assert len(rows) == len(raven) == len(records)
    for row, (_, sel), rec in zip(rows, raven.iterrows(), records):
        assert sel["Begin Path"] == os.path.abspath(row["source"]) and rec["source"] == row["source"]
        assert sel["annotation"] == row["species"] == rec["species"]
        assert sel["Common Name"] == row["common_name"] == rec["common_name"]
        # The CSV rounds times to 0.01 s and confidences to 0.001; the exports keep 1 µs and 0.0001.
        for col, raven_col, tol in (("onset_s", "begin_time_s", 0.005 + 1e-6), ("offset_s", "end_time_s", 0.005 + 1e-6),
                                    ("peak_conf", "Confidence", 5.5e-4), ("mean_conf", "Mean Confidence", 5.5e-4)):
            assert float(row[col]) == pytest.approx(sel[raven_col], abs=tol)
            assert float(row[col]) == pytest.approx(rec[col], abs=tol)
