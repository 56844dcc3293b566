"""Event tables that other tools open: a Raven Pro selection table, an Audacity label track, JSON Lines.

Each is a Sink (on SinkBase, birdlive.streamer.core.events). A row is written and flushed as its event arrives, so
the file can be read while the run goes on and a `kill -9` loses nothing already reported. (Flushed, not
fsync'ed: the CSV log is the record that survives a power cut; fsync'ing every table too would multiply the writes
on a recorder's SD card for no event the log does not already hold.)

Existing files: a Raven or Audacity table describes one run and is rewritten when the run starts (appending
would put a second header inside a selection table, restart its selection numbers, or lay two recordings'
labels on one track). The JSON Lines file is a log like the CSV log and is appended to: each line stands alone.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import IO

from birdlive.errors import OptionError

from ..core.events import Event, EventAudio, SinkBase
from .csvlog import CSV_COLUMNS, iso_time

log = logging.getLogger(__name__)


class LineFile:
    """A text file written one whole line at a time, each flushed to the OS before `write` returns.

    A file that cannot be opened, or take its `header`, is the user's to fix: `OptionError`, naming the option,
    before any audio is read. A write that fails later (the disk filled up in the night) must neither stop
    detection nor keep the event from the other sinks: it is logged once as a warning and the file is given up."""

    def __init__(self, path: str | Path, option: str, mode: str, header: str | None = None):
        self.path, self.option = Path(path), option
        self._file: IO[str] | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = f = open(self.path, mode, encoding="utf-8", newline="")
            if header is not None:
                f.write(header + "\n")
                f.flush()
        except (FileExistsError, NotADirectoryError):   # a file where a folder should be ("File exists" misleads)
            in_the_way = next(p for p in self.path.parents if p.exists())
            raise OptionError(f"{option} {path}: cannot write ({in_the_way} is a file, not a folder)") from None
        except OSError as e:
            self.close()
            raise OptionError(f"{option} {path}: cannot write ({e.strerror or e})") from None

    def write(self, line: str) -> None:
        if self._file is None:
            return
        try:
            self._file.write(line + "\n")
            self._file.flush()
        except OSError as e:
            log.warning(f"{self.option} {self.path}: cannot write ({e.strerror or e}); later events are not "
                        f"written there")
            self.close()

    def close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError:     # the buffer it could not flush was already reported by `write`
                pass


def cell(text: str) -> str:
    """A field of a tab-separated table: a tab or line break inside it would start a new column or row."""
    return text.translate({ord("\t"): " ", ord("\n"): " ", ord("\r"): " "})


def seconds(t: float) -> str:
    return f"{t:.6f}"       # microseconds, as Audacity writes its labels: far finer than a score frame


# Raven's own names: its selection columns, then BirdNET-Analyzer's names for what a detector adds (tables from
# either read the same way), then Raven's measurements for the file a selection begins in and where in it.
RAVEN_COLUMNS = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Species Code", "Common Name", "Confidence", "Mean Confidence", "Begin Path",
                 "File Offset (s)"]


class RavenTable(SinkBase):
    """A Raven Pro selection table (File > Open Selection Table): a box per event from onset to offset and from
    `fmin` to `fmax` (the band the model hears), with species code, common name, peak and mean confidence.

    Times are seconds from the start of the event's own source. `Begin Path` names that source (the absolute
    path of a file; a microphone's device name) and `File Offset (s)` is the time within it, so the rows of a
    multi-file run say which recording each belongs to."""

    option = "--raven"

    def __init__(self, path: str | Path, fmin: float, fmax: float):
        self.fmin, self.fmax = fmin, fmax
        # The header now: a run with no events still leaves a valid table.
        self.out = LineFile(path, self.option, "w", header="\t".join(RAVEN_COLUMNS))
        self.selections = 0

    def on_event(self, e: Event, audio: EventAudio | None = None) -> None:
        self.selections += 1
        self.out.write("\t".join([
            str(self.selections), "Spectrogram 1", "1", seconds(e.onset_s), seconds(e.offset_s),
            f"{self.fmin:.1f}", f"{self.fmax:.1f}", cell(e.species), cell(e.name), f"{e.peak:.4f}",
            f"{e.mean:.4f}", cell(begin_path(e.source)), seconds(e.onset_s)]))

    def close(self) -> None:
        self.out.close()


def begin_path(source: str) -> str:
    """Raven's `Begin Path` is absolute (the table is opened from elsewhere than birdlive ran); a source that is
    not a file (a microphone) keeps its name."""
    return os.path.abspath(source) if os.path.isfile(source) else source


class AudacityLabels(SinkBase):
    """An Audacity label track (File > Import > Labels): `start<TAB>end<TAB>label` per event, the label being
    the common name and the peak confidence. With `show_source` (a run over several recordings, all on one
    track) each label starts with its recording's file name."""

    option = "--audacity"

    def __init__(self, path: str | Path, show_source: bool = False):
        self.show_source = show_source
        self.out = LineFile(path, self.option, "w")

    def on_event(self, e: Event, audio: EventAudio | None = None) -> None:
        label = f"{e.name} {e.peak:.2f}"
        if self.show_source:
            label = f"{Path(e.source).name}: {label}"
        self.out.write(f"{seconds(e.onset_s)}\t{seconds(e.offset_s)}\t{cell(label)}")

    def close(self) -> None:
        self.out.close()


# The JSON names are the CSV log's columns, in its order (one vocabulary for both files). The CSV's
# `wall_onset`/`wall_offset` are local ISO times; the unix times they come from keep a `_unix` suffix.
JSON_NAMES = {"name": "common_name", "peak": "peak_conf", "mean": "mean_conf", "wall_onset": "wall_onset_unix",
              "wall_offset": "wall_offset_unix"}


def event_record(e: Event) -> dict:
    """Every field of the event (a field added to Event later comes along by itself), the duration, and the
    wall times also as local ISO 8601 with UTC offset; null where there is no wall clock (fast file replay)."""
    record = {JSON_NAMES.get(k, k): v for k, v in dataclasses.asdict(e).items()}
    record["duration_s"] = round(e.duration_s, 6)     # a difference of floats: 0.7, not 0.7000000000000002
    record["wall_onset"] = iso_time(e.wall_onset) or None
    record["wall_offset"] = iso_time(e.wall_offset) or None
    first = [c for c in CSV_COLUMNS if c in record]
    return {k: record[k] for k in first + [k for k in record if k not in first]}


class JsonlEvents(SinkBase):
    """One JSON object per line per event (`event_record`), appended: restarting continues the same log."""

    option = "--jsonl"

    def __init__(self, path: str | Path):
        # After a run killed mid-write, end its torn line first, so that ours start lines of their own.
        self.out = LineFile(path, self.option, "a", header="" if ends_mid_line(Path(path)) else None)

    def on_event(self, e: Event, audio: EventAudio | None = None) -> None:
        self.out.write(json.dumps(event_record(e), ensure_ascii=False))

    def close(self) -> None:
        self.out.close()


def ends_mid_line(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except OSError:             # missing, empty, or unreadable (then opening it for writing says why)
        return False
