"""The "field recording → Puerto Rico" shortcut, measured: the same North American snippet sequences laid over
three kinds of background, scored by each model.

    python benchmarks/shortcut_probe.py --run RUN --models model/weights/default RUN/best \
        [--windows 200] [--snr 10] --out benchmarks/results/shortcut_probe.json

Windows: one species each, a sequence of notes of a TEST snippet run (never trained on) of a North American
species every model knows, placed by the composer (no augmentation), the notes at -25 dBFS RMS and the
background `--snr` dB below them, with the same notes and level each time:
- `noise`: coloured noise (white, pink or brown): the bed v2 learnt North American birds over;
- `pr_field`: the quietest of a few stretches of a Puerto Rican TEST recording (never trained on);
- `na_field`: the same from an Alberta TEST clip (boreal forest; Ovenbird left out of the figures below).
Per model and background: top-1 of the right species, the right species' mean score, the share of windows
whose top species is a Puerto Rican one, and the mean of the highest Puerto Rican score. The shortcut is the
shift from `noise` (or `na_field`) to `pr_field`: a model that reads the background as a region names Puerto
Rican species more often over a Puerto Rican background and loses the North American bird. A Puerto Rican
background holds Puerto Rican birds (quiet stretches, not silent ones), so part of the shift is real; the
models are compared on the same windows.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from birdlive.model import load_for_inference
from birdlive.train.augment import AugmentConfig, FieldBackgrounds, NoiseBank, db_to_gain, power
from birdlive.train.cache import AudioCache
from birdlive.train.composer import Composer, SnippetPool
from birdlive.train.evaluation import ALBERTA_DIR, add_scoring_options, load_run
from birdlive.train.loop import TrainConfig
from birdlive.train.threads import cpu_threads
from birdlive.train.windows import EvalItem, predict_items

BACKGROUNDS = ("noise", "pr_field", "na_field")
NOTES_DBFS = -25.0          # RMS of the notes (over the samples they occupy); the bed is `--snr` dB below


def probe_windows(test, species: list[str], cfg: TrainConfig, cache, sample_rate: int, out_fps: float,
                  window_s: float, count: int, snr_db: float, seed: int) -> tuple[dict[str, list], list[str]]:
    """{background: [window, ...]} with the same notes in the i-th window of each, and each window's species."""
    snips = [r for r in test.snippets if r.primary in species]
    comp = Composer(SnippetPool(snips, cache, cfg.composer.min_note_s), test.labels, NoiseBank([], None),
                    sample_rate, out_fps, window_s, cfg.composer, AugmentConfig.none())
    beds = {"pr_field": FieldBackgrounds([r for r in test.long if not r.group.startswith(ALBERTA_DIR)], cache,
                                         test.labels),
            "na_field": FieldBackgrounds(test.from_source(ALBERTA_DIR), cache, test.labels)}
    noise = NoiseBank([], None)
    windows, truth = {b: [] for b in BACKGROUNDS}, []
    rng = np.random.default_rng([seed, 4099])
    n = comp.n
    while len(truth) < count:
        sp = comp.species[int(rng.integers(len(comp.species)))]
        track, intervals = comp.track(sp, rng, n)
        if not intervals:
            continue
        got = {b: beds[b].sample(n, rng) for b in ("pr_field", "na_field")}
        if any(g is None for g in got.values()):
            continue
        bed = {"noise": noise.sample(n, rng), **{b: g[0] for b, g in got.items()}}     # unit RMS each
        call_rms = np.sqrt(power(track) * n / max(1, np.count_nonzero(track)))      # over the notes' samples
        track = track * (db_to_gain(NOTES_DBFS) / max(call_rms, 1e-9))
        for b in BACKGROUNDS:
            windows[b].append((track + bed[b] * db_to_gain(NOTES_DBFS - snr_db)).astype(np.float32))
        truth.append(sp)
    return windows, truth


def probe_figures(model, windows: dict[str, list], truth: list[str], pr_labels: set[str], batch: int) -> dict:
    labels = model.cfg.labels
    pr_cols = [k for k, lab in enumerate(labels) if lab in pr_labels]
    right = np.array([labels.index(sp) for sp in truth])
    out = {}
    for b, ws in windows.items():
        s = predict_items(model, [EvalItem(str(i), w[None], None, None) for i, w in enumerate(ws)], batch)
        top = s.argmax(1)
        out[b] = {"top1_right": float((top == right).mean()),
                  "right_species_score": float(s[np.arange(len(right)), right].mean()),
                  "top1_is_puerto_rican": float(np.isin(top, pr_cols).mean()),
                  "max_puerto_rican_score": float(s[:, pr_cols].max(1).mean())}
    out["pr_shift_vs_noise"] = {k: out["pr_field"][k] - out["noise"][k] for k in out["noise"]}
    out["pr_shift_vs_na_field"] = {k: out["pr_field"][k] - out["na_field"][k] for k in out["noise"]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run folder (train.json, split.json with a test list)")
    ap.add_argument("--models", nargs="+", required=True, help="checkpoints to probe")
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--snr", type=float, default=10.0, help="whole-window SNR of the notes over the background")
    add_scoring_options(ap)
    a = ap.parse_args(argv)
    run = load_run(a.run)
    cfg, test = run.cfg, run.subset()
    models = {m: load_for_inference(m) for m in a.models}
    known = set.intersection(*(set(m.cfg.labels) for m in models.values()))
    na = [lab for lab in test.snippet_labels if lab in known and lab != "ovenbird"]
    pr_labels = set(test.labels) - set(test.snippet_labels)
    mc = next(iter(models.values())).cfg
    cache = AudioCache(cfg.cache_dir, mc.sample_rate)
    windows, truth = probe_windows(test, na, cfg, cache, mc.sample_rate, mc.out_fps, mc.window_s, a.windows,
                                   a.snr, a.seed)
    with cpu_threads(a.threads):
        res = {name: probe_figures(m, windows, truth, pr_labels, a.batch) for name, m in models.items()}
    res["settings"] = {"run": a.run, "windows": len(truth), "species": len(set(truth)), "snr_db": a.snr,
                       "seed": a.seed, "pr_species": len(pr_labels)}
    print(f"{len(truth)} windows of {len(set(truth))} North American species (test runs), {a.snr:g} dB over each "
          "background")
    print(f"{'model':40s} {'background':10s} {'top-1 right':>11s} {'right score':>11s} {'top-1 PR':>9s} {'max PR':>7s}")
    for name in models:
        for b in BACKGROUNDS:
            f = res[name][b]
            print(f"{name:40s} {b:10s} {f['top1_right']:11.3f} {f['right_species_score']:11.3f} "
                  f"{f['top1_is_puerto_rican']:9.3f} {f['max_puerto_rican_score']:7.3f}")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
