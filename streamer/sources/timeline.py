"""A microphone's consumer side, free of PortAudio: the callback that queues what PortAudio hands over, and the
`Timeline` that turns those chunks into blocks with an honest stream position and wall-clock times (tests drive
it with made-up chunks)."""

from __future__ import annotations

import queue
import time
from collections import deque
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from birdlive.audio import AudioBlock, Blocker, NativeTrail, new_resampler


@dataclass
class Chunk:
    """One PortAudio callback's input, exactly as the callback saw it (all arithmetic happens in the consumer)."""

    gen: int  # which opened stream of the source delivered it
    frame: int  # device frames that stream delivered before this chunk
    samples: np.ndarray  # float32 mono at the device rate
    wall: float  # time.time() in the callback
    mono: float  # time.monotonic() in the callback
    adc: float  # time_info.inputBufferAdcTime (PortAudio stream clock; 0 if the host API does not know)
    now: float  # time_info.currentTime (same clock)
    overflow: bool  # PortAudio flagged input overflow since the last queued chunk


def make_callback(q: queue.Queue, stats: dict, channels: int, gen: int, wall_clock=time.time,
                   mono_clock=time.monotonic):
    """The PortAudio callback: copy the block into the bounded queue and nothing else (it runs on the audio
    thread; it never blocks). The clocks are parameters so that tests can step them."""
    counter = [0]  # device frames delivered by this stream
    overflow = [False]  # a flag whose chunk was dropped (queue full) travels with the next chunk

    def callback(indata, frames, time_info, status):
        wall, mono = wall_clock(), mono_clock()
        overflow[0] = overflow[0] or bool(status.input_overflow)
        x = indata[:, 0].copy() if channels == 1 else indata.mean(axis=1, dtype=np.float32)
        chunk = Chunk(gen, counter[0], x, wall, mono, float(time_info.inputBufferAdcTime),
                       float(time_info.currentTime), overflow[0])
        counter[0] += frames
        try:
            q.put_nowait(chunk)
            overflow[0] = False
        except queue.Full:
            stats["dropped_blocks"] += 1
            stats["dropped_samples"] += frames

    return callback


def _adc_valid(adc: float, now: float) -> bool:
    """PortAudio's timestamps are usable: set (some host APIs leave 0), ordered, and not absurdly far apart."""
    return adc > 0 and now > 0 and 0 <= now - adc < 5.0


def _overflow_frames(overflow: bool, t_first: float, t_expected: float | None, frames: int, rate: int) -> int:
    """Frames PortAudio discarded before a block flagged input_overflow: how far its first-sample time jumped
    past the time the frames counted so far predict. A jump under half a block is timestamp jitter: no zeros."""
    if not overflow or t_expected is None:
        return 0
    jump = t_first - t_expected
    return int(round(jump * rate)) if jump > 0.5 * frames / rate else 0


class Timeline:
    """MicSource's consumer side, free of PortAudio (tests drive it with made-up chunks); a UrlSource's too, whose
    chunks carry no ADC clock (url.py).

    Stream time counts device frames (resampled to ``sample_rate``), plus zeros for frames the queue dropped or
    PortAudio lost in an overflow, plus zeros for a device outage measured on the monotonic clock (a system
    clock step must never become hours of silence).

    Wall times are re-estimated on every chunk, so sound-card drift never accumulates: the callback's
    ``time.time()`` minus the block's age. The age is PortAudio's ADC latency (``currentTime -
    inputBufferAdcTime``) once the ADC timestamps have advanced with the frames counted for 5 s (a sound card's
    do), else one block: a block cannot arrive before its last sample was recorded. The ALSA pulse
    plugin's ADC latency jumps between 0 and 700 ms from block to block while the true latency does not
    (measured with clicks that a null sink renders in real time): wall times from it would be off by up to
    0.6 s. Each chunk gives an upper bound of when the stream started; the least of the last 31 is used (late
    callbacks, and a freshly opened stream's backlog, only make bounds later).
    """

    # Seconds of consistent ADC steps before the ADC timestamps are used: the ALSA pulse plugin's stay steady
    # for the first second of a new stream (while they are wrong by 0.5 s), then jump about.
    trust_after_s = 5.0
    settle_s = 1.0  # a reopened stream's first second is held back to measure when it really started

    def __init__(self, sample_rate: int, block: int, stats: dict, warnings: list[str], keep_native: bool = False):
        self.sr = int(sample_rate)
        self.keep_native = keep_native  # device-rate audio beside the stream (`SourceBase.keep_native`)
        self.out = Blocker(block)
        self.stats, self.warnings = stats, warnings
        self.rs = None  # resampler of the current stream
        self.gen: int | None = None  # stream generation whose chunks we consume
        self.rate = self.sr  # its device rate
        self.pending: list[Chunk] | None = None  # a reopened stream's first chunks, until its start is known
        self.base = 0  # target-rate position where that stream's audio starts
        self.fed = 0  # device frames (audio and zeros) fed from that stream
        self.expect = 0  # next frame counter expected from that stream
        self.produced = 0  # target-rate samples handed to the blocker
        self.prev: Chunk | None = None  # previous chunk of this stream
        self.adc_run = 0.0  # seconds of consistent ADC steps in this stream; -1: inconsistent, never used again
        self.end_mono: float | None = None  # monotonic time at which the previous stream's audio ended
        self.offset: float | None = None  # wall minus monotonic clock at the previous chunk
        self.origins: deque = deque(maxlen=31)  # bounds of when this stream started: (wall, monotonic)
        self.anchors: deque = deque(maxlen=64)  # (stream position, wall time)
        self.trail: NativeTrail | None = None  # device-rate audio for clips, while the device rate stays put
        self.trail_dropped = False

    def add(self, c: Chunk, rate: int) -> None:
        if c.gen != self.gen:
            self.end_stream()
            self.gen, self.rate = c.gen, int(rate)
            if self.end_mono is None:
                self._start_stream(0)  # the very first stream: stream time 0 is its first sample
            else:
                self.pending = []
        if self.pending is None:
            self._add(c)
            return
        self.pending.append(c)
        if sum(len(p.samples) for p in self.pending) >= self.settle_s * self.rate:
            self._settle()

    def _settle(self) -> None:
        """Zero-fill the outage before a reopened stream: from the end of the previous stream's audio to the
        earliest start its first chunks allow (each callback bounds it from above), both monotonic."""
        pending, self.pending = self.pending or [], None
        assert self.end_mono is not None, "a reopened stream settles after the first one ended"
        start = min(p.mono - (p.frame + len(p.samples)) / self.rate for p in pending)
        self._start_stream(int(round((start - self.end_mono) * self.sr)))
        for p in pending:
            self._add(p)

    def _start_stream(self, gap: int) -> None:
        if gap > 0:
            self.out.push(np.zeros(gap, np.float32))
            self.produced += gap
            self.stats["gap_samples"] += gap
        self.base, self.fed, self.expect = self.produced, 0, 0
        self._start_trail()
        self.rs = new_resampler(self.rate, self.sr)
        self.prev, self.adc_run = None, 0.0
        self.origins.clear()  # a new stream has its own latency

    def _start_trail(self) -> None:
        """Device-rate audio rides beside the stream only while one rate above the target's holds: a device
        reopened at another rate would break the sample mapping, so its clips fall back to the target rate."""
        if self.trail_dropped:
            return
        if self.trail is None and self.keep_native and self.produced == 0 and self.rate > self.sr:
            self.trail = NativeTrail(self.rate, self.sr)
        elif self.trail is not None and self.trail.rate != self.rate:
            self.trail, self.trail_dropped = None, True
        elif self.trail is not None:
            self.trail.pad_to(self.produced)

    def _add(self, c: Chunk) -> None:
        n = len(c.samples)
        if c.overflow:
            self.stats["overflows"] += 1
        lost = self._lost_frames(c, n)
        self.stats["overflow_samples"] += lost
        if c.frame - self.expect + lost > 0:
            self._feed(np.zeros(c.frame - self.expect + lost, np.float32))
        self._judge_adc(c, n)
        self._anchor(c, c.now - c.adc if self._adc_trusted() else n / self.rate)
        self._feed(c.samples)
        self.prev, self.expect = c, c.frame + n

    def _lost_frames(self, c: Chunk, n: int) -> int:
        """Overflow loss: on the ADC clock when it is trusted, else on the callbacks' monotonic clock."""
        p = self.prev
        if not c.overflow or p is None:
            return 0
        between = (c.frame - p.frame) / self.rate  # what the frames counted say
        if self._adc_trusted() and _adc_valid(c.adc, c.now):
            return _overflow_frames(True, c.adc, p.adc + between, n, self.rate)
        return _overflow_frames(True, c.mono - n / self.rate, p.mono - len(p.samples) / self.rate + between,
                                n, self.rate)

    def _judge_adc(self, c: Chunk, n: int) -> None:
        """Trust ADC timestamps after consistent steps; one implausible step distrusts them for this stream."""
        p, block = self.prev, n / self.rate
        if self.adc_run < 0 or p is None or c.overflow:
            return
        if not (_adc_valid(c.adc, c.now) and _adc_valid(p.adc, p.now)):
            self.adc_run = 0.0
            return
        step_error = c.adc - p.adc - (c.frame - p.frame) / self.rate
        if abs(step_error) > max(0.002, 0.1 * block) or c.now - c.adc < block - 0.002:
            if self._adc_trusted():
                self.origins.clear()  # bounds made with bad timestamps
            self.adc_run = -1.0
            return
        was = self._adc_trusted()
        self.adc_run += block
        if self._adc_trusted() and not was:
            self.origins.clear()  # from now on the bounds are tighter

    def _adc_trusted(self) -> bool:
        return self.adc_run >= self.trust_after_s

    def _anchor(self, c: Chunk, age: float) -> None:
        """Wall time of the chunk's first sample (fed next), whose callback came ``age`` seconds after it."""
        offset = c.wall - c.mono
        pos = self.base + self.fed * self.sr / self.rate
        if self.offset is not None and abs(offset - self.offset) > 1.0:
            # NTP set the clock (a Raspberry Pi has no RTC): wall times follow the new clock from here on;
            # stream time, counted in frames, is untouched.
            self.stats["clock_steps"] += 1
            self.warnings.append(f"system clock stepped by {offset - self.offset:+.1f} s at stream time "
                                 f"{pos / self.sr:.1f} s; wall-clock times follow the new clock")
            self.origins.clear()
        self.offset = offset
        since_start = age + self.fed / self.rate  # seconds from this stream's first sample to the callback
        self.origins.append((c.wall - since_start, c.mono - since_start))
        self.anchors.append((pos, min(o[0] for o in self.origins) + (pos - self.base) / self.sr))

    def _feed(self, x: np.ndarray) -> None:
        if self.trail is not None:
            self.trail.push(x)
        y = self.rs.resample_chunk(x) if self.rs is not None else x
        self.out.push(y)
        self.produced += len(y)
        self.fed += len(x)

    def end_stream(self) -> None:
        """The stream ended (device lost, or the end): settle it, note when its audio ended, flush the resampler."""
        if self.pending:
            self._settle()
        if self.origins:
            self.end_mono = min(o[1] for o in self.origins) + self.fed / self.rate
        if self.rs is not None:
            y = self.rs.resample_chunk(np.zeros(0, np.float32), last=True)
            self.out.push(y)
            self.produced += len(y)
            self.rs = None

    def wall_at(self, pos: int) -> float | None:
        for p, w in reversed(self.anchors):
            if p <= pos:
                return w + (pos - p) / self.sr
        return self.anchors[0][1] + (pos - self.anchors[0][0]) / self.sr if self.anchors else None

    def blocks(self, final: bool = False) -> Iterator[AudioBlock]:
        if final:
            self.end_stream()
        for start, x in self.out.pop_blocks(final):
            self.stats["blocks"] += 1
            self.stats["samples"] += len(x)
            trail = self.trail
            yield AudioBlock(np.ascontiguousarray(x, dtype=np.float32), int(start), self.wall_at(start),
                             trail.take(start, start + len(x)) if trail is not None else None,
                             trail.rate if trail is not None else 0)
