"""RingBuffer: a fixed-capacity store of float32 rows (audio samples, log-mel frames) addressed by absolute index."""
from __future__ import annotations

import numpy as np


class RingBuffer:
    """Holds the most recent `capacity` items of a stream: samples (`item_shape=()`) or log-mel frames (`(n_mels,)`).

    Samples are addressed by their absolute index in the stream (0 = first sample ever written), so readers
    never have to track wrap-around. Writing never allocates: the storage is one array made up front. When the
    writer outruns the reader the oldest samples are overwritten (the stream must go on); a reader asking for
    them gets an IndexError and can see from `start` what is still there.
    """

    def __init__(self, capacity: int, item_shape: tuple[int, ...] = ()):
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = int(capacity)
        self.item_shape = tuple(item_shape)
        self._buf = np.zeros((self.capacity, *self.item_shape), dtype=np.float32)
        self.end = 0  # absolute index one past the newest sample

    @property
    def start(self) -> int:
        """Absolute index of the oldest sample still held."""
        return max(0, self.end - self.capacity)

    def __len__(self) -> int:
        return self.end - self.start

    def write(self, samples: np.ndarray) -> None:
        x = np.asarray(samples, dtype=np.float32).reshape(-1, *self.item_shape)
        if len(x) > self.capacity:  # only the newest `capacity` samples can survive anyway
            self.end += len(x) - self.capacity
            x = x[-self.capacity:]
        pos = self.end % self.capacity
        first = min(len(x), self.capacity - pos)
        self._buf[pos:pos + first] = x[:first]
        self._buf[:len(x) - first] = x[first:]
        self.end += len(x)

    def write_zeros(self, n: int) -> None:
        """Advance the stream by `n` samples of silence (a gap the source could not fill)."""
        n = int(n)
        if n >= self.capacity:
            self._buf[:] = 0.0
            self.end += n
            return
        pos = self.end % self.capacity
        first = min(n, self.capacity - pos)
        self._buf[pos:pos + first] = 0.0
        self._buf[:n - first] = 0.0
        self.end += n

    def read(self, start: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Copy samples [start, start+n) into `out` (allocated if not given)."""
        if start < self.start or start + n > self.end:
            raise IndexError(f"samples [{start}, {start + n}) not held; buffer has [{self.start}, {self.end})")
        if out is None:
            out = np.empty((n, *self.item_shape), dtype=np.float32)
        pos = start % self.capacity
        first = min(n, self.capacity - pos)
        out[:first] = self._buf[pos:pos + first]
        out[first:n] = self._buf[:n - first]
        return out
