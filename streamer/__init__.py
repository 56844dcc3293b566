"""birdlive.streamer: sources → per-stream state → one shared scorer → events → sinks (see core/runner.py).

Names are imported on first use (PEP 562): `birdlive summary` and the sinks need no torch, and importing the
package must not cost them the network's start-up.
"""
from __future__ import annotations

from birdlive.lazy import lazy_exports

_WHERE = {
    "Event": "core.events", "EventAudio": "core.events", "EventFilter": "core.events", "StreamStatus": "core.events",
    "detect_offline": "core.offline", "framewise_track": "core.offline",
    "RingBuffer": "core.ringbuffer",
    "Runner": "core.runner", "Source": "core.runner", "SourceSpec": "core.runner", "make_runner": "core.runner",
    "file_specs": "sources.files",
    "SharedScorer": "core.torch_scorer", "OnnxScorer": "core.onnx_scorer", "Scorer": "core.scorer",
    "load_scorer": "core.scorer",
    "CSV_COLUMNS": "sinks.csvlog", "CsvEventLog": "sinks.csvlog", "EventPrinter": "sinks.console",
    "StreamReport": "sinks.console",
    "EventAnnotator": "core.events", "ScoreSink": "core.events", "Sink": "core.events", "SinkBase": "core.events",
    "EventSmoother": "core.smoother", "SmootherParams": "core.smoother",
    "ScoreStitcher": "core.stitcher",
    "StreamState": "core.stream", "WindowCut": "core.stream", "default_params": "core.stream",
    "OutputOptions": "sinks.outputs", "build_outputs": "sinks.outputs",
    "DetectorSettings": "core.settings",
    "load_thresholds": "core.thresholds",
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _WHERE)
