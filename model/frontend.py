"""Waveform → log-mel frames: one frame grid for training, streaming and the offline reference.

Frame j is centred on sample j * hop_length (10 ms at 32 kHz). A 5 s window is frames [s, s + 500] of the
stream it was cut from, so the streamer computes each sample's log-mel once and cuts overlapping windows out of
it, and training computes a window's frames directly (`forward`, reflect-padded like torchlibrosa's
`Spectrogram(center=True)`); the two differ only in the two frames at each window edge, which see the real
neighbouring audio in a stream and a reflection in training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .dsp import mel_filterbank

# Older checkpoints' names for the fixed DSP tensors; never stored, ignored when loading.
FROZEN_PREFIXES = ("frontend.spectrogram.", "frontend.logmel.")


class LogMelFrontend(nn.Module):
    """(batch, samples) float waveform → (batch, 1, frames, n_mels) log-mel (dB, not yet normalised).

    The numbers are torchlibrosa's `Spectrogram` + `LogmelFilterBank(ref=1, amin=floor, top_db=None)` (a test
    holds them equal), computed faster: the STFT is `torch.stft` (an FFT; torchlibrosa convolves with the DFT
    matrix, 2.5× slower on a CPU) and the mel matrix is `mel_filterbank`; `birdlive.model.dsp.LogMel` is the same
    DSP in numpy, for runs without torch. Both are fixed functions of the config
    and are not stored in checkpoints. `normalize` is the trainable part: a BatchNorm over mel bins (PANNs' bn0)
    standardises each band so that a quiet recorder and a loud one look alike; torchlibrosa's SpecAugment masks
    come after it (a mask means "average", not "silence at the floor"), in training mode only.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_fft, self.hop_length = cfg.n_fft, cfg.hop_length
        self.register_buffer("window", torch.hann_window(cfg.n_fft, periodic=True), persistent=False)
        mel = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
        self.register_buffer("mel_basis", torch.from_numpy(mel), persistent=False)
        self.amin = 10.0 ** (cfg.logmel_floor_db / 10.0)   # power floor (see ModelConfig.logmel_floor_db)
        self.bn0 = nn.BatchNorm2d(cfg.n_mels)
        self.cfg = cfg
        self._specaug = None                   # torchlibrosa's, made on the first training step (no weights)

    @property
    def context(self) -> int:
        """Samples a frame reaches on each side of its centre."""
        return self.n_fft // 2

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """A whole clip: frames centred on samples 0, hop, …, len (edges reflected) → (B, 1, T, F)."""
        padded = F.pad(wave[:, None, :], (self.context, self.context), mode="reflect")[:, 0]
        return self.frames(padded)

    def frames(self, samples: torch.Tensor) -> torch.Tensor:
        """Frames of audio that already carries its context: (B, n_fft + (T-1)·hop) → (B, 1, T, F)."""
        spec = torch.stft(samples, self.n_fft, self.hop_length, window=self.window, center=False,
                          return_complex=True)                     # (B, n_fft/2 + 1, T)
        power = (spec.real ** 2 + spec.imag ** 2).transpose(1, 2)   # (B, T, n_fft/2 + 1)
        return 10.0 * torch.log10(torch.clamp(power @ self.mel_basis, min=self.amin))[:, None]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)   # per mel bin
        if self.training:
            x = self.specaug(x)
        return x

    @property
    def specaug(self):
        if self._specaug is None:
            from torchlibrosa.augmentation import SpecAugmentation
            c = self.cfg
            self._specaug = SpecAugmentation(time_drop_width=c.time_drop_width, time_stripes_num=c.time_stripes_num,
                                             freq_drop_width=c.freq_drop_width, freq_stripes_num=c.freq_stripes_num)
        return self._specaug
