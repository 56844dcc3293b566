"""`--guide CHECKPOINT`: a model of our own tells training where in a weakly labelled recording its species calls
and whether its background (`also`) species are audible — self-distillation, never another detector's output.

Once per run, `guide_pass` scores every *training* recording (the split's validation and test recordings are never
given to it) with the guide, through the streamer's own scorer (`scorer_track`: the one log-mel and window
layout; ONNX Runtime where the checkpoint has a graph, else torch on the CPU), and keeps per recording the track
of its own species and of each `also` species, max-pooled to `GUIDE_FPS` and stored as float16 in RUN/guide.npz
(saved as it goes, so an interrupted pass resumes where it stopped). The windows then use it twice:

- crops (`guided_start`): with probability `GUIDED_CROP_PROB`, a recording's window is placed around an anchor
  drawn among the bins where the guide scores its own species at least `ANCHOR_FRACTION` of its maximum, weighted
  by the score squared. Sampling only near the top keeps crops on calls the guide is sure of without always
  taking the single loudest one; the square leans on the clear calls among those. Where the guide hears nothing
  (its maximum under `HEARD_FLOOR`), or the other times, the energy crop is used as before: the guide only knows
  what it already detects, and the energy crops keep the calls it misses in the diet.
- background species (`soft_targets`): an `also` species the guide scores above `HEARD_FLOOR` somewhere in the
  crop's span gets that score (the maximum of its track over the span) as a soft clip target; below the floor it
  stays masked, as without a guide. The primary species stays a hard positive.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from birdlive.files import atomic_path

from .datasets import Recording

GUIDE_FPS = 2.0           # kept scores per second of audio (max over 0.5 s): ample to place a window of seconds
GUIDE_OVERLAP = 0.5       # the guide's windows overlap by half: every frame but the ends is seen by two windows
HEARD_FLOOR = 0.3         # below this the guide does not hear the species (the shipped models' threshold_off)
GUIDED_CROP_PROB = 0.5    # share of recording crops placed by the guide (where it hears the species)
ANCHOR_FRACTION = 0.5     # anchors are drawn among bins scoring at least this fraction of the recording's maximum
SAVE_EVERY_S = 60.0       # the pass saves what it has (and logs a line) this often


@dataclass
class GuideTrack:
    species: list[str]        # the recording's own species first, then its `also` species the guide knows
    scores: np.ndarray        # (bins at GUIDE_FPS, len(species)) float16


class GuideScores:
    """The guide's tracks of the training recordings, by path; `guide` names the checkpoint they came from."""

    def __init__(self, guide: str, tracks: dict[str, GuideTrack] | None = None, fps: float = GUIDE_FPS):
        self.guide, self.fps, self.tracks = guide, float(fps), dict(tracks or {})

    def save(self, path: Path) -> None:
        paths = list(self.tracks)
        flat = [self.tracks[p].scores.reshape(-1) for p in paths]
        with atomic_path(path, durable=False) as tmp, open(tmp, "wb") as f:
            np.savez(f, guide=self.guide, fps=self.fps, paths=np.array(paths, dtype=str),
                     species=np.array([";".join(self.tracks[p].species) for p in paths], dtype=str),
                     bins=np.array([self.tracks[p].scores.shape[0] for p in paths], np.int64),
                     scores=np.concatenate(flat) if flat else np.zeros(0, np.float16))

    @classmethod
    def load(cls, path: Path, guide: str) -> "GuideScores":
        """What `save` wrote, if it was made by `guide` at this grid; else an empty set (to be scored anew)."""
        try:
            with np.load(path) as z:
                if str(z["guide"]) != guide or float(z["fps"]) != GUIDE_FPS:
                    return cls(guide)
                tracks, at = {}, 0
                for p, sp, bins in zip(z["paths"], z["species"], z["bins"]):
                    species = str(sp).split(";")
                    size = int(bins) * len(species)
                    tracks[str(p)] = GuideTrack(species, z["scores"][at:at + size].reshape(int(bins), len(species)))
                    at += size
                return cls(guide, tracks)
        except (OSError, ValueError, KeyError):
            return cls(guide)


def pooled(track: np.ndarray, factor: int) -> np.ndarray:
    """(frames, S) → (ceil(frames / factor), S): the maximum of each run of `factor` frames."""
    pad = -len(track) % factor
    if pad:
        track = np.concatenate([track, np.zeros((pad, track.shape[1]), track.dtype)])
    return track.reshape(-1, factor, track.shape[1]).max(axis=1)


def open_guide(guide: str, threads: int | None):
    """The guide's scorer: the lean ONNX one where STEM.onnx lies beside the checkpoint (1.8× less CPU than
    torch, one thread, measured on a 2-min recording), else torch on the CPU. `threads`: the run's `--threads`
    (None: ONNX Runtime takes every core, torch keeps the training's setting)."""
    from birdlive.model.checkpoint import graph_path
    from birdlive.streamer.core.scorer import load_scorer
    return load_scorer(guide, "onnx-float" if graph_path(guide).is_file() else "cpu", threads=threads)


def guide_pass(guide: str, recordings: list[Recording], cache, path: Path, threads: int | None = None,
               log=print) -> GuideScores:
    """The guide's tracks of `recordings` (the training ones), from `path` where it holds them, the rest scored
    now and saved to `path` as the pass goes."""
    from birdlive.streamer.core.offline import scorer_track
    done = GuideScores.load(path, guide) if path.is_file() else GuideScores(guide)
    todo = [r for r in recordings if r.path not in done.tracks]
    if not todo:
        log(f"guide: {len(done.tracks)} training recordings' scores from {path}")
        return done
    scorer = open_guide(guide, threads)
    cfg = scorer.cfg
    if cfg.sample_rate != cache.sample_rate:
        raise ValueError(f"guide {guide} runs at {cfg.sample_rate} Hz, training at {cache.sample_rate} Hz")
    index = {lab: i for i, lab in enumerate(cfg.labels)}
    factor = max(1, int(round(cfg.out_fps / GUIDE_FPS)))
    hop_s = max(1, round(cfg.window_s * GUIDE_OVERLAP * cfg.out_fps)) / cfg.out_fps   # whole output frames
    log(f"guide: scoring {len(todo)} training recordings with {guide}"
        + (f" ({len(done.tracks)} scored before)" if done.tracks else ""))
    t0 = last = time.time()
    seconds = 0.0
    for k, r in enumerate(todo, 1):
        species = [lab for lab in [r.primary] + r.secondary if lab in index]
        wave = np.asarray(cache.load(r.path), np.float32)
        seconds += len(wave) / cache.sample_rate
        if species:
            track = scorer_track(scorer, wave, hop_s)[:, [index[s] for s in species]]
            done.tracks[r.path] = GuideTrack(species, pooled(track, factor).astype(np.float16))
        else:                 # the guide does not know the species: energy crops, masked backgrounds
            done.tracks[r.path] = GuideTrack([r.primary], np.zeros((0, 1), np.float16))
        if time.time() - last >= SAVE_EVERY_S or k == len(todo):
            done.save(path)
            last = time.time()
            log(f"guide: {k}/{len(todo)} recordings scored ({seconds / 3600:.2f} h of audio, "
                f"{last - t0:.0f} s)")
    return done


def guided_start(scores: np.ndarray, fps: float, n: int, length: int, sample_rate: int,
                 rng: np.random.Generator) -> int | None:
    """A window start (samples) for `n` of `length` samples, around an anchor drawn where the guide's track of the
    recording's own species (`scores`, bins at `fps`) is near its maximum (module docstring); None where the guide
    hears nothing or the recording is no longer than the window."""
    s = np.asarray(scores, np.float64)
    if length <= n or not len(s) or s.max() < HEARD_FLOOR:
        return None
    weight = np.where(s >= ANCHOR_FRACTION * s.max(), s * s, 0.0)
    bin_ = int(rng.choice(len(s), p=weight / weight.sum()))
    anchor = (bin_ + rng.random()) / fps * sample_rate
    return int(np.clip(anchor - rng.uniform(0.25, 0.75) * n, 0, length - n))   # the anchor in the central half


def soft_targets(track: GuideTrack, fps: float, start: int, n: int, sample_rate: int) -> dict[str, float]:
    """The `also` species the guide hears in samples [start, start + n) of the recording: {label: its score, the
    maximum of its track over that span}, those above `HEARD_FLOOR` only."""
    if track.scores.shape[1] < 2 or not len(track.scores):
        return {}
    a = max(0, int(np.floor(start / sample_rate * fps)))
    b = max(a + 1, int(np.ceil((start + n) / sample_rate * fps)))
    span = np.asarray(track.scores[a:b, 1:], np.float32)
    if not len(span):
        return {}
    peak = span.max(axis=0)
    return {lab: float(v) for lab, v in zip(track.species[1:], peak) if v > HEARD_FLOOR}
