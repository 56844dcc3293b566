"""The scorer contract and the choice of backend.

A scorer is the shared, per-run side of every stream: the log-mel of each stream's new audio, then the network
over the ready windows of all streams in batches. Two backends keep it:

- `OnnxScorer` (onnx_scorer.py): ONNX Runtime on the CPU with the checkpoint's graph (STEM.onnx, made by
  `birdlive export`) and the numpy log-mel — the lean runtime, no torch imported;
- `SharedScorer` (torch_scorer.py): torch, on CUDA or the CPU — needs the torch extra.

`--compute auto` takes CUDA where torch sees a GPU, else ONNX Runtime where the checkpoint has a graph, else torch
on the CPU. ONNX Runtime runs the int8 graph (STEM.int8.onnx, `birdlive export --int8`) where there is one, else
the float one; `--compute onnx-float` asks for the float graph. Nothing here imports torch unless the torch backend
is chosen.
"""
from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from birdlive.errors import TORCH_EXTRA, MissingExtra, needs_torch
from birdlive.model.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, graph_path, int8_graph_path
from birdlive.model.config import ModelConfig

if TYPE_CHECKING:
    from .onnx_scorer import OnnxScorer
    from .torch_scorer import SharedScorer

COMPUTE_CHOICES = ("auto, onnx (ONNX Runtime on the CPU: the int8 graph where there is one), onnx-float (the float "
                   "graph), cpu (torch), cuda, cuda:N")
ONNX_BACKENDS = ("onnx", "onnx-float")


@runtime_checkable
class Scorer(Protocol):
    """What the runner needs of a scorer (`SharedScorer`, `OnnxScorer`)."""

    windows_scored: int

    @property
    def cfg(self) -> ModelConfig: ...

    def logmel(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        """Samples with their context (`StreamState.frontend_chunk`) → (frames, n_mels) raw log-mel each."""
        ...

    def score(self, windows: list[np.ndarray], origins: list[tuple[object, int]] | None = None
              ) -> list[np.ndarray]:
        """(frames, n_mels) log-mel windows → framewise probabilities (n_out, K) each. `origins`, where given:
        each window's stream (a key that lives as long as the stream: its `StreamState`) and first log-mel frame
        in it, in order within each stream, so that a scorer may reuse work between a stream's overlapping
        windows (`OnnxScorer`'s shared trunk); the scores are the same either way."""
        ...


def installed(name: str) -> bool:
    """Whether a package can be imported, without importing it."""
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _nvidia_driver() -> bool:
    """A cheap look for an NVIDIA GPU before importing torch to ask (about 1.5 s): without a driver, no CUDA."""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def pick_backend(checkpoint: str | Path, compute: str = "auto") -> str:
    """`onnx`, `onnx-float`, or the torch device (`cpu`, `cuda`, `cuda:1`) that `compute` means for this
    checkpoint (`onnx_graph` says which graph an ONNX backend runs)."""
    graph = graph_path(checkpoint)
    if compute in ONNX_BACKENDS:
        if not graph.is_file():
            raise CheckpointError(f"no ONNX graph at {graph}: make it with `birdlive export --model {checkpoint}`")
        if not installed("onnxruntime"):
            raise MissingExtra(f"--compute {compute} needs onnxruntime: pip install onnxruntime")
        return compute
    if compute == "auto":
        if _nvidia_driver() and installed("torch"):
            import torch
            if torch.cuda.is_available():
                return "cuda"
        if graph.is_file() and installed("onnxruntime"):
            return "onnx"
        if installed("torch"):
            return "cpu"
        raise MissingExtra(f"{checkpoint} has no ONNX graph ({graph.name}) and torch is not installed: make one "
                           f"with `birdlive export` where torch is, or {TORCH_EXTRA}")
    if compute != "cpu" and not compute.startswith("cuda"):
        raise CheckpointError(f"--compute {compute}: not one of {COMPUTE_CHOICES}")
    needs_torch(f"--compute {compute}")
    return compute


def onnx_graph(checkpoint: str | Path, backend: str = "onnx") -> Path:
    """The graph an ONNX backend runs: STEM.int8.onnx where it exists (`onnx`), else (and for `onnx-float`)
    STEM.onnx."""
    int8 = int8_graph_path(checkpoint)
    return int8 if backend == "onnx" and int8.is_file() else graph_path(checkpoint)


def load_scorer(checkpoint: str | Path | None = None, compute: str = "auto", threads: int | None = None
                ) -> OnnxScorer | SharedScorer:
    """The scorer for a checkpoint (default: the embedded model) on the backend `compute` picks (`pick_backend`).
    `threads`: the cores it may use (analyze's workers share them out); default all."""
    path = checkpoint or DEFAULT_CHECKPOINT
    backend = pick_backend(path, compute)
    if backend in ONNX_BACKENDS:
        from .onnx_scorer import OnnxScorer
        return OnnxScorer.load(path, onnx_graph(path, backend), threads=threads)
    import torch

    from birdlive.model.checkpoint import load_checkpoint, pick_device

    from .torch_scorer import SharedScorer
    if threads:
        torch.set_num_threads(threads)
    return SharedScorer(load_checkpoint(path, device=pick_device(backend)))
