"""Decode + resample once: every audio file becomes a mono float32 `.npy` at the model's rate, memory-mapped after.

Decoding an MP3 and resampling it costs far more than a tiny model's step on it; with the cache an epoch on two
CPU cores is bounded by the model. Entries are keyed by absolute path, modification time, size and rate, so an
edited file or another rate is decoded anew; stale entries are simply never read again.
Default folder: `$BIRDLIVE_CACHE`, else `~/.cache/birdlive`.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from birdlive.errors import BirdliveError


class AudioError(BirdliveError):
    """An audio file cannot be decoded; the message says why, in one line."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("BIRDLIVE_CACHE") or Path.home() / ".cache" / "birdlive")


def decode(path: str | Path, sample_rate: int) -> np.ndarray:
    """Any file libsndfile reads (WAV, FLAC, OGG/Vorbis/Opus, MP3) → mono float32 at `sample_rate` (soxr HQ)."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError/TypeError by format
        raise AudioError(f"{path}: cannot decode ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    x = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != sample_rate and len(x):
        x = soxr.resample(x, sr, sample_rate, quality="HQ")
    return np.ascontiguousarray(x, dtype=np.float32)


class AudioCache:
    def __init__(self, cache_dir: str | Path | None = None, sample_rate: int = 32000):
        self.dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.sample_rate = int(sample_rate)
        self.decoded = 0                      # files decoded by this object (a cache hit decodes nothing)

    def entry(self, path: str | Path) -> Path:
        p = Path(path).resolve()
        try:
            st = p.stat()
        except OSError as e:
            raise AudioError(f"{path}: {e.strerror or e}") from None
        key = hashlib.sha1(f"{p}|{st.st_mtime_ns}|{st.st_size}|{self.sample_rate}".encode()).hexdigest()[:20]
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in p.stem)[:40]
        return self.dir / str(self.sample_rate) / f"{stem}-{key}.npy"

    def load(self, path: str | Path, mmap: bool = True) -> np.ndarray:
        """The file as mono float32 at the cache's rate (read-only memory map when `mmap`)."""
        entry = self.entry(path)
        if entry.is_file():
            try:
                return np.load(entry, mmap_mode="r" if mmap else None)
            except (ValueError, OSError):
                pass  # a truncated entry: decode again
        x = decode(path, self.sample_rate)
        self.decoded += 1
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{entry.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, x)
        tmp.replace(entry)   # atomic: parallel workers never read half an entry
        return np.load(entry, mmap_mode="r") if mmap else x

    def warm(self, paths, progress=None) -> list[str]:
        """Decode everything not cached yet; returns the paths that failed (with the reason printed by caller)."""
        failed = []
        for p in paths:
            try:
                self.load(p)
            except AudioError:
                failed.append(str(p))
            if progress is not None:
                progress()
        return failed
