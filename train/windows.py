"""Training windows (a torch `Dataset` of fresh augmented windows, indexed by a global window number) and the
fixed validation set.

Sources: weakly labelled *recordings* (field recordings, any length: energy crops) and, optionally, a snippet pool
composed into windows with strong labels (`composer.py`). Each training window:

  0. draw its tempo factor f and pitch shift s (`augment.TempoPitchLogMel`): the window is made of
     (T-1)·hop samples, hop = hop_length / f, and its framewise targets at out_fps · f frames per second of audio,
     so that shown as T frames it is the nominal window, f times slower (or faster), pitch moved by s;
  1. pick a source (recordings or snippets, `snippet_share`), then a species uniformly (`balance`) or a file
     uniformly, and make one component: an energy crop of a recording (or, with `--guide`, a crop around what
     the guide model hears, its background species soft targets: `guide.py`) or a composed window;
  2. with probability `mix_prob`, add further components of species not yet in the window with random gains,
     until `mix_max` species (labels: the union, `augment.mix`);
  3. random overall gain, then noise at a random SNR (coloured or a real background file);
  4. a microphone EQ curve (dB per mel band, `augment.eq_curve`), added to the log-mel by the training step.

Window i is drawn from a generator seeded by (seed, i) alone: a run is reproducible, a resumed run sees exactly
the windows it would have seen, whatever the DataLoader's workers, and windows are never repeated in order.
"""
from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import numpy as np
import torch

from birdlive.errors import OptionError

from .augment import (AugmentConfig, Example, NoiseBank, TempoPitchLogMel, add_noise, crop, crop_around, db_to_gain,
                      energy_profile, eq_curve, fix_length, mix, weak_example)
from .composer import Composer, NoSpeciesLeft
from .datasets import Recording
from .guide import GUIDED_CROP_PROB, GuideScores, GuideTrack, guided_start, soft_targets

# Tempo factors and pitch shifts are drawn on grids, so that a batch holds few distinct (hop, semitones) pairs:
# one STFT each (`TempoPitchLogMel`); at most 5 × 5 with the default ranges.
TEMPO_STEP = 0.05     # duration factor
PITCH_STEP = 0.25     # semitones


@dataclass(frozen=True)
class Geometry:
    """Where one window's samples and frames lie: `n` samples shown as the nominal window, `hop` samples per
    log-mel frame, framewise targets `fps` frames per second of the audio, pitch moved by `semitones`."""
    n: int
    hop: int
    fps: float
    semitones: float


class WindowSet(torch.utils.data.Dataset):
    def __init__(self, recordings: list[Recording], labels: list[str], cache, noise: NoiseBank,
                 augment: AugmentConfig, window_s: float, out_fps: float, epoch_size: int, seed: int = 0,
                 composer: Composer | None = None, snippet_share: float | None = None, balance: bool = True,
                 warp: TempoPitchLogMel | None = None):
        self.recs, self.labels, self.cache, self.noise, self.aug = recordings, list(labels), cache, noise, augment
        self.index = {lab: i for i, lab in enumerate(self.labels)}
        self.sr = cache.sample_rate
        self.n = int(round(window_s * self.sr))
        self.n_out = max(1, int(round(window_s * out_fps)))
        self.out_fps = out_fps
        self.epoch_size, self.seed = int(epoch_size), int(seed)
        self.warp = warp
        self.composer = composer if composer is not None and composer.species else None
        if not self.recs and self.composer is None:
            raise OptionError("no training recordings and no snippets")
        if snippet_share is None:
            snippet_share = 0.5 if self.recs else 1.0
        self.snippet_share = snippet_share if self.composer is not None else 0.0
        if not self.recs:
            self.snippet_share = 1.0
        self.balance = balance
        self.by_species: dict[str, list[int]] = {}
        for i, r in enumerate(self.recs):
            self.by_species.setdefault(r.primary, []).append(i)
        self._profiles: dict[int, np.ndarray] = {}
        self.guide: GuideScores | None = None    # `--guide`: set by the loop once the guide pass is done

    def __len__(self) -> int:
        return self.epoch_size

    @property
    def max_samples(self) -> int:
        """Every window's wave is padded to this length (the slowest tempo's span)."""
        if self.warp is None or self.aug.stretch_prob <= 0:
            return self.n
        return max(self.n, self.warp.samples(self.warp.hop_for(min(self.aug.stretch_range))))

    def prepare(self) -> None:
        """Energy profiles of every recording and the snippets' memory map, made once here (before DataLoader
        workers fork and share them)."""
        for i in range(len(self.recs)):
            self._profile(i)
        if self.composer is not None:
            self.composer.pool.open()
            if self.composer.backgrounds is not None:
                self.composer.backgrounds.prepare()

    def _profile(self, i: int) -> np.ndarray:
        if i not in self._profiles:
            self._profiles[i] = energy_profile(self.cache.load(self.recs[i].path), self.sr)
        return self._profiles[i]

    # ------------------------------------------------------------------------------------------------
    def geometry(self, rng: np.random.Generator) -> Geometry:
        aug, warp = self.aug, self.warp
        if warp is None:
            return Geometry(self.n, 0, self.out_fps, 0.0)
        hop = warp.cfg.hop_length
        if aug.stretch_prob > 0 and rng.random() < aug.stretch_prob:
            hop = warp.hop_for(round(float(rng.uniform(*aug.stretch_range)) / TEMPO_STEP) * TEMPO_STEP)
        semis = 0.0
        if aug.pitch_prob > 0 and rng.random() < aug.pitch_prob:
            semis = round(float(rng.uniform(-aug.pitch_semitones, aug.pitch_semitones)) / PITCH_STEP) * PITCH_STEP
        n = warp.samples(hop)
        return Geometry(n, hop, self.out_fps * self.n / n, semis)

    def _recording_example(self, rng: np.random.Generator, exclude: AbstractSet[str], g: Geometry) -> Example | None:
        if self.balance:
            species = [s for s in self.by_species if s not in exclude]
            if not species:
                return None
            pool = self.by_species[species[int(rng.integers(len(species)))]]
            i = pool[int(rng.integers(len(pool)))]
        else:
            pool = [i for i, r in enumerate(self.recs) if not exclude & set(r.labels)]
            if not pool:
                return None
            i = pool[int(rng.integers(len(pool)))]
        rec = self.recs[i]
        track = self.guide.tracks.get(rec.path) if self.guide is not None else None
        w, start = self._crop(i, g, rng, track)
        pos = [self.index[lab] for lab in rec.labels if lab in self.index]
        unk = [self.index[lab] for lab in rec.secondary if lab in self.index]
        soft: dict[int, float] = {}
        if self.guide is not None and track is not None and start is not None:
            heard = soft_targets(track, self.guide.fps, start, g.n, self.sr)
            soft = {self.index[lab]: v for lab, v in heard.items() if lab in self.index}
        return weak_example(w, pos, unk, len(self.labels), self.n_out, soft)

    def _crop(self, i: int, g: Geometry, rng: np.random.Generator, track: GuideTrack | None
              ) -> tuple[np.ndarray, int | None]:
        """Recording i's window of g.n samples and its start in the recording (None: unknown)."""
        rec, x = self.recs[i], self.cache.load(self.recs[i].path)
        if rec.call_s is not None:     # a clip whose call time is known (Alberta): the crop must hold it
            return crop_around(x, g.n, rng, rec.call_s, self.sr), None
        start = None
        # without a guide no number is drawn here: the windows of unguided runs stay what they were
        if self.guide is not None and track is not None and rng.random() < GUIDED_CROP_PROB:
            start = guided_start(track.scores[:, 0], self.guide.fps, g.n, len(x), self.sr, rng)
        if start is not None:
            return np.array(x[start:start + g.n]), start
        return crop(x, g.n, rng, self.aug.energy_crop, self.sr, self._profile(i))

    def component(self, rng: np.random.Generator, g: Geometry, exclude: AbstractSet[str] = frozenset(),
                  max_species: int | None = None) -> Example | None:
        if self.composer is not None and rng.random() < self.snippet_share:
            k = None
            if max_species is not None:
                k = int(rng.integers(1, max_species + 1))
            elif self.aug.mix_prob <= 0:
                k = 1   # no mixing asked for: one species per composed window
            try:
                return self.composer.compose(rng, exclude=exclude, n_species=k, n=g.n, fps=g.fps)[0]
            except NoSpeciesLeft:
                return None
        return self._recording_example(rng, exclude, g) if self.recs else None

    def example(self, rng: np.random.Generator, g: Geometry | None = None) -> Example:
        aug = self.aug
        g = g or Geometry(self.n, 0, self.out_fps, 0.0)
        ex = None
        for _ in range(10):   # a composed window whose notes all fell outside it has no species: draw again
            ex = self.component(rng, g, max_species=1 if aug.mix_prob <= 0 else None)
            if ex is not None and ex.species:
                break
        if ex is None:
            raise RuntimeError("cannot draw a training window from the sources: 10 draws in a row held no species")
        if aug.mix_prob > 0 and rng.random() < aug.mix_prob:
            parts, gains = [ex], [0.0]
            target = int(rng.integers(2, max(2, aug.mix_max) + 1))
            for _ in range(4):
                have = set().union(*(p.species for p in parts))
                if len(have) >= target:
                    break
                other = self.component(rng, g, exclude={self.labels[i] for i in have},
                                       max_species=target - len(have))
                if other is not None and other.species and not other.species & have:
                    parts.append(other)
                    gains.append(float(rng.uniform(*aug.mix_gain_db)))
            if len(parts) > 1:
                ex = mix(parts, gains)
        wave = ex.wave
        if aug.gain_prob > 0 and rng.random() < aug.gain_prob:
            wave = wave * db_to_gain(float(rng.uniform(*aug.gain_db)))
        if aug.noise_prob > 0 and rng.random() < aug.noise_prob:
            wave = add_noise(wave, self.noise.sample(g.n, rng, aug.noise_colors, aug.noise_file_prob),
                             float(rng.uniform(*aug.snr_db)))
        ex.wave = np.clip(wave, -4.0, 4.0).astype(np.float32)
        return ex

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(i)])
        g = self.geometry(rng)
        ex = self.example(rng, g)
        wave = np.zeros(self.max_samples, np.float32)
        wave[:len(ex.wave)] = ex.wave
        eq_db = eq_curve(rng, self.aug, self.warp.cfg.n_mels if self.warp is not None else 1)
        return {"wave": torch.from_numpy(wave), "hop": torch.tensor(g.hop), "semitones": torch.tensor(g.semitones),
                "eq_db": torch.from_numpy(eq_db),
                "clip_target": torch.from_numpy(ex.clip_target), "clip_mask": torch.from_numpy(ex.clip_mask),
                "frame_target": torch.from_numpy(ex.frame_target), "frame_mask": torch.from_numpy(ex.frame_mask)}


# --------------------------------------------------------------------------------------- validation

@dataclass
class EvalItem:
    """One evaluation unit: a file cut into windows (scored by the max over them), or one composed window."""
    name: str
    windows: np.ndarray          # (W, n)
    target: np.ndarray           # (K,)
    mask: np.ndarray             # (K,)


def file_windows(x: np.ndarray, n: int, hop: int, max_windows: int | None = None) -> np.ndarray:
    """Windows of `n` samples every `hop` covering the file (the last one padded), evenly thinned to
    `max_windows` when there are more."""
    x = np.asarray(x, np.float32)
    if len(x) <= n:
        return fix_length(x, n)[None]
    starts = list(range(0, len(x) - n + 1, hop))
    if starts[-1] + n < len(x):
        starts.append(len(x) - n)
    if max_windows and len(starts) > max_windows:
        starts = [starts[int(i)] for i in np.linspace(0, len(starts) - 1, max_windows).round()]
    return np.stack([x[s:s + n] for s in starts])


def recording_items(recordings: list[Recording], labels: list[str], cache, window_s: float, hop_s: float,
                    max_windows: int | None = None) -> list[EvalItem]:
    index = {lab: i for i, lab in enumerate(labels)}
    n, hop = int(round(window_s * cache.sample_rate)), int(round(hop_s * cache.sample_rate))
    items = []
    for r in recordings:
        t = np.zeros(len(labels), np.float32)
        m = np.ones(len(labels), np.float32)
        t[[index[lab] for lab in r.labels if lab in index]] = 1.0
        m[[index[lab] for lab in r.secondary if lab in index]] = 0.0
        items.append(EvalItem(r.path, file_windows(cache.load(r.path), n, hop, max_windows), t, m))
    return items


def composed_items(composer: Composer, count: int, seed: int) -> list[EvalItem]:
    """A fixed set of composed windows (same seed → same windows), for validation on held-out snippet runs."""
    items: list[EvalItem] = []
    rng = np.random.default_rng([seed, 7919])
    while len(items) < count:
        ex, _ = composer.compose(rng)
        if ex.species:
            items.append(EvalItem(f"composed-{len(items)}", ex.wave[None], ex.clip_target, ex.clip_mask))
    return items


def predict_items(model, items: list[EvalItem], batch_size: int = 16, device="cpu") -> np.ndarray:
    """(len(items), K) clipwise scores: the max over each item's windows. Only the clipwise output is read, so
    any network with one will do (an ensemble's mean, an ONNX graph)."""
    return _predict(model, items, batch_size, device, peaks=False)[0]


def predict_items_and_peaks(model, items: list[EvalItem], batch_size: int = 16,
                            device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """Two (len(items), K) arrays from one pass: the clipwise scores and the framewise peaks (the highest frame of
    each species, what the event track is made of), each the max over the item's windows."""
    return _predict(model, items, batch_size, device, peaks=True)


@torch.no_grad()
def _predict(model, items: list[EvalItem], batch_size: int, device, peaks: bool) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    flat = [(k, w) for k, it in enumerate(items) for w in it.windows]
    clip = np.zeros((len(items), model.cfg.num_classes), np.float32)
    peak = np.zeros_like(clip)
    for s in range(0, len(flat), batch_size):
        chunk = flat[s:s + batch_size]
        out = model(torch.from_numpy(np.stack([w for _, w in chunk])).to(device))
        c = out["clipwise"].float().cpu().numpy()
        f = out["framewise"].float().amax(1).cpu().numpy() if peaks else c
        for (k, _), c_row, f_row in zip(chunk, c, f):
            clip[k] = np.maximum(clip[k], c_row)
            peak[k] = np.maximum(peak[k], f_row)
    return clip, peak
