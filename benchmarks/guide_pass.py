"""`train --guide`: what the guide pass costs on the real training recordings, and what it changes in the crops.

    .venv/bin/python benchmarks/guide_pass.py [--guide model/weights/default] [--threads 1]

Data: the training recordings (the split's `train` groups) of ../shared/data/xc-puerto-rico and
../shared/data/ovenbird-alberta under `model/weights/default_v3_run/split.json`, the v3 species list; decoded into
the usual cache first (not timed). Prints the pass's CPU and wall seconds (the scores go to a temporary file), and,
on the Puerto Rican recordings longer than a window where the guide hears the species, the guide's score of the
recording's species inside 5-s crops placed by the guide, by energy, and uniformly (20 each), and the share of
background species that an energy crop turns into soft targets.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from birdlive.train.augment import crop, energy_profile
from birdlive.train.cache import AudioCache
from birdlive.train.datasets import Split
from birdlive.train.evaluation import load_recordings
from birdlive.train.guide import HEARD_FLOOR, GuideScores, guide_pass, guided_start, soft_targets

DATA = ["../shared/data/xc-puerto-rico", "../shared/data/ovenbird-alberta"]
SR, WINDOW = 32000, 5 * 32000


def species_in_crop(scores: np.ndarray, fps: float, start: int) -> float:
    a = max(0, int(start / SR * fps))
    return float(scores[a:max(a + 1, int(np.ceil((start + WINDOW) / SR * fps)))].max())


def crop_figures(guide: GuideScores, cache: AudioCache, rng: np.random.Generator) -> None:
    got: dict[str, list[float]] = {"guided": [], "energy": [], "uniform": []}
    pairs = soft = used = 0
    for path, track in guide.tracks.items():
        x = cache.load(path)
        s = track.scores[:, 0].astype(np.float32)
        if "xc-puerto-rico" not in path or len(x) <= WINDOW or not len(s) or s.max() < HEARD_FLOOR:
            continue
        used += 1
        profile = energy_profile(x, SR)
        for _ in range(20):
            got["guided"].append(species_in_crop(s, guide.fps, guided_start(s, guide.fps, WINDOW, len(x), SR, rng)))
            energy_start = crop(x, WINDOW, rng, 1.0, SR, profile)[1]
            got["energy"].append(species_in_crop(s, guide.fps, energy_start))
            got["uniform"].append(species_in_crop(s, guide.fps, crop(x, WINDOW, rng, 0.0, SR, profile)[1]))
            pairs += track.scores.shape[1] - 1
            soft += len(soft_targets(track, guide.fps, energy_start, WINDOW, SR))
    print(f"{used} Puerto Rican training recordings longer than 5 s where the guide hears the species, 20 crops each:")
    for kind, v in got.items():
        print(f"  {kind:8s} crops: the guide's score of the species in the crop {np.mean(v):.2f} on average, "
              f"≥ 0.5 in {np.mean(np.array(v) >= 0.5):.0%}")
    print(f"  background species made soft targets in energy crops: {soft} of {pairs} ({soft / max(1, pairs):.0%})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guide", default="model/weights/default")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    species = [x.strip() for x in Path("model/weights/default_species_v3.txt").read_text().splitlines() if x.strip()]
    recs = load_recordings(DATA, [], species).recs
    train = Split.load("model/weights/default_v3_run/split.json").select(recs, "train")
    cache = AudioCache(None, SR)
    cache.warm([r.path for r in train])
    with tempfile.TemporaryDirectory() as tmp:
        cpu, wall = time.process_time(), time.time()
        guide = guide_pass(args.guide, train, cache, Path(tmp) / "guide.npz", args.threads, log=lambda _: None)
        cpu, wall = time.process_time() - cpu, time.time() - wall
        size = (Path(tmp) / "guide.npz").stat().st_size
    hours = sum(len(cache.load(r.path)) for r in train) / SR / 3600
    print(f"guide pass: {len(train)} training recordings, {hours:.2f} h of audio: {cpu:.1f} CPU s, {wall:.1f} wall s, "
          f"{size / 1024:.0f} KiB of scores")
    crop_figures(guide, cache, np.random.default_rng(0))


if __name__ == "__main__":
    main()
