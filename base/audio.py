"""The one decoder: audio files as blocks of float32 mono samples at a target rate.

`FileSource` reads a file block by block (never whole) through libsndfile — WAV, FLAC, Ogg Vorbis/Opus, MP3,
AIFF … — mixes stereo to mono (or picks a channel), resamples with soxr's streaming resampler, and yields
`AudioBlock`s with an honest, gap-free stream position; `--realtime` paces them to the wall clock. Replay reads
recordings through it, and so do training's cache (`birdlive.train.cache.decode`), the `--plot` picture and
archive analysis: what the model hears of a file is the same everywhere. Anything that goes wrong is an
`AudioSourceError` whose message is one line for the user. A microphone (birdlive.streamer.sources) yields the
same blocks.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

from .errors import BirdliveError, one_line

__all__ = ["AudioBlock", "AudioSourceError", "FileSource", "SourceBase"]


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


class NativeTrail:
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
        out = _own(buf[max(0, n0 - self.start):max(0, n1 - self.start)], buf)
        rest = _own(buf[max(0, n1 - self.start):], buf)
        self._parts, self.start = ([rest] if len(rest) else []), max(self.start, n1)
        return out


def _own(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """`part` (a slice of `whole`) as an array of its own, unless it is all of it: a queued block that were a view
    would keep the whole buffer it was cut from alive (up to twice its size, measured in a 48 kHz replay)."""
    return part if len(part) == len(whole) else part.copy()


class Blocker:
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
            yield self.pos, _own(buf[off : off + self.block], buf)
            self.pos += self.block
            off += self.block
        rest = _own(buf[off:], buf)
        if final and len(rest):
            yield self.pos, rest
            self.pos += len(rest)
            rest = rest[:0]
        self._parts = [rest] if len(rest) else []
        self._n = len(rest)


def new_resampler(in_rate: int, out_rate: int):
    if int(in_rate) == int(out_rate):
        return None
    return soxr.ResampleStream(float(in_rate), float(out_rate), 1, dtype="float32", quality="HQ")


# --------------------------------------------------------------------------- files

_DATA_SHOULD_BE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be\s*(\d+)\)", re.MULTILINE)


class SourceBase:
    """What every source shares (FileSource, MicSource; the runner's `Source` protocol): `name`, `stats` and
    `warnings` (one line each) may be read from any thread; `stop()` ends iteration soon, from any thread or a
    signal handler; as a context manager it is closed on the way out. `keep_native`, set before iterating: blocks
    carry the source's own-rate audio too, where that rate is above the target's (the runner sets it when an
    output wants event audio at the source's rate; otherwise it would be resampled copies nobody reads)."""

    name: str
    stats: dict
    keep_native: bool = False

    def __init__(self, sample_rate: int, block_s: float):
        self.sample_rate = int(sample_rate)
        if self.sample_rate <= 0:
            raise ValueError("sample_rate must be positive")
        if not block_s > 0:
            raise ValueError("block_s must be positive")
        self.block_s = float(block_s)
        self.warnings: list[str] = []   # one line each, for the user
        self._stop = threading.Event()

    def stop(self) -> None:
        """End iteration after the current block (thread- and signal-handler-safe)."""
        self._stop.set()

    def close(self) -> None:
        self._stop.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FileSource(SourceBase):
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
        super().__init__(sample_rate, block_s)
        self.path = os.fspath(path)
        self.name = self.path
        self.realtime = bool(realtime)
        self.stats: dict = {"blocks": 0, "samples": 0, "frames_read": 0}
        self._sf: sf.SoundFile | None = None

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
            msg = one_line(getattr(e, "error_string", "") or e)
            low = msg.lower()
            if "not recognised" in low or "unknown format" in low or "not recognized" in low:
                raise self._err("not an audio file (format not recognised)") from None
            if "malformed" in low or "truncat" in low:
                raise self._err(f"corrupt or truncated audio file ({msg})") from None
            raise self._err(f"cannot open audio file ({msg})") from None
        except (RuntimeError, OSError, ValueError, TypeError) as e:
            raise self._err(f"cannot open audio file ({one_line(e)})") from None

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
        rs = new_resampler(nat, self.sample_rate)
        out = Blocker(int(round(self.block_s * self.sample_rate)))
        trail = NativeTrail(nat, self.sample_rate) if self.keep_native and nat > self.sample_rate else None
        t0_mono = t0_wall = None
        pos = 0  # native frames read so far

        def emit(final: bool):
            nonlocal t0_mono, t0_wall
            for start, x in out.pop_blocks(final):
                wall = None
                if self.realtime:
                    if t0_mono is None or t0_wall is None:
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
        msg = one_line(getattr(error, "error_string", "") or error)
        where = (pos + len(data)) / self.native_rate
        return data, self._err(f"corrupt or truncated audio data at {where:.2f} s ({msg}); analysed up to there")

    def close(self) -> None:
        f, self._sf = self._sf, None
        if f is not None:
            try:
                f.close()
            except Exception:
                pass

    def __repr__(self) -> str:
        return (f"FileSource({self.name!r}, {self.native_rate} Hz x{self.channels} -> "
                f"{self.sample_rate} Hz)")
