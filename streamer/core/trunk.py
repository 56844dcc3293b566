"""SharedTrunk: the network's first stages computed once per stream, not once per window.

A stream's windows overlap (5 s every 1 s): each log-mel frame is in five of them. The checkpoint's graph cut in
two (`birdlive.model.trunk`: STEM.trunk.onnx, convolutions only, and STEM.rest.onnx) lets the trunk run once over
a stream's new frames and each window's rest run on its slice of the stream's trunk frames:

    window i, first log-mel frame f (a multiple of the trunk's stride s), trunk frames t0 = f/s … t0 + n - 1
      interior frames [t0 + e, t0 + n - e): the stream's own trunk frames, computed once (kept between ticks)
      edge frames (e at each end): recomputed from the window's first and last (2e - 1)·s + 1 log-mel frames,
        because there the window alone sees zero padding where the stream has real audio

so every window's features, and its scores, are those the full graph gives that window alone (tested: within
float noise on real recordings). A window whose first frame is off the stride (a hop that is not a multiple of
s × 10 ms) or that comes without its stream goes through the full graph. The memory per stream is the last
window's interior (n - 2e trunk frames, 180 KiB for the default model), dropped with the stream (a weak key).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np

MAX_SPAN = 512          # trunk frames one trunk run computes for a stream, at most (20 s of the default model)


@dataclass
class _Span:
    """A stream's trunk frames [first, end) (the stream's trunk frame numbers): computed (`frames`), or still to
    compute from the log-mel frames [(first - e)·s, (end - 1 + e)·s], gathered in pieces from its windows."""
    first: int
    end: int
    frames: np.ndarray | None = None            # (C, end - first, F') once computed
    mel: list[np.ndarray] = field(default_factory=list)


class SharedTrunk:
    """The split graph's two sessions and each stream's trunk frames between ticks (see the module docstring)."""

    def __init__(self, trunk, rest, window_frames: int, batch_size: int = 16):
        self.trunk, self.rest = trunk, rest         # onnxruntime.InferenceSession each
        meta = trunk.get_modelmeta().custom_metadata_map
        self.stride, self.edge = int(meta["stride"]), int(meta["edge"])
        self.window_frames = window_frames
        self.n = (window_frames - 1) // self.stride + 1         # trunk frames of a window
        self.edge_frames = (2 * self.edge - 1) * self.stride + 1  # log-mel frames that hold a window edge's e frames
        self.batch_size = batch_size
        self._held: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._trunk_in = trunk.get_inputs()[0].name
        self._rest_in = rest.get_inputs()[0].name

    def shares(self, first_frame: int) -> bool:
        return first_frame % self.stride == 0 and (self.window_frames - 1) % self.stride == 0

    def score(self, windows: list[np.ndarray], streams: list[object], first_frames: list[int]) -> list[np.ndarray]:
        """Framewise scores of windows (frames, n_mels) of the given streams (weak-referenceable keys, one per
        stream) starting at the given log-mel frames (each `shares`), in order within each stream."""
        e, n = self.edge, self.n
        spans = self._spans(windows, streams, first_frames)
        self._compute([span for per_stream in spans.values() for span in per_stream])
        runs = {key: _runs(per_stream) for key, per_stream in spans.items()}
        edges = self._edges(windows)
        features = np.empty((len(windows), edges.shape[1], n, edges.shape[3]), np.float32)
        for i, (stream, f) in enumerate(zip(streams, first_frames)):
            lo = f // self.stride + e
            span = next(r for r in runs[id(stream)] if r.first <= lo and lo + n - 2 * e <= r.end)
            features[i, :, e:n - e] = span.frames[:, lo - span.first:lo - span.first + n - 2 * e]  # type: ignore
            features[i, :, :e], features[i, :, n - e:] = edges[i, :, :e], edges[i, :, e:]
        for stream in dict.fromkeys(streams):      # what the stream's next window may still use: the last interior
            span = runs[id(stream)][-1]
            assert span.frames is not None
            self._held[stream] = _Span(span.end - (n - 2 * e), span.end, span.frames[:, -(n - 2 * e):].copy())
        out: list[np.ndarray] = []
        for i in range(0, len(windows), self.batch_size):
            out.extend(self.rest.run(["framewise"], {self._rest_in: features[i:i + self.batch_size]})[0])
        return out

    def _spans(self, windows, streams, first_frames) -> dict[int, list[_Span]]:
        """Per stream, in order: the span it holds from earlier ticks, then the spans of interior frames its
        windows need beyond it, each with the log-mel pieces (cut from those windows) to compute it from."""
        e, s, n = self.edge, self.stride, self.n
        spans: dict[int, list[_Span]] = {}
        run_start: dict[int, int] = {}          # first frame of the contiguous spans that end a stream's list
        for window, stream, f in zip(windows, streams, first_frames):
            if id(stream) not in spans:
                held = self._held.get(stream)
                spans[id(stream)] = [held] if held is not None else []
                run_start[id(stream)] = held.first if held is not None else 0
            per_stream, last_mel = spans[id(stream)], (n - 1) * s + 1
            lo, hi = f // s + e, f // s + n - e          # the window's interior
            last = per_stream[-1] if per_stream else None
            if last is None or not run_start[id(stream)] <= lo <= last.end:   # nothing to continue: all of it
                per_stream.append(_Span(lo, hi, mel=[window[:last_mel]]))
                run_start[id(stream)] = lo
            elif hi > last.end and last.frames is None and last.end - last.first < MAX_SPAN:   # a pending span grows
                last.mel.append(window[(last.end - 1 + e) * s + 1 - f:last_mel])
                last.end = hi
            elif hi > last.end:                         # new frames after those held (or a long pending span)
                per_stream.append(_Span(last.end, hi, mel=[window[(last.end - e) * s - f:last_mel]]))
        return spans

    def _compute(self, spans: list[_Span]) -> None:
        """The trunk over every pending span, spans of one length in one batch; each keeps its interior."""
        pending = [span for span in spans if span.frames is None]
        by_length: dict[int, list[tuple[_Span, np.ndarray]]] = {}
        for span in pending:
            mel = span.mel[0] if len(span.mel) == 1 else np.concatenate(span.mel)
            by_length.setdefault(len(mel), []).append((span, mel))
        for length, group in by_length.items():
            per_batch = max(1, self.batch_size * self.window_frames // length)
            for i in range(0, len(group), per_batch):
                part = group[i:i + per_batch]
                x = np.stack([m for _, m in part])[:, None]
                (out,) = self.trunk.run(None, {self._trunk_in: x})
                for (span, _), frames in zip(part, out):
                    span.frames, span.mel = frames[:, self.edge:frames.shape[1] - self.edge], []

    def _edges(self, windows: list[np.ndarray]) -> np.ndarray:
        """Each window's first and last e trunk frames as the window alone gives them: (windows, C, 2e, F')."""
        k, e = self.edge_frames, self.edge
        ends = np.stack([w[:k] for w in windows] + [w[-k:] for w in windows])[:, None]
        out = np.concatenate([self.trunk.run(None, {self._trunk_in: ends[i:i + 4 * self.batch_size]})[0]
                              for i in range(0, len(ends), 4 * self.batch_size)])
        m = len(windows)
        return np.concatenate([out[:m, :, :e], out[m:, :, -e:]], axis=2)


def _runs(spans: list[_Span]) -> list[_Span]:
    """A stream's computed spans joined where one continues another (a window's interior may straddle the held
    span and a new one); a span after a gap between windows starts a new run."""
    out = [spans[0]]
    for span in spans[1:]:
        last = out[-1]
        assert last.frames is not None and span.frames is not None
        if span.first == last.end:
            out[-1] = _Span(last.first, span.end, np.concatenate([last.frames, span.frames], axis=1))
        else:
            out.append(span)
    return out
