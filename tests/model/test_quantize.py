"""`birdlive export --int8`: the int8 graph (STEM.int8.onnx) — made from real calibration audio, the same bytes
every time, refused in one line on bad input — and the lean runtime runs it where it exists, within a stated
tolerance of the float graph on a real recording, with the same events."""
from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from birdlive.model import DEFAULT_CHECKPOINT
from birdlive.model.checkpoint import graph_path, int8_graph_path
from birdlive.model.quantize import FLOAT_BACKBONE, CalibrationError, export_int8
from birdlive.streamer import load_scorer
from birdlive.streamer.core.scorer import onnx_graph, pick_backend

from tests.common import ROOT, TINY, birdlive

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
REAL = ROOT / "recordings" / "XC737279.mp3"
RECORDINGS = ROOT / "recordings"          # two real recordings (XC737279.mp3, synthetic_calls.flac): 8 windows
# The embedded model on XC737279 (measured: framewise scores of int8 within 0.08 of float's, mean 1e-4; events the
# same species, onsets and offsets within 0.1 s)
TRACK_TOLERANCE = 0.1


def tiny_copy(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".json", ".safetensors"):
        shutil.copy(TINY.with_name(TINY.name + suffix), folder / f"tiny{suffix}")
    return folder / "tiny"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The tiny checkpoint after `birdlive export --int8 --calibrate recordings/` (one process for the module)."""
    tiny = tiny_copy(tmp_path_factory.mktemp("int8"))
    r = birdlive("export", "--model", tiny, "--int8", "--calibrate", RECORDINGS)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("wrote") == 2
    return tiny


def one_error_line(r) -> str:
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    return r.stderr


def test_the_int8_graph_quantises_the_backbone_but_its_first_stages(exported):
    nodes = onnx.load(str(int8_graph_path(exported))).graph.node
    ops = Counter(n.op_type for n in nodes)
    assert ops["QuantizeLinear"] and ops["DequantizeLinear"] and ops["GRU"] == 1
    quantised = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
    convs = [n for n in nodes if n.op_type == "Conv"]
    int8 = [n for n in convs if n.name.startswith("/backbone/") and not n.name.startswith(FLOAT_BACKBONE)]
    kept = [n for n in convs if n not in int8]      # the stem, the first two stages, the head
    assert len(int8) >= 10 and any(n.name.startswith("/backbone/blocks.") for n in kept)
    assert any(n.name.startswith("/head/") for n in kept)
    assert all(n.input[0] in quantised for n in int8)
    assert not any(n.input[0] in quantised or n.input[1] in quantised for n in kept)


def test_the_same_calibration_audio_gives_the_same_bytes(exported, tmp_path):
    """In another folder and another process state: the module's export ran in a child process with numpy's BLAS
    on every core, this one has it on one core (as any process that has loaded a scorer does, `OnnxScorer`), which
    rounds the log-mel's matmul otherwise."""
    from threadpoolctl import threadpool_limits
    again = tiny_copy(tmp_path)
    shutil.copy(graph_path(exported), graph_path(again))
    with threadpool_limits(1, user_api="blas"):
        assert export_int8(again, RECORDINGS) == int8_graph_path(again)
    assert int8_graph_path(again).read_bytes() == int8_graph_path(exported).read_bytes()
    # a new float graph: the int8 one made from the old one goes (`export --int8` makes it anew)
    import torch

    from birdlive.model import load_checkpoint
    from birdlive.model.export import export_onnx
    torch.set_num_threads(1)
    export_onnx(load_checkpoint(again), again)
    assert graph_path(again).is_file() and not int8_graph_path(again).exists()


def test_the_onnx_backend_runs_the_int8_graph_where_there_is_one(exported, tmp_path):
    assert pick_backend(exported, "onnx-float") == "onnx-float"
    assert onnx_graph(exported, "onnx") == int8_graph_path(exported)
    assert load_scorer(exported, "onnx", threads=1).graph == int8_graph_path(exported)
    assert load_scorer(exported, "onnx-float", threads=1).graph == graph_path(exported)
    if pick_backend(exported, "auto") == "onnx":            # no GPU: auto is ONNX Runtime, the int8 graph
        assert load_scorer(exported, "auto", threads=1).graph == int8_graph_path(exported)
    float_only = tiny_copy(tmp_path)
    shutil.copy(graph_path(exported), graph_path(float_only))
    assert load_scorer(float_only, "onnx", threads=1).graph == graph_path(float_only)


@pytest.mark.parametrize("calibrate, says", [
    ("missing-folder", "no such file or folder"),
    ("empty", "no audio files"),
    ("list.txt", "listed file(s) missing"),
    ("broken.wav", "cannot decode"),
    ("short.wav", "shorter than"),
])
def test_bad_calibration_input_is_refused(exported, tmp_path, calibrate, says):
    import soundfile as sf
    (tmp_path / "empty").mkdir()
    (tmp_path / "list.txt").write_text("# a list\nnot-there.flac\n")
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wave file")
    sf.write(tmp_path / "short.wav", np.zeros(16000, np.float32), 32000)
    model = tiny_copy(tmp_path / "model")
    shutil.copy(graph_path(exported), graph_path(model))
    with pytest.raises(CalibrationError, match=re.escape(says)):
        export_int8(model, tmp_path / calibrate)
    assert not int8_graph_path(model).exists()


def test_the_command_refuses_in_one_line(tmp_path):
    tiny = tiny_copy(tmp_path)
    (tmp_path / "empty").mkdir()
    assert "no audio files" in one_error_line(birdlive("export", "--model", tiny, "--int8", "--calibrate",
                                                       tmp_path / "empty"))
    assert "--calibrate is for --int8" in one_error_line(birdlive("export", "--model", tiny, "--calibrate",
                                                                  RECORDINGS))
    assert "--int8 needs --calibrate" in one_error_line(birdlive("export", "--model", tiny, "--int8"))
    assert not int8_graph_path(tiny).exists()


@pytest.mark.skipif(not int8_graph_path(DEFAULT_CHECKPOINT).is_file(), reason="the default model ships no int8 graph")
def test_the_embedded_int8_graph_scores_as_float_does_on_a_real_recording():
    """Within `TRACK_TOLERANCE` of the float graph, frame by frame, and the same events to 0.1 s."""
    from tests.core.test_onnx_scorer import replay
    assert pick_backend(DEFAULT_CHECKPOINT, "auto") in ("onnx", "cuda")
    int8, float_ = load_scorer(DEFAULT_CHECKPOINT, "onnx", threads=1), load_scorer(DEFAULT_CHECKPOINT, "onnx-float",
                                                                                    threads=1)
    assert int8.graph == int8_graph_path(DEFAULT_CHECKPOINT) and float_.graph == graph_path(DEFAULT_CHECKPOINT)
    a, b = replay(int8, REAL), replay(float_, REAL)
    assert a.track.shape == b.track.shape and len(a.track) > 400
    diff = np.abs(a.track - b.track)
    assert diff.max() < TRACK_TOLERANCE and diff.mean() < 1e-3
    assert len(a.events) >= 3
    assert [e.species for e in a.events] == [e.species for e in b.events]
    for x, y in zip(a.events, b.events):
        assert abs(x.onset_s - y.onset_s) <= 0.1 and abs(x.offset_s - y.offset_s) <= 0.1

