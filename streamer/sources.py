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

    @property
    def end_sample(self) -> int:
        return self.start_sample + len(self.samples)


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
                yield AudioBlock(np.ascontiguousarray(x, dtype=np.float32), int(start), wall)

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


class MicSource:
    """Live input from a PortAudio capture device.

    The PortAudio callback only copies the (mono-mixed) block into a bounded
    queue together with its frame counter; the iterator (consumer side)
    resamples to ``sample_rate``, fills dropped stretches with zeros so that
    ``start_sample`` stays honest, and yields :class:`AudioBlock` objects.
    If the device disappears or stops delivering, it is reopened every
    ``retry_s`` seconds for up to ``reconnect_s`` seconds; the outage is
    filled with zeros.  Iteration ends when :meth:`stop` is called (safe from
    other threads and signal handlers).
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
            "dropped_blocks": 0,
            "dropped_samples": 0,
            "reconnects": 0,
            "gap_samples": 0,
        }
        self._stop = threading.Event()
        self._stream = None
        self._gen = 0
        self._q: queue.Queue = queue.Queue(maxsize=max(2, int(math.ceil(self.queue_s / self.block_s))))

        sd = _sd()
        idx = resolve_input_device(device)
        if idx is None:
            idx = _default_input_index(sd)
            if idx is None:
                raise AudioSourceError(f"no default input device; {_SEE_DEVICES}")
        self.device_index = idx
        info = sd.query_devices(idx)
        self.name = str(info["name"])
        self.device_rate, self.device_channels = self._pick_settings(sd, idx, info)

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
        self._gen += 1
        gen = self._gen
        counter = [0]  # device frames delivered by this stream
        q = self._q
        stats = self.stats
        ch = self.device_channels

        def callback(indata, frames, time_info, status):
            if status.input_overflow:
                stats["overflows"] += 1
            mono = indata[:, 0].copy() if ch == 1 else indata.mean(axis=1, dtype=np.float32)
            try:
                q.put_nowait((gen, counter[0], mono, time.time()))
            except queue.Full:
                stats["dropped_blocks"] += 1
                stats["dropped_samples"] += frames
            counter[0] += frames

        try:
            stream = sd.InputStream(
                device=self.device_index,
                samplerate=self.device_rate,
                channels=ch,
                dtype="float32",
                blocksize=max(1, int(round(self.block_s * self.device_rate))),
                latency="high",
                callback=callback,
            )
            stream.start()
        except Exception as e:  # sd.PortAudioError, ValueError
            raise AudioSourceError(
                f"cannot open input device '{self.name}': {_one_line(e)}"
            ) from None
        self._stream = stream

    def _close_stream(self) -> None:
        s, self._stream = self._stream, None
        if s is None:
            return
        for op in (s.abort, s.close):
            try:
                op()
            except Exception:
                pass

    def _reopen(self) -> None:
        """Rescan PortAudio devices, find ours again by name, open it."""
        sd = _sd()
        try:
            sd._terminate()
            sd._initialize()
        except Exception:
            pass
        if self.spec is None:
            idx = _default_input_index(sd)
            if idx is None:
                raise AudioSourceError("no default input device")
        else:
            idx = None
            for d in list_input_devices():
                if d["name"] == self.name:
                    idx = d["index"]
                    break
            if idx is None:
                raise AudioSourceError(f"input device '{self.name}' not present")
        info = sd.query_devices(idx)
        self.device_index = idx
        rate, ch = self._pick_settings(sd, idx, info)
        if rate != self.device_rate or ch != self.device_channels:
            self.device_rate, self.device_channels = rate, ch
        self._open_stream()

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
        sr = self.sample_rate
        out = _Blocker(int(round(self.block_s * sr)))
        rs = None
        anchors: deque = deque(maxlen=64)  # (stream position, unix time of that sample)
        produced = 0  # target-rate samples produced so far (end of stream)
        gen = None  # generation whose data we are consuming
        expect = 0  # next expected device frame in that generation
        last_data = time.monotonic()
        opened_at = last_data
        outage_since: float | None = None
        last_err = ""

        def wall_at(pos: int) -> float | None:
            for p, w in reversed(anchors):
                if p <= pos:
                    return w + (pos - p) / sr
            return anchors[0][1] + (pos - anchors[0][0]) / sr if anchors else None

        def emit(final=False):
            for start, x in out.pop_blocks(final):
                self.stats["blocks"] += 1
                self.stats["samples"] += len(x)
                yield AudioBlock(np.ascontiguousarray(x, dtype=np.float32), int(start), wall_at(start))

        def feed(x: np.ndarray) -> None:
            nonlocal produced
            y = rs.resample_chunk(x) if rs is not None else x
            out.push(y)
            produced += len(y)

        while not self._stop.is_set():
            try:
                item = self._q.get(timeout=0.1)
            except queue.Empty:
                item = None
            if item is None:
                s = self._stream
                now = time.monotonic()
                # a freshly opened stream may take a moment to deliver its first block
                limit = self.stall_s if last_data > opened_at else 2 * self.stall_s
                dead = s is None or not s.active or now - max(last_data, opened_at) > limit
                if not dead:
                    continue
                # ---- the device went away: flush, close, try to reopen
                if rs is not None:
                    y = rs.resample_chunk(np.zeros(0, np.float32), last=True)
                    out.push(y)
                    produced += len(y)
                    rs = None
                self._close_stream()
                if outage_since is None:
                    outage_since = now
                yield from emit()
                while not self._stop.is_set():
                    if time.monotonic() - outage_since > self.reconnect_s:
                        raise AudioSourceError(
                            f"input device '{self.name}' lost and could not be reopened "
                            f"within {self.reconnect_s:.0f} s ({last_err or 'no data'})"
                        )
                    if self._stop.wait(self.retry_s):
                        break
                    try:
                        self._reopen()
                    except Exception as e:  # AudioSourceError, PortAudioError, ...
                        last_err = _one_line(e)
                        self._close_stream()
                        continue
                    self.stats["reconnects"] += 1
                    opened_at = time.monotonic()
                    break
                continue

            g, frame, x, cb_wall = item
            if g != self._gen:
                continue  # stale data from a stream we already closed
            n = len(x)
            first_wall = cb_wall - n / self.device_rate  # approx. unix time of x[0]
            if g != gen:
                # first data of a (re)opened stream: new resampler, fill the outage
                gen, expect = g, 0
                rs = _new_resampler(self.device_rate, sr)
                end_wall = wall_at(produced)
                if end_wall is not None:
                    gap = int(round((first_wall - end_wall) * sr))
                    if gap > 0:
                        out.push(np.zeros(gap, np.float32))
                        produced += gap
                        self.stats["gap_samples"] += gap
                anchors.append((produced, first_wall))
            if frame > expect:
                # blocks were dropped because the queue was full: keep time honest
                feed(np.zeros(frame - expect, np.float32))
            expect = frame + n
            feed(x)
            last_data = time.monotonic()
            outage_since = None
            yield from emit()

        yield from emit(final=True)

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
