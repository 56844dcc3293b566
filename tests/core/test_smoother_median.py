"""The smoother's block-wise median filter gives the events of a frame-at-a-time median, bit for bit.

`FrameAtATime` is the smoother as it was before the median went block-wise (one `np.median` per frame over a deque
of the frames around it): the reference the vectorised path must equal, on any scores, filter length and chunking.
"""
from __future__ import annotations

from collections import deque

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from birdlive.streamer import EventSmoother, SmootherParams
from birdlive.streamer.core.smoother import median_of_odd


class FrameAtATime(EventSmoother):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._raw: deque[np.ndarray] = deque(maxlen=2 * self.half + 1)

    def push(self, frames):
        out = []
        for f in np.asarray(frames, dtype=np.float32):
            if self._received == 0:
                self._raw.extend([f] * self.half)
            self._raw.append(f)
            self._received += 1
            if len(self._raw) == 2 * self.half + 1:
                out += self._step(np.median(np.stack(self._raw), axis=0))
        return out

    def finish(self):
        out = []
        if self._received:
            last = self._raw[-1]
            while self._smoothed < self._received:
                self._raw.append(last)
                out += self._step(np.median(np.stack(self._raw), axis=0))
        self._received = self._smoothed     # nothing owed: the base class only closes the tracks
        return sorted(out + super().finish(), key=lambda e: (e.onset_s, e.species))


def events(cls, scores: np.ndarray, params: SmootherParams, cuts: list[int]):
    labels = [f"s{k}" for k in range(scores.shape[1])]
    sm = cls(labels, labels, 0.1, params)
    out, start = [], 0
    for end in sorted(set(cuts)) + [len(scores)]:
        out += sm.push(scores[start:end])
        start = max(start, end)
    return out + sm.finish()


@settings(max_examples=150, deadline=None)
@given(frames=st.integers(0, 120), species=st.integers(1, 6), median_frames=st.integers(0, 11),
       seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 120), max_size=8))
def test_block_median_equals_frame_at_a_time(frames, species, median_frames, seed, cuts):
    rng = np.random.default_rng(seed)
    # Runs of calls over noise, so that events open, merge and close; float32 like the network's output.
    scores = rng.random((frames, species)).astype(np.float32) * 0.45
    scores[rng.random((frames, species)) < 0.3] += np.float32(0.5)
    params = SmootherParams(median_s=median_frames / 10, min_duration_s=0.1, merge_gap_s=0.3, max_event_s=3.0)
    want = events(FrameAtATime, scores, params, cuts)
    got = events(EventSmoother, scores, params, cuts)
    assert got == want
    # Equal floats are not enough for the golden files: the means and peaks must be the same bits.
    assert [(e.peak, e.mean) for e in got] == [(e.peak, e.mean) for e in want]


def test_stream_shorter_than_half_the_filter():
    """Fewer frames than half the filter: the end of the stream medians over the frames there are (at most a
    filter's length of them), as frame at a time did; here the last frame's median is 0, not 0.45."""
    scores = np.array([[0.9], [0.0], [0.0]], np.float32)
    params = SmootherParams(median_s=0.9, min_duration_s=0.1)
    want = events(FrameAtATime, scores, params, [])
    assert [(e.onset_s, e.offset_s) for e in want] == [(0.0, 0.2)]
    assert events(EventSmoother, scores, params, []) == want


@settings(max_examples=100, deadline=None)
@given(rows=st.integers(1, 40), half=st.integers(0, 7), nans=st.integers(0, 5), seed=st.integers(0, 2**32 - 1))
def test_median_of_odd_is_np_median_bit_for_bit(rows, half, nans, seed):
    """The smoother's median (not np.median, whose first call imports numpy.ma: start-up time) gives np.median's
    bits, ties and NaN (a row with one is NaN) included."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, (rows, 3, 2 * half + 1)).astype(np.float32) / np.float32(3)   # ties on purpose
    x.reshape(-1)[rng.integers(0, x.size, nans)] = np.nan
    got, want = median_of_odd(x), np.median(x, axis=-1)
    assert got.dtype == want.dtype and np.array_equal(got.view(np.uint32), want.view(np.uint32))
