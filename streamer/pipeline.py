"""The consumer loop: blocks from a source → StreamDetector → every sink, until the source ends or stop is set."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .detector import StreamDetector
from .events import Event


@dataclass
class StreamStatus:
    """What the live view shows; refreshed after every block."""
    source: str
    audio_s: float = 0.0
    wall_s: float = 0.0
    level_dbfs: float = -120.0
    windows: int = 0
    events: int = 0
    source_stats: dict = field(default_factory=dict)
    skipped_windows: int = 0
    top: list[tuple[str, float]] = field(default_factory=list)  # (display name, score) of the newest frame

    @property
    def realtime_factor(self) -> float:
        """Audio seconds processed per wall second (for live input this sits near 1 by construction)."""
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0


def level_dbfs(samples: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0
    return 20 * np.log10(max(rms, 1e-6))


def run_stream(source, detector: StreamDetector, sinks: list, stop: threading.Event | None = None,
               top_k: int = 5) -> StreamStatus:
    """Run until the source is exhausted or `stop` is set; every event goes to every sink in order (put the CSV
    log first: an event is on disk before it is shown). Returns the final status."""
    stop = stop or threading.Event()
    status = StreamStatus(source=getattr(source, "name", ""))
    names = [detector.cfg.display_name(i) for i in range(detector.cfg.num_classes)]
    t0 = time.perf_counter()

    def emit(events: list[Event]) -> None:
        for e in events:
            for sink in sinks:
                sink.write(e)
        status.events += len(events)

    for block in source:
        emit(detector.push(block.samples, block.start_sample, block.wall_time))
        status.level_dbfs = level_dbfs(block.samples)
        status.audio_s, status.wall_s = detector.audio_s, time.perf_counter() - t0
        status.windows, status.skipped_windows = detector.windows_scored, detector.scheduler.skipped_windows
        status.source_stats = dict(getattr(source, "stats", {}))
        order = np.argsort(detector.latest_scores)[::-1][:top_k]
        status.top = [(names[i], float(detector.latest_scores[i])) for i in order]
        for sink in sinks:
            if hasattr(sink, "update"):
                sink.update(status)
        if stop.is_set():
            break
    emit(detector.finish())
    status.audio_s, status.wall_s = detector.audio_s, time.perf_counter() - t0
    status.windows = detector.windows_scored
    return status
