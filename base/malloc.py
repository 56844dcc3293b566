"""One process-wide setting of glibc's allocator for the lean runtime (`OnnxScorer`).

ONNX Runtime runs without its memory arena (the arena held 230 MiB more), so every intermediate tensor of a batch
is a plain malloc of a few MiB, freed when the batch is done. glibc serves blocks above its mmap threshold with
their own mapping, returned on free, but raises the threshold to the size of each such block freed (the "dynamic
threshold"): after the first batch the tensors come from the heap, where they fragment it and stay resident.
A fixed threshold stops that. Measured on a 2-core x86-64 machine, `replay` of 120 s of 48 kHz audio: peak RSS
285 → 226 MiB with 4 MiB (210 MiB with glibc's initial 128 KiB, at more mmap calls), the events identical and
the speed within the machine's noise. Elsewhere (musl, macOS, Windows) nothing is done.
"""
from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3           # glibc's malloc.h
MMAP_THRESHOLD = 4 << 20


def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> bool:
    """Serve blocks above `nbytes` with their own mappings, returned to the system on free, for the rest of the
    process (see the module's note). True where glibc took it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):       # a C library without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, nbytes))
    log.debug("mallopt(M_MMAP_THRESHOLD, %d): %s", nbytes, "set" if done else "refused")
    return done
