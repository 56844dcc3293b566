"""A checkpoint's graph cut in two, so that overlapping windows share the backbone's first stages.

Replay and live streams score 5 s windows every second: each 10 ms log-mel frame goes through the network in five
windows. The backbone's stem and first stages ("the trunk") are convolutions only, local in time, and about half
of the network's time, so a stream's trunk frames can be computed once and each window's rest of the network run on
its slice of them (`birdlive.streamer.core.trunk`). `split_graph` writes, beside STEM.onnx:

- STEM.trunk.onnx: log-mel (batch, 1, frames, n_mels) → trunk features (batch, C, trunk frames, F'), with a free
  time axis: the frozen "same" paddings (`birdlive.model.export`) are constants, right for any length ≡ 1 mod
  stride, so one graph serves a window's 501 frames, a stream's stretch of new frames and a window's edges;
- STEM.rest.onnx: one window's trunk features → `framewise` and `clipwise`, as STEM.onnx gives them.

The cut's time stride and receptive field are measured on the graph (not assumed) and stored in the trunk graph's
metadata: `stride` (log-mel frames per trunk frame) and `edge` (trunk frames at each end of a window whose
receptive field reaches past the window, into the zero padding: those are recomputed per window). Only graphs whose
split gives the full graph's scores back (checked here, on random windows) are split. Needs `onnx` (the torch
extra), not torch.
"""
from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

import numpy as np

from birdlive.files import atomic_path

from .checkpoint import graph_path, trunk_graph_paths

log = logging.getLogger(__name__)

CUT_AFTER = "/backbone/blocks.1/"     # timm's EfficientNet/MobileNetV3 backbones: the stem and stages 0-1
TOLERANCE = 1e-4                      # split vs full graph, framewise probabilities on random windows


def cut_tensor(graph) -> str | None:
    """The output of the last node under CUT_AFTER (the trunk's output), or None for a backbone without it."""
    names = [n.output[0] for n in graph.node if n.name.startswith(CUT_AFTER)]
    return names[-1] if names else None


def _session(path: Path):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _measure_cut(trunk_path: Path, frames: int, n_mels: int) -> tuple[int, int] | None:
    """(stride, edge) of the free-axis trunk: stride from the lengths of its outputs, the receptive field's radius
    from which output frames one changed input frame reaches. None where a window's ends are not both on the
    trunk's grid (windows could not share frames)."""
    sess = _session(trunk_path)
    name = sess.get_inputs()[0].name
    rng = np.random.default_rng(1)
    x = rng.normal(-40.0, 10.0, (1, 1, frames, n_mels)).astype(np.float32)
    (out,) = sess.run(None, {name: x})
    stride = (frames - 1) // (out.shape[2] - 1)
    if (out.shape[2] - 1) * stride != frames - 1:
        return None
    mid, radius = (out.shape[2] // 2) * stride, 0
    for _ in range(3):          # a few changes, so that no clipped activation hides how far one reaches
        y = x.copy()
        y[:, :, mid] += rng.normal(0.0, 20.0, n_mels).astype(np.float32)
        (moved,) = sess.run(None, {name: y})
        reached = np.flatnonzero(np.abs(moved - out).max(axis=(0, 1, 3)) > 0)
        radius = max(radius, *(abs(int(j) * stride - mid) for j in reached))
    return stride, math.ceil((radius + stride - 1) / stride)    # the radius known to a stride: rounded up


def split_graph(checkpoint: str | Path) -> tuple[Path, Path] | None:
    """Write STEM.trunk.onnx and STEM.rest.onnx from STEM.onnx (see the module's docstring); None, and nothing
    written, where the backbone has no cut or the split does not give the full graph's scores."""
    import onnx

    full = graph_path(checkpoint)
    trunk_out, rest_out = trunk_graph_paths(checkpoint)
    for p in (trunk_out, rest_out):
        p.unlink(missing_ok=True)
    model = onnx.load(str(full))
    cut = cut_tensor(model.graph)
    if cut is None:
        return None
    logmel = model.graph.input[0]
    frames, n_mels = (d.dim_value for d in logmel.type.tensor_type.shape.dim[2:4])
    outputs = [o.name for o in model.graph.output]
    with tempfile.TemporaryDirectory() as tmp:
        trunk, rest = Path(tmp) / "trunk.onnx", Path(tmp) / "rest.onnx"
        onnx.utils.extract_model(str(full), str(trunk), [logmel.name], [cut])
        onnx.utils.extract_model(str(full), str(rest), [cut], outputs)
        g = onnx.load(str(trunk))
        g.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "frames"
        g.graph.output[0].type.tensor_type.shape.dim[2].dim_param = "trunk_frames"
        del g.graph.value_info[:]       # the fixed lengths inferred inside
        onnx.save(g, str(trunk))
        cut_shape = _measure_cut(trunk, frames, n_mels)
        if cut_shape is None:
            log.info("%s: a window's ends are not on the trunk's time grid; not split", full)
            return None
        if not _same_scores(full, trunk, rest):
            log.warning("%s: the split graph does not give the full graph's scores; not split", full)
            return None
        stride, edge = cut_shape
        for key, value in {"stride": stride, "edge": edge}.items():     # onto the graph saved above
            g.metadata_props.add(key=key, value=str(value))
        with atomic_path(trunk_out) as t:
            onnx.save(g, str(t))
        with atomic_path(rest_out) as t:
            t.write_bytes(rest.read_bytes())
    return trunk_out, rest_out


def _same_scores(full: Path, trunk: Path, rest: Path) -> bool:
    sessions = [_session(p) for p in (full, trunk, rest)]
    name = sessions[0].get_inputs()[0].name
    shape = [d if isinstance(d, int) else 3 for d in sessions[0].get_inputs()[0].shape]
    x = np.random.default_rng(2).normal(-40.0, 10.0, shape).astype(np.float32)
    want = sessions[0].run(None, {name: x})
    (features,) = sessions[1].run(None, {sessions[1].get_inputs()[0].name: x})
    got = sessions[2].run(None, {sessions[2].get_inputs()[0].name: features})
    return all(np.abs(a - b).max() <= TOLERANCE for a, b in zip(want, got))
