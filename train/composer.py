"""Training windows composed from short call snippets, with strong (framewise) targets.

A snippet set is any folder-per-species dataset of short calls (the essential set: single notes and phrases,
0.14 s median). For each of 1-3 species, the composer takes a *sequence*: consecutive notes of one recording run
of that species, in their original order, placed one after another with inter-note gaps drawn from a range,
starting anywhere in the window. Each species gets its own level, drawn as an SNR (RMS over the samples its
notes occupy, against the RMS of the background), over a bed of background noise (coloured noise or real noise
files). Because the composer knows where every note is, it returns framewise targets at the model's output rate:
frame j (covering [j, j+1)/out_fps) is 1 for a species when one of its notes covers at least half of the frame,
or half of the note when the note is shorter than a frame. Every target of a composed window is known (masks 1).

The bed is coloured noise or a real noise file, or (v3, `AugmentConfig.field_background_prob`) the quieter
stretch of a real training recording (`augment.FieldBackgrounds`), whose own species are then masked out of the
loss: unknown, not absent. Each species' track may be heard from farther away and in a reverberant place
(`augment.propagate`: low-pass, lower SNR, impulse response) before it is added; targets keep the notes' direct
times.

A run shorter than the number of notes drawn is repeated from its start (birds repeat their notes). The gaps are
drawn one by one (`gap_s`, 0.05-0.6 s), or with `tempo_gap_s` (`birdlive train --note-gap`) as one steady tempo
per sequence, so that repeated notes can form the fast trills of real songs (otherwise a 0.14-s note comes at
most about five times a second, twice on average: no snippet species is ever heard trilling). Tempo and
pitch changes act later, on the whole training window, in the log-mel domain (`augment.TempoPitchLogMel`): the
composer only makes a window of the length and the frame rate it is asked for (`compose(..., n, fps)`).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import numpy as np

from .augment import (AugmentConfig, Example, FieldBackgrounds, ImpulseResponses, NoiseBank, config_fields, db_to_gain,
                      power, propagate)
from .datasets import Recording


class NoSpeciesLeft(LookupError):
    """Every species the composer has is excluded (a mixture already holds them all): draw something else."""


@dataclass
class ComposerConfig:
    species: tuple[int, int] = (1, 3)             # species per composed window (inclusive)
    notes: tuple[int, int] = (2, 16)              # notes per sequence (inclusive; fewer when the run ends)
    gap_s: tuple[float, float] = (0.05, 0.6)      # silence between consecutive notes (each drawn alone)
    # or, when set, one tempo per sequence: a gap drawn log-uniformly in this range, each note's within ±25 % of it
    tempo_gap_s: tuple[float, float] | None = None
    sequences: tuple[int, int] = (1, 2)           # sequences per species in one window
    snr_db: tuple[float, float] = (0.0, 25.0)     # call RMS (over its notes) vs background RMS
    background_dbfs: tuple[float, float] = (-55.0, -30.0)  # RMS of the noise bed
    min_note_s: float = 0.02                      # drop notes shorter than this

    def to_dict(self) -> dict:
        import dataclasses
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ComposerConfig":
        return cls(**config_fields(cls, d))


def frame_activity(n_out: int, out_fps: float, intervals: list[tuple[float, float]]) -> np.ndarray:
    """(n_out,) 0/1: frames covered by the intervals (seconds) as described in the module docstring."""
    act = np.zeros(n_out, np.float32)
    flen = 1.0 / out_fps
    for a, b in intervals:
        if b <= a:
            continue
        need = 0.5 * min(flen, b - a)
        j0, j1 = max(0, int(np.floor(a * out_fps))), min(n_out - 1, int(np.ceil(b * out_fps)))
        for j in range(j0, j1 + 1):
            ov = min(b, (j + 1) * flen) - max(a, j * flen)
            if ov >= need - 1e-9:
                act[j] = 1.0
    return act


class SnippetPool:
    """Snippets grouped into runs: {species: [[Recording, ...] in original order, ...]}. Their audio is one memory
    map of all of them (`AudioCache.pack`), shared by every DataLoader worker through the page cache."""

    def __init__(self, recordings: list[Recording], cache, min_note_s: float = 0.02):
        runs: dict[tuple[str, str], list[Recording]] = defaultdict(list)
        for r in recordings:
            runs[(r.primary, r.group)].append(r)
        self.runs: dict[str, list[list[Recording]]] = defaultdict(list)
        for (species, _), rs in sorted(runs.items()):
            self.runs[species].append(sorted(rs, key=lambda r: r.path))
        self.cache = cache
        self.min_note_s = min_note_s
        self._paths = sorted({r.path for r in recordings})
        self._audio: tuple[np.ndarray, dict[str, tuple[int, int]]] | None = None   # packed on first use

    @property
    def species(self) -> list[str]:
        return sorted(self.runs)

    def __len__(self) -> int:
        return sum(len(v) for v in self.runs.values())

    def open(self) -> None:
        """Pack (the first time) and map the snippets' audio; done before DataLoader workers fork."""
        self._packed()

    def _packed(self) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
        """(all snippets' audio, path → (start, end) in it), packed the first time."""
        if self._audio is None:
            audio, offsets = self.cache.pack(self._paths)
            self._audio = audio, {p: (int(a), int(b)) for p, a, b in zip(self._paths, offsets[:-1], offsets[1:])}
        return self._audio

    def audio(self, path: str) -> np.ndarray:
        audio, where = self._packed()
        a, b = where[path]
        return audio[a:b]

    def sequence(self, species: str, rng: np.random.Generator, n_notes: int) -> list[np.ndarray]:
        run = self.runs[species][int(rng.integers(len(self.runs[species])))]
        i0 = int(rng.integers(len(run)))
        notes = []
        for r in (run[(i0 + j) % len(run)] for j in range(n_notes)):   # a short run repeats, as birds do
            x = self.audio(r.path)
            if len(x) >= self.min_note_s * self.cache.sample_rate:
                notes.append(x)
        return notes


class Composer:
    def __init__(self, pool: SnippetPool, labels: list[str], noise: NoiseBank, sample_rate: int, out_fps: float,
                 window_s: float, cfg: ComposerConfig | None = None, augment: AugmentConfig | None = None,
                 backgrounds: FieldBackgrounds | None = None, irs: ImpulseResponses | None = None):
        self.pool, self.labels, self.noise = pool, list(labels), noise
        self.backgrounds = backgrounds if backgrounds is not None and len(backgrounds) else None
        self.irs = irs
        self.index = {lab: i for i, lab in enumerate(self.labels)}
        self.sr, self.out_fps, self.window_s = sample_rate, out_fps, window_s
        self.cfg = cfg or ComposerConfig()
        self.aug = augment or AugmentConfig.none()
        self.species = [s for s in pool.species if s in self.index]

    @property
    def n(self) -> int:
        return int(round(self.window_s * self.sr))

    @property
    def n_out(self) -> int:
        return max(1, int(round(self.window_s * self.out_fps)))

    def sequence(self, species: str, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Notes of one run with gaps, as one array, and each note's (start, end) sample in it."""
        cfg, sr = self.cfg, self.sr
        notes = self.pool.sequence(species, rng, int(rng.integers(cfg.notes[0], cfg.notes[1] + 1)))
        if not notes:
            return np.zeros(0, np.float32), []
        gaps = [int(g * sr) for g in self.gaps(len(notes) - 1, rng)] + [0]
        seq = np.zeros(sum(len(x) for x in notes) + sum(gaps), np.float32)
        spans, t = [], 0
        for x, g in zip(notes, gaps):
            seq[t:t + len(x)] = x
            spans.append((t, t + len(x)))
            t += len(x) + g
        return seq, spans

    def gaps(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Seconds of silence after each of a sequence's first `count` notes. With `tempo_gap_s` the sequence
        keeps one tempo (a trill's 20 notes/s or a call every half second, as birds repeat notes), drawn
        log-uniformly so that fast trills are as common as spaced calls; otherwise each gap is uniform in `gap_s`."""
        cfg = self.cfg
        if cfg.tempo_gap_s is None:
            return rng.uniform(*cfg.gap_s, size=count)
        lo, hi = np.log(cfg.tempo_gap_s[0]), np.log(cfg.tempo_gap_s[1])
        return np.exp(rng.uniform(lo, hi)) * rng.uniform(0.75, 1.25, size=count)

    def track(self, species: str, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
        """One species' sequences on a silent track of `n` samples, and their notes' (onset, offset) s.
        A sequence may start before the window or run past its end, but touches it."""
        sr = self.sr
        track = np.zeros(n, np.float32)
        intervals = []
        for _ in range(int(rng.integers(self.cfg.sequences[0], self.cfg.sequences[1] + 1))):
            seq, spans = self.sequence(species, rng)
            if not spans:
                continue
            first = spans[0][1] - spans[0][0]
            t = int(rng.integers(-first // 2, n - first // 2))
            a, b = max(0, t), min(n, t + len(seq))
            if b <= a:
                continue
            track[a:b] += seq[a - t:b - t]
            for s0, s1 in spans:
                lo, hi = max(0, t + s0), min(n, t + s1)
                if hi > lo:
                    intervals.append((lo / sr, hi / sr))
        return track, intervals

    def compose(self, rng: np.random.Generator, exclude: AbstractSet[str] = frozenset(), n_species: int | None = None,
                n: int | None = None, fps: float | None = None) -> tuple[Example, list[tuple[str, float, float]]]:
        """A composed window: (Example with strong targets, [(species, onset_s, offset_s)] of every note).
        `n` samples (default: the window's) with framewise targets `fps` frames a second (default: the model's
        output rate) — a window that will be shown slower or faster has other values of both; it always has
        `n_out` frames."""
        cfg, K = self.cfg, len(self.labels)
        n, fps = n or self.n, fps or self.out_fps
        choices = [s for s in self.species if s not in exclude]
        if not choices:
            raise NoSpeciesLeft("every snippet species is excluded from this window")
        k = n_species or int(rng.integers(cfg.species[0], cfg.species[1] + 1))
        chosen = list(rng.choice(choices, size=min(k, len(choices)), replace=False))
        noise_rms = db_to_gain(float(rng.uniform(*cfg.background_dbfs)))
        bed, masked = self.bed(n, rng)
        wave = bed * noise_rms
        ct = np.zeros(K, np.float32)
        ft = np.zeros((self.n_out, K), np.float32)
        events = []
        for sp in chosen:
            track, intervals = self.track(sp, rng, n)
            n_active = np.count_nonzero(track)
            if not intervals or not n_active:
                continue
            call_rms = np.sqrt(power(track) * len(track) / n_active)   # RMS over the samples its notes occupy
            track, attenuation_db = propagate(track, rng, self.aug, self.sr, self.irs)
            target_rms = noise_rms * db_to_gain(float(rng.uniform(*cfg.snr_db)) - attenuation_db)
            wave += track * (target_rms / (call_rms + 1e-12))
            act = frame_activity(self.n_out, fps, intervals)
            k = self.index[sp]
            ft[:, k] = np.maximum(ft[:, k], act)
            ct[k] = 1.0 if act.any() else ct[k]
            events += [(sp, a, b) for a, b in intervals]
        cm, fm = np.ones(K, np.float32), np.ones_like(ft)
        for k in masked:      # the bed's own species: unknown, except where a composed note of it is
            cm[k] = ct[k]
            fm[:, k] = ft[:, k]
        return Example(wave.astype(np.float32), ct, cm, ft, fm), events

    def bed(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
        """The window's background at unit RMS, and the labels it may hold (a field recording's species)."""
        if self.backgrounds is not None and rng.random() < self.aug.field_background_prob:
            got = self.backgrounds.sample(n, rng)
            if got is not None:
                return got
        return self.noise.sample(n, rng, self.aug.noise_colors, self.aug.noise_file_prob), []
