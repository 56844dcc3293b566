"""EventSmoother: framewise species scores → bird-call events, incrementally, frame by frame."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from birdlive.errors import OptionError

from .events import Event


@dataclass
class SmootherParams:
    """Event settings. The thresholds are one number for every species or one per species (the model's label
    order): `birdlive.streamer.default_params` builds them from the checkpoint and the user's options."""
    threshold_on: float | Sequence[float] = 0.5   # a call starts when the smoothed score reaches this …
    threshold_off: float | Sequence[float] = 0.3  # … and lasts while it stays at or above this (hysteresis)
    median_s: float = 0.3          # median filter length; removes one-frame flickers
    min_duration_s: float = 0.2    # shorter events are dropped
    merge_gap_s: float = 0.3       # events of one species closer than this become one
    max_event_s: float = 30.0      # a longer chorus is reported in pieces, so nothing waits forever


class _Track:
    """One species' hysteresis state."""
    __slots__ = ("run_start", "open_start", "scores", "pending")

    def __init__(self):
        self.run_start = None   # first frame of the current run of frames >= threshold_off
        self.open_start = None  # onset frame of the open event
        self.scores: list[float] = []
        self.pending = None     # closed event waiting out the merge gap: [onset, offset, scores]


class EventSmoother:
    """Turns a score track (frames, K), fed in any chunking, into events; identical output for any chunking.

    Latency: median half-length + merge gap after an event's offset (plus the stitcher's window delay upstream).
    """

    def __init__(self, labels: list[str], names: list[str], frame_s: float, params: SmootherParams | None = None,
                 source: str = "", clock=None):
        self.labels, self.names, self.frame_s = labels, names, frame_s
        self.p = params or SmootherParams()
        self.on, self.off = self._thresholds(labels, self.p)
        self.source, self.clock = source, clock
        self.half = max(0, int(round(self.p.median_s / frame_s)) // 2)
        self.min_frames = int(round(self.p.min_duration_s / frame_s))
        self.gap_frames = int(round(self.p.merge_gap_s / frame_s))
        self.max_frames = max(1, int(round(self.p.max_event_s / frame_s)))
        self._tail = np.zeros((0, len(labels)), np.float32)  # the last 2·half raw frames: the next median's left
        self._received = 0    # raw frames seen
        self._smoothed = 0    # frames smoothed and stepped
        self._tracks = [_Track() for _ in labels]
        self._busy: set[int] = set()   # species whose track is not idle; the rest need a look only above threshold

    @staticmethod
    def _thresholds(labels: list[str], p: SmootherParams) -> tuple[np.ndarray, np.ndarray]:
        """(K,) float64 on and off thresholds. float64, so that the vectorised pre-selection in `_step` and the
        per-species compares of the float32 scores agree to the last bit."""
        try:
            on, off = (np.broadcast_to(np.asarray(v, np.float64), (len(labels),)) for v in
                       (p.threshold_on, p.threshold_off))
        except ValueError:
            raise OptionError(f"per-species thresholds must have one value per species ({len(labels)})") from None
        bad = np.flatnonzero(off > on)
        if len(bad):
            k = int(bad[0])
            which = f" for {labels[k]}" if np.ndim(p.threshold_on) or np.ndim(p.threshold_off) else ""
            raise OptionError(f"threshold_off ({off[k]:g}) must not exceed threshold_on ({on[k]:g}){which}")
        return on, off

    def push(self, frames: np.ndarray) -> list[Event]:
        frames = np.asarray(frames, dtype=np.float32)
        if not len(frames):
            return []
        if self._received == 0:  # replicate the first frame on the left edge
            self._tail = np.repeat(frames[:1], self.half, axis=0)
        self._received += len(frames)
        return self._smooth(frames)

    def finish(self) -> list[Event]:
        """End of stream: smooth the last frames (right edge replicated), close everything open."""
        out: list[Event] = []
        owed, last = self._received - self._smoothed, self._tail[-1:]
        if owed and len(self._tail) == 2 * self.half:
            out += self._smooth(np.repeat(last, owed, axis=0))
        elif owed:  # fewer frames than half the filter: the median of the frames there are, one more each step
            raw = self._tail
            for _ in range(owed):
                raw = np.concatenate([raw, last])[-(2 * self.half + 1):]
                out += self._step(np.median(raw, axis=0))
        for k, t in enumerate(self._tracks):
            out += self._close(k, t, self._smoothed)
        self._busy.clear()
        return sorted(out, key=lambda e: (e.onset_s, e.species))

    def _smooth(self, frames: np.ndarray) -> list[Event]:
        """The median filter over every frame `frames` completes, in one numpy call for the whole block (a
        call per frame was most of a replay's smoother time), then the hysteresis frame by frame. The median of
        an odd number of float32 values is one of them: the same bits as a per-frame `np.median` (`median_of_odd`)."""
        raw = np.concatenate([self._tail, frames])
        width = 2 * self.half + 1
        self._tail = raw[max(0, len(raw) - 2 * self.half):]
        if len(raw) < width:
            return []
        smoothed = median_of_odd(sliding_window_view(raw, width, axis=0))
        out: list[Event] = []
        for s in smoothed:
            out += self._step(s)
        return out

    def _step(self, s: np.ndarray) -> list[Event]:
        i = self._smoothed
        self._smoothed += 1
        out: list[Event] = []
        # An idle track (no run, no open event, nothing pending) stays idle below its off threshold: with a
        # hundred species and a few calling, looking only at the others is most of the smoother's time saved.
        above = s >= self.off
        for k in sorted(self._busy.union(np.flatnonzero(above).tolist())):
            t = self._tracks[k]
            v = float(s[k])
            if t.open_start is None:
                if above[k]:
                    if t.run_start is None:
                        t.run_start, t.scores = i, []
                    t.scores.append(v)
                    if v >= self.on[k]:  # onset = where the score first rose above the off threshold
                        out += self._open(k, t)
                else:
                    t.run_start = None
            elif above[k]:
                t.scores.append(v)
                if i + 1 - t.open_start >= self.max_frames:  # long chorus: report this piece now
                    out += self._emit(k, t.open_start, i + 1, t.scores)
                    t.open_start = t.run_start = i + 1
                    t.scores = []
            else:
                if t.scores:  # empty only right after a max-length split
                    t.pending = [t.open_start, i, t.scores]
                t.open_start = t.run_start = None
                t.scores = []
            if t.pending is not None and t.open_start is None:
                # The earliest onset a later event could still get; past the gap, nothing can merge any more.
                # (A run hovering between the thresholds could hold it forever, hence the max-length bound.)
                earliest = t.run_start if t.run_start is not None else i + 1
                if earliest - t.pending[1] > self.gap_frames or i - t.pending[1] >= self.max_frames:
                    out += self._emit(k, *t.pending)
                    t.pending = None
            if t.run_start is None and t.open_start is None and t.pending is None:
                self._busy.discard(k)
            else:
                self._busy.add(k)
        return out

    def _open(self, k: int, t: _Track) -> list[Event]:
        """Open an event at the current run; it continues the pending one if the gap between them is short."""
        t.open_start = t.run_start
        out: list[Event] = []
        if t.pending is not None:
            onset, offset, scores = t.pending
            if t.open_start - offset <= self.gap_frames:
                t.open_start, t.scores = onset, scores + t.scores
            else:
                out = self._emit(k, onset, offset, scores)
            t.pending = None
        return out

    def _close(self, k: int, t: _Track, end: int) -> list[Event]:
        """End of stream: everything open or pending is reported."""
        out: list[Event] = []
        if t.pending is not None:
            out += self._emit(k, *t.pending)
        if t.open_start is not None and t.scores:
            out += self._emit(k, t.open_start, end, t.scores)
        t.pending, t.open_start, t.run_start, t.scores = None, None, None, []
        return out

    def _emit(self, k: int, onset: int, offset: int, scores: list[float]) -> list[Event]:
        if offset - onset < self.min_frames or not scores:
            return []
        on_s, off_s = onset * self.frame_s, offset * self.frame_s
        wall = (lambda x: self.clock.at(x)) if self.clock is not None else (lambda x: None)
        return [Event(self.labels[k], self.names[k] or self.labels[k], round(on_s, 3), round(off_s, 3),
                      float(max(scores)), float(np.mean(scores)), self.source, wall(on_s), wall(off_s))]


def median_of_odd(x: np.ndarray) -> np.ndarray:
    """`np.median(x, axis=-1)` for an odd number of values along the last axis, the same bits, by `np.median`'s
    own steps (partition at the middle and at the end, NaN where the end is NaN): np.median's first call imports
    numpy.ma, about 10 ms of every replay's start-up."""
    mid = x.shape[-1] // 2
    part = np.partition(x, [mid, -1], axis=-1)
    out = part[..., mid].copy()
    out[np.isnan(part[..., -1])] = np.nan
    return out
