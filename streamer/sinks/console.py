"""The terminal without the live view: one plain line per event on stdout (EventPrinter), and on stderr each
stream's warnings, its failure and its summary line (StreamReport). The rich live view is liveview.py."""
from __future__ import annotations

import sys
from typing import TextIO

from ..core.events import Event, EventAudio, SinkBase, StreamStatus
from .csvlog import iso_time


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
            losses = "".join(f", {k.replace('_', ' ')} {st[k]}" for k in ("overflows", "dropped_blocks", "outages",
                                                                          "reconnects", "clock_steps") if st.get(k))
            print(f"{s.source}: {s.audio_s:.1f} s audio in {s.wall_s:.1f} s ({s.realtime_factor:.1f}× real time), "
                  f"{s.events} events{losses}", file=self.stream, flush=True)
