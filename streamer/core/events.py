"""What flows out of the detector to the sinks: events, their audio, and each stream's status; and what a sink
is to the runner (the Sink, EventAnnotator and ScoreSink protocols, and SinkBase to build one on)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol

import numpy as np


@dataclass(frozen=True)
class Event:
    species: str                  # species code (model label)
    name: str                     # common name, or the code where the model has none
    onset_s: float                # stream seconds
    offset_s: float
    peak: float                   # highest smoothed score inside the event
    mean: float                   # mean smoothed score inside the event
    source: str = ""              # file path or device name
    wall_onset: float | None = None   # unix time, live input and --realtime replay only
    wall_offset: float | None = None
    clip: str | None = None       # path of the event's saved audio clip (set by ClipWriter, an EventAnnotator)

    @property
    def duration_s(self) -> float:
        return self.offset_s - self.onset_s


@dataclass(frozen=True)
class EventAudio:
    """An event's audio with pre- and post-roll, as far as the stream had it (less at a stream's edges)."""
    samples: np.ndarray           # float32 mono
    sample_rate: int              # the source's own rate where it is above the model's, else the model's
    start_s: float                # stream time of samples[0]

    @property
    def end_s(self) -> float:
        return self.start_s + len(self.samples) / self.sample_rate


@dataclass
class StreamStatus:
    """One stream as the sinks see it: refreshed a few times a second, and once more when it ends."""
    source: str
    state: str = "running"        # running | done | failed
    error: str | None = None      # one line, when failed
    warnings: list[str] = field(default_factory=list)
    audio_s: float = 0.0
    wall_s: float = 0.0
    level_dbfs: float = -120.0
    windows: int = 0
    events: int = 0
    source_stats: dict = field(default_factory=dict)
    top: list[tuple[str, float]] = field(default_factory=list)  # (display name, score) of the newest window

    @property
    def realtime_factor(self) -> float:
        """Audio seconds processed per wall second (for live input this sits near 1 by construction)."""
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0


class EventFilter:
    """Species include/exclude lists (codes or common names, case-insensitive), the labels a user's region and
    species list leave (`allowed`, exact labels; empty: all), and a minimum confidence."""

    def __init__(self, include: list[str] | None = None, exclude: list[str] | None = None, min_conf: float = 0.0,
                 allowed: list[str] | None = None):
        self.include = {s.lower() for s in include or []}
        self.exclude = {s.lower() for s in exclude or []}
        self.min_conf = min_conf
        self.allowed = set(allowed or [])

    def __call__(self, event: Event) -> bool:
        if self.allowed and event.species not in self.allowed:
            return False
        keys = {event.species.lower(), event.name.lower()}
        if self.include and not keys & self.include:
            return False
        if keys & self.exclude:
            return False
        return event.peak >= self.min_conf


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


def wants_native_audio(outputs: Iterable[object]) -> bool:
    """Whether any of these annotators or sinks wants events' audio at the source's own rate where that is above
    the model's (it says so with `wants_native_audio = True`, as ClipWriter does: a 48 kHz recorder's clip keeps
    its top octave). Only then do sources keep their own-rate audio beside the stream (`SourceBase.keep_native`):
    for everyone else it is 1.5 times the stream's audio resampled, queued and held for nothing."""
    return any(getattr(o, "wants_native_audio", False) for o in outputs)


class ScoreSink(Protocol):
    """Each stream's stitched framewise scores (before smoothing), in stream order and contiguous: frames
    `first_frame … first_frame + len(frames)` of the stream `source`, each `frame_s` long, shape (n, K)."""

    def on_scores(self, source: str, first_frame: int, frames: np.ndarray, frame_s: float) -> None: ...

    def close(self) -> None: ...
