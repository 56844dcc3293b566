"""ScoreStitcher: the framewise scores of overlapping windows → one score track per species."""
from __future__ import annotations

import numpy as np


class ScoreStitcher:
    """Averages the framewise scores of overlapping windows frame by frame.

    Windows must start on the frame grid, `hop_frames` apart, in order. A frame is final — and released — once
    no later window can cover it: after the window starting at s, every frame before s + hop_frames is final.
    Frames past the real end of the stream (the zero padding of the last window) are never released.
    """

    def __init__(self, num_classes: int, hop_frames: int):
        self.num_classes = num_classes
        self.hop_frames = hop_frames
        self.released = 0                                   # frames [0, released) have been handed out
        self._sum = np.zeros((0, num_classes), np.float64)  # frames [released, released + len)
        self._count = np.zeros(0, np.int64)
        self._valid_end = 0                                 # frames past this are padding

    def add(self, start_frame: int, scores: np.ndarray, valid_frames: int | None = None) -> tuple[int, np.ndarray]:
        """Add one window's (n, K) scores starting at `start_frame`; return (first frame, newly final frames)."""
        if start_frame < self.released:
            raise ValueError("windows must arrive in order")
        n = len(scores) if valid_frames is None else min(valid_frames, len(scores))
        end = start_frame + len(scores)
        need = end - self.released
        if need > len(self._count):
            self._sum = np.concatenate([self._sum, np.zeros((need - len(self._count), self.num_classes))])
            self._count = np.concatenate([self._count, np.zeros(need - len(self._count), np.int64)])
        a = start_frame - self.released
        self._sum[a:a + n] += scores[:n]
        self._count[a:a + n] += 1
        self._valid_end = max(self._valid_end, start_frame + n)
        return self._release(start_frame + self.hop_frames)

    def _release(self, upto: int) -> tuple[int, np.ndarray]:
        upto = min(upto, self._valid_end)
        k = max(0, upto - self.released)
        first = self.released
        out = self._sum[:k] / np.maximum(self._count[:k], 1)[:, None]
        self._sum, self._count = self._sum[k:], self._count[k:]
        self.released += k
        return first, out.astype(np.float32)

    def finish(self) -> tuple[int, np.ndarray]:
        return self._release(self._valid_end)
