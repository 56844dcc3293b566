"""OnnxScorer: the lean runtime's scorer — numpy log-mel (`birdlive.model.dsp.LogMel`) and the checkpoint's ONNX
graph (`birdlive export`) on ONNX Runtime's CPU provider. Imports no torch; keeps the `Scorer` contract
(scorer.py) as `SharedScorer` does, and scores within 1e-3 of it (a test, on real recordings)."""
from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from birdlive.malloc import fix_mmap_threshold
from birdlive.model.checkpoint import CheckpointError, graph_path, load_config, trunk_graph_paths
from birdlive.model.config import ModelConfig
from birdlive.model.dsp import LogMel

from .trunk import SharedTrunk

log = logging.getLogger(__name__)


_arena_taken: bool | None = None       # None: not asked yet
_arena_lock = threading.Lock()


def shared_arena() -> bool:
    """One ONNX Runtime memory arena for every session of the process (registered once; True where it is).

    Each session's own arena held 100 MiB more than none (330 → 97 MiB after a batch of 16 windows, one thread),
    so the lean runtime ran without: then every intermediate tensor is a fresh allocation, its pages faulted in
    anew on every run, and a third of a replay's CPU was the kernel's. One arena that the trunk, rest and full
    graphs share keeps what one run needs and reuses it (measured on the 2-core machine, a training run on the
    other core: 2 h replay at 32 kHz 48.4 → 40.1 s wall, kernel CPU 19.1 → 6.5 s, peak RSS 156 → 168 MiB;
    `analyze` of 1 h 25.0 → 22.5 s, 196 → 199 MiB)."""
    global _arena_taken
    import onnxruntime as ort
    with _arena_lock:
        if _arena_taken is None:
            try:
                memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                ort.create_and_register_allocator(memory, ort.OrtArenaCfg({"arena_extend_strategy": 0}))
                _arena_taken = True
            except Exception:       # noqa: BLE001 - an ONNX Runtime without it: sessions run without an arena
                log.debug("ONNX Runtime took no shared arena", exc_info=True)
                _arena_taken = False
        return _arena_taken


class OnnxScorer:
    """ONNX Runtime sessions, batches drawn from all streams (as `SharedScorer`). With the checkpoint's split graph
    (STEM.trunk.onnx + STEM.rest.onnx, `split`) a stream's overlapping windows share the backbone's first stages
    (`SharedTrunk`: the same scores, a long replay 1.3× less CPU); the full graph serves windows that cannot share."""

    def __init__(self, cfg: ModelConfig, graph: Path, threads: int | None = None, batch_size: int = 16,
                 split: tuple[Path, Path] | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3          # errors only: the library logs, the CLI decides what the user sees
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if shared_arena():
            options.add_session_config_entry("session.use_env_allocators", "1")
        else:
            options.enable_cpu_mem_arena = False
        # Idle pool threads wait without spinning: between runs the cores belong to the log-mel, the stitching and
        # the other streams (measured, 48 live streams on a busy 2-core machine: 7.8 → 6.4 CPU s per 10 s).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        fix_mmap_threshold()                    # …and glibc then returns the freed tensors (birdlive.malloc)
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self._options = options
        self._cfg = cfg
        self.graph = Path(graph)            # STEM.onnx or STEM.int8.onnx (`scorer.onnx_graph`)
        self.frames = cfg.window_samples // cfg.hop_length + 1
        self.batch_size = batch_size        # as the torch scorer on a CPU: past 16 windows buys nothing
        self.trunk = self._shared_trunk(split) if split else None
        if self.trunk is None:
            self.session                    # noqa: B018 - made now: a bad graph fails at load, not mid-stream
        self.frontend = LogMel(cfg)
        # numpy's OpenBLAS (the log-mel's mel matmul) on one thread: with ONNX Runtime on the cores its threads
        # only spin, and on a busy machine a 30-frame matmul took 40 ms instead of 0.1 (CPU 2.3 ms instead of 0.2).
        threadpool_limits(1, user_api="blas")
        self.windows_scored = 0

    def _open(self, graph: Path):
        import onnxruntime as ort
        try:
            return ort.InferenceSession(str(graph), self._options, providers=["CPUExecutionProvider"])
        except Exception as e:      # onnxruntime raises its own Fail/InvalidGraph/… types for a bad file
            raise CheckpointError(f"{graph} is not a usable ONNX graph: {str(e).splitlines()[0]}") from None

    def _mismatch(self, graph: Path) -> CheckpointError:
        cfg = self._cfg
        return CheckpointError(f"{graph} does not match its checkpoint's config ({cfg.num_classes} species, "
                               f"{self.frames} × {cfg.n_mels} log-mel windows): make it again with `birdlive export`")

    @functools.cached_property
    def session(self):
        """The full graph (made when first needed where the split graph serves)."""
        session = self._open(self.graph)
        (logmel,), outputs = session.get_inputs(), {o.name: o.shape for o in session.get_outputs()}
        if (list(logmel.shape[1:]) != [1, self.frames, self._cfg.n_mels] or "framewise" not in outputs
                or outputs.get("clipwise", [None])[-1] != self._cfg.num_classes):
            raise self._mismatch(self.graph)
        self.input = logmel.name
        return session

    def _shared_trunk(self, split: tuple[Path, Path]) -> SharedTrunk:
        trunk, rest = (self._open(p) for p in split)
        outputs = {o.name: o.shape for o in rest.get_outputs()}
        meta = trunk.get_modelmeta().custom_metadata_map
        if (trunk.get_inputs()[0].shape[-1] != self._cfg.n_mels or "framewise" not in outputs
                or outputs.get("clipwise", [None])[-1] != self._cfg.num_classes or not {"stride", "edge"} <= set(meta)
                or rest.get_inputs()[0].shape[2] != (self.frames - 1) // int(meta["stride"]) + 1):
            raise self._mismatch(split[0])
        return SharedTrunk(trunk, rest, self.frames, self.batch_size)

    @classmethod
    def load(cls, checkpoint: str | Path, graph: Path | None = None, threads: int | None = None) -> "OnnxScorer":
        """The checkpoint's `graph` (default its float one, STEM.onnx; `scorer.onnx_graph` picks for a backend),
        with its split graph where that is the float graph and `birdlive export` split it."""
        graph = graph or graph_path(checkpoint)
        split = trunk_graph_paths(checkpoint)
        shares = graph == graph_path(checkpoint) and all(p.is_file() for p in split)
        return cls(load_config(checkpoint), graph, threads=threads, split=split if shares else None)

    @property
    def cfg(self) -> ModelConfig:
        return self._cfg

    def logmel(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        return self.frontend.frames_of(chunks)     # one FFT per block of frames, not one per stream

    def score(self, windows: list[np.ndarray], origins: list[tuple[object, int]] | None = None
              ) -> list[np.ndarray]:
        """As `Scorer.score`: windows with their `origins` share their stream's trunk, the others (and all
        without a split graph) go through the full graph."""
        out: list[np.ndarray | None] = [None] * len(windows)
        trunk = self.trunk
        if trunk is not None and origins:
            shared = [i for i, (_, f) in enumerate(origins) if trunk.shares(f)]
            scores = trunk.score([windows[i] for i in shared], [origins[i][0] for i in shared],
                                 [origins[i][1] for i in shared]) if shared else []
            for i, framewise in zip(shared, scores):
                out[i] = framewise
        alone = [i for i, o in enumerate(out) if o is None]
        for k in range(0, len(alone), self.batch_size):
            part = alone[k:k + self.batch_size]
            batch = np.stack([windows[i] for i in part])[:, None].astype(np.float32, copy=False)
            (framewise,) = self.session.run(["framewise"], {self.input: batch})
            for i, f in zip(part, framewise):
                out[i] = f
        self.windows_scored += len(windows)
        return out  # type: ignore[return-value]
