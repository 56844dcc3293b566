"""The gate for a new default model: does a candidate beat the committed default on the VALIDATION split?

    python benchmarks/compare_validation.py --candidate runs/default-v2f/best --run runs/default-v2f \
        [--incumbent model/weights/default] --out benchmarks/results/validation_gate.json

Both models score the same data, the validation groups of the candidate run's split (never trained on by the
candidate; the test groups are left to `evaluate_default.py`), on the species both know:

1. composed validation windows (`--per-species` per species, the validation snippet runs, coloured-noise bed,
   seeded): macro mAP and top-1 on single-species windows;
2. the validation xeno-canto recordings, whole, scored as events are made (`track_scores`): the stitched
   framewise track of 5 s windows every 1 s, as replay, analyze and `birdlive calibrate` compute it; per
   recording the maximum of each species' track (an event's peak is that track's maximum over the event):
   recording-level mAP and top-1 (top-1 among the common species: is the recording's top event its own species,
   thresholds aside).

The candidate wins when its composed mAP, its recording top-1 and its recording mAP (2.) are all at least the
incumbent's. Until 2026-12-03 the recording figures came from the clipwise scores of back-to-back 5 s windows
(max over windows), a path no event takes; they are still computed and printed (`xc_recording_*`; window mAP
`xc_window_map` too) so that older gate JSONs stay comparable: on the same recordings and checkpoints the two paths
disagree by several recordings in top-1 (2026-12-03: v3t's step 11,500 names 23 by the clipwise max, 28 by the
track; v3b 26 and 25).

Reported apart, outside the rule: the same composed
notes over the quiet stretches of the validation recordings instead of coloured noise (v2 learnt its North American
birds over coloured noise only, so the noise bed favours it), and the Alberta Ovenbird clips of the validation split
(real North American field audio): Ovenbird top-1 and the share of clips where it reaches the threshold; and the
recordings only one of the two names right, with the sign test's p-value (a lead of one or two of 62 recordings wins
under the rule, and is noise), for the track and for the clipwise max; and clipwise recording top-1 with the MEAN
over each recording's windows instead of the max, with its own paired split (a max lets one loud window of a
background species outrank the recording's own); and the recordings each model finds at the incumbent's
false-alarm count (the incumbent at its global threshold, the candidate at its lowest threshold with no more wrong
recording-species pairs: `matched_false_alarms`, on the track and on the clipwise max), which foresees what
calibrating the candidate would give back. And a paired bootstrap of the track mAP (`paired_bootstrap_map`: both
models on the same 1,000 resamples of the recordings): the interval of the difference and how often the candidate
is ahead, since a top-1 count of 62 recordings moves by about ±4 between equally good checkpoints.

`--candidate A+B[+C…]` gates an output ensemble: the mean of the checkpoints' probabilities, clipwise and
framewise (they must share their species list and log-mel). Not a product feature (it costs one network per
member at run time); it tells whether an ensemble of our own checkpoints would be worth distilling into one.

The incumbent may have trained on some of these recordings (its own split was another one): with
`--incumbent-split` (its run's split.json) the groups it trained on are left out, so neither model has heard any
of the data it is compared on; without it the gate leans towards keeping the incumbent.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from birdlive.model import load_for_inference
from birdlive.train.cache import AudioCache
from birdlive.train.datasets import Split
from birdlive.train.evaluation import (ALBERTA_DIR, TRACK_ARRAYS, add_scoring_options, composed_figures, composed_set,
                                       gate_figures, load_run, matched_false_alarms, paired_bootstrap_map,
                                       per_recording, recording_windows, top1)
from birdlive.train.threads import cpu_threads
from birdlive.train.windows import predict_items

RULE = ("composed_map", "xc_track_top1", "xc_track_map")    # all at least the incumbent's: the candidate wins
# the recordings each model names right, by suffix of the result's key: the track's max (the rule's), the clipwise
# max over windows (the rule's until 2026-12-03; its key keeps the old name), the clipwise mean
PAIRED = {"_track": "xc_track_right", "": "xc_recording_right", "_mean": "xc_recording_right_mean"}
MATCHED = {"_track": "xc_track_operating_points", "": "xc_operating_points"}
DESCRIBE = {"_track": "the track's max", "": "clipwise, max over windows", "_mean": "clipwise, mean over windows"}


def figures(model, common: list[str], labels: list[str], composed, composed_field, recs, alberta, cache,
            batch: int) -> dict:
    """The gate's figures (`gate_figures`), and apart from the rule: the same composed notes over the quiet
    stretches of the validation recordings instead of coloured noise (their species masked), and on the
    Alberta validation clips (birds neither model trained on) how often Ovenbird is the top species and how
    often it scores ≥ the model's threshold."""
    out = gate_figures(model, common, labels, composed, recs, cache, batch)
    field = composed_figures(model, common, labels, composed_field, batch)
    out["composed_field_map"] = field["macro_map"]     # (no top-1: every window has masked bed species)
    if alberta and "ovenbird" in model.cfg.labels:
        rec_items, win_items, owner = recording_windows(alberta, model.cfg.labels, cache, model.cfg.window_s)
        r_scores = per_recording(predict_items(model, win_items, batch), owner, len(rec_items))
        k = model.cfg.labels.index("ovenbird")
        out["alberta_top1"] = top1(r_scores, alberta, model.cfg.labels)
        out["alberta_ovenbird_detected"] = float((r_scores[:, k] >= model.cfg.threshold_on).mean())
    return out


class MeanOfModels(torch.nn.Module):
    """An output ensemble: the mean of its members' probabilities (clipwise, and framewise for the track), with
    the first member's config and log-mel."""

    def __init__(self, members: list):
        super().__init__()
        if any(m.cfg.labels != members[0].cfg.labels for m in members[1:]):
            raise SystemExit("the ensemble's checkpoints differ in their species lists")
        if any(_input(m.cfg) != _input(members[0].cfg) for m in members[1:]):
            raise SystemExit("the ensemble's checkpoints differ in their log-mel or window layout")
        self.members = torch.nn.ModuleList(members)
        self.cfg = members[0].cfg
        self.frontend = members[0].frontend      # one log-mel for all (`framewise_track` computes it once)

    def forward(self, x: torch.Tensor) -> dict:
        return {"clipwise": torch.stack([m(x)["clipwise"].float() for m in self.members]).mean(0)}

    def forward_logmel(self, logmel: torch.Tensor) -> dict:
        return {"framewise": torch.stack([m.forward_logmel(logmel)["framewise"].float()
                                          for m in self.members]).mean(0)}


def _input(cfg) -> tuple:
    return (cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels, cfg.fmin, cfg.fmax, cfg.logmel_floor_db,
            cfg.window_s, cfg.out_fps)


def load_candidate(spec: str):
    """One checkpoint, or `A+B[+C…]`: the output ensemble of those checkpoints."""
    paths = spec.split("+")
    return load_for_inference(paths[0]) if len(paths) == 1 else MeanOfModels([load_for_inference(p) for p in paths])


def paired_top1(candidate: list[int], incumbent: list[int]) -> dict:
    """The recordings only one of the two models names right (the others say nothing about which is better), and
    the two-sided sign-test p-value of that split: how likely a split at least this uneven is when the two models
    are equally good. Reported beside the rule, which counts a one-recording lead as a win."""
    only_c = sum(c and not i for c, i in zip(candidate, incumbent))
    only_i = sum(i and not c for c, i in zip(candidate, incumbent))
    n, k = only_c + only_i, min(only_c, only_i)
    p = min(1.0, 2 * sum(math.comb(n, j) for j in range(k + 1)) / 2 ** n) if n else 1.0
    return {"only_candidate_right": only_c, "only_incumbent_right": only_i, "sign_test_p": p}


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidate", required=True, help="checkpoint that would become the default; "
                    "A+B[+C…]: the output ensemble of those checkpoints")
    ap.add_argument("--run", required=True, help="the candidate's run folder (train.json, split.json)")
    ap.add_argument("--incumbent", default="model/weights/default", help="the committed default")
    ap.add_argument("--incumbent-split", default=None, help="the incumbent's split.json: leave out the groups "
                    "it trained on")
    ap.add_argument("--per-species", type=int, default=4, help="composed windows per validation species")
    add_scoring_options(ap)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = arguments(argv)
    run = load_run(a.run)
    cfg, val = run.cfg, run.subset("val")
    heard = set(Split.load(a.incumbent_split).train) if a.incumbent_split else set()
    left_out = {r.group for r in val.long + val.snippets if r.group in heard}
    va_long = [r for r in val.long if r.group not in heard]
    va_snip = [r for r in val.snippets if r.group not in heard]
    alberta = [r for r in va_long if r.group.split(":", 1)[0] == ALBERTA_DIR]
    va_long = [r for r in va_long if r not in alberta]
    cand, inc = load_candidate(a.candidate), load_for_inference(a.incumbent)
    for k in ("sample_rate", "window_s"):
        if getattr(cand.cfg, k) != getattr(inc.cfg, k):
            raise SystemExit(f"the two models differ in {k}: no common windows")
    common = [lab for lab in val.labels if lab in set(cand.cfg.labels) & set(inc.cfg.labels)]
    va_long = [r for r in va_long if r.primary in common]
    cache = AudioCache(cfg.cache_dir, cand.cfg.sample_rate)
    with cpu_threads(a.threads):
        items, tg, mk, _, _ = composed_set(cand.cfg, cfg, va_snip, cache, a.per_species, a.seed)
        field = composed_set(cand.cfg, cfg, va_snip, cache, a.per_species, a.seed, backgrounds=va_long)[:3]
        res = {name: figures(m, common, val.labels, (items, tg, mk), field, va_long, alberta, cache, a.batch)
               for name, m in (("candidate", cand), ("incumbent", inc))}
    c, i = res["candidate"], res["incumbent"]
    (c_track, target, mask), (i_track, _, _) = c.pop(TRACK_ARRAYS), i.pop(TRACK_ARRAYS)
    res["bootstrap_xc_track_map"] = paired_bootstrap_map(c_track, i_track, target, mask)
    res["rule"] = list(RULE)
    res["candidate_wins"] = all(c[k] >= i[k] for k in RULE)
    for how, right in PAIRED.items():
        res["paired_recording_top1" + how] = paired_top1(c[right], i[right])
    for how, points in MATCHED.items():
        res["matched_false_alarms" + how] = matched_false_alarms(c[points], i[points], inc.cfg.threshold_on)
    res["settings"] = {"candidate": a.candidate, "incumbent": a.incumbent, "run": a.run,
                       "incumbent_split": a.incumbent_split, "groups_left_out": len(left_out),
                       "common_species": len(common), "composed_windows": len(items),
                       "xc_recordings": len(va_long), "alberta_clips": len(alberta), "per_species": a.per_species,
                       "seed": a.seed}
    report(res)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


def report(res: dict) -> None:
    """The gate's figures side by side, the rule's marked, then the paired tests and the verdict."""
    s, c, i = res["settings"], res["candidate"], res["incumbent"]
    print(f"validation split of {s['run']}: {s['common_species']} species both know, {s['composed_windows']} "
          f"composed windows, {s['xc_recordings']} xeno-canto recordings, {s['alberta_clips']} Alberta Ovenbird "
          "clips (apart)"
          + (f"; {s['groups_left_out']} groups the incumbent trained on left out" if s["incumbent_split"] else ""))
    print(f"{'':22s} {'candidate':>10s} {'incumbent':>10s}   (* the rule)")
    for k in ("composed_map", "composed_top1", "xc_track_map", "xc_track_top1", "xc_window_map", "xc_recording_map",
              "xc_recording_top1", "xc_recording_top1_mean", "composed_field_map", "alberta_top1",
              "alberta_ovenbird_detected"):
        if c.get(k) is not None:
            print(f"{k:26s} {c[k]:10.3f} {i[k]:10.3f}" + ("   *" if k in RULE else ""))
    for how in PAIRED:
        pair = res["paired_recording_top1" + how]
        print(f"recordings only the candidate names right ({DESCRIBE[how]}): {pair['only_candidate_right']}, "
              f"only the incumbent: {pair['only_incumbent_right']} (sign test p = {pair['sign_test_p']:.2f})")
    boot = res["bootstrap_xc_track_map"]
    print(f"track mAP, candidate − incumbent: {boot['difference']:+.3f}, 95 % of {boot['resamples']} resamples of "
          f"the recordings in [{boot['interval_95'][0]:+.3f}, {boot['interval_95'][1]:+.3f}]; candidate ahead in "
          f"{boot['share_ahead']:.0%}")
    for how in MATCHED:
        m = res["matched_false_alarms" + how]
        print(f"recordings with their species above threshold at the incumbent's {m['wrong_pairs']} wrong pairs "
              f"({DESCRIBE[how]}): candidate {m['candidate_right']} (at {m['candidate_threshold']:.2f}), "
              f"incumbent {m['incumbent_right']} (at its {m['incumbent_threshold']:.2f})")
    print("candidate wins" if res["candidate_wins"] else "the incumbent stays")

if __name__ == "__main__":
    sys.exit(main())
