"""Does the recording's absolute level steer the model? Held-out recordings scored at several gains: recording
top-1 (max over the stitched track, hop 1 s), the right species' median rank among all the model's species, and
(for the Puerto Rican test recordings) recording mAP.

    nice -n 10 .venv/bin/python benchmarks/level_probe.py [--model model/weights/default] [--gains=-30,-20,-10,0]
        [--set na_field|pr_test] [--run model/weights/default_v3b_run]

`na_field`: the North American xeno-canto recordings (test only); `pr_test`: the test split's Puerto Rican
recordings of `--run` (as evaluate_default.py reads them); `pr_val`: its validation recordings (the gate's, Alberta
clips apart), the set to read before choosing anything. A diagnostic for issue 16: a model that had learnt
level-invariant species would give the same figures at every gain; large swings say a wider gain augmentation
(`birdlive train --gain`) is a lever.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from evaluate_default import REPO, arguments, setup  # noqa: E402

from birdlive.streamer.core.offline import framewise_track  # noqa: E402
from birdlive.train.evaluate import clip_metrics  # noqa: E402
from birdlive.train.evaluation import ALBERTA_DIR, load_run, na_field_data, recording_windows, top1  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "model" / "weights" / "default"))
    ap.add_argument("--run", default=str(REPO / "model" / "weights" / "default_v3b_run"))
    ap.add_argument("--set", choices=["na_field", "pr_test", "pr_val"], default="na_field")
    ap.add_argument("--gains", default="-30,-20,-10,0", help="dB, applied to the whole recording")
    a = ap.parse_args()
    torch.set_num_threads(1)
    ctx = setup(arguments(["--model", a.model, "--run", a.run, "--out", "/dev/null"]))
    model, mc = ctx.model, ctx.mc
    if a.set == "pr_val":
        recs = [r for r in load_run(a.run).subset("val").long
                if r.group.split(":", 1)[0] != ALBERTA_DIR and r.primary in mc.labels]
    else:
        recs = ctx.pr_test if a.set == "pr_test" else na_field_data(ctx.data_root, mc.labels, mc.names).recordings
    waves = [np.asarray(ctx.cache.load(r.path), np.float32) for r in recs]
    rms = [20 * np.log10(np.sqrt(np.mean(w.astype(np.float64) ** 2)) + 1e-12) for w in waves]
    items, _, _ = recording_windows(recs, mc.labels, ctx.cache, mc.window_s)
    targets, masks = np.stack([it.target for it in items]), np.stack([it.mask for it in items])
    print(f"{a.set}: {len(recs)} recordings, RMS median {np.median(rms):.1f} dBFS")
    print(f"{'gain dB':>7} {'top-1':>6} {'median rank':>11} {'rec mAP':>8}")
    for gain_db in [float(g) for g in a.gains.split(",")]:
        gain = 10 ** (gain_db / 20)
        scores = np.stack([framewise_track(model, w * gain, 1.0).max(0) for w in waves])
        ranks = [int((s > s[mc.labels.index(r.primary)]).sum()) + 1 for s, r in zip(scores, recs)]
        m = clip_metrics(scores, targets, masks, mc.labels, mc.threshold_on, mc.names)["macro_map"]
        print(f"{gain_db:7.0f} {top1(scores, recs, mc.labels):6.3f} {np.median(ranks):11.1f} {m:8.3f}", flush=True)


if __name__ == "__main__":
    main()
