"""The log-mel frontend's fixed DSP in numpy: the Slaney mel matrix and `LogMel`, the frames of
`LogMelFrontend.frames` (same frame grid, same numbers within 1e-3 dB: a test holds them equal) for the scorer that
runs without torch (ONNX Runtime). Imports no torch: the lean runtime's replay, listen and analyze use it."""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .config import ModelConfig


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, np.float64)
    mel = f / (200.0 / 3)
    log_part = f >= 1000.0
    return np.where(log_part, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (math.log(6.4) / 27), mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((math.log(6.4) / 27) * (m - 15.0)), m * (200.0 / 3))


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_fft/2 + 1, n_mels) triangular filters, Slaney-normalised: the matrix of `librosa.filters.mel` that
    torchlibrosa's LogmelFilterBank uses (a test holds them equal). Written out because importing librosa
    (through torchlibrosa) costs every `birdlive` command over a second of start-up for one matrix."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.T.astype(np.float32)


def hann_window(n: int) -> np.ndarray:
    """The periodic Hann window (`torch.hann_window(n, periodic=True)`; numpy's `hanning` is the symmetric one)."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


class LogMel:
    """Samples that carry their context → raw log-mel frames (dB, not normalised): `LogMelFrontend.frames`."""

    def __init__(self, cfg: ModelConfig):
        self.n_fft, self.hop_length = cfg.n_fft, cfg.hop_length
        self.window = hann_window(cfg.n_fft)
        self.mel_basis = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
        self.amin = 10.0 ** (cfg.logmel_floor_db / 10.0)

    @property
    def context(self) -> int:
        """Samples a frame reaches on each side of its centre."""
        return self.n_fft // 2

    def frames(self, samples: np.ndarray) -> np.ndarray:
        """(n_fft + (T-1)·hop,) float32 samples → (T, n_mels) float32 log-mel."""
        frames = sliding_window_view(np.asarray(samples, np.float32), self.n_fft)[::self.hop_length]
        spec = np.fft.rfft(frames * self.window, axis=-1)            # float32 in, complex64 out (numpy ≥ 2)
        power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
        return (10.0 * np.log10(np.maximum(power @ self.mel_basis, self.amin))).astype(np.float32)
