"""The sound-event-detection network: log-mel → timm backbone → frequency pooling → bi-GRU → attention head.

Shape of the data through `BirdSED.forward` (B clips, K species):

    wave (B, N) → log-mel (B, 1, T, F) → backbone feature map (B, C, T', F')
      → pool over frequency ("RoI pooling": each time step becomes one C-vector) (B, T', C)
      → linear + bi-GRU (B, T', H) → attention head:
          framewise_logit (B, K, T')  resampled to the output grid (B, n_out, K), n_out = seconds * out_fps
          clipwise = Σ_t softmax_t(att) · sigmoid(framewise_logit)   (PANNs decision-level attention)

The backbone is any timm model that supports `features_only`; it is always built with `pretrained=False` —
weights come only from the project's own checkpoints (and, when training starts, optionally from ImageNet weights
converted by `birdlive.model.pretrained`). Blocks after the stage we read are removed (`drop_unused_blocks`).
"""
from __future__ import annotations

import re

import timm
import torch
import torch.nn.functional as F
from timm.models.efficientnet import EfficientNetFeatures
from timm.models.mobilenetv3 import MobileNetV3Features
from torch import nn

from .config import ModelConfig
from .frontend import LogMelFrontend

BLOCK_NAME = re.compile(r"^blocks\.(\d+)$")


def drop_unused_blocks(backbone: nn.Module) -> tuple[str, ...]:
    """Remove the blocks after the feature stage that is read; returns the state-dict prefixes they had.

    timm's EfficientNet and MobileNetV3 feature extractors run every block even when the last stage asked for is
    an earlier one (timm 1.0 `EfficientNetFeatures.forward`): at `feature_index=3` (stride 16) the two stride-32
    stages cost 10-20 % of the time and hold two thirds of the backbone's weights, and change no output. Other
    backbones (timm's `FeatureListNet`: ResNets) already stop at the last stage asked for."""
    if not isinstance(backbone, (EfficientNetFeatures, MobileNetV3Features)):
        return ()
    m = BLOCK_NAME.match(backbone.feature_info.module_name()[-1])
    if m is None:                                    # the stem itself is read: nothing after it is needed either,
        return ()                                    # but no preset does that; keep the network whole
    keep = int(m.group(1)) + 1
    dropped = tuple(f"backbone.blocks.{i}." for i in range(keep, len(backbone.blocks)))
    backbone.blocks = backbone.blocks[:keep]
    return dropped


class AttentionHead(nn.Module):
    """Per-species framewise scores and attention weights over time (PANNs `AttBlock`)."""

    def __init__(self, hidden: int, num_classes: int):
        super().__init__()
        self.att = nn.Conv1d(hidden, num_classes, 1)
        self.cla = nn.Conv1d(hidden, num_classes, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x (B, H, T') → framewise logits (B, K, T'), attention weights (B, K, T') summing to 1 over time
        att = torch.softmax(torch.clamp(self.att(x), -10, 10), dim=-1)
        return self.cla(x), att


def on_frames(track: torch.Tensor, n: int) -> torch.Tensor:
    """A framewise track (B, T, K) resampled linearly onto n frames: the one way scores move between frame grids
    (the network's steps onto the output grid; in training, one grid onto another that a rounding made longer)."""
    return F.interpolate(track.transpose(1, 2), size=n, mode="linear", align_corners=False).transpose(1, 2)


class BirdSED(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.frontend = LogMelFrontend(cfg)
        self.backbone = timm.create_model(
            cfg.backbone, pretrained=False, in_chans=1, features_only=True, out_indices=(cfg.feature_index,))
        # Older checkpoints stored the dropped blocks' weights; `load_checkpoint` ignores these prefixes.
        self.dropped_prefixes = drop_unused_blocks(self.backbone)
        channels = self.backbone.feature_info.channels()[-1]
        self.proj = nn.Linear(channels, cfg.hidden)
        self.gru = nn.GRU(cfg.hidden, cfg.hidden // 2, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = AttentionHead(cfg.hidden, cfg.num_classes)

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """wave (B, N) at cfg.sample_rate → dict of
        clipwise (B, K) probabilities, framewise (B, n_out, K) probabilities, framewise_logit (B, n_out, K)."""
        return self.forward_logmel(self.frontend(wave))

    def forward_logmel(self, logmel: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network after the fixed DSP: raw log-mel (B, 1, T, F) from `frontend` → the outputs of `forward`.
        T frames span (T - 1) · hop_length samples, so a 5 s window (501 frames) gives 50 output frames."""
        # int(): a constant of the graph when traced for ONNX (`birdlive.model.export`: one window length)
        seconds = (int(logmel.shape[2]) - 1) * self.cfg.hop_length / self.cfg.sample_rate
        n_out = max(1, int(round(seconds * self.cfg.out_fps)))
        x = self.frontend.normalize(logmel)
        x = self.backbone(x)[-1]                             # (B, C, T', F')
        x = x.mean(dim=3) + x.amax(dim=3)                    # pool over frequency → (B, C, T')
        x = self.dropout(x.transpose(1, 2))                  # (B, T', C)
        x = F.relu(self.proj(x))
        x, _ = self.gru(x)                                   # (B, T', H)
        x = self.dropout(x).transpose(1, 2)                  # (B, H, T')
        frame_logit, att = self.head(x)                      # (B, K, T') each
        clipwise = (att * torch.sigmoid(frame_logit)).sum(dim=-1).clamp(1e-7, 1 - 1e-7)
        # Resample to the fixed output grid so that a window of w seconds always yields w*out_fps frames,
        # which is what lets the streamer stitch overlapping windows frame for frame.
        frame_logit = on_frames(frame_logit.transpose(1, 2), n_out)   # (B, n_out, K)
        return {"clipwise": clipwise, "framewise": torch.sigmoid(frame_logit), "framewise_logit": frame_logit}
