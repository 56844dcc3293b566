"""birdlive.streamer: sources → per-stream state → one shared scorer → events → sinks (see runner.py)."""
from .events import Event, EventAudio, EventFilter, StreamStatus
from .offline import detect_offline, framewise_track
from .ringbuffer import RingBuffer
from .runner import Runner, Source, SourceSpec, file_specs, make_runner
from .scorer import SharedScorer
from .sinks import CSV_COLUMNS, CsvEventLog, EventAnnotator, EventPrinter, ScoreSink, Sink, StreamReport
from .smoother import EventSmoother, SmootherParams
from .stitcher import ScoreStitcher
from .stream import StreamState, WindowCut, default_params

__all__ = ["CSV_COLUMNS", "CsvEventLog", "Event", "EventAnnotator", "EventAudio", "EventFilter", "EventPrinter", "EventSmoother",
           "RingBuffer", "Runner", "ScoreSink", "ScoreStitcher", "SharedScorer", "Sink", "SmootherParams", "Source",
           "SourceSpec", "StreamReport", "StreamState", "StreamStatus", "WindowCut", "default_params",
           "detect_offline", "file_specs", "framewise_track", "make_runner"]
