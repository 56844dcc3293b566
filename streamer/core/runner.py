"""Runner: source threads → one queue of (stream, item) → per-stream state → one shared scorer → sinks.

    source thread ─┐                       ┌→ StreamState (ring, log-mel, windows, stitcher, smoother) ─┐
    source thread ─┼→ queue (stream, item) ┤                   Scorer: one batch for all streams        ├→ sinks
    source thread ─┘                       └→ StreamState … ───────────────────────────────────────────┘

Sources only read and hand over blocks (a microphone's PortAudio callback only fills its own queue); everything
else happens on the consumer side, in order. Whatever ends a stream — its end, an error in its source, Ctrl-C,
an exception in the consumer — every event it saw, open ones included, goes to the sinks before `run` returns
(a `finally`). A failing source fails only its own stream: the others go on, and the next file of a list starts.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np

from birdlive.audio import AudioBlock
from birdlive.errors import BirdliveError, one_line
from birdlive.model.config import ModelConfig

from .events import Event, EventAnnotator, ScoreSink, Sink, StreamStatus, wants_native_audio
from .scorer import Scorer
from .settings import DetectorSettings
from .smoother import SmootherParams
from .stream import StreamState


log = logging.getLogger(__name__)

READ_AHEAD_S = 32.0     # seconds of audio a stream may have read and queued ahead of the consumer (`ReadAhead`)

class Source(Protocol):
    """What the runner needs of a source (FileSource, MicSource)."""
    name: str
    stats: dict
    warnings: list[str]
    keep_native: bool               # set before iterating: blocks carry the source's own-rate audio too

    def __iter__(self) -> Iterator[AudioBlock]: ...

    def stop(self) -> None: ...     # from another thread: end iteration soon

    def close(self) -> None: ...


@dataclass
class SourceSpec:
    """A source to open in its own thread: a file that cannot be read fails its stream, not the run."""
    label: str                      # its name until it is open (the path, the device asked for)
    open: Callable[[], Source]


@dataclass
class _Live:
    status: StreamStatus
    t0: float = field(default_factory=time.perf_counter)
    source: Source | None = None
    state: StreamState | None = None
    last_status: float = 0.0


def stream_error(e: BaseException, label: str) -> str:
    """The user's line for what ended a stream: our own errors as they are, anything else named as a bug (its
    traceback is logged at debug level: `birdlive` prints it under BIRDLIVE_DEBUG=1)."""
    if isinstance(e, BirdliveError):
        return one_line(e)
    return one_line(f"{label}: unexpected {type(e).__name__}: {e} (a bug; BIRDLIVE_DEBUG=1 prints the traceback)")


class Runner:
    def __init__(self, scorer: Scorer, sinks: list[Sink], make_stream: Callable[[str], StreamState],
                 stop: threading.Event | None = None, max_open: int = 1, pre_roll_s: float = 1.5,
                 post_roll_s: float = 1.5, status_every_s: float = 0.25, read_ahead_s: float = READ_AHEAD_S,
                 annotators: list[EventAnnotator] | None = None, score_sinks: list[ScoreSink] | None = None):
        self.scorer, self.sinks, self.make_stream = scorer, sinks, make_stream
        self.annotators, self.score_sinks = list(annotators or []), list(score_sinks or [])
        self.stop = stop or threading.Event()
        self.max_open, self.pre_roll_s, self.post_roll_s = max_open, pre_roll_s, post_roll_s
        self.status_every_s = status_every_s
        self.keep_native = wants_native_audio([*self.annotators, *self.sinks])
        # Unbounded: what a source may hand over is bounded per stream, in seconds of audio (`ReadAhead`); the
        # other items are three per stream (open, end or error).
        self._q: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        self.read_ahead = ReadAhead(read_ahead_s, scorer.cfg.sample_rate, self._closed)
        self._live: dict[int, _Live] = {}
        self._names = [scorer.cfg.display_name(i) for i in range(scorer.cfg.num_classes)]

    # ---- the consumer loop
    def run(self, specs: Iterable[SourceSpec]) -> list[StreamStatus]:
        """Run every source to its end (at most `max_open` at once), or until `stop` is set. Returns each
        stream's final status, in the order they ended."""
        pending, ids = deque(specs), itertools.count()
        done: list[StreamStatus] = []
        stopped_at = None
        try:
            while pending or self._live:
                while pending and len(self._live) < self.max_open and not self.stop.is_set():
                    self._start(next(ids), pending.popleft())
                for sid, kind, payload in self._next_items():
                    self._handle(sid, kind, payload, done)
                self._tick([live.state for live in self._live.values() if live.state is not None])
                self._send_statuses()
                if self.stop.is_set():
                    pending.clear()
                    stopped_at = stopped_at or time.monotonic()
                    for live in self._live.values():
                        if live.source is not None:
                            live.source.stop()
                    if time.monotonic() - stopped_at > 5.0:   # a source that will not end: flush it anyway
                        break
        finally:
            self._closed.set()
            self._flush_all(done)
        return done

    def _next_items(self) -> list[tuple[int, str, object]]:
        """Everything queued now (waiting up to 0.1 s for the first item): one tick serves all of it."""
        try:
            items = [self._q.get(timeout=0.1)]
        except queue.Empty:
            return []
        while len(items) < 256:
            try:
                items.append(self._q.get_nowait())
            except queue.Empty:
                break
        return items

    def _handle(self, sid: int, kind: str, payload, done: list[StreamStatus]) -> None:
        live = self._live.get(sid)
        if live is None:
            if kind == "block":
                self.read_ahead.release(sid, payload)
            return
        if kind == "open":
            live.source = payload
            live.state = self.make_stream(payload.name)
            live.state.keep_scores = bool(self.score_sinks)
            live.status.source = payload.name
        elif kind == "block":
            try:
                if not self.stop.is_set() and live.state is not None:
                    self._feed(live.state, payload)
            finally:
                self.read_ahead.release(sid, payload)
        elif kind == "end":
            done.append(self._end(sid, None))
        elif kind == "error":
            done.append(self._end(sid, payload))

    def _feed(self, state: StreamState, block: AudioBlock) -> None:
        for samples, wall in state.pieces(block.samples, block.start_sample, block.wall_time):
            while len(samples) > state.room:
                self._tick_progressing(state)
            state.push(samples, wall)
        if block.native is not None:
            state.add_native(block.native, block.native_rate, block.start_sample)

    def _tick(self, states: list[StreamState]) -> None:
        """New audio of every stream → log-mel in one batch; ready windows of every stream → one batch."""
        chunks = [(st, c) for st in states if (c := st.frontend_chunk()) is not None]
        if chunks:
            for (st, _), mel in zip(chunks, self.scorer.logmel([c for _, c in chunks])):
                st.add_logmel(mel)
        cuts = [(st, w) for st in states for w in st.ready_windows()]
        if cuts:
            origins: list[tuple[object, int]] = [(st, w.start_sample // st.mel_hop) for st, w in cuts]
            for (st, w), scores in zip(cuts, self.scorer.score([w.logmel for _, w in cuts], origins)):
                self._emit(st, st.add_scores(w, scores))

    def _tick_progressing(self, state: StreamState) -> None:
        """One tick of one stream that must move it on (turn audio into log-mel or cut a window)."""
        before = (state.mel.end, state.next_window, state.tail_cut)
        self._tick([state])
        if (state.mel.end, state.next_window, state.tail_cut) == before:
            raise RuntimeError(f"{state.name}: a tick made no progress (log-mel at frame {state.mel.end}, "
                               f"next window at sample {state.next_window})")

    def _emit(self, state: StreamState, events: list[Event]) -> None:
        for first, frames in state.take_scores():
            for score_sink in self.score_sinks:
                score_sink.on_scores(state.name, first, frames, self.scorer.cfg.frame_s)
        for e in events:
            audio = state.event_audio(e, self.pre_roll_s, self.post_roll_s)
            for annotator in self.annotators:
                e = annotator.annotate(e, audio)
            for sink in self.sinks:
                sink.on_event(e, audio)

    # ---- ending a stream
    def _end(self, sid: int, error: BaseException | None) -> StreamStatus:
        """Close the stream's input, score what it owes, hand every remaining event to the sinks."""
        live = self._live[sid]
        try:
            if live.state is not None:
                live.state.end_input()
                while not live.state.drained:   # a ring's worth of audio may still be owed: a few ticks
                    self._tick_progressing(live.state)
                self._emit(live.state, live.state.finish())
        finally:
            del self._live[sid]
            if error is not None:
                live.status.state, live.status.error = "failed", stream_error(error, live.status.source)
                if not isinstance(error, BirdliveError):
                    log.debug("%s: the traceback", live.status.source, exc_info=error)
            else:
                live.status.state = "done"
            self._send_status(live)
        return live.status

    def _flush_all(self, done: list[StreamStatus]) -> None:
        """The `finally`: streams still open (Ctrl-C, a consumer error) are ended with every event they saw."""
        for sid in list(self._live):
            source = self._live[sid].source
            if source is not None:
                source.stop()
            try:
                done.append(self._end(sid, None))
            except Exception:   # keep flushing the others; the error that got us here is the one to report
                log.debug("flushing a stream failed too", exc_info=True)

    # ---- source threads
    def _start(self, sid: int, spec: SourceSpec) -> None:
        self._live[sid] = _Live(StreamStatus(source=spec.label))
        threading.Thread(target=self._pump, args=(sid, spec), name=f"source-{sid}", daemon=True).start()

    def _pump(self, sid: int, spec: SourceSpec) -> None:
        """A source's thread: open it, read it, hand each block over; nothing else."""
        source = None
        try:
            source = spec.open()
            source.keep_native = self.keep_native
            if not self._put((sid, "open", source)):
                return
            for block in source:
                if self.stop.is_set() or not self.read_ahead.acquire(sid, block):
                    break
                self._put((sid, "block", block))
            self._put((sid, "end", None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which reports it as this stream's
            self._put((sid, "error", e))
        finally:
            if source is not None:
                source.close()

    def _put(self, item) -> bool:
        """Hand an item over (never waits: a block waited for its place in `ReadAhead` first); False once the
        runner has ended."""
        if self._closed.is_set():
            return False
        self._q.put(item)
        return True

    # ---- status
    def _send_statuses(self) -> None:
        now = time.perf_counter()
        for live in list(self._live.values()):
            if now - live.last_status >= self.status_every_s:
                self._send_status(live)

    def _send_status(self, live: _Live) -> None:
        s, st = live.status, live.state
        live.last_status = time.perf_counter()
        s.wall_s = live.last_status - live.t0
        if st is not None:
            s.audio_s, s.level_dbfs, s.windows, s.events = st.audio_s, st.level_dbfs, st.windows_scored, st.events
            order = np.argsort(st.latest_scores)[::-1][:5]
            s.top = [(self._names[i], float(st.latest_scores[i])) for i in order]
        if live.source is not None:
            s.source_stats = dict(live.source.stats)
            s.warnings = list(live.source.warnings)
        for sink in self.sinks:
            sink.on_status(s)


class ReadAhead:
    """How much audio each stream's source thread may have handed over that the consumer has not fed yet:
    `limit_s` seconds (a 16 s file block and the next being read; a microphone's 0.1 s blocks by the hundred).
    A source thread waits in `acquire` while its stream is at the bound — back-pressure on files; a microphone's or
    a URL's own queue absorbs it — and one block always passes when none is outstanding, so a block longer than
    the bound still moves. Memory, not speed, sets the bound: an item count let 16 blocks of 16 s (with a 48 kHz
    copy beside each) pile up, 160 MiB of a 48 kHz replay's 600."""

    def __init__(self, limit_s: float, sample_rate: int, done: threading.Event):
        self.limit = int(limit_s * sample_rate)     # samples at the stream's (the model's) rate
        self.done = done
        self._held: dict[int, int] = {}
        self._changed = threading.Condition()

    def held(self, sid: int) -> int:
        """Samples of stream `sid` handed over and not yet released."""
        with self._changed:
            return self._held.get(sid, 0)

    def acquire(self, sid: int, block: AudioBlock) -> bool:
        """Wait until `block` fits in stream `sid`'s bound; False if the runner ended first."""
        n = len(block.samples)
        with self._changed:
            while not self.done.is_set():
                held = self._held.get(sid, 0)
                if held == 0 or held + n <= self.limit:
                    self._held[sid] = held + n
                    return True
                self._changed.wait(0.1)
        return False

    def release(self, sid: int, block: AudioBlock) -> None:
        """The consumer is done with `block` (fed, or dropped on a stop)."""
        with self._changed:
            self._held[sid] = self._held.get(sid, 0) - len(block.samples)
            if self._held[sid] <= 0:
                del self._held[sid]
            self._changed.notify_all()


def put_unless(q: queue.Queue, item, done: threading.Event) -> bool:
    """Put `item` on `q`, waiting while it is full, unless `done` is set first (then False)."""
    while not done.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def make_runner(model, sinks: list[Sink], settings: DetectorSettings | None = None, *, params=None,
                stop: threading.Event | None = None, max_open: int = 1, annotators: list[EventAnnotator] | None = None,
                score_sinks: list[ScoreSink] | None = None) -> Runner:
    """A runner with one shared scorer and a StreamState per source with these detector settings (`params`, for
    experiments: smoother parameters instead of those the settings make). `model`: a `Scorer` (`load_scorer`), or
    a torch network, which a `SharedScorer` runs."""
    settings = settings or DetectorSettings()
    if isinstance(model, Scorer):
        scorer = model
    else:
        from .torch_scorer import SharedScorer
        scorer = SharedScorer(model)
    return Runner(scorer, sinks, stream_factory(model.cfg, settings, params), stop=stop,
                  max_open=max_open, pre_roll_s=settings.pre_roll_s, post_roll_s=settings.post_roll_s,
                  annotators=annotators, score_sinks=score_sinks)


def stream_factory(cfg: ModelConfig, settings: DetectorSettings,
                   params: SmootherParams | None = None) -> Callable[[str], StreamState]:
    """A new stream's state, by name, for a model with config `cfg` and these settings (checked here, once)."""
    settings.check(cfg)
    params = params or settings.smoother_params(cfg)
    event_filter = settings.event_filter()
    return lambda name: StreamState(name, cfg, hop_s=settings.hop_s, params=params, event_filter=event_filter)
