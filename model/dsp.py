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
    """Samples that carry their context → raw log-mel frames (dB, not normalised): `LogMelFrontend.frames`.

    Float32 throughout, in blocks of `BLOCK` frames: a replay hands over tens of seconds at once, and one FFT over
    all of them (17 MB of frames, as much again of spectrum) runs out of the cache: blocks of 128 frames halve
    the CPU time per second of audio (measured: 87 → 46 ms per 60 s, one core, benchmarks/bench.py's row)."""

    BLOCK = 128     # frames per FFT: 0.5 MB of windowed frames; 32 is slower again (numpy's per-call cost)

    def __init__(self, cfg: ModelConfig):
        self.n_fft, self.hop_length = cfg.n_fft, cfg.hop_length
        self.window = hann_window(cfg.n_fft)
        self.mel_basis = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
        self.amin = np.float32(10.0 ** (cfg.logmel_floor_db / 10.0))
        # Only the FFT bins some filter covers (fmin..fmax), each filter row twice: the spectrum viewed as
        # interleaved float32 (re, im) pairs, squared in place, times this matrix is the mel power in one matmul.
        covered = np.flatnonzero(self.mel_basis.any(axis=1))
        self._bins = slice(int(covered[0]), int(covered[-1]) + 1)
        self._mel_re_im = np.ascontiguousarray(np.repeat(self.mel_basis[self._bins], 2, axis=0))

    @property
    def context(self) -> int:
        """Samples a frame reaches on each side of its centre."""
        return self.n_fft // 2

    def frames(self, samples: np.ndarray) -> np.ndarray:
        """(n_fft + (T-1)·hop,) float32 samples → (T, n_mels) float32 log-mel."""
        return self.frames_of([samples])[0]

    def frames_of(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        """`frames` of each chunk, the frames of all of them through one FFT per block: a hundred live streams
        hand over 0.1 s each per tick, and numpy's cost per call would otherwise be paid per stream."""
        if not chunks:
            return []
        views = [sliding_window_view(np.asarray(c, np.float32), self.n_fft)[::self.hop_length] for c in chunks]
        lengths = [len(v) for v in views]
        out = np.empty((sum(lengths), self._mel_re_im.shape[1]), np.float32)
        block = min(self.BLOCK, len(out))
        windowed = np.empty((block, self.n_fft), np.float32)
        spec = np.empty((block, self.n_fft // 2 + 1), np.complex64)
        filled = done = 0       # frames in the block now; frames of `out` done
        for view in views:
            i = 0
            while i < len(view):
                n = min(len(view) - i, block - filled)
                np.multiply(view[i:i + n], self.window, out=windowed[filled:filled + n])
                filled, i = filled + n, i + n
                if filled == block:
                    self._mel_power(windowed, spec, out[done:done + block])
                    filled, done = 0, done + block
        if filled:
            self._mel_power(windowed[:filled], spec[:filled], out[done:done + filled])
        np.maximum(out, self.amin, out=out)
        np.log10(out, out=out)
        out *= np.float32(10.0)
        return np.split(out, np.cumsum(lengths)[:-1])

    def _mel_power(self, windowed: np.ndarray, spec: np.ndarray, out: np.ndarray) -> None:
        """Windowed frames → their mel power in `out`; `spec` is scratch space of the frames' shape."""
        spec[:] = np.fft.rfft(windowed, axis=-1)     # complex64 from numpy 2 on (complex128 before)
        re_im = spec[:, self._bins].view(np.float32)
        np.square(re_im, out=re_im)
        np.matmul(re_im, self._mel_re_im, out=out)
