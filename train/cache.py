"""Decode + resample once: every audio file becomes a mono float32 `.npy` at the model's rate, memory-mapped after.

Decoding an MP3 and resampling it costs far more than a tiny model's step on it; with the cache an epoch on two
CPU cores is bounded by the model. Entries are keyed by absolute path, modification time, size and rate, so an
edited file or another rate is decoded anew; stale entries are simply never read again.
Default folder: `$BIRDLIVE_CACHE`, else `~/.cache/birdlive`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from birdlive.errors import BirdliveError
from birdlive.files import atomic_path, default_cache_dir


DECODE_BLOCK_S = 30.0      # seconds per FileSource block: large blocks, few Python round trips
DECODER = "filesource-1"   # in every entry's key: entries of an earlier decoder are decoded anew


class AudioError(BirdliveError):
    """An audio file cannot be decoded; the message says why, in one line."""


def decode(path: str | Path, sample_rate: int) -> np.ndarray:
    """Any file replay reads → mono float32 at `sample_rate`, decoded exactly as `birdlive replay` hears it.

    One decoder for replay, training and evaluation: the blocks of `birdlive.audio.FileSource` (libsndfile;
    stereo mixed to mono, more channels refused; a file cut short kept up to where its audio ends; soxr HQ
    streaming resampler), concatenated. A file that is unreadable, or damaged mid-way, is an `AudioError`."""
    from birdlive.audio import AudioSourceError, FileSource
    try:
        blocks = [b.samples for b in FileSource(path, sample_rate, block_s=DECODE_BLOCK_S)]
    except AudioSourceError as e:
        raise AudioError(f"cannot decode {e}") from None
    return np.ascontiguousarray(np.concatenate(blocks) if blocks else np.zeros(0, np.float32), dtype=np.float32)


class AudioCache:
    def __init__(self, cache_dir: str | Path | None = None, sample_rate: int = 32000):
        self.dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.sample_rate = int(sample_rate)
        self.decoded = 0                      # files decoded by this object (a cache hit decodes nothing)
        self._maps: dict[str, np.ndarray] = {}   # path → its memory map: a crop per window re-read no header

    def entry(self, path: str | Path) -> Path:
        p = Path(path).resolve()
        try:
            st = p.stat()
        except OSError as e:
            raise AudioError(f"{path}: {e.strerror or e}") from None
        key = hashlib.sha1(f"{p}|{st.st_mtime_ns}|{st.st_size}|{self.sample_rate}|{DECODER}".encode()).hexdigest()[:20]
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in p.stem)[:40]
        return self.dir / str(self.sample_rate) / f"{stem}-{key}.npy"

    def load(self, path: str | Path, mmap: bool = True) -> np.ndarray:
        """The file as mono float32 at the cache's rate (read-only memory map when `mmap`)."""
        if mmap and str(path) in self._maps:
            return self._maps[str(path)]
        x = self._load(path, mmap)
        if mmap:
            self._maps[str(path)] = x
        return x

    def _load(self, path: str | Path, mmap: bool) -> np.ndarray:
        entry = self.entry(path)
        if entry.is_file():
            try:
                return np.load(entry, mmap_mode="r" if mmap else None)
            except (ValueError, OSError):
                pass  # a truncated entry: decode again
        x = decode(path, self.sample_rate)
        self.decoded += 1
        entry.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(entry, durable=False) as tmp:   # parallel workers never read half an entry
            with open(tmp, "wb") as f:                    # (a file, not a name: np.save would add .npy)
                np.save(f, x)
        return np.load(entry, mmap_mode="r") if mmap else x

    def warm(self, paths, progress=None, workers: int = 0) -> list[str]:
        """Decode everything not cached yet, in `workers` processes (0: here); returns the paths that failed."""
        todo = [str(p) for p in paths]
        if workers > 1 and len(todo) > 1:
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(workers) as pool:
                results = pool.map(_warm_one, [(self.dir, self.sample_rate, p) for p in todo], chunksize=8)
                failed = []
                for p, ok in zip(todo, results):
                    failed += [] if ok else [p]
                    if progress is not None:
                        progress()
            return failed
        failed = []
        for p in todo:
            if not _warm_one((self.dir, self.sample_rate, p)):
                failed.append(p)
            if progress is not None:
                progress()
        return failed

    def pack(self, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Many short files as one memory-mapped array and the start of each file in it (len(paths) + 1 offsets).

        For snippet sets (the essential set is 12,000 files): one mapping that DataLoader workers share through
        the page cache, where a dict of decoded arrays per worker held a copy each (350 MB a worker), and 12,000
        memory maps would hold 12,000 file descriptors. Keyed by the entries of all files, so any edit repacks."""
        entries = [self.entry(p) for p in paths]
        key = hashlib.sha1("|".join(e.name for e in entries).encode()).hexdigest()[:20]
        audio, index = self.dir / str(self.sample_rate) / "packs" / f"{key}.npy", \
            self.dir / str(self.sample_rate) / "packs" / f"{key}.offsets.npy"
        if not (audio.is_file() and index.is_file()):
            parts = [np.asarray(self.load(p, mmap=False), np.float32) for p in paths]
            offsets = np.concatenate([[0], np.cumsum([len(x) for x in parts])]).astype(np.int64)
            audio.parent.mkdir(parents=True, exist_ok=True)
            for target, value in ((audio, np.concatenate(parts) if parts else np.zeros(0, np.float32)),
                                  (index, offsets)):
                with atomic_path(target, durable=False) as tmp, open(tmp, "wb") as f:
                    np.save(f, value)
        return np.load(audio, mmap_mode="r"), np.load(index)


def _warm_one(args) -> bool:
    cache_dir, sample_rate, path = args
    try:
        AudioCache(cache_dir, sample_rate).load(path)
        return True
    except AudioError:
        return False
