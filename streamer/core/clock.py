"""WallClock: stream time → wall-clock time, from the anchors live sources stamp on their blocks."""
from __future__ import annotations

import bisect
from collections import deque


class WallClock:
    """Maps a stream's sample index to unix time through the newest anchor at or before it.

    An anchor is a block's `wall_time`: the unix time its source gives the block's first sample. A microphone
    (sources' `_Timeline`) re-estimates it on every block from the system clock at its callbacks — the earliest
    stream start those callbacks allow, each callback's time less the block's age (PortAudio's ADC latency only
    once its timestamps have proved steady, else one block), plus the samples counted since — so drift between
    the sound card's clock and the system clock never accumulates, and a system clock step shows from the next
    block on instead of bending the times before it. `--realtime` replay stamps the wall time at which its pacing
    started plus the samples counted; fast replay stamps none (no wall times). Anchors older than `keep` are
    forgotten; a time before the oldest one is extrapolated back from it.
    """

    def __init__(self, sample_rate: int, keep: int = 4096):
        self.sample_rate = sample_rate
        self._samples: deque[int] = deque(maxlen=keep)
        self._walls: deque[float] = deque(maxlen=keep)

    def anchor(self, sample: int, wall_time: float | None) -> None:
        if wall_time is None:
            return
        if self._samples and sample <= self._samples[-1]:   # same position again: the newer stamp wins
            self._samples.pop()
            self._walls.pop()
        self._samples.append(sample)
        self._walls.append(wall_time)

    def at(self, seconds: float) -> float | None:
        if not self._samples:
            return None
        sample = seconds * self.sample_rate
        i = max(0, bisect.bisect_right(self._samples, sample) - 1)
        return self._walls[i] + (sample - self._samples[i]) / self.sample_rate
