"""MicSource: live input from a PortAudio capture device, as blocks with stream positions and wall times."""

from __future__ import annotations

import math
import queue
import time
from typing import Iterator

from birdlive.audio import AudioBlock, AudioSourceError, SourceBase
from birdlive.errors import one_line

from .devices import (OPEN_SOURCES, PA_LOCK, PA_STATE, SEE_DEVICES, default_input_index, list_input_devices,
                      reinit_portaudio, resolve_input_device, sounddevice_module)
from .timeline import Timeline, make_callback


class MicSource(SourceBase):
    """Live input from a PortAudio capture device.

    The PortAudio callback only copies the (mono-mixed) block and its timestamps into a bounded queue; the
    iterator (consumer side, :class:`Timeline`) resamples to ``sample_rate``, fills dropped or lost stretches
    with zeros so that ``start_sample`` stays honest, and yields :class:`AudioBlock` objects whose ``wall_time``
    is re-estimated on every block. If the device disappears or stops delivering, it is reopened every
    ``retry_s`` seconds for up to ``reconnect_s`` seconds; the outage (measured on the monotonic clock) is
    filled with zeros.

    Several MicSources may run in one process, each iterated in its own thread (``for block in source:`` works
    in any thread). :meth:`stop` ends the iteration from any other thread or a signal handler; ``name``,
    ``stats`` and ``warnings`` (one line each, e.g. a system clock step) may be read meanwhile.
    """

    retry_s = 2.0  # seconds between reopen attempts
    stall_s = 5.0  # no data for this long counts as a dead stream

    def __init__(
        self,
        device: int | str | None,
        sample_rate: int,
        block_s: float = 0.1,
        queue_s: float = 30.0,
        reconnect_s: float = 60.0,
    ):
        super().__init__(sample_rate, block_s)
        self.queue_s = float(queue_s)
        self.reconnect_s = float(reconnect_s)
        self.spec = device
        self.stats: dict = {
            "blocks": 0,
            "samples": 0,
            "overflows": 0,
            "overflow_samples": 0,  # device frames PortAudio lost in overflows, zero-filled
            "dropped_blocks": 0,
            "dropped_samples": 0,
            "reconnects": 0,
            "gap_samples": 0,
            "clock_steps": 0,
        }
        self._stream = None
        self._gen = 0  # streams this source opened; tags queued chunks so stale ones are dropped
        self._pa_gen = -1  # PortAudio generation our stream was opened in / we last rescanned in
        self._opened_at = time.monotonic()
        self._q: queue.Queue = queue.Queue(maxsize=max(2, int(math.ceil(self.queue_s / self.block_s))))

        sd = sounddevice_module()
        with PA_LOCK:
            idx = resolve_input_device(device)
            if idx is None:
                idx = default_input_index(sd)
                if idx is None:
                    raise AudioSourceError(f"no default input device; {SEE_DEVICES}")
            self.device_index = idx
            info = sd.query_devices(idx)
            self.name = str(info["name"])
            self.device_rate, self.device_channels = self._pick_settings(sd, idx, info)
            self._pa_gen = PA_STATE["gen"]

    # -- device handling
    def _pick_settings(self, sd, idx: int, info) -> tuple[int, int]:
        maxch = max(1, int(info["max_input_channels"]))
        rates = [self.sample_rate]
        dflt = int(round(float(info["default_samplerate"] or 0)))
        if dflt > 0 and dflt != self.sample_rate:
            rates.append(dflt)
        last = None
        for ch in sorted({1, min(2, maxch)}):
            for rate in rates:
                try:
                    sd.check_input_settings(device=idx, channels=ch, samplerate=rate, dtype="float32")
                    return rate, ch
                except Exception as e:  # PortAudioError or ValueError
                    last = e
        raise AudioSourceError(
            f"input device '{self.name if hasattr(self, 'name') else idx}' cannot record "
            f"at {self.sample_rate} Hz or its default rate ({one_line(last)})"
        )

    def _open_stream(self) -> None:
        sd = sounddevice_module()
        with PA_LOCK:
            self._gen += 1
            callback = make_callback(self._q, self.stats, self.device_channels, self._gen)
            stream = None
            try:
                stream = sd.InputStream(
                    device=self.device_index,
                    samplerate=self.device_rate,
                    channels=self.device_channels,
                    dtype="float32",
                    blocksize=max(1, int(round(self.block_s * self.device_rate))),
                    latency="high",
                    callback=callback,
                )
                stream.start()
            except Exception as e:  # sd.PortAudioError, ValueError
                if stream is not None:
                    stream.close(ignore_errors=True)
                raise AudioSourceError(f"cannot open input device '{self.name}': {one_line(e)}") from None
            self._stream = stream
            self._pa_gen = PA_STATE["gen"]
            self._opened_at = time.monotonic()
            OPEN_SOURCES.add(self)

    def _close_stream(self) -> None:
        with PA_LOCK:
            s, self._stream = self._stream, None
            OPEN_SOURCES.discard(self)
            if s is None:
                return
            for op in (s.abort, s.close):
                try:
                    op()
                except Exception:
                    pass

    def _stream_dead(self, last_data: float) -> bool:
        """Our stream is gone: closed by another source's PortAudio rescan, stopped, or silent too long."""
        with PA_LOCK:
            s = self._stream
            if s is None or self._pa_gen != PA_STATE["gen"]:
                return True
            try:
                if not s.active:
                    return True
            except Exception:
                return True
        # a freshly opened stream may take a moment to deliver its first block
        limit = self.stall_s if last_data > self._opened_at else 2 * self.stall_s
        return time.monotonic() - max(last_data, self._opened_at) > limit

    def _reopen(self) -> None:
        """Find our device again by name (rescanning PortAudio unless another source just did) and open it."""
        sd = sounddevice_module()
        with PA_LOCK:
            if PA_STATE["gen"] == self._pa_gen:
                reinit_portaudio(sd)  # closes the other sources' streams: they notice and reopen
            self._pa_gen = PA_STATE["gen"]
            if self.spec is None:
                idx = default_input_index(sd)
                if idx is None:
                    raise AudioSourceError("no default input device")
            else:
                idx = next((d["index"] for d in list_input_devices() if d["name"] == self.name), None)
                if idx is None:
                    raise AudioSourceError(f"input device '{self.name}' not present")
            info = sd.query_devices(idx)
            self.device_index = idx
            self.device_rate, self.device_channels = self._pick_settings(sd, idx, info)
            self._open_stream()

    def _recover(self, outage_since: float) -> None:
        """Reopen the device every ``retry_s`` (at once if another source's rescan closed our stream) until it
        works, ``stop()`` is called, or ``reconnect_s`` after ``outage_since`` (then AudioSourceError)."""
        with PA_LOCK:
            wait = 0.0 if self._stream is None and self._pa_gen != PA_STATE["gen"] else self.retry_s
            self._close_stream()
        last_err = ""
        while not self._stop.is_set():
            if time.monotonic() - outage_since > self.reconnect_s:
                raise AudioSourceError(
                    f"input device '{self.name}' lost and could not be reopened "
                    f"within {self.reconnect_s:.0f} s ({last_err or 'no data'})"
                )
            if self._stop.wait(wait):
                return
            wait = self.retry_s
            try:
                self._reopen()
            except Exception as e:  # AudioSourceError, PortAudioError, ...
                last_err = one_line(e)
                self._close_stream()
                continue
            self.stats["reconnects"] += 1
            return

    # -- iteration
    def __iter__(self) -> Iterator[AudioBlock]:
        if self._stop.is_set():
            return
        self._open_stream()
        try:
            yield from self._run()
        finally:
            self.close()

    def _run(self) -> Iterator[AudioBlock]:
        tl = Timeline(self.sample_rate, int(round(self.block_s * self.sample_rate)), self.stats, self.warnings,
                      keep_native=self.keep_native)
        last_data = time.monotonic()
        outage_since: float | None = None  # kept until data flows again, across reopen attempts
        while not self._stop.is_set():
            try:
                chunk = self._q.get(timeout=0.1)
            except queue.Empty:
                chunk = None
            if chunk is not None:
                if chunk.gen == self._gen:  # else: stale data from a stream we already closed
                    tl.add(chunk, self.device_rate)
                    last_data, outage_since = time.monotonic(), None
                    yield from tl.blocks()
                continue
            if not self._stream_dead(last_data):
                continue
            # the device went away: flush what we have, then reopen
            tl.end_stream()
            yield from tl.blocks()
            if outage_since is None:
                outage_since = time.monotonic()
            self._recover(outage_since)
        yield from tl.blocks(final=True)

    def close(self) -> None:
        self._stop.set()
        self._close_stream()

    def __repr__(self) -> str:
        return (f"MicSource({self.name!r}, device {self.device_rate} Hz -> "
                f"{self.sample_rate} Hz)")
