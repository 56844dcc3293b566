"""Underfitting or a generalisation gap? Composed windows (no augmentation, coloured noise, seeded) of the
snippet runs a model TRAINED on beside those of the held-out validation runs, macro mAP and top-1 each: a model
low on both still underfits its training notes (more steps, a lower learning rate help); one high on its
training notes and low on the held-out ones has learnt the runs, not the species.

    python benchmarks/fit_gap.py --run model/weights/default_v3l_run \
        --split model/weights/default_v3_run/split.json --models model/weights/default_v3t_run/step14000 \
        runs/lite0-kd/step11000 [--per-species 2] [--threads 1] [--out benchmarks/results/FILE.json]

The split must be the one the models trained on (the kd runs and the default share default_v3_run's).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from birdlive.model import load_for_inference
from birdlive.train.cache import AudioCache
from birdlive.train.evaluate import fmt
from birdlive.train.evaluation import add_scoring_options, composed_figures, composed_set, load_run
from birdlive.train.threads import cpu_threads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run folder whose train.json names the data")
    ap.add_argument("--split", required=True, help="the split.json the models trained on")
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--per-species", type=int, default=2, help="composed windows per snippet species")
    add_scoring_options(ap)
    a = ap.parse_args(argv)
    run = load_run(a.run, split_file=a.split)
    subsets = {name: run.subset(name) for name in ("train", "val")}
    res: dict = {"settings": {"run": a.run, "split": a.split, "per_species": a.per_species, "seed": a.seed}}
    with cpu_threads(a.threads):
        for m in a.models:
            model = load_for_inference(m)
            cache = AudioCache(run.cfg.cache_dir, model.cfg.sample_rate)
            res[m] = {}
            for name, sub in subsets.items():
                items, targets, masks, _, species = composed_set(model.cfg, run.cfg, sub.snippets, cache,
                                                                 a.per_species, a.seed)
                fig = composed_figures(model, list(model.cfg.labels), sub.labels, (items, targets, masks), a.batch)
                res[m][name] = {"macro_map": fig["macro_map"], "top1": fig["top1"], "windows": len(items),
                                "species": len(species)}
            tr, va = res[m]["train"], res[m]["val"]
            print(f"{m:45s} training runs mAP {fmt(tr['macro_map'])} top-1 {fmt(tr['top1'])} | held-out runs mAP "
                  f"{fmt(va['macro_map'])} top-1 {fmt(va['top1'])}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
