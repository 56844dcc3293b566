"""A checkpoint's network as an ONNX graph (STEM.onnx beside STEM.safetensors + STEM.json), for the scorer that
runs on ONNX Runtime without torch (`birdlive.streamer.core.onnx_scorer`).

The graph is `BirdSED.forward_logmel` for one window length: raw log-mel windows `logmel` (batch, 1, frames,
n_mels) → `framewise` (batch, n_out, K) and `clipwise` (batch, K) probabilities, with a dynamic batch axis. The
fixed DSP stays outside (numpy: `birdlive.model.dsp.LogMel`), as the streamer computes each sample's log-mel once
and cuts overlapping windows out of it. torch's TorchScript exporter (`dynamo=False`) takes the bi-GRU and the
linear resampling to the output grid as they are; the weights go in as float32, as the torch scorer runs them.
"""
from __future__ import annotations

import copy
import functools
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from birdlive.files import atomic_path

from .checkpoint import derived_graph_paths, graph_path
from .sed import BirdSED

OPSET = 17
INPUT, OUTPUTS = "logmel", ("framewise", "clipwise")


class _LogMelNetwork(nn.Module):
    """The exported function: the network after the fixed DSP, its two probability outputs."""

    def __init__(self, model: BirdSED):
        super().__init__()
        self.model = model

    def forward(self, logmel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.forward_logmel(logmel)
        return out["framewise"], out["clipwise"]


def _padded_conv(conv: nn.Conv2d, pads: tuple[int, int, int, int], x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.pad(x, pads), conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


def freeze_same_padding(model: BirdSED, example: torch.Tensor) -> int:
    """timm's TensorFlow-style "same" convolutions (`Conv2dSame`: the EfficientNet-Lite backbones) pad by an
    amount computed from the input's size on every call, which the exporter records as a dozen shape operations
    per convolution, and ONNX Runtime then cannot fold the padding into the convolution (measured: Pad and the
    layout changes around it were a quarter of the default model's time). The window length is fixed, so each
    padding is a constant: measured once on `example`, then applied as one. Returns how many were frozen."""
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.padding import get_same_padding

    convs = [m for m in model.modules() if isinstance(m, Conv2dSame)]
    sizes: dict[nn.Module, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: sizes.__setitem__(mod, tuple(args[0].shape[-2:])))
             for m in convs]
    with torch.no_grad():
        model.forward_logmel(example)
    for h in hooks:
        h.remove()
    for m in convs:
        (ih, iw), (kh, kw) = sizes[m], m.weight.shape[-2:]
        ph = get_same_padding(ih, kh, m.stride[0], m.dilation[0])
        pw = get_same_padding(iw, kw, m.stride[1], m.dilation[1])
        m.forward = functools.partial(_padded_conv, m, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return len(convs)


def fuse_pads_into_convs(graph) -> int:
    """Each constant zero Pad (the frozen "same" paddings) that only a Conv reads becomes that Conv's own `pads`
    (ONNX convolutions take asymmetric ones): ONNX Runtime left them as Pad nodes, with its layout changes around
    them (measured: the default model's windows 1.5× faster again, 2× in all with `freeze_same_padding`). Then
    nodes and initializers nobody reads are dropped. Returns how many pads were fused."""
    from onnx import helper, numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:             # constants, and casts of constants, in graph order
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Cast" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]].astype(np.int64)
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    fused = 0
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        pads = values.get(pad.input[1]) if len(pad.input) > 1 else None
        value = values.get(pad.input[2], np.zeros(1)) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
        after = readers.get(pad.output[0], [])
        conv = after[0] if len(after) == 1 else None
        own = {a.name: helper.get_attribute_value(a) for a in conv.attribute} if conv is not None else {}
        if (conv is None or conv.op_type != "Conv" or mode != b"constant" or pads is None or len(pads) != 8
                or pads[[0, 1, 4, 5]].any() or np.asarray(value).any() or any(own.get("pads", []))
                or own.get("auto_pad", b"NOTSET") != b"NOTSET"):
            continue
        conv.input[0] = pad.input[0]
        for a in [a for a in conv.attribute if a.name == "pads"]:
            conv.attribute.remove(a)
        conv.attribute.append(helper.make_attribute("pads", [int(v) for v in pads[[2, 3, 6, 7]]]))
        graph.node.remove(pad)
        fused += 1
    outputs = {o.name for o in graph.output}
    while True:                         # drop what no node and no output reads any more
        read = {name for node in graph.node for name in node.input} | outputs
        dead = [n for n in graph.node if not any(o in read for o in n.output)]
        if not dead:
            for t in [t for t in graph.initializer if t.name not in read]:
                graph.initializer.remove(t)
            return fused
        for n in dead:
            graph.node.remove(n)


def window_frames(model: BirdSED) -> int:
    """Log-mel frames of one window: centred on both of its ends (501 for 5 s at 10 ms)."""
    return model.cfg.window_samples // model.cfg.hop_length + 1


@torch.inference_mode(False)
def export_onnx(model: BirdSED, path: str | Path) -> Path:
    """Write the graph of `model` (its checkpoint's STEM) to STEM.onnx, atomically, and its split
    (STEM.trunk.onnx + STEM.rest.onnx, `birdlive.model.trunk`) where the backbone has one; returns STEM.onnx. An
    int8 graph of an earlier export (STEM.int8.onnx) is removed: `export --int8` makes it anew from this one."""
    from .trunk import split_graph

    out = graph_path(path)
    for stale in derived_graph_paths(path):
        stale.unlink(missing_ok=True)
    model = copy.deepcopy(model).cpu().eval()
    example = torch.from_numpy(np.random.default_rng(0).normal(-40.0, 10.0, (2, 1, window_frames(model),
                                                                            model.cfg.n_mels)).astype(np.float32))
    freeze_same_padding(model, example)
    net = _LogMelNetwork(model).eval()     # the exporter leaves the wrapper in the mode it was given
    with atomic_path(out) as tmp, warnings.catch_warnings(), torch.no_grad():
        # The GRU's "batch_size other than 1" warning (the batch axis is dynamic: tested) and the tracer's note
        # that the window length becomes a constant (it is: one graph per window length)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)     # the TorchScript exporter: chosen, see above
        torch.onnx.export(net, (example,), str(tmp), input_names=[INPUT], output_names=list(OUTPUTS),
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUTS[0]: {0: "batch"}, OUTPUTS[1]: {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
        fold_and_fuse(tmp)
    split_graph(path)
    return out


def fold_and_fuse(path: Path) -> None:
    """ONNX Runtime's basic, provider-independent optimisations saved into the graph (constant folding: the
    paddings' shape arithmetic becomes constants), then `fuse_pads_into_convs`."""
    import onnx
    import onnxruntime as ort

    folded = path.with_name(path.name + ".folded")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(folded)
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(folded))
    finally:
        folded.unlink(missing_ok=True)
    fuse_pads_into_convs(graph.graph)
    onnx.save(graph, str(path))
