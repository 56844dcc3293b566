"""How many real-time streams one machine sustains: N paced sources through one runner and one scorer.

Each source delivers 0.1 s blocks of real audio at the pace of a microphone (wall-clock stamped, like
MicSource). If the consumer cannot keep up, its backlog grows: windows are scored later and later after their
audio arrived (`ScoringLag`), and past the runner's read-ahead the sources themselves fall behind the wall clock.
A count of streams is sustained when no window was overdue by more than `max_lag_s` (and no source fell that far
behind) and every window of every stream was scored.

    python benchmarks/realtime_streams.py [--seconds 20] [--max-lag 1.0]
"""
from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from birdlive.model import DEFAULT_CHECKPOINT, load_checkpoint
from birdlive.streamer import SourceSpec, make_runner
from birdlive.audio import AudioBlock


class PacedSource:
    """A live source made of a recording: blocks arrive when their last sample would have been recorded."""

    def __init__(self, name: str, audio: np.ndarray, sample_rate: int, seconds: float, offset: int,
                 block_s: float = 0.1):
        self.name, self.audio, self.sr = name, audio, sample_rate
        self.block = int(block_s * sample_rate)
        self.blocks = int(seconds / block_s)
        self.offset = offset
        self.stats = {"max_lag_s": 0.0}
        self.warnings: list[str] = []
        self._stop = threading.Event()

    def __iter__(self):
        t0_mono, t0_wall = time.monotonic(), time.time()
        n = len(self.audio)
        for k in range(self.blocks):
            if self._stop.is_set():
                return
            due = t0_mono + (k + 1) * self.block / self.sr
            lag = time.monotonic() - due
            if lag < 0:
                time.sleep(-lag)
            self.stats["max_lag_s"] = max(self.stats["max_lag_s"], lag)
            i = (self.offset + k * self.block) % (n - self.block)
            yield AudioBlock(self.audio[i:i + self.block], k * self.block, t0_wall + k * self.block / self.sr)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        pass


class ScoringLag:
    """A sink that sees how far the scoring is behind the live audio: at each status of a stream, how overdue its
    next window is (the seconds since the stream started, less the end of its newest scored window and a hop: a
    consumer that keeps up stays within a tick of 0). The runner lets each source read 32 s ahead
    (`ReadAhead`), so over a short run a slow consumer does not hold the sources back, and their own lag alone
    would not show it. The streams' ends (all at once here, each flushing its last window alone) do not count."""

    def __init__(self, window_s: float, seconds: float, hop_s: float = 1.0):
        self.window_s, self.seconds, self.hop_s = window_s, seconds, hop_s
        self.worst_s = 0.0

    def on_status(self, status) -> None:
        if status.state == "running" and status.windows and status.wall_s < self.seconds:
            scored_to = (status.windows - 1) * self.hop_s + self.window_s
            self.worst_s = max(self.worst_s, status.wall_s - scored_to - self.hop_s)

    def on_event(self, event, audio) -> None:
        pass

    def close(self) -> None:
        pass


def sustains(model, audio: np.ndarray, streams: int, seconds: float, max_lag_s: float) -> tuple[bool, float]:
    """Run `streams` paced sources for `seconds`; (sustained?, worst lag in seconds)."""
    sr = model.cfg.sample_rate
    sources = [PacedSource(f"s{i}", audio, sr, seconds, offset=i * 7919 * 16) for i in range(streams)]
    behind = ScoringLag(model.cfg.window_s, seconds)
    statuses = make_runner(model, [behind], max_open=streams).run(
        [SourceSpec(s.name, (lambda s=s: s)) for s in sources])
    lag = max(behind.worst_s, *(s.stats["max_lag_s"] for s in sources))
    expected_windows = int(seconds) - int(model.cfg.window_s) + 1
    complete = all(st.state == "done" and st.windows >= expected_windows for st in statuses)
    return complete and lag <= max_lag_s, lag


def max_streams(model, audio: np.ndarray, seconds: float = 20.0, max_lag_s: float = 1.0,
                log=print) -> tuple[int, dict[int, float]]:
    """Doubling, then bisection: the largest count of streams sustained. Returns it and the lag per count tried."""
    tried: dict[int, float] = {}

    def ok(n: int) -> bool:
        good, lag = sustains(model, audio, n, seconds, max_lag_s)
        tried[n] = lag
        log(f"  {n} streams: worst lag {lag:.2f} s -> {'sustained' if good else 'falls behind'}")
        return good

    lo, hi = 0, 1
    while ok(hi):
        lo, hi = hi, hi * 2
    while hi - lo > max(1, lo // 8):       # to within about 12 %
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo, tried


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-lag", type=float, default=1.0)
    ap.add_argument("--audio", default=None, help="a recording to stream (default: the project's demo clip)")
    a = ap.parse_args()
    import soundfile as sf
    import soxr
    from pathlib import Path
    model = load_checkpoint(DEFAULT_CHECKPOINT)
    path = a.audio or Path(__file__).resolve().parents[1] / "recordings" / "synthetic_calls.flac"
    x, rate = sf.read(path, dtype="float32", always_2d=True)
    audio = soxr.resample(x.mean(axis=1), rate, model.cfg.sample_rate).astype(np.float32)
    n, _ = max_streams(model, audio, a.seconds, a.max_lag)
    print(f"{n} real-time streams sustained ({a.seconds:g} s runs, lag ≤ {a.max_lag:g} s)")


if __name__ == "__main__":
    main()
