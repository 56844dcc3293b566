"""An inference copy of a network: BatchNorm folded into the convolution before it, channels-last memory.

On a CPU a quarter of MobileNetV3's time went to BatchNorm passes over memory (torch.profiler, batch of 16
windows); folded into the convolution's weights they cost nothing. Measured on 2 cores: about 1.4× faster with
channels-last. Training keeps the unfolded network.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _conv_bn_pairs(module: nn.Module) -> list[tuple[nn.Module, str, nn.Conv2d, str, nn.BatchNorm2d]]:
    """(parent, conv name, conv, bn name, bn) for every BatchNorm registered right after a Conv2d of the same
    parent. That is the data flow in timm's CNN blocks (conv_pw → bn1, conv_dw → bn2, conv → bn0, …); the caller
    checks the folded network against the original, so a block where it is not only costs the speed-up."""
    pairs = []
    for parent in module.modules():
        children = list(parent.named_children())
        for (cname, conv), (bname, bn) in zip(children, children[1:]):
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                    and bn.num_features == conv.out_channels):
                pairs.append((parent, cname, conv, bname, bn))
    return pairs


def _after_bn(bn: nn.BatchNorm2d) -> nn.Module:
    """What remains of a BatchNorm once folded: timm's BatchNormAct2d keeps its dropout and activation."""
    rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if isinstance(m, nn.Module)]
    return nn.Sequential(*rest) if rest else nn.Identity()


@torch.inference_mode()
def inference_copy(model: nn.Module, example: torch.Tensor | None = None, tol: float = 1e-3) -> nn.Module:
    """A copy of `model` (in eval mode) with BatchNorm folded into its backbone's convolutions and channels-last
    memory, if it computes the same framewise scores on `example` (raw log-mel windows; by default two windows
    of seeded noise) within `tol`; else an eval copy in channels-last memory only."""
    model = model.eval()
    if example is None:
        device = next(model.parameters()).device
        noise = 0.1 * torch.randn(2, model.cfg.window_samples, generator=torch.Generator().manual_seed(0))
        example = model.frontend(noise.to(device))
    folded = copy.deepcopy(model)
    for parent, cname, conv, bname, bn in _conv_bn_pairs(folded.backbone):
        setattr(parent, cname, fuse_conv_bn_eval(conv, bn))
        setattr(parent, bname, _after_bn(bn))
    folded = folded.to(memory_format=torch.channels_last)
    want = model.forward_logmel(example)["framewise"]
    got = folded.forward_logmel(example.contiguous(memory_format=torch.channels_last))["framewise"]
    if (want - got).abs().max().item() <= tol:
        return folded
    return copy.deepcopy(model).to(memory_format=torch.channels_last)
