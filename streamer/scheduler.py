"""WindowScheduler: cuts a continuous stream into overlapping fixed-length windows."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .ringbuffer import RingBuffer


@dataclass
class Window:
    start_sample: int          # absolute stream index of samples[0]
    samples: np.ndarray        # float32, exactly `window` long (zero-padded at the end of a stream)
    valid: int                 # how many leading samples are real audio
    sample_rate: int

    @property
    def start_s(self) -> float:
        return self.start_sample / self.sample_rate


class WallClock:
    """Maps stream time to wall-clock time from the anchors live sources stamp on their blocks.

    The newest anchor at or before the asked-for sample wins, so slow drift between the sound card's clock and
    the system clock over a night does not accumulate.
    """

    def __init__(self, sample_rate: int, keep: int = 256):
        self.sample_rate = sample_rate
        self._anchors: deque[tuple[int, float]] = deque(maxlen=keep)

    def anchor(self, sample: int, wall_time: float | None) -> None:
        if wall_time is not None:
            self._anchors.append((sample, wall_time))

    def at(self, seconds: float) -> float | None:
        if not self._anchors:
            return None
        sample = seconds * self.sample_rate
        best = self._anchors[0]
        for a in self._anchors:
            if a[0] <= sample:
                best = a
            else:
                break
        return best[1] + (sample - best[0]) / self.sample_rate


class WindowScheduler:
    """Feeds blocks into a RingBuffer and hands out every window [k*hop, k*hop + window) once it is complete.

    If the consumer falls so far behind that a window's samples were overwritten, that window is skipped and
    counted in `skipped_windows` (the stream keeps going; events may be missed in the skipped stretch). At the
    end of a stream, `finish` hands out one zero-padded window so the last partial hop is scored too.
    """

    def __init__(self, window: int, hop: int, sample_rate: int, capacity: int | None = None):
        if hop <= 0 or window <= 0 or hop > window:
            raise ValueError("need 0 < hop <= window")
        self.window, self.hop, self.sample_rate = int(window), int(hop), int(sample_rate)
        self.ring = RingBuffer(capacity or self.window + 30 * self.sample_rate)
        self.clock = WallClock(sample_rate)
        self.next_start = 0
        self.skipped_windows = 0

    @property
    def end(self) -> int:
        return self.ring.end

    def push(self, samples: np.ndarray, start_sample: int | None = None, wall_time: float | None = None) -> list[Window]:
        if start_sample is not None and start_sample > self.ring.end:  # a gap the source did not fill
            self.ring.write_zeros(start_sample - self.ring.end)
        elif start_sample is not None and start_sample < self.ring.end:  # overlap: keep what we have
            samples = samples[self.ring.end - start_sample:]
        self.clock.anchor(self.ring.end, wall_time)
        out: list[Window] = []
        room = self.ring.capacity - self.window  # write in pieces the ring can hold beside a whole window
        for i in range(0, len(samples), room):
            self.ring.write(samples[i:i + room])
            out += self._ready()
        return out

    def _ready(self) -> list[Window]:
        out = []
        while self.next_start + self.window <= self.ring.end:
            if self._catch_up():
                continue
            out.append(Window(self.next_start, self.ring.read(self.next_start, self.window), self.window,
                              self.sample_rate))
            self.next_start += self.hop
        return out

    def _catch_up(self) -> bool:
        """Skip (and count) windows whose samples the ring buffer no longer holds; True if any were skipped."""
        if self.next_start >= self.ring.start:
            return False
        behind = -(-(self.ring.start - self.next_start) // self.hop)  # ceil division
        self.skipped_windows += behind
        self.next_start += behind * self.hop
        return True

    def finish(self) -> list[Window]:
        """Windows still owed at end of stream: one padded window covering the samples after the last full one."""
        out = self._ready()
        last_covered = self.next_start - self.hop + self.window if self.next_start > 0 else 0
        self._catch_up()
        if self.ring.end > last_covered and self.next_start < self.ring.end:
            start = self.next_start
            valid = self.ring.end - start
            samples = np.zeros(self.window, dtype=np.float32)
            self.ring.read(start, valid, samples[:valid])
            out.append(Window(start, samples, valid, self.sample_rate))
            self.next_start = start + self.hop
        return out
