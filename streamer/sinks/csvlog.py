"""Where events go: the sink protocol, an all-night CSV log, plain lines on stdout, a report of each stream on
stderr, and (liveview.py) a rich terminal view."""
from __future__ import annotations

import csv
import io
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Protocol, TextIO

import numpy as np

from birdlive.errors import OptionError

from ..core.events import Event, EventAudio, StreamStatus


class Sink(Protocol):
    """What the runner calls. Every event goes to every sink in order (the CSV log first: an event is on disk
    before it is shown), with its audio; every stream's status a few times a second and once when it ends."""

    def on_event(self, event: Event, audio: EventAudio) -> None: ...

    def on_status(self, status: StreamStatus) -> None: ...

    def close(self) -> None: ...


class SinkBase:
    """A sink that does nothing until told to: subclasses override only the calls they use (most sinks want
    events and a close; the stream reports want only statuses)."""

    def on_event(self, event: Event, audio: EventAudio | None = None) -> None:
        pass

    def on_status(self, status: StreamStatus) -> None:
        pass

    def close(self) -> None:
        pass


class EventAnnotator(Protocol):
    """Runs before every sink, in order: the event it returns is the one the sinks get (ClipWriter saves the
    audio and returns the event with its clip's path, so the CSV row can name the clip)."""

    def annotate(self, event: Event, audio: EventAudio) -> Event: ...

    def close(self) -> None: ...


class ScoreSink(Protocol):
    """Each stream's stitched framewise scores (before smoothing), in stream order and contiguous: frames
    `first_frame … first_frame + len(frames)` of the stream `source`, each `frame_s` long, shape (n, K)."""

    def on_scores(self, source: str, first_frame: int, frames: np.ndarray, frame_s: float) -> None: ...

    def close(self) -> None: ...


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


class EventPrinter(SinkBase):
    """One plain line per event (for pipes, logs, and terminals without the live view)."""

    def __init__(self, stream: TextIO | None = None, show_source: bool = False):
        self.stream = stream or sys.stdout
        self.show_source = show_source     # several streams at once: say whose event it is

    def on_event(self, e: Event, audio: EventAudio | None = None) -> None:
        wall = f" {iso_time(e.wall_onset)[11:23]}" if e.wall_onset is not None else ""
        source = f"{e.source}  " if self.show_source else ""
        print(f"{source}{e.onset_s:9.2f}–{e.offset_s:<9.2f}{wall} {e.species:<28} {e.name:<28} peak {e.peak:.2f} "
              f"mean {e.mean:.2f}", file=self.stream, flush=True)


class StreamReport(SinkBase):
    """On stderr, once each: a stream's warnings as they come, its failure as one `error:` line, and a summary
    line when it ends. `failed` lists the streams that failed, for the exit status."""

    def __init__(self, stream: TextIO | None = None, summaries: bool = True):
        self.stream = stream or sys.stderr
        self.summaries = summaries
        self.failed: list[str] = []
        self._warned: dict[str, int] = {}

    def on_status(self, s: StreamStatus) -> None:
        seen = self._warned.get(s.source, 0)
        for w in s.warnings[seen:]:
            print(f"warning: {w}", file=self.stream, flush=True)
        self._warned[s.source] = len(s.warnings)
        if s.state == "failed":
            self.failed.append(s.source)
            print(f"error: {s.error}", file=self.stream, flush=True)
        if s.state == "done" and self.summaries:      # a failure is its one error line, nothing more
            st = s.source_stats
            losses = "".join(f", {k.replace('_', ' ')} {st[k]}" for k in ("overflows", "dropped_blocks", "reconnects",
                                                                          "clock_steps") if st.get(k))
            print(f"{s.source}: {s.audio_s:.1f} s audio in {s.wall_s:.1f} s ({s.realtime_factor:.1f}× real time), "
                  f"{s.events} events{losses}", file=self.stream, flush=True)
