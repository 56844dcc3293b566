"""Synthetic bird-like calls in real-sounding noise: the project's own test material.

Four call types a detector must tell apart by pitch contour and rhythm, like real species:
upsweep (rising whistle), downsweep (falling whistle), trill (fast pulse train), two_tone (two steady notes).
Used for the committed test recording, the tiny fixture checkpoint, and the training tests.
"""
from __future__ import annotations

import numpy as np

CALL_TYPES = ("upsweep", "downsweep", "trill", "two_tone")


def _tone(freq: np.ndarray, sr: int) -> np.ndarray:
    """A sine following an instantaneous-frequency contour (Hz per sample)."""
    return np.sin(2 * np.pi * np.cumsum(freq) / sr)


def _envelope(n: int, sr: int, attack_s: float = 0.01) -> np.ndarray:
    a = max(1, min(n // 2, int(attack_s * sr)))
    env = np.ones(n)
    ramp = np.sin(np.linspace(0, np.pi / 2, a)) ** 2
    env[:a], env[-a:] = ramp, ramp[::-1]
    return env


def make_call(kind: str, sr: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """One call of `kind`, peak 1.0, with a little natural variation in pitch and length."""
    rng = rng or np.random.default_rng()
    j = lambda: 1 + rng.uniform(-0.05, 0.05)  # noqa: E731  per-call jitter
    if kind == "upsweep":
        n = int(0.45 * j() * sr)
        f = np.linspace(2000 * j(), 5000 * j(), n)
        x = _tone(f, sr) * _envelope(n, sr)
    elif kind == "downsweep":
        n = int(0.35 * j() * sr)
        f = np.geomspace(7000 * j(), 3500 * j(), n)
        x = _tone(f, sr) * _envelope(n, sr)
    elif kind == "trill":
        pulses, rate = 9, 18 * j()
        n = int(pulses / rate * sr)
        f = np.full(n, 4200 * j())
        t = np.arange(n) / sr
        gate = np.clip(np.sin(2 * np.pi * rate * t), 0, None) ** 2
        x = _tone(f, sr) * gate * _envelope(n, sr)
    elif kind == "two_tone":
        n1, n2 = int(0.22 * j() * sr), int(0.22 * j() * sr)
        f = np.concatenate([np.full(n1, 2600 * j()), np.full(n2, 3900 * j())])
        x = _tone(f, sr) * _envelope(n1 + n2, sr)
    else:
        raise ValueError(f"unknown call type {kind!r}; choose from {CALL_TYPES}")
    # a weak second harmonic, as real whistles have
    return (x + 0.15 * np.sin(2 * np.arcsin(np.clip(x, -1, 1)))).astype(np.float32) / 1.15


def colored_noise(n: int, color: str = "pink", rng: np.random.Generator | None = None) -> np.ndarray:
    """White, pink (1/f) or brown (1/f²) noise, unit RMS, made by shaping a white spectrum."""
    rng = rng or np.random.default_rng()
    exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}[color]
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 2 else 1.0
    x = np.fft.irfft(spec / f ** exponent, n)
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float32)


def noise_check_waves(minutes: float, sr: int, dbfs: float = -30.0, seed: int = 0,
                      colors=("white", "pink", "brown")) -> list[tuple[str, np.ndarray]]:
    """The noise check's audio: `minutes` of each colour at `dbfs` RMS, seeded — the same waves for the
    false-positive figure (`evaluate.noise_false_positives`) and for choosing a global threshold (`calibrate`)."""
    rng = np.random.default_rng(seed)
    return [(c, colored_noise(int(minutes * 60 * sr), c, rng) * 10 ** (dbfs / 20)) for c in colors]


def background(n: int, sr: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """A field-like noise bed: pink hiss, brown rumble with slow wind gusts. Unit RMS."""
    rng = rng or np.random.default_rng()
    t = np.arange(n) / sr
    gust = 1 + 0.6 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t + rng.uniform(0, 6.3)) ** 2
    x = colored_noise(n, "pink", rng) + 1.5 * colored_noise(n, "brown", rng) * gust
    return (x / np.sqrt(np.mean(x ** 2))).astype(np.float32)


def make_scene(duration_s: float, sr: int, calls: list[tuple[str, float]], snr_db: float = 10.0,
               noise_rms: float = 0.02, rng: np.random.Generator | None = None):
    """Place `calls` [(kind, onset_s)] into a noise bed; each call `snr_db` above the noise (RMS over the call).

    Returns (wave, [(kind, onset_s, offset_s)]).
    """
    rng = rng or np.random.default_rng()
    n = int(duration_s * sr)
    wave = background(n, sr, rng) * noise_rms
    truth = []
    for kind, onset in calls:
        call = make_call(kind, sr, rng)
        a = int(onset * sr)
        call = call[: max(0, n - a)]
        rms = np.sqrt(np.mean(call ** 2)) + 1e-12
        wave[a:a + len(call)] += call * (noise_rms * 10 ** (snr_db / 20) / rms)
        truth.append((kind, onset, onset + len(call) / sr))
    return np.clip(wave, -1, 1).astype(np.float32), truth
