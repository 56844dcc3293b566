"""Does the recording's absolute level steer the model? The North American field test recordings (never trained
on) scored at several gains: recording top-1 (max over the stitched track, hop 1 s) and the right species' median
rank among all the model's species.

    nice -n 10 .venv/bin/python benchmarks/level_probe.py [--model model/weights/default] [--gains -30,-20,-10,0]

A diagnostic for issue 16 (North American birds in real recordings): if quieter copies of the same recordings rank
the right species much higher, the model has tied its North American species (learnt from snippets composed at
modest levels) to level, and a wider gain augmentation is a lever.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from birdlive.model.checkpoint import load_checkpoint
from birdlive.streamer.core.offline import framewise_track
from birdlive.train.cache import AudioCache
from birdlive.train.evaluation import na_field_data

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "model" / "weights" / "default"))
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--gains", default="-30,-20,-10,0", help="dB, applied to the whole recording")
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = load_checkpoint(a.model)
    mc = model.cfg
    recs = na_field_data(a.data_root, mc.labels, mc.names).recordings
    cache = AudioCache(None, mc.sample_rate)
    waves = [np.asarray(cache.load(r.path), np.float32) for r in recs]
    rms = [20 * np.log10(np.sqrt(np.mean(w.astype(np.float64) ** 2)) + 1e-12) for w in waves]
    print(f"{len(recs)} recordings, RMS median {np.median(rms):.1f} dBFS")
    print(f"{'gain dB':>7} {'top-1':>6} {'median rank':>11}")
    for gain_db in [float(g) for g in a.gains.split(",")]:
        gain = 10 ** (gain_db / 20)
        right, ranks = 0, []
        for r, w in zip(recs, waves):
            scores = framewise_track(model, w * gain, 1.0).max(0)
            label = mc.labels.index(r.primary)
            right += int(scores.argmax() == label)
            ranks.append(int((scores > scores[label]).sum()) + 1)
        print(f"{gain_db:7.0f} {right / len(recs):6.3f} {np.median(ranks):11.1f}")


if __name__ == "__main__":
    main()
