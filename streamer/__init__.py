"""birdlive.streamer: sources → per-stream state → one shared scorer → events → sinks (see runner.py).

Names are imported on first use (PEP 562): `birdlive summary` and the sinks need no torch, and importing the
package must not cost them the network's start-up.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "Event": "events", "EventAudio": "events", "EventFilter": "events", "StreamStatus": "events",
    "detect_offline": "offline", "framewise_track": "offline",
    "RingBuffer": "ringbuffer",
    "Runner": "runner", "Source": "runner", "SourceSpec": "runner", "file_specs": "runner", "make_runner": "runner",
    "SharedScorer": "scorer",
    "CSV_COLUMNS": "sinks", "CsvEventLog": "sinks", "EventAnnotator": "sinks", "EventPrinter": "sinks",
    "ScoreSink": "sinks", "Sink": "sinks", "StreamReport": "sinks",
    "EventSmoother": "smoother", "SmootherParams": "smoother",
    "ScoreStitcher": "stitcher",
    "StreamState": "stream", "WindowCut": "stream", "default_params": "stream",
    "OutputOptions": "outputs", "build_outputs": "outputs",
    "DetectorSettings": "settings",
    "load_thresholds": "thresholds",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
