"""Files, one way each: what counts as audio, writing a file whole or not at all, proving a folder takes files.

Low in the package (the root), so that the streaming outputs, the archive, the model's checkpoints and the
training cache all use the same rules.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OptionError

# What birdlive reads (libsndfile: WAV, FLAC, Ogg Vorbis/Opus, MP3, AIFF, AU, CAF, Wave64, RF64), in every place
# that looks for audio: `analyze` in its folders, training in its datasets, an MQTT topic's name for a file.
# Lower case; compare `suffix.lower()`.
AUDIO_EXTENSIONS = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au",
                    ".caf", ".w64", ".rf64")


def is_audio(path: str | os.PathLike) -> bool:
    """A name that says audio (by its extension; hidden files, such as a half-copied `._x.wav`, are not)."""
    p = Path(path)
    return p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith(".")


# The temporary name of a file being written (`atomic_path`): hidden, in the target's folder, unique per writer.
TEMP_NAME = re.compile(r"\.(?P<target>.+)\.(?P<token>[a-z0-9_]+)\.tmp")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, durable: bool = True, durable_name: bool = False) -> Iterator[Path]:
    """Yields a temporary path beside `target` to write; once the block ends it is renamed to `target` (on any
    error it is removed instead). A reader never sees half a file: a crash mid-write leaves only a hidden
    temporary name (`TEMP_NAME`), which whoever owns the folder may remove.

    `durable`: the data is fsync'ed before the rename, so after a power cut the file is whole or absent (not
    whole-named and empty). `durable_name`: the folder is fsync'ed after it, so the new name survives one too
    (clips: a CSV row names them). Result files that a manifest commits afterwards need neither."""
    target = Path(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable_name:
        with contextlib.suppress(OSError):      # not every file system lets a folder be opened and fsync'ed
            _fsync(target.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def writable_folder(folder: Path, option: str) -> None:
    """Create `folder` and prove it takes a file (write and remove a probe), or say why not in one line."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".birdlive-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise OptionError(f"{option} {folder}: cannot write to {folder} ({e.strerror or e})") from None


def default_cache_dir() -> Path:
    """Where decoded audio and downloaded starting weights are kept: $BIRDLIVE_CACHE, else ~/.cache/birdlive."""
    return Path(os.environ.get("BIRDLIVE_CACHE") or Path.home() / ".cache" / "birdlive")
