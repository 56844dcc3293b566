"""Waveform augmentations for training windows; each one switchable, its strength in `AugmentConfig`.

- energy crop: a window of `--window` seconds around an *anchor* moment drawn with probability proportional to
  its energy above the recording's noise floor (measured on a first-difference, i.e. +6 dB/octave, signal so that
  wind and traffic rumble do not attract crops), the anchor in the window's central half: weakly labelled field
  recordings give windows that contain the bird, not cut at the edge.
- call mixing: 1-3 windows of different species summed with random gains; labels are the union (`mix`).
- noise at an SNR drawn from a range: white, pink, brown (cut from a bank made once per process: shaping a
  spectrum costs 9 ms a window), or real background files from `--noise-dir` (`NoiseBank`). SNR here is over the
  whole window: 10·log10(mean(x²) / mean(n²)).
- tempo (duration × factor, pitch kept) and pitch (semitones, duration kept): small ranges — birds are told apart
  by pitch, a shift of a few semitones can turn one species into another. Both act on the whole window in the
  log-mel domain, where they are exact and cost nothing (`TempoPitchLogMel`); the phase vocoder they used to be
  (`time_stretch`, `pitch_shift`, kept for `augment-demo`'s listening) cost more per window than the network's
  training step on two cores.
- a random overall gain (the network's input normalisation runs on running statistics at inference, so levels
  matter).
- SpecAugment (time and mel-band masks) is the model's own (`LogMelFrontend`, training mode only); here it is
  only switched on or off (`specaugment`), its strength lives in the `ModelConfig`.

Field realism (v3), for composed snippet windows, whose clean Macaulay notes over coloured noise taught v2 that
"a field recording means Puerto Rico":
- field backgrounds (`FieldBackgrounds`): the bed of a composed window is, with `field_background_prob`, the
  quieter part of a real training recording (Puerto Rican forest, Alberta forest); the species of that recording
  are masked out of the loss (they may be faintly there), so the background no longer tells the region.
- distance (`propagate`): a bird farther away is quieter (its SNR lowered by up to `distance_db`) and duller
  (a second-order low-pass at `lowpass_hz`: air absorbs high frequencies first).
- reverberation (`propagate`): the track convolved with a real impulse response (`impulse_responses/` of the
  noise folder) or a synthetic one (exponentially decaying noise, RT60 in `reverb_rt60_s`), wet/dry mixed.
- microphone EQ (`eq_curve`): a random smooth gain curve in dB over the mel bands, added to the log-mel (free;
  recorders and microphones colour the spectrum, Macaulay's gear differs from xeno-canto's and an AudioMoth's).
- codec round trips (MP3/Opus at low bit rates) are not simulated: every training file is already lossy (the
  snippets and the Alberta clips Opus, the Puerto Rican recordings MP3 or Opus), and encoding per window in the
  data worker would cost more than the network's step on the other core.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypedDict

import numpy as np

from birdlive.errors import OptionError

from .cache import AudioCache
from .synthetic import colored_noise

NOISE_COLORS = ("white", "pink", "brown")


class FieldRealismOff(TypedDict):
    """`AugmentConfig.ADDED_OFF`: the field-realism probabilities (v3) switched off."""
    field_background_prob: float
    distance_prob: float
    reverb_prob: float
    eq_prob: float


@dataclass
class AugmentConfig:
    energy_crop: float = 0.8                       # probability that a crop is energy-weighted (else uniform)
    mix_prob: float = 0.5                          # probability that a training window is a mixture
    mix_max: int = 3                               # most species (recordings) in one mixture
    mix_gain_db: tuple[float, float] = (-12.0, 0.0)  # gain of each added recording relative to the first
    noise_prob: float = 0.6
    snr_db: tuple[float, float] = (0.0, 20.0)      # whole-window SNR
    noise_colors: tuple[str, ...] = NOISE_COLORS
    noise_file_prob: float = 0.7                   # share of real background files, when --noise-dir has any
    stretch_prob: float = 0.25                     # tempo change of the whole window (`TempoPitchLogMel`)
    stretch_range: tuple[float, float] = (0.9, 1.1)  # duration factor
    pitch_prob: float = 0.25                       # pitch change of the whole window
    pitch_semitones: float = 0.5                   # ± range (gentle)
    gain_prob: float = 0.8
    gain_db: tuple[float, float] = (-12.0, 6.0)
    specaugment: bool = True
    # field realism of composed windows (module docstring); a run recorded before these existed resumes with them
    # off (`ADDED_OFF`)
    field_background_prob: float = 0.5             # bed from a real training recording, its species masked
    distance_prob: float = 0.5                     # per species track: quieter and low-passed
    distance_db: float = 12.0                      # up to this much below the drawn SNR
    lowpass_hz: tuple[float, float] = (2500.0, 12000.0)
    reverb_prob: float = 0.4                       # per species track
    reverb_rt60_s: tuple[float, float] = (0.15, 1.2)   # synthetic impulse responses
    reverb_wet_db: tuple[float, float] = (-12.0, 0.0)  # reverberant part against the direct sound
    eq_prob: float = 0.5                           # per window: a smooth dB curve over the mel bands
    eq_db: float = 6.0                             # its largest excursion

    ADDED_OFF: ClassVar[FieldRealismOff] = {"field_background_prob": 0.0, "distance_prob": 0.0, "reverb_prob": 0.0,
                                            "eq_prob": 0.0}

    @classmethod
    def none(cls) -> "AugmentConfig":
        """Everything off: uniform crops, no mixing, noise, stretch, pitch, gain or SpecAugment."""
        return cls(energy_crop=0.0, mix_prob=0.0, noise_prob=0.0, stretch_prob=0.0, pitch_prob=0.0,
                   gain_prob=0.0, specaugment=False, **cls.ADDED_OFF)

    @classmethod
    def preset(cls, name: str) -> "AugmentConfig":
        """Named sets for ablations: none, mix, noise, all (all = the defaults)."""
        base = cls.none()
        base.energy_crop = cls.energy_crop
        if name == "none":
            return base
        if name == "mix":
            return dataclasses.replace(base, mix_prob=cls.mix_prob)
        if name == "noise":
            return dataclasses.replace(base, noise_prob=cls.noise_prob)
        if name == "all":
            return cls()
        raise OptionError(f"unknown augmentation preset {name!r}; choose none, mix, noise or all")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AugmentConfig":
        given = config_fields(cls, d)
        if d and "field_background_prob" not in d:     # a run recorded before v3's augmentations
            given = {**cls.ADDED_OFF, **given}
        return cls(**given)


def config_fields(config_class: type[Any], d: dict[str, Any]) -> dict[str, Any]:
    """The entries of `d` (a config section of a run's train.json) that are fields of the dataclass
    `config_class`, its JSON lists back as the tuples (ranges) they were; entries it does not know are dropped."""
    known = {f.name for f in dataclasses.fields(config_class)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}


def db_to_gain(db: float) -> float:
    return float(10 ** (db / 20))


def power(x: np.ndarray) -> float:
    """Mean square (a BLAS dot product: a float64 copy of a 5 s window cost more than the rest of `add_noise`)."""
    x = np.ascontiguousarray(x, np.float32)
    return float(np.dot(x, x)) / len(x) if len(x) else 0.0


# --------------------------------------------------------------------------------------------- crops

def energy_profile(x: np.ndarray, sample_rate: int, fps: int = 100) -> np.ndarray:
    """Energy per frame (1/fps s) of the first difference of `x` (a gentle high-pass)."""
    hop = max(1, sample_rate // fps)
    d = np.diff(np.asarray(x, np.float32), prepend=np.float32(x[0]) if len(x) else 0.0)
    n = len(d) // hop
    if n == 0:
        return np.array([power(d)], np.float64)
    return np.square(d[: n * hop].reshape(n, hop), dtype=np.float64).mean(axis=1)


def crop(x: np.ndarray, n: int, rng: np.random.Generator, energy_prob: float = 0.0, sample_rate: int = 32000,
         profile: np.ndarray | None = None, fps: int = 100) -> tuple[np.ndarray, int]:
    """A window of `n` samples: energy-weighted with probability `energy_prob`, else uniform. Shorter inputs are
    placed at a random offset in zeros. Returns (window, start) with start in samples (negative when padded)."""
    x = np.asarray(x, np.float32)
    if len(x) <= n:
        off = int(rng.integers(0, n - len(x) + 1))
        out = np.zeros(n, np.float32)
        out[off:off + len(x)] = x
        return out, -off
    hop = max(1, sample_rate // fps)
    max_start = len(x) - n
    if energy_prob > 0 and rng.random() < energy_prob:
        # anchor: a frame drawn with probability ∝ its energy above the noise floor (median); the window is then
        # placed so that the anchor lies in its central half, so a call is not cut at the window's edge
        e = profile if profile is not None else energy_profile(x, sample_rate, fps)
        excess = np.clip(e - np.median(e), 0, None)
        total = excess.sum()
        if total > 0:
            anchor = (int(rng.choice(len(excess), p=excess / total)) + rng.random()) * hop
            start = int(np.clip(anchor - rng.uniform(0.25, 0.75) * n, 0, max_start))
            return np.array(x[start:start + n]), start
    start = int(rng.integers(0, max_start + 1))
    return np.array(x[start:start + n]), start


def crop_around(x: np.ndarray, n: int, rng: np.random.Generator, span_s: tuple[float, float],
                sample_rate: int) -> np.ndarray:
    """A window of `n` samples that holds the known call at `span_s` (seconds), placed at random around it (the
    call centred when it is longer than the window)."""
    x = np.asarray(x, np.float32)
    if len(x) <= n:
        return crop(x, n, rng)[0]
    a, b = (int(t * sample_rate) for t in span_s)
    lo, hi = max(0, b - n), min(a, len(x) - n)
    start = int(rng.integers(lo, hi + 1)) if hi >= lo else int(np.clip((a + b - n) // 2, 0, len(x) - n))
    return np.array(x[start:start + n])


def fix_length(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) >= n:
        return x[:n]
    return np.pad(x, (0, n - len(x)))


# ------------------------------------------------------------------------------------- stretch / pitch

def time_stretch(x: np.ndarray, factor: float) -> np.ndarray:
    """Duration × `factor` (1.1 = 10 % longer), pitch unchanged (librosa phase vocoder). For listening
    (`augment-demo`); training changes tempo in the log-mel domain (`TempoPitchLogMel`)."""
    import librosa.effects as librosa_effects   # the submodule: librosa's stub does not re-export it
    if abs(factor - 1.0) < 1e-6 or len(x) < 4096:
        return np.asarray(x, np.float32)
    return librosa_effects.time_stretch(np.asarray(x, np.float32), rate=1.0 / factor).astype(np.float32)


def pitch_shift(x: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """Frequencies × 2^(semitones/12), duration unchanged (phase vocoder + soxr resampling). For listening
    (`augment-demo`); training shifts pitch in the log-mel domain (`TempoPitchLogMel`)."""
    import librosa.effects as librosa_effects   # the submodule: librosa's stub does not re-export it
    if abs(semitones) < 1e-6 or len(x) < 4096:
        return np.asarray(x, np.float32)
    return librosa_effects.pitch_shift(np.asarray(x, np.float32), sr=sample_rate, n_steps=float(semitones),
                                       res_type="soxr_hq").astype(np.float32)


# --------------------------------------------------------------------------------------------- noise

def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float, floor_power: float = 1e-4) -> np.ndarray:
    """x + noise scaled so that 10·log10(power(x) / power(scaled noise)) = snr_db. For a silent x the noise is
    set against `floor_power` (-40 dBFS) instead."""
    ps = power(x)
    ps = ps if ps > 1e-10 else floor_power
    pn = power(noise)
    if pn <= 0:
        return np.asarray(x, np.float32)
    scale = np.sqrt(ps / (pn * 10 ** (snr_db / 10)))
    return (x + scale * noise[: len(x)]).astype(np.float32)


@dataclass
class NoiseBank:
    """Background noise of unit RMS: coloured noise made on the fly, or a random part of a real noise file.

    Files shorter than half the request are placed once at a random offset (a transient: a tap, a bark),
    longer ones are cropped at random (looped when shorter than the request)."""
    files: list[str] = field(default_factory=list)
    cache: AudioCache | None = None               # decodes + resamples the files once

    @classmethod
    def from_dir(cls, noise_dir: str | Path | None, cache: AudioCache | None = None) -> "NoiseBank":
        if not noise_dir:
            return cls([], cache)
        from birdlive.files import is_audio
        root = Path(noise_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"noise folder {root} does not exist")
        # impulse responses are not backgrounds
        files = sorted(str(p) for p in root.rglob("*") if p.is_file() and is_audio(p)
                       and not any("impulse" in part.lower() for part in p.relative_to(root).parts))
        return cls(files, cache)

    def colored(self, n: int, color: str, rng: np.random.Generator) -> np.ndarray:
        """`n` samples of unit-RMS coloured noise: a random stretch of this process's bank of that colour
        (read backwards half the time), looped when longer than the bank."""
        bank = _color_bank(color)
        start = int(rng.integers(len(bank)))
        out = np.resize(np.roll(bank, -start), n) if start + n > len(bank) else bank[start:start + n]
        out = out[::-1] if rng.random() < 0.5 else out
        return (out * (1.0 / np.sqrt(max(power(out), 1e-12)))).astype(np.float32)

    def from_file(self, n: int, rng: np.random.Generator) -> np.ndarray | None:
        if self.cache is None:              # nothing to read files with (`sample` then draws coloured noise)
            return None
        path = self.files[int(rng.integers(len(self.files)))]
        x = self.cache.load(path)
        if len(x) == 0:
            return None
        if len(x) < n // 2:
            out = np.zeros(n, np.float32)
            off = int(rng.integers(0, n - len(x) + 1))
            out[off:off + len(x)] = x
        elif len(x) < n:
            out = np.resize(np.asarray(x, np.float32), n)      # loop
        else:
            s = int(rng.integers(0, len(x) - n + 1))
            out = np.array(x[s:s + n], np.float32)
        p = power(out)
        if p < 1e-12:
            return None
        return (out / np.sqrt(p)).astype(np.float32)

    def sample(self, n: int, rng: np.random.Generator, colors=NOISE_COLORS, file_prob: float = 0.7) -> np.ndarray:
        if self.files and self.cache is not None and rng.random() < file_prob:
            out = self.from_file(n, rng)
            if out is not None:
                return out
        colors = tuple(colors) or NOISE_COLORS
        return self.colored(n, colors[int(rng.integers(len(colors)))], rng)


class FieldBackgrounds:
    """Beds for composed windows cut from real training recordings: of a few random stretches of one recording,
    the quietest (by the high-passed energy profile that energy crops use), at unit RMS, with the labels of the
    species that recording holds (primary and background): a window laid over it must not be told they are
    absent. Only training recordings: validation and test backgrounds stay unheard."""

    CANDIDATES = 4          # stretches looked at per draw: quieter beds, still varied

    def __init__(self, recordings: list, cache, labels: list[str]):
        self.recordings, self.cache = list(recordings), cache
        self.index = {lab: i for i, lab in enumerate(labels)}
        self._energy: dict[int, np.ndarray] = {}    # per recording: cumulative energy at 100 frames a second

    def __len__(self) -> int:
        return len(self.recordings)

    def prepare(self) -> None:
        """Energy profiles, once, before DataLoader workers fork and share them."""
        for i in range(len(self.recordings)):
            self._cumulative_energy(i)

    def _cumulative_energy(self, i: int) -> np.ndarray:
        if i not in self._energy:
            e = energy_profile(self.cache.load(self.recordings[i].path), self.cache.sample_rate)
            self._energy[i] = np.concatenate([[0.0], np.cumsum(e)])
        return self._energy[i]

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]] | None:
        i = int(rng.integers(len(self.recordings)))
        rec, x = self.recordings[i], self.cache.load(self.recordings[i].path)
        if len(x) < n:
            return None
        hop = max(1, self.cache.sample_rate // 100)
        cum, frames = self._cumulative_energy(i), max(1, n // hop)
        starts = rng.integers(0, max(1, len(cum) - frames), size=self.CANDIDATES)
        start = int(starts[np.argmin(cum[np.minimum(starts + frames, len(cum) - 1)] - cum[starts])]) * hop
        out = np.array(x[start:start + n], np.float32)
        if len(out) < n or power(out) < 1e-12:
            return None
        masked = [self.index[lab] for lab in rec.labels + rec.secondary if lab in self.index]
        return out / np.sqrt(power(out)), masked


class ImpulseResponses:
    """Room and forest reverberation: real impulse responses (files under an `impulse*` folder of the noise
    folder, which `NoiseBank` leaves out of backgrounds) or synthetic ones — a direct path, then Gaussian noise
    decaying by 60 dB over RT60 (a diffuse tail, as under a canopy)."""

    def __init__(self, files: list[str], cache):
        self.files, self.cache = list(files), cache

    @classmethod
    def from_dir(cls, noise_dir: str | Path | None, cache) -> "ImpulseResponses":
        if not noise_dir or not Path(noise_dir).is_dir():
            return cls([], cache)
        from .datasets import AUDIO_EXTENSIONS
        root = Path(noise_dir)
        files = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                       and any("impulse" in part.lower() for part in p.relative_to(root).parts))
        return cls(files, cache)

    def sample(self, rng: np.random.Generator, sample_rate: int, rt60_s: tuple[float, float]) -> np.ndarray:
        if self.files and self.cache is not None and rng.random() < 0.3:
            ir = np.asarray(self.cache.load(self.files[int(rng.integers(len(self.files)))]), np.float32)
            ir = ir[int(np.argmax(np.abs(ir))):][:sample_rate]          # from its direct path, at most 1 s
        else:
            rt60 = float(rng.uniform(*rt60_s))
            t = np.arange(int(min(rt60, 1.0) * sample_rate)) / sample_rate
            ir = (rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)).astype(np.float32)
            ir[0] = 0.0
        return ir


@functools.lru_cache(maxsize=256)
def _lowpass_sos(cutoff_hz: int, sample_rate: int) -> np.ndarray:
    from scipy.signal import butter
    return butter(2, cutoff_hz, fs=sample_rate, output="sos")


def lowpass(x: np.ndarray, cutoff_hz: float, sample_rate: int) -> np.ndarray:
    """Second-order Butterworth low-pass (the design cached per 50 Hz of cut-off: designing cost as much as
    filtering)."""
    from scipy.signal import sosfilt
    if cutoff_hz >= 0.45 * sample_rate:
        return x
    return sosfilt(_lowpass_sos(int(round(cutoff_hz / 50)) * 50, sample_rate), x).astype(np.float32)


def _active_span(track: np.ndarray) -> tuple[int, int]:
    """[first, last + 1) of the nonzero samples: filters and convolutions need not run over the silence before
    the first note (a track is silent where its species does not call)."""
    nz = np.flatnonzero(track)
    return (int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, 0)


def propagate(track: np.ndarray, rng: np.random.Generator, aug: AugmentConfig, sample_rate: int,
              irs: ImpulseResponses | None) -> tuple[np.ndarray, float]:
    """One species' track as heard from farther away and in a reverberant place: low-passed (distance) and/or
    convolved with an impulse response (`ImpulseResponses`; the tail past the window is dropped). Both run from
    the first note on only. Returns the track and the extra attenuation in dB that distance asks for (the
    caller lowers the call's SNR by it)."""
    attenuation = 0.0
    a, _ = _active_span(track)
    if aug.distance_prob > 0 and rng.random() < aug.distance_prob:
        cutoff = float(np.exp(rng.uniform(*np.log(aug.lowpass_hz))))
        track = np.concatenate([track[:a], lowpass(track[a:], cutoff, sample_rate)]).astype(np.float32)
        attenuation = float(rng.uniform(0.0, aug.distance_db))
    if irs is not None and aug.reverb_prob > 0 and rng.random() < aug.reverb_prob:
        from scipy.signal import fftconvolve
        ir = irs.sample(rng, sample_rate, aug.reverb_rt60_s)
        _, b = _active_span(track)
        wet = np.zeros_like(track)
        tail = fftconvolve(track[a:b], ir)[:len(track) - a]
        wet[a:a + len(tail)] = tail
        wet *= np.sqrt(power(track) / max(power(wet), 1e-12)) * db_to_gain(float(rng.uniform(*aug.reverb_wet_db)))
        track = (track + wet).astype(np.float32)
    return track, attenuation


def eq_curve(rng: np.random.Generator, aug: AugmentConfig, n_mels: int) -> np.ndarray:
    """A microphone's colour as a smooth random gain in dB over the mel bands (three cosines and a tilt, scaled
    so its largest excursion is up to `eq_db`), zeros when not drawn. Added to the log-mel (dB) in training."""
    if aug.eq_prob <= 0 or rng.random() >= aug.eq_prob:
        return np.zeros(n_mels, np.float32)
    x = np.linspace(0.0, 1.0, n_mels)
    curve = rng.uniform(-1, 1) * (x - 0.5)
    for k in (1, 2, 3):
        curve += rng.uniform(-1, 1) / k * np.cos(np.pi * k * x + rng.uniform(0, 2 * np.pi))
    curve *= rng.uniform(0, aug.eq_db) / max(np.abs(curve).max(), 1e-6)
    return curve.astype(np.float32)


COLOR_BANK_SAMPLES = 1 << 20                     # 33 s at 32 kHz of each colour, made once per process


@functools.lru_cache(maxsize=None)
def _color_bank(color: str) -> np.ndarray:
    seed = NOISE_COLORS.index(color) if color in NOISE_COLORS else 99
    return colored_noise(COLOR_BANK_SAMPLES, color, np.random.default_rng([7349, seed]))


# ------------------------------------------------------------------------------------- tempo and pitch

class TempoPitchLogMel:
    """The model's raw log-mel of training windows, each with its own tempo and pitch (training only).

    Tempo: a window's T frames are taken `hop` samples apart instead of the model's `hop_length`. With
    hop = hop_length / f the T frames cover (T-1)·hop samples and are shown to the network as the nominal window:
    the audio f times slower (f > 1) or faster, each frame's spectrum unchanged, i.e. the pitch kept.
    Pitch: the mel filterbank is built for a sample rate of sample_rate·2^(s/12), so energy at x Hz falls in the
    band of x·2^(s/12) Hz; hop and duration are unchanged.
    Both are exact in the log-mel domain and cost one STFT per distinct (hop, semitones) in the batch, where the
    phase vocoder cost 28 ms per 5 s window and call. The frontends are the model's own class, so the log-mel
    of an unchanged window (hop_length, 0 semitones) is the model's frontend's, number for number."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.frames = int(round(cfg.window_s * cfg.sample_rate)) // cfg.hop_length + 1   # T of a nominal window
        self._frontends: dict[tuple[int, float], object] = {}

    def samples(self, hop: int) -> int:
        """Audio a window read with `hop` spans: (T - 1) · hop samples."""
        return (self.frames - 1) * int(hop)

    def hop_for(self, factor: float) -> int:
        """The hop that shows the audio `factor` times longer (quantised to whole samples)."""
        return max(1, int(round(self.cfg.hop_length / factor)))

    def frontend(self, hop: int, semitones: float):
        key = (int(hop), round(float(semitones), 3))
        if key not in self._frontends:
            import dataclasses
            from birdlive.model import LogMelFrontend
            cfg = dataclasses.replace(self.cfg, hop_length=key[0],
                                      sample_rate=self.cfg.sample_rate * 2 ** (key[1] / 12))
            self._frontends[key] = LogMelFrontend(cfg).eval()
        return self._frontends[key]

    def __call__(self, wave, hops, semitones):
        """wave (B, N ≥ samples(max hop)), hops (B,) int, semitones (B,) → (B, 1, T, n_mels) raw log-mel."""
        import torch
        pairs = list(zip(hops.tolist(), semitones.tolist()))
        out = None
        for key in sorted(set(pairs)):
            idx = torch.tensor([i for i, p in enumerate(pairs) if p == key], device=wave.device)
            front = self.frontend(*key).to(wave.device)
            x = front(wave[idx, :self.samples(key[0])])
            if out is None:
                out = x.new_empty((len(pairs), *x.shape[1:]))
            out[idx] = x
        return out


# ------------------------------------------------------------------------------------------ examples

@dataclass
class Example:
    """One training window and its targets. Masks say which targets are known (1) or unknown (0, no loss):
    weak (clip-level) labels know nothing about *when* a species present in the clip calls, and a background
    (secondary) species may or may not be in a crop."""
    wave: np.ndarray            # (n,)
    clip_target: np.ndarray     # (K,)
    clip_mask: np.ndarray       # (K,)
    frame_target: np.ndarray    # (n_out, K)
    frame_mask: np.ndarray      # (n_out, K)

    @property
    def species(self) -> set[int]:
        return set(np.flatnonzero(self.clip_target > 0).tolist())


def weak_example(wave: np.ndarray, positives: list[int], unknown: list[int], num_classes: int,
                 n_out: int, soft: dict[int, float] | None = None) -> Example:
    """A window with clip-level labels: positives known present, `unknown` (secondary species) masked, except
    those in `soft` ({species: probability}, what a guide model of ours hears of them: `guide.py`), which are
    soft clip targets; framewise, every species *absent* from the clip is known absent in every frame, the others
    are masked."""
    ct = np.zeros(num_classes, np.float32)
    cm = np.ones(num_classes, np.float32)
    ct[positives] = 1.0
    cm[unknown] = 0.0
    for k, p in (soft or {}).items():
        ct[k], cm[k] = p, 1.0
    fm = np.ones((n_out, num_classes), np.float32)
    fm[:, list(positives) + list(unknown)] = 0.0
    return Example(np.asarray(wave, np.float32), ct, cm, np.zeros((n_out, num_classes), np.float32), fm)


def mix(examples: list[Example], gains_db: list[float]) -> Example:
    """Sum of the waves with the given gains; targets are the union. A target is known in the mix when it is known
    in every part, or surely present (a known hard positive) in some part: a soft target (a background species
    the guide half hears) beside a part where the species is unknown is unknown."""
    wave = np.asarray(sum(db_to_gain(g) * e.wave for e, g in zip(examples, gains_db)), np.float32)

    def union(targets, masks):
        pos = np.max([t * m for t, m in zip(targets, masks)], axis=0)
        known = np.maximum(np.min(masks, axis=0), pos >= 1.0)
        return pos.astype(np.float32), known.astype(np.float32)

    ct, cm = union([e.clip_target for e in examples], [e.clip_mask for e in examples])
    ft, fm = union([e.frame_target for e in examples], [e.frame_mask for e in examples])
    return Example(wave, ct, cm, ft, fm)
