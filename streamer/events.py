"""The unit everything downstream of the smoother deals in: one bird-call event."""
from __future__ import annotations

from dataclasses import dataclass


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

    @property
    def duration_s(self) -> float:
        return self.offset_s - self.onset_s


class EventFilter:
    """Species include/exclude lists (codes or common names, case-insensitive) and a minimum confidence."""

    def __init__(self, include: list[str] | None = None, exclude: list[str] | None = None, min_conf: float = 0.0):
        self.include = {s.lower() for s in include or []}
        self.exclude = {s.lower() for s in exclude or []}
        self.min_conf = min_conf

    def __call__(self, event: Event) -> bool:
        keys = {event.species.lower(), event.name.lower()}
        if self.include and not keys & self.include:
            return False
        if keys & self.exclude:
            return False
        return event.peak >= self.min_conf
