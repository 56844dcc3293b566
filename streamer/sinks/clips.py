"""ClipWriter (`--clips DIR`): every event's audio saved as a FLAC clip, with a spectrogram PNG beside it, in
one folder kept under a disk cap.

It is an EventAnnotator: it runs before the sinks and hands them the event with `clip` set, so the CSV row names
the clip. Writing a clip never fails detection: a full disk is one `warning:` line, and the events go on
without clips.

    20240501_053012_eurrob1_0.87.flac     live input: local date and time of the onset
    synthetic_calls_t000012.3s_upsweep_0.87.flac      fast replay: recording and stream second of the onset
"""
from __future__ import annotations

import dataclasses
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import soundfile as sf

from birdlive.errors import OptionError, one_line
from birdlive.files import TEMP_NAME, atomic_path, writable_folder

from ..core.events import Event, EventAudio
from .pictures import event_picture

log = logging.getLogger(__name__)

SUBTYPE = "PCM_16"          # a clip is for listening and for training data: 16 bits is what recorders give

# The two name forms (see the module docstring); a duplicate gets -2, -3, … after the confidence.
_TAIL = r"_(?P<species>.+)_(?P<conf>[01]\.\d\d)(?:-\d+)?\.flac"
_WALL_NAME = re.compile(r"(?P<when>\d{8}_\d{6})" + _TAIL)
_STREAM_NAME = re.compile(r"(?P<stem>.+)_t(?P<t>\d+\.\d)s" + _TAIL)


def _safe(text: str) -> str:
    """A species code or a recording's stem as part of a file name: no separators, no spaces."""
    return re.sub(r"[^\w.-]+", "-", text).strip("-.") or "x"


def clip_stem(event: Event) -> str:
    """The clip's name without suffix. Live input (and --realtime replay) has a wall clock: its local date and
    time sort the clips of many nights in order and say when the bird called. Fast replay has none, and a
    made-up date would sort among the real ones: there the name says which recording, and the second in it
    (zero-padded, so that a recording's clips sort by time)."""
    if event.wall_onset is not None:
        when = datetime.fromtimestamp(event.wall_onset).strftime("%Y%m%d_%H%M%S")
    else:
        when = f"{_safe(Path(event.source).stem or 'stream')}_t{max(0.0, event.onset_s):08.1f}s"
    return f"{when}_{_safe(event.species)}_{min(max(event.peak, 0.0), 1.0):.2f}"


@dataclass
class Clip:
    """A clip in the folder, as the cap sees it."""
    path: Path
    species: str
    conf: float
    time: float           # when: the wall time in its name, else its file's mtime (≈ when the event closed)
    nbytes: int           # the FLAC and its PNG

    @property
    def picture(self) -> Path:
        return self.path.with_suffix(".png")


def parse_clip(path: Path) -> Clip | None:
    """A clip of ours from its name (None for any other file: those are never counted nor deleted)."""
    m = _WALL_NAME.fullmatch(path.name) or _STREAM_NAME.fullmatch(path.name)
    if m is None:
        return None
    try:
        st = path.stat()
        png = path.with_suffix(".png")
        nbytes = st.st_size + (png.stat().st_size if png.exists() else 0)
    except OSError:
        return None
    t = st.st_mtime
    if "when" in m.groupdict():
        t = datetime.strptime(m["when"], "%Y%m%d_%H%M%S").timestamp()
    return Clip(path, m["species"], float(m["conf"]), t, nbytes)


def write_flac(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """16-bit FLAC, whole or not at all. Clipped to ±1 first: libsndfile would wrap a louder float around."""
    with atomic_path(path, durable_name=True) as tmp:
        sf.write(tmp, np.clip(samples, -1.0, 1.0), sample_rate, format="FLAC", subtype=SUBTYPE)


class ClipWriter:
    """Saves each event's audio (`EventAudio`: the event with pre- and post-roll, at the source's own rate where
    that is higher than the model's) as `<name>.flac`, a spectrogram `<name>.png` beside it, and returns the
    event with `clip` set. The event's onset lies `onset_s - audio.start_s` seconds into its clip.

    With `max_gb`, the folder's clips and pictures are kept under that many gigabytes: the oldest clips go
    first, but the `keep_best` highest-confidence clips of every species stay. The index behind this is rebuilt
    from the file names at start, so a restart knows last night's clips; files it did not name are left alone.
    """

    wants_native_audio = True       # the source's own rate (`events.wants_native_audio`)

    def __init__(self, folder: Path, max_gb: float | None = None, keep_best: int = 3, pictures: bool = True,
                 fmin: float = 50.0, fmax: float = 14000.0):
        if max_gb is not None and not max_gb > 0:
            raise OptionError(f"--clips-max-gb must be a positive number of gigabytes, not {max_gb}")
        if keep_best < 0:
            raise OptionError(f"keep_best must be 0 or more, not {keep_best}")
        self.folder = Path(folder)
        writable_folder(self.folder, "--clips")
        self.max_bytes = None if max_gb is None else int(max_gb * 1e9)
        self.keep_best, self.pictures, self.fmin, self.fmax = keep_best, pictures, fmin, fmax
        self._warned: set[str] = set()
        self.failures = 0                     # clips that could not be written
        self.index: dict[Path, Clip] = {}
        for p in self.folder.iterdir():
            if _stale_temp(p.name):        # a crash mid-write: the half file never got its name
                p.unlink(missing_ok=True)
            elif (clip := parse_clip(p)) is not None:
                self.index[p] = clip
        self.enforce_cap()

    @property
    def total_bytes(self) -> int:
        return sum(c.nbytes for c in self.index.values())

    def annotate(self, event: Event, audio: EventAudio) -> Event:
        if len(audio.samples) == 0:
            return event
        path = self._free_path(clip_stem(event))
        try:
            write_flac(path, audio.samples, audio.sample_rate)
            nbytes = path.stat().st_size
        except (OSError, sf.LibsndfileError) as e:    # a full disk, a folder gone: detection goes on
            self.failures += 1
            self._warn_once("write", f"--clips: cannot write clips to {self.folder} ({_reason(e)}); "
                                     f"events go on without clips")
            return event
        clip = Clip(path, _safe(event.species), min(max(event.peak, 0.0), 1.0),
                    event.wall_onset if event.wall_onset is not None else time.time(), nbytes)
        if self.pictures:
            clip.nbytes += self._draw(audio, event, clip.picture)
        self.index[path] = clip
        self.enforce_cap(keep=path)
        return dataclasses.replace(event, clip=str(path))

    def _draw(self, audio: EventAudio, event: Event, png: Path) -> int:
        """The clip's picture; its size in bytes, or 0 where it could not be written (the clip stays)."""
        try:
            event_picture(audio, event, png, self.fmin, self.fmax)
            return png.stat().st_size
        except OSError as e:
            self._warn_once("picture", f"--clips: cannot write clip pictures to {self.folder} ({_reason(e)})")
        except Exception as e:  # noqa: BLE001 - a picture is not worth an event: say so once, keep the clip
            self._warn_once("picture", f"--clips: cannot draw clip pictures ({type(e).__name__}: {_reason(e)})")
        return 0

    def _free_path(self, stem: str) -> Path:
        path, n = self.folder / f"{stem}.flac", 2
        while path in self.index or path.exists():
            path, n = self.folder / f"{stem}-{n}.flac", n + 1
        return path

    def enforce_cap(self, keep: Path | None = None) -> None:
        """Delete the oldest clips (and their pictures) until the folder is under the cap, never the best
        `keep_best` of a species, nor `keep` (the clip just written: a cap smaller than one clip keeps one)."""
        if self.max_bytes is None:
            return
        total = self.total_bytes
        if total <= self.max_bytes:
            return
        protected = self.best_per_species() | {keep}
        for clip in sorted(self.index.values(), key=lambda c: c.time):
            if total <= self.max_bytes:
                return
            if clip.path not in protected:
                self._delete(clip)
                total -= clip.nbytes
        self._warn_once("cap", f"--clips: {self.folder} is over its cap of {self.max_bytes / 1e9:g} GB with only "
                               f"the best {self.keep_best} clips of each species and the newest one left "
                               f"({total / 1e9:.3g} GB); keeping those")

    def best_per_species(self) -> set[Path]:
        by_species: dict[str, list[Clip]] = {}
        for c in self.index.values():
            by_species.setdefault(c.species, []).append(c)
        return {c.path for clips in by_species.values()
                for c in sorted(clips, key=lambda c: (-c.conf, c.time))[:self.keep_best]}

    def _delete(self, clip: Clip) -> None:
        del self.index[clip.path]
        for p in (clip.path, clip.picture):
            try:
                p.unlink(missing_ok=True)
            except OSError as e:
                self._warn_once("delete", f"--clips: cannot delete {p} ({_reason(e)})")

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(message)

    def close(self) -> None:
        pass        # every clip is whole on disk as soon as it is written


def _reason(e: Exception) -> str:
    return one_line(getattr(e, "strerror", None) or e)


def _stale_temp(name: str) -> bool:
    """A clip's or a picture's temporary name (`atomic_path`), left by a crash; nothing else birdlive writes."""
    m = TEMP_NAME.fullmatch(name)
    return (m is not None and m["target"].endswith((".flac", ".png"))) or _OLD_TEMP.fullmatch(name) is not None


_OLD_TEMP = re.compile(r"\..+\.(flac|png)\.tmp")     # birdlive before 0.1's one temporary-name scheme
