"""What an archive is made of: the recordings among the inputs (folders searched recursively), their length as
their headers announce it, and when the recorder started each one (GUANO metadata, an AudioMoth's comment or
file name, a Song Meter's file name), in the site's time zone."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Iterable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from birdlive.errors import OptionError
from birdlive.files import AUDIO_EXTENSIONS, is_audio


@dataclass(frozen=True)
class Recording:
    path: str          # absolute
    key: str           # path below the inputs' common folder: where its results go (results/KEY.csv)
    size: int
    mtime: float


def find_recordings(inputs: Iterable[str | Path], outdir: Path | None = None) -> list[Recording]:
    """Audio files named on the command line, and those under folders (recursive), sorted by key; none from
    `outdir` (clips are audio too). Keys are paths relative to the common folder of the inputs, so a season's
    layout (site/date/file) is kept in the results."""
    inputs = list(inputs)
    files: dict[Path, None] = {}
    roots = []
    for given in inputs:
        p = Path(given).expanduser()
        if not p.exists():
            raise OptionError(f"{given}: no such file or folder")
        p = p.resolve()
        if p.is_dir():
            roots.append(p)
            files.update((f, None) for f in sorted(p.rglob("*")) if is_audio(f)
                         and f.is_file() and not (outdir is not None and f.is_relative_to(outdir)))
        else:
            roots.append(p.parent)
            files[p] = None
    if not files:
        raise OptionError(f"no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) in {', '.join(map(str, inputs))}")
    common = Path(os.path.commonpath(roots))
    recordings = []
    for f in files:
        st = f.stat()
        recordings.append(Recording(str(f), f.relative_to(common).as_posix(), st.st_size, st.st_mtime))
    return sorted(recordings, key=lambda r: r.key)


def header_duration(path: str) -> float | None:
    """Seconds of audio the file's header announces (for progress and ETA); None where it cannot be read."""
    import soundfile as sf
    try:
        info = sf.info(path)
        return info.frames / info.samplerate if info.samplerate else None
    except Exception:   # a corrupt file: its worker reports why, in one line
        return None



# AudioMoth: "Recorded at 05:30:00 01/05/2024 (UTC+1) by AudioMoth 24F319055FDF2D8B at medium gain …"
_AUDIOMOTH_COMMENT = re.compile(r"Recorded at (\d\d):(\d\d):(\d\d) (\d\d)/(\d\d)/(\d{4}) "
                                r"\(UTC(?:([+-])(\d{1,2})(?::?(\d\d))?)?\)")
# AudioMoth names files YYYYMMDD_HHMMSS.WAV; Song Meters put a prefix first: SITE_YYYYMMDD_HHMMSS.wav
_NAME_TIME = re.compile(r"^(?:(.+)_)?(\d{8})_(\d{6})(?:\D.*)?$")


@dataclass(frozen=True)
class RecorderStart:
    time: datetime     # timezone-aware
    origin: str        # guano | audiomoth-comment | audiomoth-name | name


def recorder_start(path: str, site_tz: tzinfo | None) -> RecorderStart | None:
    """When the recorder started this file: GUANO metadata, then the AudioMoth comment, then the file name.

    AudioMoth writes its names in UTC unless it was set to a local offset, which its comment then states; a
    Song Meter names files in the local time it was set to, which nothing in the file records: `site_tz`. A
    GUANO timestamp without a zone is read in `site_tz` too (None: this machine's local zone)."""
    for probe in (_guano_start, _audiomoth_comment_start):
        try:
            found = probe(path, site_tz)
        except Exception:        # unreadable metadata is no time, not a failure: the audio decides that
            found = None
        if found is not None:
            return found
    return name_start(Path(path).stem, site_tz)


def name_start(stem: str, site_tz: tzinfo | None) -> RecorderStart | None:
    m = _NAME_TIME.match(stem)
    if not m:
        return None
    try:
        t = datetime.strptime(m.group(2) + m.group(3), "%Y%m%d%H%M%S")
    except ValueError:           # 20241399_…: digits, not a date
        return None
    if m.group(1) is None:       # a bare AudioMoth name: UTC
        return RecorderStart(t.replace(tzinfo=timezone.utc), "audiomoth-name")
    return RecorderStart(_in_zone(t, site_tz), "name")


def _guano_start(path: str, site_tz: tzinfo | None) -> RecorderStart | None:
    if not path.lower().endswith(".wav"):
        return None
    import guano
    t = guano.GuanoFile(path).get("Timestamp")
    if not isinstance(t, datetime):
        return None
    return RecorderStart(t if t.tzinfo else _in_zone(t, site_tz), "guano")


def _audiomoth_comment_start(path: str, site_tz: tzinfo | None) -> RecorderStart | None:
    import soundfile as sf
    with sf.SoundFile(path) as f:
        comment = f.comment or ""
    m = _AUDIOMOTH_COMMENT.search(comment)
    if not m:
        return None
    hh, mi, ss, dd, mo, yyyy, sign, oh, om = m.groups()
    offset = timedelta(hours=int(oh or 0), minutes=int(om or 0)) * (-1 if sign == "-" else 1)
    t = datetime(int(yyyy), int(mo), int(dd), int(hh), int(mi), int(ss), tzinfo=timezone(offset))
    return RecorderStart(t, "audiomoth-comment")


def _in_zone(naive: datetime, zone: tzinfo | None) -> datetime:
    # astimezone() on a naive time reads it as local time, daylight saving included
    return naive.replace(tzinfo=zone) if zone is not None else naive.astimezone()


def site_zone(name: str | None) -> tzinfo | None:
    """--tz: an IANA zone name; None is this machine's local zone."""
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise OptionError(f"--tz: unknown time zone {name!r} (an IANA name like Europe/Berlin or UTC)") from None
