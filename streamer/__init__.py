"""birdlive.streamer: sources → ring buffer → windows → network → stitched scores → events → sinks."""
from .detector import StreamDetector, default_params
from .engine import ScoreStitcher, WindowScorer
from .events import Event, EventFilter
from .offline import detect_waveform
from .pipeline import StreamStatus, run_stream
from .ringbuffer import RingBuffer
from .scheduler import Window, WindowScheduler
from .sinks import CSV_COLUMNS, CsvEventLog, EventPrinter
from .smoother import EventSmoother, SmootherParams

__all__ = ["CSV_COLUMNS", "CsvEventLog", "Event", "EventFilter", "EventPrinter", "EventSmoother", "RingBuffer",
           "ScoreStitcher", "SmootherParams", "StreamDetector", "StreamStatus", "Window", "WindowScheduler",
           "WindowScorer", "default_params", "detect_waveform", "run_stream"]
