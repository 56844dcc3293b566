"""UrlSource: a network stream (RTSP camera, Icecast/HTTP stream, anything FFmpeg reads) decoded through PyAV, as
blocks with stream positions and wall times, reopened with backoff whenever it drops.

A reader thread opens the URL, decodes, mixes to mono and queues about `block_s` of audio at a time, stamped with
its arrival (wall and monotonic clock); the iterator feeds those chunks to the same `Timeline` a microphone uses
(resampling with soxr, wall times re-anchored on every chunk as the earliest start the arrivals allow, an outage
between two connections zero-filled on the monotonic clock and counted in `gap_samples`). One `warnings` line per
outage, however many attempts it takes; a URL that never answers only ever costs its own stream.

`redact` is the one place a URL's credentials are hidden: a UrlSource is named by the redacted URL, so the CSV,
the live view, MQTT and every message show `rtsp://user:***@cam/…`, never the password.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import queue
import re
import threading
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import numpy as np

from birdlive.audio import AudioBlock, SourceBase
from birdlive.errors import OptionError, one_line

from ..core.runner import put_unless
from .timeline import Chunk, Timeline

log = logging.getLogger(__name__)

# scheme://user:password@  (the password ends at the last '@' before the host: passwords may contain '@')
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<password>[^/\s]*)@")
_SECRET_QUERY = re.compile(r"(?i)([?&](?:password|passwd|pass|pwd|token|key|secret|auth)=)[^&#\s]*")


def redact(text: str) -> str:
    """`text` (a URL, or a message that quotes one) with every URL's password and secret query values as `***`."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(text))
    return _SECRET_QUERY.sub(r"\1***", text)


def check_url(url: str) -> str:
    """`url` if it names a stream FFmpeg can be asked for (scheme://…), else OptionError (credentials redacted)."""
    parts = urlsplit(url.strip())
    if not parts.scheme or not parts.netloc and parts.scheme not in ("file",):
        shown = redact(url) if "://" in url else re.sub(r"^.*@", "***@", url)    # user:password@host
        raise OptionError(f"--url wants a stream URL like rtsp://camera/stream or http://host:8000/mount, "
                          f"not {shown!r}")
    return url.strip()


def read_url_file(path) -> list[str]:
    """The stream URLs in a file, one a line (blank lines and `#` comments skipped): a camera's password kept out
    of the command line, which every user of the machine can read (`ps`). OptionError if it cannot be read."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise OptionError(f"--url-file {path}: {getattr(e, 'strerror', None) or e}") from None
    urls = [check_url(line) for line in map(str.strip, lines) if line and not line.startswith("#")]
    if not urls:
        raise OptionError(f"--url-file {path}: no URL in it")
    return urls


def open_options(url: str, timeout_s: float) -> dict[str, str]:
    """FFmpeg options that make a dead server noticed within `timeout_s` instead of hanging: every protocol's
    read/write timeout, RTSP over TCP (interleaved: no UDP ports to open in a firewall; cameras all offer it)."""
    micros = str(int(timeout_s * 1e6))
    options = {"rw_timeout": micros}
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("rtsp", "rtsps"):
        options.update(rtsp_transport="tcp", timeout=micros)
    elif scheme in ("http", "https"):
        options.update(timeout=micros)
    return options


class Burst:
    """Holds a connection's first chunks while they come faster than real time, then restamps them as if each had
    arrived when its last sample was sent live.

    A server may send a backlog at once on connect (Icecast's burst of what it sent before; FFmpeg's probing reads
    ahead too): those arrival times say nothing about when the audio was made, and the Timeline would stamp seconds
    of audio with the time of connecting. The backlog's earliest possible start (arrival minus the audio before
    it, least over the backlog and the first chunk that came in real time) dates all of it; past `max_s` of
    backlog (a file served faster than real time) it is dated by what came so far.
    """

    max_s = 120.0

    def __init__(self):
        self.gen: int | None = None         # the connection whose backlog is held, or that is known to be live
        self.held: list[tuple[Chunk, int]] = []
        self.live = False

    def add(self, chunk: Chunk, rate: int) -> list[tuple[Chunk, int]]:
        if chunk.gen != self.gen:
            out = self.flush()
            self.gen, self.live, self.held = chunk.gen, False, [(chunk, rate)]
            return out
        if self.live:
            return [(chunk, rate)]
        last = self.held[-1][0]
        self.held.append((chunk, rate))
        if chunk.mono - last.mono >= 0.5 * len(chunk.samples) / rate:       # this one came in real time
            self.live = True
            return self.flush()
        if sum(len(c.samples) for c, _ in self.held) > self.max_s * rate:
            return self.flush()
        return []

    def flush(self) -> list[tuple[Chunk, int]]:
        held, self.held = self.held, []
        if not held:
            return []
        rate = held[0][1]
        start = min(c.mono - (c.frame + len(c.samples)) / rate for c, _ in held)
        offset = held[-1][0].wall - held[-1][0].mono        # wall minus monotonic clock, now
        out = []
        for c, r in held:
            sent = start + (c.frame + len(c.samples)) / rate
            out.append((dataclasses.replace(c, mono=sent, wall=sent + offset), r))
        return out


class UrlSource(SourceBase):
    """Live input from a network stream (see the module docstring). `stats` counts blocks, samples, `outages`,
    `reconnects` and `gap_samples` (the outages' zeros); `warnings` gets one line per outage."""

    first_retry_s = 1.0     # wait before the first reopen of an outage, doubled after each failed attempt …
    max_retry_s = 60.0      # … up to this, forever: a camera that reboots at night comes back
    timeout_s = 10.0        # no answer, or no data, for this long: the server is gone

    def __init__(self, url: str, sample_rate: int, block_s: float = 0.1, queue_s: float = 30.0):
        super().__init__(sample_rate, block_s)
        self.url = check_url(url)
        self.name = redact(self.url)
        self.stats: dict = {"blocks": 0, "samples": 0, "outages": 0, "reconnects": 0, "gap_samples": 0,
                            "overflows": 0, "overflow_samples": 0, "dropped_blocks": 0, "dropped_samples": 0,
                            "clock_steps": 0}
        self._q: queue.Queue = queue.Queue(maxsize=max(4, int(math.ceil(queue_s / block_s))))
        self._reader: threading.Thread | None = None
        self.finite = False     # the URL is a file of known length: its end is the stream's end

    # -- the consumer side (the runner's source thread)
    def __iter__(self) -> Iterator[AudioBlock]:
        if self._stop.is_set():
            return
        self._reader = threading.Thread(target=self._read_forever, name=f"url-{self.name}", daemon=True)
        self._reader.start()
        try:
            yield from self._run()
        finally:
            self.close()

    def _run(self) -> Iterator[AudioBlock]:
        tl = Timeline(self.sample_rate, int(round(self.block_s * self.sample_rate)), self.stats, self.warnings,
                      keep_native=self.keep_native)
        burst = Burst()
        while not self._stop.is_set():
            try:
                item = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:                    # a connection ended: its audio is complete
                for chunk, rate in burst.flush():
                    tl.add(chunk, rate)
                tl.end_stream()
                yield from tl.blocks()
                if self.finite:
                    break
                continue
            for chunk, rate in burst.add(*item):
                tl.add(chunk, rate)
            yield from tl.blocks()
        for chunk, rate in burst.flush():
            tl.add(chunk, rate)
        yield from tl.blocks(final=True)

    # -- the reader thread: connect, decode, reconnect
    def _read_forever(self) -> None:
        delay, outage_since, gen = self.first_retry_s, None, 0
        while not self._stop.is_set():
            reason = "the stream ended"
            delivered = False
            try:
                for chunk, rate in self._connection(gen + 1):
                    gen = chunk.gen
                    if not delivered:
                        delivered, delay = True, self.first_retry_s
                        if outage_since is not None:
                            self.stats["reconnects"] += 1
                            log.info(f"{self.name}: stream back after {time.monotonic() - outage_since:.1f} s "
                                     f"(counted as a gap)")
                            outage_since = None
                    if not self._put((chunk, rate)):
                        return
            except Exception as e:  # noqa: BLE001 - av.FFmpegError, OSError, …: the stream is down, try again
                reason = redact(one_line(e.strerror if isinstance(e, OSError) and e.strerror else e))
                reason = reason or type(e).__name__
            gen += 1                            # the next connection is a new stream for the Timeline
            if not self._put(None) or (self.finite and reason == "the stream ended"):
                return
            if outage_since is None:
                outage_since = time.monotonic()
                self.stats["outages"] += 1
                what = "stream lost" if delivered or self.stats["samples"] else "cannot open the stream"
                self.warnings.append(f"{self.name}: {what} ({reason}); reopening it (every {delay:.0f} s at "
                                     f"first, backing off to {self.max_retry_s:.0f} s); the outage counts as a gap")
            if self._stop.wait(delay):
                return
            delay = min(2 * delay, self.max_retry_s)

    def _connection(self, gen: int) -> Iterator[tuple[Chunk, int]]:
        """One connection: its audio as chunks of about `block_s`, mono float32 at the stream's rate, each stamped
        on arrival. A change of sample rate mid-stream starts a new generation (the Timeline's new stream)."""
        import av    # imported here: only --url needs PyAV (FFmpeg's libraries)
        container = av.open(self.url, options=open_options(self.url, self.timeout_s),
                            timeout=(self.timeout_s, self.timeout_s))
        try:
            if not container.streams.audio:
                raise OSError("no audio in the stream")
            stream = container.streams.audio[0]
            self.finite = bool(container.duration) and urlsplit(self.url).scheme.lower() in ("http", "https",
                                                                                              "file")
            convert = av.AudioResampler(format="fltp")      # planar float at the stream's own rate and layout
            parts: list[np.ndarray] = []
            rate, frame_count, held = 0, 0, 0
            for frame in container.decode(stream):
                if self._stop.is_set():
                    return
                for f in convert.resample(frame):
                    if f.sample_rate != rate and parts:
                        yield self._chunk(gen, frame_count, parts), rate
                        gen, frame_count, parts, held = gen + 1, 0, [], 0
                    rate = f.sample_rate
                    planes = f.to_ndarray()
                    parts.append(planes[0] if len(planes) == 1 else planes.mean(axis=0, dtype=np.float32))
                    held += f.samples
                if held >= self.block_s * rate:
                    yield self._chunk(gen, frame_count, parts), rate
                    frame_count, parts, held = frame_count + held, [], 0
            if parts:
                yield self._chunk(gen, frame_count, parts), rate
        finally:
            container.close()

    @staticmethod
    def _chunk(gen: int, frame: int, parts: list[np.ndarray]) -> Chunk:
        samples = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
        # adc = now = 0: no stream clock; the Timeline takes the arrival as one chunk after its last sample
        return Chunk(gen, frame, samples, time.time(), time.monotonic(), 0.0, 0.0, False)

    def _put(self, item) -> bool:
        """Waits while the consumer is behind (back-pressure onto the connection); False once stopped."""
        return put_unless(self._q, item, self._stop)

    def close(self) -> None:
        self._stop.set()

    def __repr__(self) -> str:
        return f"UrlSource({self.name!r} -> {self.sample_rate} Hz)"
