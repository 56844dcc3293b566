"""model/fuse.py: the inference copy the detector and the evaluation tools score through."""
from __future__ import annotations

import torch
from torch import nn

from birdlive.model import load_checkpoint, load_for_inference
from birdlive.model.fuse import inference_copy

from tests.common import TINY


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())


def _windows(model, n: int = 3) -> torch.Tensor:
    wave = 0.1 * torch.randn(n, model.cfg.window_samples, generator=torch.Generator().manual_seed(1))
    return model.frontend(wave)


@torch.no_grad()
def test_the_copy_folds_every_batchnorm_and_scores_as_the_network(tiny_model):
    assert _batchnorms(tiny_model) > 0
    copy = inference_copy(tiny_model)
    assert _batchnorms(copy) == 0
    assert _batchnorms(tiny_model) > 0                     # the original is left as it was
    x = _windows(tiny_model)
    want, got = tiny_model.forward_logmel(x), copy.forward_logmel(x.contiguous(memory_format=torch.channels_last))
    for key in ("framewise", "clipwise"):
        torch.testing.assert_close(got[key], want[key], atol=1e-4, rtol=0)


def test_a_copy_that_would_score_differently_keeps_its_batchnorm(tiny_model):
    copy = inference_copy(tiny_model, tol=-1.0)            # no fold can pass: the unfolded fallback
    assert _batchnorms(copy) == _batchnorms(tiny_model)
    assert copy is not tiny_model


@torch.no_grad()
def test_load_for_inference_is_the_checkpoint_folded():
    plain, folded = load_checkpoint(TINY), load_for_inference(TINY)
    assert _batchnorms(folded) == 0 and not folded.training
    assert folded.cfg == plain.cfg
    x = _windows(plain)
    torch.testing.assert_close(folded.forward_logmel(x)["framewise"], plain.forward_logmel(x)["framewise"],
                               atol=1e-4, rtol=0)
