"""The two scorer backends agree: ONNX Runtime (the lean runtime) scores real recordings within 1e-3 of torch and
finds the same events. (The golden replays hold the whole command's outputs to the torch snapshots too:
tests/golden.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from birdlive.model import DEFAULT_CHECKPOINT
from birdlive.model.checkpoint import graph_path
from birdlive.streamer import OnnxScorer, Scorer, SharedScorer, file_specs, load_scorer, make_runner
from birdlive.streamer.core.scorer import pick_backend

from tests.common import ROOT, TINY

pytest.importorskip("onnxruntime")
REAL = ROOT / "recordings" / "XC737279.mp3"


class Collect:
    """Events and the stitched score track of one stream."""

    def __init__(self):
        self.events, self.parts = [], []

    def on_event(self, e, audio):
        self.events.append(e)

    def on_status(self, status):
        pass

    def on_scores(self, source, first_frame, frames, frame_s):
        self.parts.append((first_frame, frames))

    def close(self):
        pass

    @property
    def track(self) -> np.ndarray:
        assert [f for f, _ in self.parts] == list(np.cumsum([0] + [len(p) for _, p in self.parts])[:-1])
        return np.concatenate([p for _, p in self.parts])


def replay(scorer: Scorer, path) -> Collect:
    got = Collect()
    make_runner(scorer, [got], score_sinks=[got]).run(file_specs([path], scorer.cfg.sample_rate))
    return got


@pytest.fixture(scope="module")
def both():
    torch.set_num_threads(1)
    return load_scorer(DEFAULT_CHECKPOINT, "onnx-float", threads=1), load_scorer(DEFAULT_CHECKPOINT, "cpu")


def test_the_embedded_model_ships_its_graph():
    import onnx
    assert graph_path(DEFAULT_CHECKPOINT).is_file()
    ops = {n.op_type for n in onnx.load(str(graph_path(DEFAULT_CHECKPOINT))).graph.node}
    assert "GRU" in ops and "Pad" not in ops         # its "same" paddings are the convolutions' own (export.py)
    assert pick_backend(DEFAULT_CHECKPOINT, "auto") in ("onnx", "cuda")
    assert pick_backend(TINY, "auto") in ("cpu", "cuda")        # no graph: torch, which is installed here


def test_onnx_scores_and_events_equal_torchs_on_a_real_recording(both):
    lean, full = both
    assert isinstance(lean, OnnxScorer) and isinstance(full, SharedScorer)
    a, b = replay(lean, REAL), replay(full, REAL)
    assert a.track.shape == b.track.shape and len(a.track) > 400
    assert np.abs(a.track - b.track).max() < 1e-3
    assert len(a.events) >= 2                 # something to compare: the demo's warbler, twice
    assert [(e.species, e.onset_s, e.offset_s) for e in a.events] == \
           [(e.species, e.onset_s, e.offset_s) for e in b.events]
    for x, y in zip(a.events, b.events):
        assert abs(x.peak - y.peak) < 1e-3 and abs(x.mean - y.mean) < 1e-3


def test_the_numpy_frontend_feeds_the_same_windows(both):
    lean, full = both
    rng = np.random.default_rng(0)
    chunks = [0.1 * rng.standard_normal(1024 + 320 * n).astype(np.float32) for n in (0, 99, 99, 250)]
    for x, y in zip(lean.logmel(chunks), full.logmel(chunks)):
        assert x.shape == y.shape
        assert np.abs(x - y).max() < 1e-3


def test_a_graph_of_another_checkpoint_is_refused(tmp_path):
    import shutil

    from birdlive.model.checkpoint import CheckpointError
    for suffix in (".json", ".safetensors"):
        shutil.copy(TINY.with_name(TINY.name + suffix), tmp_path / f"tiny{suffix}")
    shutil.copy(graph_path(DEFAULT_CHECKPOINT), tmp_path / "tiny.onnx")      # 190 species, not 4
    with pytest.raises(CheckpointError, match="does not match"):
        load_scorer(tmp_path / "tiny", "onnx")
    (tmp_path / "tiny.onnx").write_bytes(b"not a graph")
    with pytest.raises(CheckpointError, match="not a usable ONNX graph"):
        load_scorer(tmp_path / "tiny", "onnx")


def test_onnx_without_a_graph_says_how_to_make_one():
    from birdlive.model.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="birdlive export"):
        load_scorer(TINY, "onnx")


def test_the_lean_scorer_keeps_numpy_blas_on_one_thread():
    """ONNX Runtime has the cores: numpy's BLAS threads (the log-mel's mel matmul) would only spin beside it, at
    10× the CPU per small matmul on a busy machine. The limit holds in the process that made the scorer."""
    from threadpoolctl import threadpool_info, threadpool_limits
    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    if not blas:
        pytest.skip("numpy is built without a BLAS library that threadpoolctl sees")
    with threadpool_limits(2, user_api="blas"):
        OnnxScorer.load(DEFAULT_CHECKPOINT, threads=1)
        assert {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"} == {1}
