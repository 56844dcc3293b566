"""The all-night CSV log (one row per event, durable before the next) and the vocabulary the other tables
share with it: its columns and its local ISO 8601 times."""
from __future__ import annotations

import csv
import io
import os
import time
from datetime import datetime
from pathlib import Path
from typing import TextIO

from birdlive.errors import OptionError

from ..core.events import Event, EventAudio, SinkBase


CSV_COLUMNS = ["source", "species", "common_name", "onset_s", "offset_s", "duration_s", "peak_conf", "mean_conf",
               "wall_onset", "wall_offset", "clip"]


def iso_time(t: float | None) -> str:
    """Local time with its UTC offset, to the millisecond; empty where there is no wall clock."""
    return "" if t is None else datetime.fromtimestamp(t).astimezone().isoformat(timespec="milliseconds")


def event_row(e: Event) -> list[str]:
    return [e.source, e.species, e.name, f"{e.onset_s:.2f}", f"{e.offset_s:.2f}", f"{e.duration_s:.2f}",
            f"{e.peak:.3f}", f"{e.mean:.3f}", iso_time(e.wall_onset), iso_time(e.wall_offset), e.clip or ""]


class CsvEventLog(SinkBase):
    """Appends one row per event and makes it durable before returning (flush + fsync).

    A `kill -9` or a power cut loses no event that was written. A new (or empty) file gets the header; an
    existing one is appended to. With `rotate="daily"`, `night.csv` becomes `night-YYYY-MM-DD.csv` by the
    event's wall-clock date (today's date for fast file replay), so a recorder left out for a week gives a file
    per day.
    """

    def __init__(self, path: str | Path, rotate: str | None = None):
        if rotate not in (None, "none", "daily"):
            raise OptionError(f"--rotate must be 'none' or 'daily', not {rotate!r}")
        self.path = Path(path)
        self.rotate = rotate if rotate == "daily" else None
        self._file: TextIO | None = None
        self._open_path: Path | None = None
        self.rows = 0

    def path_for(self, e: Event | None = None) -> Path:
        if not self.rotate:
            return self.path
        t = e.wall_onset if e is not None and e.wall_onset is not None else time.time()
        day = datetime.fromtimestamp(t).strftime("%Y-%m-%d")
        return self.path.with_name(f"{self.path.stem}-{day}{self.path.suffix or '.csv'}")

    def _ensure_open(self, path: Path) -> TextIO:
        if self._file is not None and self._open_path == path:
            return self._file
        self.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a", newline="", encoding="utf-8")
        if f.tell() == 0:
            self._write(f, CSV_COLUMNS)
        self._file, self._open_path = f, path
        return f

    @staticmethod
    def _write(f: TextIO, row: list[str]) -> None:
        buf = io.StringIO()
        csv.writer(buf).writerow(row)
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())

    def open(self) -> "CsvEventLog":
        """Create the file (with its header) now, so a night with no birds still leaves a log behind."""
        self._ensure_open(self.path_for())
        return self

    def on_event(self, e: Event, audio: EventAudio | None = None) -> None:
        self._write(self._ensure_open(self.path_for(e)), event_row(e))
        self.rows += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
