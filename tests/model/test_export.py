"""`birdlive export`: the network as an ONNX graph that ONNX Runtime runs as torch does, and the numpy log-mel
that goes with it on the frame grid of the torch frontend."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from birdlive.audio import FileSource
from birdlive.model import load_checkpoint
from birdlive.model.checkpoint import derived_graph_paths, graph_path, save_checkpoint, trunk_graph_paths
from birdlive.model.dsp import LogMel
from birdlive.model.export import export_onnx, window_frames

from tests.common import ROOT, TINY, birdlive

ort = pytest.importorskip("onnxruntime")


@pytest.fixture
def tiny_copy(tmp_path):
    for suffix in (".json", ".safetensors"):
        shutil.copy(TINY.with_name(TINY.name + suffix), tmp_path / f"tiny{suffix}")
    return tmp_path / "tiny"


def test_onnx_graph_computes_what_torch_does(tiny_copy):
    torch.set_num_threads(1)
    model = load_checkpoint(tiny_copy)
    path = export_onnx(model, tiny_copy)
    assert path == graph_path(tiny_copy) and path.name == "tiny.onnx"
    assert not model.training                       # the exporter leaves the network as it found it
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):                            # the batch axis is dynamic
        x = np.random.default_rng(batch).normal(-45, 12, (batch, 1, window_frames(model), model.cfg.n_mels))
        x = x.astype(np.float32)
        framewise, clipwise = session.run(["framewise", "clipwise"], {"logmel": x})
        with torch.no_grad():
            want = model.forward_logmel(torch.from_numpy(x))
        assert framewise.shape == (batch, 50, model.cfg.num_classes)
        np.testing.assert_allclose(framewise, want["framewise"].numpy(), atol=1e-4)
        np.testing.assert_allclose(clipwise, want["clipwise"].numpy(), atol=1e-4)


def test_saving_new_weights_removes_the_stale_graphs(tiny_copy):
    model = load_checkpoint(tiny_copy)
    export_onnx(model, tiny_copy)
    for split in trunk_graph_paths(tiny_copy):      # as a backbone that splits leaves them
        split.write_bytes(b"made from the old weights")
    save_checkpoint(model, tiny_copy)
    assert not any(p.exists() for p in derived_graph_paths(tiny_copy))


def test_a_backbone_whose_windows_miss_the_trunk_grid_is_not_split(tiny_copy):
    """The tiny preset's stem and stages 0-1 stride 8 in time: a 501-frame window's last frame is off that grid,
    so its windows could not share trunk frames; export writes the full graph alone (which the scorer runs)."""
    export_onnx(load_checkpoint(tiny_copy), tiny_copy)
    assert graph_path(tiny_copy).is_file()
    assert not any(p.exists() for p in trunk_graph_paths(tiny_copy))


def test_export_command_writes_the_graph_beside_the_checkpoint(tiny_copy):
    r = birdlive("export", "--model", tiny_copy.with_suffix(".safetensors"))
    assert r.returncode == 0, r.stderr
    assert graph_path(tiny_copy).is_file()


@pytest.mark.parametrize("frames", [1, 1001])     # one frame; several FFT blocks and a part of one
def test_numpy_log_mel_equals_the_torch_frontend_on_real_audio(frames):
    """The lean runtime's frontend: the frames of `LogMelFrontend.frames` within 1e-3 dB on a real recording (and
    its silent stretches at the floor)."""
    model = load_checkpoint(TINY)
    cfg = model.cfg
    source = FileSource(ROOT / "recordings" / "XC737279.mp3", cfg.sample_rate, block_s=10.0)
    wave = next(iter(source)).samples
    source.close()
    wave = np.concatenate([wave, np.zeros(cfg.sample_rate, np.float32)])   # digital silence: the floor
    samples = wave[-cfg.n_fft - (frames - 1) * cfg.hop_length:]    # the end: the recording, then the silence
    got = LogMel(cfg).frames(samples)
    with torch.no_grad():
        want = model.frontend.frames(torch.from_numpy(samples)[None])[0, 0].numpy()
    assert got.shape == want.shape == (frames, cfg.n_mels)
    assert np.abs(got - want).max() < 1e-3
    assert got.min() == pytest.approx(cfg.logmel_floor_db)


def test_numpy_log_mel_of_many_chunks_is_each_chunks_log_mel():
    """`frames_of` (every live stream's new audio through one FFT per block) gives each chunk its own frames,
    across block boundaries and for chunks of a single frame."""
    cfg = load_checkpoint(TINY).cfg
    rng = np.random.default_rng(7)
    logmel = LogMel(cfg)
    chunks = [(0.1 * rng.standard_normal(cfg.n_fft + (t - 1) * cfg.hop_length)).astype(np.float32)
              for t in (1, 130, 10, 1, LogMel.BLOCK, 300)]
    got = logmel.frames_of(chunks)
    assert [g.shape for g in got] == [(len(c) // cfg.hop_length - 2, cfg.n_mels) for c in chunks]
    for g, c in zip(got, chunks):
        np.testing.assert_allclose(g, logmel.frames(c), atol=1e-4)
    assert logmel.frames_of([]) == []
