"""Offline detection over a whole waveform held in memory (evaluation, and the reference streaming must match)."""
from __future__ import annotations

import numpy as np

from birdlive.model import BirdSED

from .detector import StreamDetector
from .events import Event, EventFilter
from .smoother import SmootherParams


def detect_waveform(model: BirdSED, wave: np.ndarray, source: str = "", hop_s: float = 1.0,
                    params: SmootherParams | None = None, event_filter: EventFilter | None = None) -> list[Event]:
    """Offline detection: the whole waveform (mono float32 at the model's rate) in one go."""
    det = StreamDetector(model, hop_s=hop_s, params=params, event_filter=event_filter, source=source)
    wave = np.asarray(wave, np.float32)
    step = 30 * det.sample_rate  # the scheduler's ring holds 30 s beyond a window; larger pushes would lose audio
    events: list[Event] = []
    for i in range(0, len(wave), step):
        events += det.push(wave[i:i + step])
    return events + det.finish()
