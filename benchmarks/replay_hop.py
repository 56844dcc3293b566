"""Replay's hop for file analysis: what scoring 5 s windows every 1, 1.5, 2, 2.5 or 3 s changes, on every held-out
field recording the default model's run leaves (never trained on), pooled so that a change of 0.02 can be seen.

    .venv/bin/python benchmarks/replay_hop.py [--model model/weights/default] [--run model/weights/default_v3_run]
        [--hops 1,1.5,2,2.5,3] [--noise-minutes 2] [--draws 1000] [--margin 0.02] [--json OUT.json]

The sets (whole recordings, as `evaluate_default.py` and `compare_validation.py` read them from `--run`'s split):
- `pr_test`: the test split's xeno-canto recordings (Puerto Rico); `pr_val`: the validation split's (used for
  checkpoint choice and thresholds, never trained on);
- `na_field`: the North American xeno-canto recordings of species the model knows (`na_field_data`; test only);
- `alberta`: the Alberta Ovenbird clips of the test and validation splits (one song at 3.5-6.5 s each).

Each recording is scored through the streaming path's offline reference (`framewise_track` and the smoother, as
`detect_offline` runs them: the runner's numbers, held equal to it by tests/core). Per hop, per set and pooled:
- recording-level macro mAP and top-1: a recording's score per species is the maximum of the stitched track
  replay computes (secondary species masked, as in evaluate_default.py). The Alberta set alone holds one
  species, so it has no mAP of its own (its clips count as Ovenbird positives and negatives of the rest in the
  pooled mAP);
- events per recording: of the right species, of a secondary species, of a wrong one;
- 95 % paired bootstrap intervals (`--draws` resamples, seeded; the same draws at every hop) of the change of
  recording mAP and of recording top-1 against hop 1. The pooled figures are over the union of the sets, and
  its resamples draw recordings within each set (stratified), so every resample keeps the sets' mix: the
  interval is the spread from which recordings happen to be in each set, not from how many of each kind.
Ground-truth timing:
- Alberta: the share of clips with an Ovenbird event overlapping the song (3.5-6.5 s, the clip's `call_s`),
  its 95 % paired bootstrap change against hop 1, and that event's onset and offset error against the song's;
- Raven boxes (the Pennsylvania dawn chorus, XC13738's Golden-winged Warbler songs) of species the model
  knows: boxes with an event of their species overlapping, and its onset error against the box's begin.
Also: event timing against hop 1 (each hop-1 event matched to the same species' most overlapping event);
events on white, pink and brown noise (`--noise-minutes` each, -30 dBFS) and on the noise folder's real
background files (those the evaluation's noise check reads; held-out ones apart); the CPU seconds the tracks
took per audio minute (one torch thread).

A hop passes (`--margin`, printed, not applied anywhere) when the lower ends of the pooled mAP change, the pooled
top-1 change and the Alberta songs-caught change are all above -margin and it has no more noise events than
hop 1.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch: a spinning pool is slow on a busy CPU

import argparse
import csv
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from evaluate_default import REPO, arguments, setup  # noqa: E402

from birdlive.streamer.core.offline import events_of_track, framewise_track  # noqa: E402
from birdlive.train.datasets import name_key  # noqa: E402
from birdlive.train.evaluate import clip_metrics  # noqa: E402
from birdlive.train.evaluation import (ALBERTA_DIR, NA_CHORUS, background_files, classify_events, load_run,  # noqa: E402
                                       na_field_data, read_raven, resolve, top1)
from birdlive.train.synthetic import noise_check_waves  # noqa: E402
from birdlive.train.windows import recording_items  # noqa: E402

GWWA = "xc-north-america/Vermivora_chrysoptera/XC13738"     # Raven table of Golden-winged Warbler songs


@dataclass(frozen=True)
class Box:
    """A reference time span of one species in one file (a Raven box, an Alberta song)."""
    species: str
    source: str
    onset_s: float
    offset_s: float


# ------------------------------------------------------------------------------------------------ data

def recording_sets(ctx, run_dir: str, limit: int | None) -> dict[str, list]:
    """The held-out recordings of the run, per set (see the module docstring)."""
    val = load_run(run_dir).subset("val")
    alberta_val = val.from_source(ALBERTA_DIR)
    sets = {"pr_test": ctx.pr_test, "pr_val": [r for r in val.long if r not in alberta_val],
            "na_field": na_field_data(ctx.data_root, ctx.mc.labels, ctx.mc.names).recordings,
            "alberta": ctx.alberta_test + alberta_val}
    return {k: v[:limit] for k, v in sets.items() if v}


def raven_boxes(mc, data_root: Path) -> tuple[dict[str, tuple[Path, list[Box]]], dict[str, str]]:
    """The Raven tables' boxes of species the model knows, per audio file; and why a table was left out."""
    by_name = {name_key(n): lab for lab, n in zip(mc.labels, mc.names) if n}
    chorus = data_root / NA_CHORUS
    rows = csv.DictReader(open(chorus.parent / "box_codes.csv", newline="", encoding="utf-8"))
    tables = {chorus.with_suffix(".flac"): {r["code"]: r["common_name"] for r in rows},
              (data_root / GWWA).with_suffix(".ogg"): {"GWWA_song": "Golden-winged Warbler"}}
    out, left_out = {}, {}
    for audio, codes in tables.items():
        known = {c: by_name[name_key(n)] for c, n in codes.items() if name_key(n) in by_name}
        table = audio.with_suffix(".selections.txt")
        if not audio.is_file() or not known:
            left_out[audio.name] = "no file" if not audio.is_file() else f"species unknown to the model: {codes}"
            continue
        out[audio.name] = (audio, [Box(r.species, audio.name, r.onset, r.offset)
                                   for r in read_raven(table, known, audio.name)])
    return out, left_out


def score(model, waves, hops: list[float], cpu: Counter | None = None) -> dict[float, tuple[np.ndarray, list]]:
    """Per hop: each wave's recording scores (max of the track) and events. `waves` yields (source, wave), one
    at a time, so that only one recording is in memory; `cpu` gathers the tracks' CPU seconds per hop."""
    out: dict[float, tuple[list, list]] = {h: ([], []) for h in hops}
    for source, wave in waves:
        for h in hops:
            t0 = time.process_time()
            track = framewise_track(model, np.asarray(wave, np.float32), h)
            if cpu is not None:
                cpu[h] += time.process_time() - t0
            out[h][0].append(track.max(0))
            out[h][1].append(events_of_track(model.cfg, track, source))
    return {h: (np.stack(s) if s else np.zeros((0, model.cfg.num_classes)), e) for h, (s, e) in out.items()}


# ------------------------------------------------------------------------------------------- statistics

def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """scikit-learn's average_precision_score (tied scores one threshold, as there), fast enough for the
    bootstrap's 10^5 calls; `macro_map` is checked against clip_metrics on every full set."""
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(y)[last]
    return float(np.sum(np.diff(tp, prepend=0) * tp / (np.flatnonzero(last) + 1)) / tp[-1])


def macro_map(scores: np.ndarray, targets: np.ndarray, masks: np.ndarray) -> float | None:
    """clip_metrics' macro mAP: the mean AP of the species with a positive (1 where all are positives)."""
    aps = []
    for k in np.flatnonzero(targets.any(0)):
        m = masks[:, k]
        y = targets[m, k]
        if y.any():
            aps.append(1.0 if y.all() else average_precision(y, scores[m, k]))
    return float(np.mean(aps)) if aps else None


def bootstrap_draws(sizes: dict[str, int], draws: int) -> dict[str, np.ndarray]:
    """(draws, n) row indices per set, and for "pooled" the same draws side by side (each set's rows offset)."""
    rng = np.random.default_rng(0)
    out, offset, pooled = {}, 0, []
    for name, n in sizes.items():
        out[name] = rng.integers(0, n, (draws, n))
        pooled.append(out[name] + offset)
        offset += n
    out["pooled"] = np.concatenate(pooled, axis=1)
    return out


def interval(values: np.ndarray, base: np.ndarray) -> list[float]:
    d = values - base
    return [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))]


@dataclass
class Group:
    """One set (or the pooled union) of recordings, its targets and its resamples."""
    recs: list
    targets: np.ndarray        # (n, K) bool
    masks: np.ndarray          # (n, K) bool
    draws: np.ndarray          # (draws, n)
    has_map: bool              # more than one species: a macro mAP means something

    def figures(self, mc, scores: np.ndarray, events: list) -> dict:
        m = clip_metrics(scores, self.targets, self.masks, mc.labels, mc.threshold_on, mc.names)["macro_map"]
        assert m is None or abs(m - macro_map(scores, self.targets, self.masks)) < 1e-9, "macro_map drifted"
        kinds: Counter[str] = Counter()
        for r, evs in zip(self.recs, events):
            kinds.update(classify_events([e.species for e in evs], r.primary, set(r.secondary)))
        return {"recordings": len(self.recs), "recording_map": m if self.has_map else None,
                "recording_top1": top1(scores, self.recs, mc.labels), "events_right": kinds["right"],
                "events_secondary": kinds["secondary"], "events_wrong": kinds["wrong"]}

    def resampled(self, mc, scores: np.ndarray) -> dict[str, np.ndarray]:
        """Recording mAP and top-1 of each resample."""
        right = scores.argmax(1) == np.array([mc.labels.index(r.primary) for r in self.recs])
        out = {"top1": right[self.draws].mean(1)}
        if self.has_map:
            out["map"] = np.array([macro_map(scores[i], self.targets[i], self.masks[i]) for i in self.draws])
        return out


def groups_of(mc, sets: dict[str, list], cache, draws: int) -> dict[str, Group]:
    idx = bootstrap_draws({k: len(v) for k, v in sets.items()}, draws)
    out = {}
    for name, recs in [*sets.items(), ("pooled", [r for v in sets.values() for r in v])]:
        items = recording_items(recs, mc.labels, cache, mc.window_s, mc.window_s, 1)
        out[name] = Group(recs, np.stack([it.target for it in items]) > 0.5,
                          np.stack([it.mask for it in items]) > 0.5, idx[name], len({r.primary for r in recs}) > 1)
    return out


# ----------------------------------------------------------------------------------------------- timing

def best_match(ref, events: list):
    """The event of `ref`'s species and file that overlaps it most (None: none overlaps)."""
    def overlap(x):
        return min(x.offset_s, ref.offset_s) - max(x.onset_s, ref.onset_s)
    same = [x for x in events if x.species == ref.species and x.source == ref.source and overlap(x) > 0]
    return max(same, key=overlap) if same else None


def timing(reference: list, events: list) -> dict:
    """Onset and offset shifts (absolute) of `events` against `reference` (same species, most overlap)."""
    pairs = [(r, e) for r in reference if (e := best_match(r, events)) is not None]
    on = [abs(e.onset_s - r.onset_s) for r, e in pairs]
    off = [abs(e.offset_s - r.offset_s) for r, e in pairs]

    def stats(v):
        return {"median_s": float(np.median(v)), "max_s": float(np.max(v))} if v else None
    return {"matched": len(pairs), "unmatched": len(reference) - len(pairs), "onset": stats(on),
            "offset": stats(off)}


def songs_caught(recs: list, events: list) -> tuple[np.ndarray, dict]:
    """Alberta: per clip, whether an event of its species overlaps its song (`call_s`); and that event's onset
    and offset errors (event − song, s)."""
    songs = [Box(r.primary, r.path, *r.call_s) for r in recs]
    matches = [best_match(s, evs) for s, evs in zip(songs, events)]
    on = np.array([e.onset_s - s.onset_s for s, e in zip(songs, matches) if e is not None])
    off = np.array([e.offset_s - s.offset_s for s, e in zip(songs, matches) if e is not None])
    caught = np.array([e is not None for e in matches])

    def q(v, p):
        return float(np.percentile(v, p)) if len(v) else None
    return caught, {"songs": len(songs), "caught": int(caught.sum()), "caught_share": float(caught.mean()),
                    "onset_error_median_s": q(on, 50), "onset_error_abs_median_s": q(np.abs(on), 50),
                    "onset_error_abs_p90_s": q(np.abs(on), 90), "offset_error_median_s": q(off, 50)}


# ------------------------------------------------------------------------------------------------- noise

def noise_events(model, cache, noise_root: Path, heldout: set[Path], minutes: float, hops: list[float]) -> dict:
    """Per hop: events on coloured noise, on the real background files, and on the held-out ones of those."""
    sr = model.cfg.sample_rate
    coloured = score(model, ((f"{c}-noise", x) for c, x in noise_check_waves(minutes, sr)) if minutes else (),
                     hops)
    files = background_files(noise_root)
    real = score(model, ((p.name, cache.load(p)) for p in files), hops)
    out = {}
    for h in hops:
        per_file = {p.relative_to(noise_root).as_posix(): len(evs) for p, evs in zip(files, real[h][1])}
        out[h] = {"coloured": sum(map(len, coloured[h][1])), "files": sum(per_file.values()),
                  "files_heldout": sum(len(evs) for p, evs in zip(files, real[h][1]) if p.resolve() in heldout),
                  "files_with_events": {f: n for f, n in per_file.items() if n}}
    return {"coloured_minutes_each": minutes, "files": len(files),
            "files_s": round(sum(len(cache.load(p)) for p in files) / sr, 1), "per_hop": out}


# ------------------------------------------------------------------------------------------------- main

def hop_figures(ctx, groups: dict[str, Group], scored: dict[str, tuple[np.ndarray, list]], base: dict) -> dict:
    """One hop's figures per set and pooled, with the paired intervals against hop 1's resamples (`base`, filled
    on the first call)."""
    out = {}
    for name, g in groups.items():
        scores, events = scored[name]
        fig = g.figures(ctx.mc, scores, events)
        values = g.resampled(ctx.mc, scores)
        base.setdefault(name, values)
        fig["recording_top1_minus_hop_1_95pct"] = interval(values["top1"], base[name]["top1"])
        if "map" in values:
            fig["recording_map_minus_hop_1_95pct"] = interval(values["map"], base[name]["map"])
        out[name] = fig
    return out


def passes(r: dict, first: dict, margin: float) -> bool:
    """The rule of the module docstring."""
    pooled, songs = r["sets"]["pooled"], r["alberta_songs"]
    lows = [pooled["recording_map_minus_hop_1_95pct"][0], pooled["recording_top1_minus_hop_1_95pct"][0]]
    if "caught_share_minus_hop_1_95pct" in songs:
        lows.append(songs["caught_share_minus_hop_1_95pct"][0])
    noise, noise_1 = r["noise_events"], first["noise_events"]
    return all(x > -margin for x in lows) and all(noise[k] <= noise_1[k] for k in ("coloured", "files"))


def shown(path: str) -> str:
    """A path as the JSON keeps it: relative to the repository where it lies inside."""
    p = Path(path).resolve()
    return p.relative_to(REPO).as_posix() if p.is_relative_to(REPO) else str(path)


def measure(ctx, a, hops: list[float]) -> dict:
    model, mc, cache = ctx.model, ctx.mc, ctx.cache
    sets = recording_sets(ctx, a.run, a.max_per_set)
    groups = groups_of(mc, sets, cache, a.draws)
    cpu: Counter[float] = Counter()
    per_set = {name: score(model, ((r.path, cache.load(r.path)) for r in recs), hops, cpu)
               for name, recs in sets.items()}
    audio_s = sum(len(cache.load(r.path)) for recs in sets.values() for r in recs) / mc.sample_rate
    boxes, left_out = raven_boxes(mc, ctx.data_root)
    raven = score(model, ((name, cache.load(audio)) for name, (audio, _) in boxes.items()), hops)
    noise_root = Path(resolve(ctx.cfg.noise_dir or "../shared/data/noise"))
    noise = noise_events(model, cache, noise_root, {p.resolve() for p in ctx.holdout.heldout_noise(noise_root)},
                         a.noise_minutes, hops)
    results, base, reference, caught_1 = {}, {}, None, None
    for h in hops:
        scored = {name: per_set[name][h] for name in sets}
        scored["pooled"] = (np.concatenate([s for s, _ in scored.values()]),
                            [evs for _, per_rec in scored.values() for evs in per_rec])
        flat = [e for evs in scored["pooled"][1] for e in evs]
        reference = flat if reference is None else reference
        r = {"windows_per_audio_s": 1.0 / h, "cpu_s_per_audio_min": 60 * cpu[h] / audio_s,
             "sets": hop_figures(ctx, groups, scored, base), "timing_vs_hop_1": timing(reference, flat)}
        if "alberta" in sets:
            caught, r["alberta_songs"] = songs_caught(sets["alberta"], scored["alberta"][1])
            caught_1 = caught if caught_1 is None else caught_1
            d = groups["alberta"].draws
            r["alberta_songs"]["caught_share_minus_hop_1_95pct"] = interval(caught[d].mean(1), caught_1[d].mean(1))
        r["raven"] = {name: {**timing(bs, raven[h][1][k]), "boxes": len(bs), "events": len(raven[h][1][k])}
                      for k, (name, (_, bs)) in enumerate(boxes.items())}
        r["noise_events"] = noise["per_hop"][h]
        r["passes"] = passes(r, results[str(hops[0])], a.margin) if results else None
        results[str(h)] = r
        print(h, json.dumps({k: r["sets"]["pooled"][k] for k in ("recording_map", "recording_top1")}),
              file=sys.stderr, flush=True)
    return {"model": shown(a.model), "run": shown(a.run), "audio_s": round(audio_s, 1),
            "sets": {k: {"recordings": len(v), "species": len({r.primary for r in v})} for k, v in sets.items()},
            "draws": a.draws, "margin": a.margin, "raven_left_out": left_out,
            "noise": {k: v for k, v in noise.items() if k != "per_hop"}, "hops": results}


def show(res: dict) -> None:
    """The tables."""
    def iv(v):
        return "%+.3f..%+.3f" % tuple(v) if v else "-"

    def f(v):
        return "-" if v is None else f"{v:.3f}"
    hops = res["hops"]
    print(f"{res['audio_s'] / 60:.0f} min of recordings; sets: "
          + ", ".join(f"{k} {v['recordings']} ({v['species']} species)" for k, v in res["sets"].items()))
    print(f"\n{'set':9} {'hop s':>5} {'rec mAP':>7} {'mAP Δ 95 %':>14} {'top-1':>6} {'top-1 Δ 95 %':>14} "
          f"{'right/sec/wrong':>15}")
    for name in next(iter(hops.values()))["sets"]:
        for h, r in hops.items():
            s = r["sets"][name]
            print(f"{name:9} {h:>5} {f(s['recording_map']):>7} {iv(s.get('recording_map_minus_hop_1_95pct')):>14} "
                  f"{f(s['recording_top1']):>6} {iv(s['recording_top1_minus_hop_1_95pct']):>14} "
                  f"{s['events_right']:>5}/{s['events_secondary']}/{s['events_wrong']}")
    print(f"\n{'hop s':>5} {'songs caught':>12} {'Δ 95 %':>14} {'onset err med/|med|/|p90| s':>27} "
          f"{'vs hop 1: unmatched, onset Δ med/max':>36} {'noise ev col/files':>18} {'CPU s/min':>9} {'passes':>6}")
    for h, r in hops.items():
        s, t, n = r.get("alberta_songs", {}), r["timing_vs_hop_1"], r["noise_events"]
        on = f"{t['onset']['median_s']:.2f}/{t['onset']['max_s']:.2f}" if t["onset"] else "-"
        err = "/".join(f(s.get(k)) for k in ("onset_error_median_s", "onset_error_abs_median_s",
                                               "onset_error_abs_p90_s"))
        print(f"{h:>5} {s.get('caught', 0):>5}/{s.get('songs', 0):<6} "
              f"{iv(s.get('caught_share_minus_hop_1_95pct')):>14} "
              f"{err:>27} {t['unmatched']:>12} of {t['matched'] + t['unmatched']:<5} {on:>12} "
              f"{n['coloured']:>9}/{n['files']:<8} {r['cpu_s_per_audio_min']:>9.2f} {str(r['passes']):>6}")
    for name in next(iter(hops.values()))["raven"]:
        print(f"\nRaven boxes of {name} (species the model knows): boxes with an event / onset error |med|, max s")
        for h, r in hops.items():
            t = r["raven"][name]
            on = f"{t['onset']['median_s']:.2f}, {t['onset']['max_s']:.2f}" if t["onset"] else "-"
            print(f"  hop {h}: {t['matched']}/{t['boxes']}, {on}; {t['events']} events")
    for name, why in res["raven_left_out"].items():
        print(f"Raven table of {name} left out: {why}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "model" / "weights" / "default"))
    ap.add_argument("--run", default=str(REPO / "model" / "weights" / "default_v3_run"))
    ap.add_argument("--hops", default="1,1.5,2,2.5,3", help="the first is the reference (1: replay's default)")
    ap.add_argument("--noise-minutes", type=float, default=2.0)
    ap.add_argument("--draws", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--margin", type=float, default=0.02, help="the rule's non-inferiority margin")
    ap.add_argument("--max-per-set", type=int, default=None, help="a quick look: the first N recordings per set")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(1)
    ctx = setup(arguments(["--model", a.model, "--run", a.run, "--out", "/dev/null"]))
    t0 = time.perf_counter()
    hops = [float(h) for h in a.hops.split(",")]
    if hops[0] != 1.0:
        raise SystemExit("--hops: the first is the reference, replay's 1 s")
    res = measure(ctx, a, hops)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    show(res)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
