"""Do the models know a species when its notes come fast? The same validation snippet sequences composed with three
note-gap regimes, scored by each model.

    python benchmarks/tempo_probe.py --run RUN --models model/weights/default RUN/best \
        [--per-species 4] --out benchmarks/results/tempo_probe.json

The snippets are single notes (0.14 s median); real songs repeat them in trills of 10-30 notes a second, which the
default composer never makes (each gap drawn alone in 0.05-0.6 s). `train --note-gap 0.01,0.6` gives each
sequence one steady tempo instead. Regimes, on the validation snippet runs of RUN's split over coloured noise (no
augmentation, the same seed and number of windows; the gaps take other draws from the random stream, so past the
first sequence the regimes draw other species and runs from the same pool):
- `gaps_alone`: the default composer (what every earlier gate's composed windows were);
- `tempo`: one tempo per sequence, log-uniform in 0.01-0.6 s;
- `trills`: one tempo per sequence in 0.01-0.05 s (the fast end only).
Per model and regime: composed-window macro mAP and top-1 of single-species windows.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from birdlive.model import load_for_inference
from birdlive.train.cache import AudioCache
from birdlive.train.evaluation import add_scoring_options, composed_figures, composed_set, load_run
from birdlive.train.threads import cpu_threads

REGIMES = {"gaps_alone": None, "tempo": (0.01, 0.6), "trills": (0.01, 0.05)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run folder whose split's validation snippet runs are composed")
    ap.add_argument("--models", nargs="+", required=True, help="checkpoints (STEM) to score")
    ap.add_argument("--per-species", type=int, default=4, help="composed windows per validation species")
    add_scoring_options(ap)
    a = ap.parse_args(argv)
    run = load_run(a.run)
    cfg, val = run.cfg, run.subset("val")
    out: dict = {"settings": {"run": a.run, "per_species": a.per_species, "seed": a.seed, "regimes": REGIMES}}
    with cpu_threads(a.threads):
        for path in a.models:
            model = load_for_inference(path)
            cache = AudioCache(cfg.cache_dir, model.cfg.sample_rate)
            common = [lab for lab in val.labels if lab in model.cfg.labels]
            out[path] = {}
            for name, tempo in REGIMES.items():
                composer = dataclasses.replace(cfg.composer, tempo_gap_s=tempo)
                items, targets, masks, _, _ = composed_set(model.cfg, dataclasses.replace(cfg, composer=composer),
                                                           val.snippets, cache, a.per_species, a.seed)
                fig = composed_figures(model, common, val.labels, (items, targets, masks), a.batch)
                out[path][name] = {"macro_map": fig["macro_map"], "top1": fig["top1"], "windows": len(items)}
                print(f"{path:40s} {name:11s} mAP {fig['macro_map']:.3f}  top-1 {fig['top1']:.3f}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
