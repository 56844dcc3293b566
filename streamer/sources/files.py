"""Recordings as the runner's sources: each opened in its own thread through the package's decoder
(`birdlive.audio.FileSource`), so a file that cannot be read fails only its own stream."""
from __future__ import annotations

from typing import Iterable

from birdlive.audio import FileSource

from ..core.runner import SourceSpec


def file_specs(paths: Iterable, sample_rate: int, realtime: bool = False,
               channel: int | None = None) -> list[SourceSpec]:
    """Recordings as sources, opened in their own threads (a file that cannot be read fails only itself).
    Fast replay reads 16 s blocks: a block's windows go through the network as one batch."""
    def opener(path):
        return lambda: FileSource(path, sample_rate, block_s=1.0 if realtime else 16.0, realtime=realtime,
                                  channel=channel)
    return [SourceSpec(str(p), opener(p)) for p in paths]
