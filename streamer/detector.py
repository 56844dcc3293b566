"""StreamDetector: the stages between a source and the sinks, wired in order.

    samples → WindowScheduler → WindowScorer (network) → ScoreStitcher → EventSmoother → EventFilter → events

It is fed blocks of any size and hands back the events that became final; `finish` flushes the rest. Running a
whole recording through one `push` (`offline.detect_waveform`) and streaming it block by block give the same events.
"""
from __future__ import annotations

import math

import numpy as np

from birdlive.model import BirdSED

from .engine import ScoreStitcher, WindowScorer
from .events import Event, EventFilter
from .scheduler import WindowScheduler
from .smoother import EventSmoother, SmootherParams


def default_params(model: BirdSED, **overrides) -> SmootherParams:
    """Smoother settings with the checkpoint's own thresholds; `None` overrides are ignored."""
    p = SmootherParams(threshold_on=model.cfg.threshold_on, threshold_off=model.cfg.threshold_off)
    for k, v in overrides.items():
        if v is not None:
            setattr(p, k, v)
    if p.threshold_off > p.threshold_on:
        p.threshold_off = p.threshold_on
    return p


class StreamDetector:
    def __init__(self, model: BirdSED, hop_s: float = 1.0, params: SmootherParams | None = None,
                 event_filter: EventFilter | None = None, source: str = "", batch_size: int = 16):
        cfg = model.cfg
        hop_frames = hop_s * cfg.out_fps
        if abs(hop_frames - round(hop_frames)) > 1e-6 or not 0 < hop_s <= cfg.window_s:
            raise ValueError(f"--hop must be a multiple of {cfg.frame_s:g} s between {cfg.frame_s:g} and "
                             f"{cfg.window_s:g} s")
        self.cfg = cfg
        self.sample_rate = cfg.sample_rate
        self.scheduler = WindowScheduler(cfg.window_samples, int(round(hop_s * cfg.sample_rate)), cfg.sample_rate)
        self.scorer = WindowScorer(model, batch_size)
        self.stitcher = ScoreStitcher(cfg.num_classes, int(round(hop_frames)))
        self.smoother = EventSmoother(cfg.labels, cfg.names, cfg.frame_s, params or default_params(model),
                                      source=source, clock=self.scheduler.clock)
        self.filter = event_filter or EventFilter()
        # The live view's "now": each species' best score over the newest hop of the newest window. Stitched
        # frames are final only a window later; this is the freshest (if less settled) estimate.
        self.latest_scores = np.zeros(cfg.num_classes, np.float32)
        self.windows_scored = 0

    @property
    def audio_s(self) -> float:
        return self.scheduler.end / self.sample_rate

    def push(self, samples: np.ndarray, start_sample: int | None = None, wall_time: float | None = None) -> list[Event]:
        return self._score(self.scheduler.push(samples, start_sample, wall_time))

    def finish(self) -> list[Event]:
        events = self._score(self.scheduler.finish())
        _, frames = self.stitcher.finish()
        events += self._smooth(frames)
        return events + [e for e in self.smoother.finish() if self.filter(e)]

    def _score(self, windows) -> list[Event]:
        events: list[Event] = []
        if not windows:
            return events
        for w, scores in zip(windows, self.scorer(windows)):
            start_frame = int(round(w.start_sample * self.cfg.out_fps / self.sample_rate))
            valid_frames = math.ceil(w.valid * self.cfg.out_fps / self.sample_rate - 1e-9)
            _, frames = self.stitcher.add(start_frame, scores, valid_frames)
            events += self._smooth(frames)
            self.latest_scores = scores[max(0, valid_frames - self.stitcher.hop_frames):valid_frames].max(axis=0)
        self.windows_scored += len(windows)
        return events

    def _smooth(self, frames: np.ndarray) -> list[Event]:
        return [e for e in self.smoother.push(frames) if self.filter(e)]

