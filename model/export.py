"""A checkpoint's network as an ONNX graph (STEM.onnx beside STEM.safetensors + STEM.json), for the scorer that
runs on ONNX Runtime without torch (`birdlive.streamer.core.onnx_scorer`).

The graph is `BirdSED.forward_logmel` for one window length: raw log-mel windows `logmel` (batch, 1, frames,
n_mels) → `framewise` (batch, n_out, K) and `clipwise` (batch, K) probabilities, with a dynamic batch axis. The
fixed DSP stays outside (numpy: `birdlive.model.dsp.LogMel`), as the streamer computes each sample's log-mel once
and cuts overlapping windows out of it. torch's TorchScript exporter (`dynamo=False`) takes the bi-GRU and the
linear resampling to the output grid as they are; the weights go in as float32, as the torch scorer runs them.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from birdlive.files import atomic_path

from .checkpoint import graph_path
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


def window_frames(model: BirdSED) -> int:
    """Log-mel frames of one window: centred on both of its ends (501 for 5 s at 10 ms)."""
    return model.cfg.window_samples // model.cfg.hop_length + 1


@torch.inference_mode(False)
def export_onnx(model: BirdSED, path: str | Path) -> Path:
    """Write the graph of `model` (its checkpoint's STEM) to STEM.onnx, atomically; returns that path."""
    out = graph_path(path)
    net = _LogMelNetwork(model.cpu()).eval()     # the exporter leaves the wrapper in the mode it was given
    example = torch.from_numpy(np.random.default_rng(0).normal(-40.0, 10.0, (2, 1, window_frames(model),
                                                                            model.cfg.n_mels)).astype(np.float32))
    with atomic_path(out) as tmp, warnings.catch_warnings(), torch.no_grad():
        # The GRU's "batch_size other than 1" warning (the batch axis is dynamic: tested) and the tracer's note
        # that the window length becomes a constant (it is: one graph per window length)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)     # the TorchScript exporter: chosen, see above
        torch.onnx.export(net, (example,), str(tmp), input_names=[INPUT], output_names=list(OUTPUTS),
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUTS[0]: {0: "batch"}, OUTPUTS[1]: {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    return out
