"""Audio sources for birdlive: audio files and live input devices.

Both sources yield :class:`AudioBlock` objects: float32 mono samples at the
source's target ``sample_rate`` with an honest, gap-free stream position
(``start_sample``).  Anything that goes wrong is reported as
:class:`AudioSourceError` whose message is one line meant for the user.

``sounddevice`` (and hence the PortAudio C library) is imported lazily, only
by the functions that need a live device, so that file replay works on
machines without PortAudio.
"""

from __future__ import annotations

import math
import os
import queue
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

from birdlive.errors import BirdliveError

__all__ = [
    "AudioSourceError",
    "AudioBlock",
    "FileSource",
    "MicSource",
    "list_input_devices",
    "resolve_input_device",
]

_PORTAUDIO_MISSING = "PortAudio library not found: install it with `apt-get install libportaudio2`"
_SEE_DEVICES = "run `birdlive devices` to list input devices"


class AudioSourceError(BirdliveError):
    """A problem with an audio source; ``str(err)`` is one line for the user."""


@dataclass
class AudioBlock:
    samples: np.ndarray  # float32, mono, at the source's target sample_rate
    start_sample: int  # index of samples[0] in the stream at the target rate
    wall_time: float | None  # unix time of samples[0] (live / realtime), else None
    # The same stretch at the source's own rate, where that is higher than the target's (clips keep a 48 kHz
    # recorder's full bandwidth): native sample i is target sample i * target / native_rate.
    native: np.ndarray | None = None
    native_rate: int = 0

    @property
    def end_sample(self) -> int:
        return self.start_sample + len(self.samples)


class _NativeTrail:
    """The source's own-rate audio kept beside the resampled stream, handed out block by block: the target-rate
    block [s, e) is native [s·r, e·r), r = native / target. Both sides count from the stream's first sample, so
    whatever the resampler's delay the two stay aligned."""

    def __init__(self, native_rate: int, target_rate: int):
        self.rate, self.ratio = int(native_rate), native_rate / target_rate
        self._parts: list[np.ndarray] = []
        self.start = 0  # native index of the first sample held

    @property
    def end(self) -> int:
        return self.start + sum(len(p) for p in self._parts)

    def push(self, x: np.ndarray) -> None:
        if len(x):
            self._parts.append(np.asarray(x, dtype=np.float32))

    def pad_to(self, target_sample: int) -> None:
        """Silence up to the target-rate sample `target_sample` (an outage between two device streams)."""
        missing = int(round(target_sample * self.ratio)) - self.end
        if missing > 0:
            self.push(np.zeros(missing, np.float32))

    def take(self, start_sample: int, end_sample: int) -> np.ndarray:
        """Native samples of the target-rate span [start_sample, end_sample); what is before it is dropped."""
        n0, n1 = int(round(start_sample * self.ratio)), int(round(end_sample * self.ratio))
        buf = np.concatenate(self._parts) if len(self._parts) > 1 else (self._parts[0] if self._parts
                                                                         else np.zeros(0, np.float32))
        out = buf[max(0, n0 - self.start):max(0, n1 - self.start)]
        rest = buf[max(0, n1 - self.start):]
        self._parts, self.start = ([rest] if len(rest) else []), max(self.start, n1)
        return np.ascontiguousarray(out)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class _Blocker:
    """Collects variable-sized chunks and hands out fixed-size blocks."""

    def __init__(self, block: int):
        self.block = max(1, int(block))
        self._parts: list[np.ndarray] = []
        self._n = 0
        self.pos = 0  # stream index of the first pending sample

    def push(self, x: np.ndarray) -> None:
        if len(x):
            self._parts.append(np.asarray(x, dtype=np.float32))
            self._n += len(x)

    def pop_blocks(self, final: bool = False) -> Iterator[tuple[int, np.ndarray]]:
        if self._n < self.block and not (final and self._n):
            return
        buf = np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]
        off = 0
        while self._n - off >= self.block:
            yield self.pos, buf[off : off + self.block]
            self.pos += self.block
            off += self.block
        rest = buf[off:]
        if final and len(rest):
            yield self.pos, rest
            self.pos += len(rest)
            rest = rest[:0]
        self._parts = [rest] if len(rest) else []
        self._n = len(rest)


def _new_resampler(in_rate: int, out_rate: int):
    if int(in_rate) == int(out_rate):
        return None
    return soxr.ResampleStream(float(in_rate), float(out_rate), 1, dtype="float32", quality="HQ")


# --------------------------------------------------------------------------- files

_DATA_SHOULD_BE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be\s*(\d+)\)", re.MULTILINE)


class FileSource:
    """Stream an audio file block by block (never loads the whole file).

    Reads WAV/FLAC/OGG/MP3 (whatever the bundled libsndfile handles), mixes
    stereo to mono (or picks ``channel``), resamples to ``sample_rate`` with a
    streaming soxr resampler and yields blocks of ``block_s`` seconds (the
    last one may be shorter).  ``realtime=True`` paces blocks to the wall
    clock like a live input and sets ``wall_time``.
    """

    def __init__(
        self,
        path,
        sample_rate: int,
        block_s: float = 1.0,
        realtime: bool = False,
        channel: int | None = None,
    ):
        self.path = os.fspath(path)
        self.name = self.path
        self.sample_rate = int(sample_rate)
        if self.sample_rate <= 0:
            raise ValueError("sample_rate must be positive")
        if not block_s > 0:
            raise ValueError("block_s must be positive")
        self.block_s = float(block_s)
        self.realtime = bool(realtime)
        self.stats: dict = {"blocks": 0, "samples": 0, "frames_read": 0}
        self.warnings: list[str] = []   # one line each: the file was read, but not all of it as its header says
        self._sf: sf.SoundFile | None = None
        self._stop = threading.Event()

        f = self._open()
        try:
            self.native_rate = int(f.samplerate)
            self.channels = int(f.channels)
            self.format = f.format
            self.subtype = f.subtype
            self._frames = int(f.frames) if f.frames is not None and f.frames >= 0 else None
            if self._frames == 0:
                raise AudioSourceError(f"{self.name}: empty audio file (0 samples)")
            self._check_truncation(f)
        finally:
            f.close()
        self.duration_s = self._frames / self.native_rate if self._frames else None

        if channel is not None:
            channel = int(channel)
            if not 0 <= channel < self.channels:
                raise AudioSourceError(
                    f"{self.name}: channel {channel} does not exist "
                    f"(file has {self.channels} channel{'s' if self.channels != 1 else ''}, "
                    f"use 0-{self.channels - 1})"
                )
        elif self.channels > 2:
            raise AudioSourceError(
                f"{self.name}: {self.channels} channels; "
                f"pick one with --channel N (0-{self.channels - 1})"
            )
        self.channel = channel

    # -- helpers
    def _err(self, what: str) -> AudioSourceError:
        return AudioSourceError(f"{self.name}: {what}")

    def _open(self) -> sf.SoundFile:
        p = self.path
        if not os.path.exists(p):
            raise self._err("file not found")
        if os.path.isdir(p):
            raise self._err("is a directory, not an audio file")
        try:
            size = os.path.getsize(p)
        except OSError as e:
            raise self._err(f"cannot read file ({e.strerror or e})") from None
        if size == 0:
            raise self._err("empty file (0 bytes)")
        if not os.access(p, os.R_OK):
            raise self._err("permission denied")
        try:
            return sf.SoundFile(p, "r")
        except sf.LibsndfileError as e:
            msg = _one_line(getattr(e, "error_string", "") or e)
            low = msg.lower()
            if "not recognised" in low or "unknown format" in low or "not recognized" in low:
                raise self._err("not an audio file (format not recognised)") from None
            if "malformed" in low or "truncat" in low:
                raise self._err(f"corrupt or truncated audio file ({msg})") from None
            raise self._err(f"cannot open audio file ({msg})") from None
        except (RuntimeError, OSError, ValueError, TypeError) as e:
            raise self._err(f"cannot open audio file ({_one_line(e)})") from None

    def _check_truncation(self, f: sf.SoundFile) -> None:
        """libsndfile silently shortens a cut WAV/Ogg file; its log tells. The audio that is there is analysed
        (a recorder whose card filled up, a download cut short): the cut is a warning, not a refusal."""
        try:
            info = f.extra_info
        except Exception:  # pragma: no cover - depends on libsndfile build
            return
        if "lacks an end-of-stream bit" in (info or ""):  # Ogg cut short
            self.warnings.append(f"{self.name}: truncated file (the Ogg stream has no end-of-stream page); "
                                 f"analysed the {self._frames / max(1, f.samplerate):.2f} s that are there")
            return
        m = _DATA_SHOULD_BE.search(info or "")
        if not m:
            return
        declared, actual = int(m.group(1)), int(m.group(2))
        # Streaming writers leave placeholder sizes (0, 0xFFFFFFFF, ...): accept those.
        if declared == 0 or declared >= 0x7FFFFFFF or declared <= actual:
            return
        bpf = max(1, int(f.channels)) * {
            "PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4,
            "FLOAT": 4, "DOUBLE": 8, "ULAW": 1, "ALAW": 1,
        }.get(f.subtype, 2)
        rate = max(1, int(f.samplerate))
        if actual / bpf < rate / 100:   # less than one 10 ms log-mel frame: there is nothing to analyse
            raise self._err(f"truncated file: header says {declared / bpf / rate:.2f} s of audio, "
                            f"only {actual / bpf / rate:.2f} s present; nothing to analyse")
        self.warnings.append(f"{self.name}: truncated file: header says {declared / bpf / rate:.2f} s of audio, "
                             f"only {actual / bpf / rate:.2f} s present; analysed those")

    # -- iteration
    def __iter__(self) -> Iterator[AudioBlock]:
        f = self._open()
        self._sf = f
        try:
            yield from self._blocks(f)
        finally:
            self.close()

    def _blocks(self, f: sf.SoundFile) -> Iterator[AudioBlock]:
        nat = self.native_rate
        read_frames = max(1, int(round(self.block_s * nat)))
        rs = _new_resampler(nat, self.sample_rate)
        out = _Blocker(int(round(self.block_s * self.sample_rate)))
        trail = _NativeTrail(nat, self.sample_rate) if nat > self.sample_rate else None
        t0_mono = t0_wall = None
        pos = 0  # native frames read so far

        def emit(final: bool):
            nonlocal t0_mono, t0_wall
            for start, x in out.pop_blocks(final):
                wall = None
                if self.realtime:
                    if t0_mono is None:
                        t0_mono, t0_wall = time.monotonic(), time.time()
                    # a live device delivers a block once its last sample exists
                    delay = t0_mono + (start + len(x)) / self.sample_rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    wall = t0_wall + start / self.sample_rate
                self.stats["blocks"] += 1
                self.stats["samples"] += len(x)
                native = trail.take(start, start + len(x)) if trail is not None else None
                yield AudioBlock(np.ascontiguousarray(x, dtype=np.float32), int(start), wall, native,
                                 nat if trail is not None else 0)

        if self.realtime:
            t0_mono, t0_wall = time.monotonic(), time.time()
        failure: AudioSourceError | None = None
        while not self._stop.is_set() and failure is None:
            data, failure = self._read(f, read_frames, pos)
            if len(data) == 0 and failure is None:
                break
            if self.channel is not None:
                mono = data[:, self.channel]
            elif data.shape[1] == 1:
                mono = data[:, 0]
            else:
                mono = data.mean(axis=1, dtype=np.float32)
            finite = np.isfinite(mono)
            if not finite.all():
                bad = int(np.argmin(finite))
                failure = self._err(f"invalid sample value (NaN/Inf) at {(pos + bad) / nat:.3f} s")
                mono = mono[:bad]
            pos += len(mono)
            self.stats["frames_read"] = pos
            mono = np.ascontiguousarray(mono, dtype=np.float32)
            if trail is not None:
                trail.push(mono)
            out.push(rs.resample_chunk(mono) if rs is not None else mono)
            yield from emit(False)
        if failure is not None:
            # Everything good before the damage is handed on first: its events are not lost with the file.
            if rs is not None:
                out.push(rs.resample_chunk(np.zeros(0, np.float32), last=True))
            yield from emit(True)
            raise failure

        if self._frames and pos < self._frames and not self._stop.is_set() and not self.warnings:
            # MP3s whose frame count in the header is an estimate, recorders that died mid-file: analyse what is
            # there and say so once. An MP3 a few hundred ms short of its estimate is normal (almost every
            # xeno-canto file is): a line only past half a second and 1 %.
            is_mp3 = (self.format or "").upper() in ("MP3", "MPEG")
            if not is_mp3 or self._frames - pos > max(nat // 2, self._frames // 100):
                self.warnings.append(f"{self.name}: audio ends at {pos / nat:.2f} s, header says "
                                     f"{self._frames / nat:.2f} s; analysed what is there")
        if rs is not None:
            out.push(rs.resample_chunk(np.zeros(0, np.float32), last=True))
        yield from emit(True)

    def _read(self, f: sf.SoundFile, frames: int, pos: int) -> tuple[np.ndarray, AudioSourceError | None]:
        """Up to `frames` frames, and the error that stopped the file if there is one. After a decoding error the
        same stretch is read again in small pieces, so the audio up to the damage is still analysed."""
        try:
            return f.read(frames, dtype="float32", always_2d=True), None
        except (sf.LibsndfileError, RuntimeError, ValueError) as e:
            error = e
        parts, got = [], 0
        try:
            f.seek(pos)
            while got < frames:
                part = f.read(min(4096, frames - got), dtype="float32", always_2d=True)
                if not len(part):
                    break
                parts.append(part)
                got += len(part)
        except (sf.LibsndfileError, RuntimeError, ValueError):
            pass
        data = np.concatenate(parts) if parts else np.zeros((0, f.channels), np.float32)
        msg = _one_line(getattr(error, "error_string", "") or error)
        where = (pos + len(data)) / self.native_rate
        return data, self._err(f"corrupt or truncated audio data at {where:.2f} s ({msg}); analysed up to there")

    def stop(self) -> None:
        """End iteration after the current block (thread- and signal-handler-safe)."""
        self._stop.set()

    def close(self) -> None:
        f, self._sf = self._sf, None
        if f is not None:
            try:
                f.close()
            except Exception:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"FileSource({self.name!r}, {self.native_rate} Hz x{self.channels} -> "
                f"{self.sample_rate} Hz)")


# --------------------------------------------------------------------------- devices

def _sd():
    """Import sounddevice lazily; a missing PortAudio becomes AudioSourceError."""
    try:
        import sounddevice
    except OSError:
        raise AudioSourceError(_PORTAUDIO_MISSING) from None
    return sounddevice


def _default_input_index(sd) -> int | None:
    try:
        idx = sd.default.device[0]
    except Exception:
        idx = -1
    if idx is None or int(idx) < 0:
        try:
            idx = int(sd.query_devices(kind="input")["index"])
        except Exception:
            return None
    return int(idx)


def list_input_devices() -> list[dict]:
    """All PortAudio devices that can record: like ``python -m sounddevice``, inputs only."""
    sd = _sd()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
    except Exception as e:
        raise AudioSourceError(f"cannot query audio devices: {_one_line(e)}") from None
    default = _default_input_index(sd)
    out = []
    for i, d in enumerate(devices):
        if int(d.get("max_input_channels", 0)) <= 0:
            continue
        try:
            api = hostapis[d["hostapi"]]["name"]
        except Exception:
            api = str(d.get("hostapi"))
        out.append(
            {
                "index": i,
                "name": d["name"],
                "hostapi": api,
                "max_input_channels": int(d["max_input_channels"]),
                "default_samplerate": float(d["default_samplerate"]),
                "is_default": i == default,
            }
        )
    return out


def resolve_input_device(spec: int | str | None) -> int | None:
    """Device index for ``spec``: None (system default), an index, or a
    case-insensitive substring of the device name."""
    if spec is None:
        return None
    if isinstance(spec, str) and spec.strip() == "":
        return None
    devices = list_input_devices()
    if isinstance(spec, (int, np.integer)) or (isinstance(spec, str) and spec.strip().isdigit()):
        idx = int(spec)
        for d in devices:
            if d["index"] == idx:
                return idx
        raise AudioSourceError(f"no input device with index {idx}; {_SEE_DEVICES}")
    if not isinstance(spec, str):
        raise AudioSourceError(f"invalid input device {spec!r}; {_SEE_DEVICES}")
    want = spec.strip().lower()
    exact = [d for d in devices if d["name"].lower() == want]
    if len(exact) == 1:
        return exact[0]["index"]
    matches = exact or [d for d in devices if want in d["name"].lower()]
    if len(matches) == 1:
        return matches[0]["index"]
    if not matches:
        raise AudioSourceError(f"no input device matches '{spec}'; {_SEE_DEVICES}")
    listing = ", ".join(f"{d['index']}: {d['name']}" for d in matches[:8])
    raise AudioSourceError(
        f"input device '{spec}' is ambiguous ({listing}); pass the index instead"
    )


# PortAudio rescans devices only by terminating and re-initialising the library, and Pa_Terminate closes (and
# frees) every stream open in the process. So every PortAudio call a MicSource makes goes through _PA_LOCK, a
# re-initialisation first closes the other sources' streams itself (no stale pointer is ever used afterwards),
# and _PA_STATE["gen"] counts re-initialisations so those sources notice and reopen their own streams.
_PA_LOCK = threading.RLock()
_PA_STATE = {"gen": 0}
_OPEN_SOURCES: set = set()  # MicSources with an open stream


def _reinit_portaudio(sd) -> None:
    """Rescan devices. Closes every MicSource's stream first: Pa_Terminate would free them under their owners."""
    with _PA_LOCK:
        for src in list(_OPEN_SOURCES):
            src._close_stream()
        try:
            if getattr(sd, "_initialized", 1):
                sd._terminate()
        except Exception:
            pass
        _PA_STATE["gen"] += 1
        sd._initialize()


@dataclass
class _Chunk:
    """One PortAudio callback's input, exactly as the callback saw it (all arithmetic happens in the consumer)."""

    gen: int  # which opened stream of the source delivered it
    frame: int  # device frames that stream delivered before this chunk
    samples: np.ndarray  # float32 mono at the device rate
    wall: float  # time.time() in the callback
    mono: float  # time.monotonic() in the callback
    adc: float  # time_info.inputBufferAdcTime (PortAudio stream clock; 0 if the host API does not know)
    now: float  # time_info.currentTime (same clock)
    overflow: bool  # PortAudio flagged input overflow since the last queued chunk


def _make_callback(q: queue.Queue, stats: dict, channels: int, gen: int, wall_clock=time.time,
                   mono_clock=time.monotonic):
    """The PortAudio callback: copy the block into the bounded queue and nothing else (it runs on the audio
    thread; it never blocks). The clocks are parameters so that tests can step them."""
    counter = [0]  # device frames delivered by this stream
    overflow = [False]  # a flag whose chunk was dropped (queue full) travels with the next chunk

    def callback(indata, frames, time_info, status):
        wall, mono = wall_clock(), mono_clock()
        overflow[0] = overflow[0] or bool(status.input_overflow)
        x = indata[:, 0].copy() if channels == 1 else indata.mean(axis=1, dtype=np.float32)
        chunk = _Chunk(gen, counter[0], x, wall, mono, float(time_info.inputBufferAdcTime),
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


class _Timeline:
    """MicSource's consumer side, free of PortAudio (tests drive it with made-up chunks).

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

    def __init__(self, sample_rate: int, block: int, stats: dict, warnings: list[str]):
        self.sr = int(sample_rate)
        self.out = _Blocker(block)
        self.stats, self.warnings = stats, warnings
        self.rs = None  # resampler of the current stream
        self.gen: int | None = None  # stream generation whose chunks we consume
        self.rate = self.sr  # its device rate
        self.pending: list[_Chunk] | None = None  # a reopened stream's first chunks, until its start is known
        self.base = 0  # target-rate position where that stream's audio starts
        self.fed = 0  # device frames (audio and zeros) fed from that stream
        self.expect = 0  # next frame counter expected from that stream
        self.produced = 0  # target-rate samples handed to the blocker
        self.prev: _Chunk | None = None  # previous chunk of this stream
        self.adc_run = 0.0  # seconds of consistent ADC steps in this stream; -1: inconsistent, never used again
        self.end_mono: float | None = None  # monotonic time at which the previous stream's audio ended
        self.offset: float | None = None  # wall minus monotonic clock at the previous chunk
        self.origins: deque = deque(maxlen=31)  # bounds of when this stream started: (wall, monotonic)
        self.anchors: deque = deque(maxlen=64)  # (stream position, wall time)
        self.trail: _NativeTrail | None = None  # device-rate audio for clips, while the device rate stays put
        self.trail_dropped = False

    def add(self, c: _Chunk, rate: int) -> None:
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
        pending, self.pending = self.pending, None
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
        self.rs = _new_resampler(self.rate, self.sr)
        self.prev, self.adc_run = None, 0.0
        self.origins.clear()  # a new stream has its own latency

    def _start_trail(self) -> None:
        """Device-rate audio rides beside the stream only while one rate above the target's holds: a device
        reopened at another rate would break the sample mapping, so its clips fall back to the target rate."""
        if self.trail_dropped:
            return
        if self.trail is None and self.produced == 0 and self.rate > self.sr:
            self.trail = _NativeTrail(self.rate, self.sr)
        elif self.trail is not None and self.trail.rate != self.rate:
            self.trail, self.trail_dropped = None, True
        elif self.trail is not None:
            self.trail.pad_to(self.produced)

    def _add(self, c: _Chunk) -> None:
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

    def _lost_frames(self, c: _Chunk, n: int) -> int:
        """Overflow loss: on the ADC clock when it is trusted, else on the callbacks' monotonic clock."""
        p = self.prev
        if not c.overflow or p is None:
            return 0
        between = (c.frame - p.frame) / self.rate  # what the frames counted say
        if self._adc_trusted() and _adc_valid(c.adc, c.now):
            return _overflow_frames(True, c.adc, p.adc + between, n, self.rate)
        return _overflow_frames(True, c.mono - n / self.rate, p.mono - len(p.samples) / self.rate + between,
                                n, self.rate)

    def _judge_adc(self, c: _Chunk, n: int) -> None:
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

    def _anchor(self, c: _Chunk, age: float) -> None:
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


class MicSource:
    """Live input from a PortAudio capture device.

    The PortAudio callback only copies the (mono-mixed) block and its timestamps into a bounded queue; the
    iterator (consumer side, :class:`_Timeline`) resamples to ``sample_rate``, fills dropped or lost stretches
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
        self.sample_rate = int(sample_rate)
        if self.sample_rate <= 0:
            raise ValueError("sample_rate must be positive")
        if not block_s > 0:
            raise ValueError("block_s must be positive")
        self.block_s = float(block_s)
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
        self.warnings: list[str] = []
        self._stop = threading.Event()
        self._stream = None
        self._gen = 0  # streams this source opened; tags queued chunks so stale ones are dropped
        self._pa_gen = -1  # PortAudio generation our stream was opened in / we last rescanned in
        self._opened_at = time.monotonic()
        self._q: queue.Queue = queue.Queue(maxsize=max(2, int(math.ceil(self.queue_s / self.block_s))))

        sd = _sd()
        with _PA_LOCK:
            idx = resolve_input_device(device)
            if idx is None:
                idx = _default_input_index(sd)
                if idx is None:
                    raise AudioSourceError(f"no default input device; {_SEE_DEVICES}")
            self.device_index = idx
            info = sd.query_devices(idx)
            self.name = str(info["name"])
            self.device_rate, self.device_channels = self._pick_settings(sd, idx, info)
            self._pa_gen = _PA_STATE["gen"]

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
            f"at {self.sample_rate} Hz or its default rate ({_one_line(last)})"
        )

    def _open_stream(self) -> None:
        sd = _sd()
        with _PA_LOCK:
            self._gen += 1
            callback = _make_callback(self._q, self.stats, self.device_channels, self._gen)
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
                raise AudioSourceError(f"cannot open input device '{self.name}': {_one_line(e)}") from None
            self._stream = stream
            self._pa_gen = _PA_STATE["gen"]
            self._opened_at = time.monotonic()
            _OPEN_SOURCES.add(self)

    def _close_stream(self) -> None:
        with _PA_LOCK:
            s, self._stream = self._stream, None
            _OPEN_SOURCES.discard(self)
            if s is None:
                return
            for op in (s.abort, s.close):
                try:
                    op()
                except Exception:
                    pass

    def _stream_dead(self, last_data: float) -> bool:
        """Our stream is gone: closed by another source's PortAudio rescan, stopped, or silent too long."""
        with _PA_LOCK:
            s = self._stream
            if s is None or self._pa_gen != _PA_STATE["gen"]:
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
        sd = _sd()
        with _PA_LOCK:
            if _PA_STATE["gen"] == self._pa_gen:
                _reinit_portaudio(sd)  # closes the other sources' streams: they notice and reopen
            self._pa_gen = _PA_STATE["gen"]
            if self.spec is None:
                idx = _default_input_index(sd)
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
        with _PA_LOCK:
            wait = 0.0 if self._stream is None and self._pa_gen != _PA_STATE["gen"] else self.retry_s
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
                last_err = _one_line(e)
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
        tl = _Timeline(self.sample_rate, int(round(self.block_s * self.sample_rate)), self.stats, self.warnings)
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

    def stop(self) -> None:
        """End iteration (thread- and signal-handler-safe)."""
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self._close_stream()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"MicSource({self.name!r}, device {self.device_rate} Hz -> "
                f"{self.sample_rate} Hz)")
