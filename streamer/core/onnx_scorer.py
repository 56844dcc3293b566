"""OnnxScorer: the lean runtime's scorer — numpy log-mel (`birdlive.model.dsp.LogMel`) and the checkpoint's ONNX
graph (`birdlive export`) on ONNX Runtime's CPU provider. Imports no torch; keeps the `Scorer` contract
(scorer.py) as `SharedScorer` does, and scores within 1e-3 of it (a test, on real recordings)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from birdlive.malloc import fix_mmap_threshold
from birdlive.model.checkpoint import CheckpointError, graph_path, load_config
from birdlive.model.config import ModelConfig
from birdlive.model.dsp import LogMel


class OnnxScorer:
    """One ONNX Runtime session, batches drawn from all streams (as `SharedScorer`)."""

    def __init__(self, cfg: ModelConfig, graph: Path, threads: int | None = None, batch_size: int = 16):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3          # errors only: the library logs, the CLI decides what the user sees
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Without the arena a replay holds 100 MiB less (measured: 330 → 97 MiB after a batch of 16 windows, one
        # thread) for about the same speed: the lean runtime's memory goal is 250 MiB.
        options.enable_cpu_mem_arena = False
        # Idle pool threads wait without spinning: between runs the cores belong to the log-mel, the stitching and
        # the other streams (measured, 48 live streams on a busy 2-core machine: 7.8 → 6.4 CPU s per 10 s).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        fix_mmap_threshold()                    # …and glibc then returns the freed tensors (birdlive.malloc)
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        except Exception as e:      # onnxruntime raises its own Fail/InvalidGraph/… types for a bad file
            raise CheckpointError(f"{graph} is not a usable ONNX graph: {str(e).splitlines()[0]}") from None
        (logmel,), outputs = self.session.get_inputs(), {o.name: o.shape for o in self.session.get_outputs()}
        self.input = logmel.name
        frames = cfg.window_samples // cfg.hop_length + 1
        if (list(logmel.shape[1:]) != [1, frames, cfg.n_mels] or "framewise" not in outputs
                or outputs.get("clipwise", [None])[-1] != cfg.num_classes):
            raise CheckpointError(f"{graph} does not match its checkpoint's config ({cfg.num_classes} species, "
                                  f"{frames} × {cfg.n_mels} log-mel windows): make it again with `birdlive export`")
        self._cfg = cfg
        self.graph = Path(graph)            # STEM.onnx or STEM.int8.onnx (`scorer.onnx_graph`)
        self.frontend = LogMel(cfg)
        # numpy's OpenBLAS (the log-mel's mel matmul) on one thread: with ONNX Runtime on the cores its threads
        # only spin, and on a busy machine a 30-frame matmul took 40 ms instead of 0.1 (CPU 2.3 ms instead of 0.2).
        threadpool_limits(1, user_api="blas")
        self.batch_size = batch_size        # as the torch scorer on a CPU: past 16 windows buys nothing
        self.windows_scored = 0

    @classmethod
    def load(cls, checkpoint: str | Path, graph: Path | None = None, threads: int | None = None) -> "OnnxScorer":
        """The checkpoint's `graph` (default its float one, STEM.onnx; `scorer.onnx_graph` picks for a backend)."""
        return cls(load_config(checkpoint), graph or graph_path(checkpoint), threads=threads)

    @property
    def cfg(self) -> ModelConfig:
        return self._cfg

    def logmel(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        return self.frontend.frames_of(chunks)     # one FFT per block of frames, not one per stream

    def score(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for i in range(0, len(windows), self.batch_size):
            batch = np.stack(windows[i:i + self.batch_size])[:, None].astype(np.float32, copy=False)
            (framewise,) = self.session.run(["framewise"], {self.input: batch})
            out.extend(framewise)
        self.windows_scored += len(windows)
        return out
