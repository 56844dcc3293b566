"""Waveform → log-mel spectrogram, with torchlibrosa so that it runs on whichever device the network is on."""
from __future__ import annotations

import torch
from torch import nn
from torchlibrosa.augmentation import SpecAugmentation
from torchlibrosa.stft import LogmelFilterBank, Spectrogram

from .config import ModelConfig


FROZEN_PREFIXES = ("frontend.spectrogram.", "frontend.logmel.")


class LogMelFrontend(nn.Module):
    """(batch, samples) float waveform → (batch, 1, frames, n_mels) log-mel.

    The STFT and mel matrices are frozen and rebuilt from the config, so checkpoints do not store them
    (`FROZEN_PREFIXES`). A BatchNorm over mel bins (PANNs' bn0) standardises each band so that a quiet
    recorder and a loud one look alike; SpecAugment masks come after it, so a mask means "average", not "silence
    at 0 dB", and only in training mode.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.spectrogram = Spectrogram(
            n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.n_fft, window="hann",
            center=True, pad_mode="reflect", freeze_parameters=True)
        self.logmel = LogmelFilterBank(
            sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax,
            ref=1.0, amin=1e-10, top_db=None, freeze_parameters=True)
        self.bn0 = nn.BatchNorm2d(cfg.n_mels)
        self.specaug = SpecAugmentation(
            time_drop_width=cfg.time_drop_width, time_stripes_num=cfg.time_stripes_num,
            freq_drop_width=cfg.freq_drop_width, freq_stripes_num=cfg.freq_stripes_num)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.logmel(self.spectrogram(wave))          # (B, 1, T, F)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)   # normalise per mel bin
        if self.training:
            x = self.specaug(x)
        return x
