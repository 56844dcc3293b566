"""The evaluation that the benchmarks and the gate share: a run's data rebuilt as training built it, then one
function per stage (`benchmarks/evaluate_default.py` runs them on the test split and prints tables,
`benchmarks/compare_validation.py` runs the gate's on the validation split, `benchmarks/shortcut_probe.py` the
background probe).

Stages, each returning a JSON-able dict:
- `composed_stage`: composed windows of held-out snippet runs (no augmentation, coloured-noise bed, seeded):
  `clip_metrics`.
- `soundscape_stage`: event F1 of `detect_offline` on composed 60 s soundscapes (notes, and bouts).
- `background_noise_stage`: events on the real background files of the noise folder, held-out ones apart.
- `recordings_stage`: whole field recordings: window AP, recording AP and top-1 (max over windows), and events
  per recording (right species, background species, wrong species).
- `na_field_stage`: the North American field test split — xeno-canto recordings of the USA and Canada (test
  only: never trained or tuned on), the Alberta Ovenbird clips of the run's test split, and the Pennsylvania
  dawn chorus (Raven boxes): recording top-1 among the species the model knows, also with the model's answers
  restricted to its North American species (what a `--region` filter gives).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .augment import AugmentConfig, FieldBackgrounds, NoiseBank
from .composer import Composer, SnippetPool
from .datasets import (AUDIO_EXTENSIONS, Holdout, Recording, Split, is_excluded, load_dataset, merge, name_key,
                       select_species)
from .evaluate import RefEvent, clip_metrics, detect_events, event_metrics, macro_ap
from .windows import EvalItem, composed_items, predict_items, recording_items

if TYPE_CHECKING:
    from .loop import TrainConfig

REPO = Path(__file__).resolve().parents[1]

SOUNDSCAPE_S = 60.0
SOUNDSCAPE_SPECIES = (2, 4)      # species per soundscape
SOUNDSCAPE_SEQUENCES = (3, 6)    # note sequences per species in one soundscape
NA_FIELD_DIR = "xc-north-america"
ALBERTA_DIR = "ovenbird-alberta"    # real recorder clips: their test ones join the North American field test
NA_CHORUS = "soundscapes-na/Recording_1_Segment_07-snippet"


def norm(name: str) -> str:
    s = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]", "", s.lower())


def resolve(p: str) -> str:
    """A data path of train.json, relative to the working directory or else to the repository."""
    q = Path(p)
    return str(q if q.exists() or q.is_absolute() else REPO / q)


# ------------------------------------------------------------------------------------------- the run's data

@dataclass
class RunRecordings:
    recs: list[Recording]
    labels: list[str]
    names: list[str]
    snippet_paths: set[str]


def load_recordings(data: list[str], snippets: list[str], species: list[str] | None) -> RunRecordings:
    """The recordings, labels and names of a run (`train/loop.py` and every evaluation build them here)."""
    rec_sets = [load_dataset(d) for d in data]
    snip_sets = [load_dataset(d) for d in snippets]
    recs, labels, names = merge(rec_sets + snip_sets)
    if species:
        recs, labels, names = select_species(recs, labels, names, species)
    return RunRecordings(recs, labels, names, {r.path for d in snip_sets for r in d.recordings})


@dataclass
class SubsetData:
    labels: list[str]
    names: list[str]
    long: list[Recording]                 # field recordings (weak labels)
    snippets: list[Recording]             # snippets of held-out runs
    also: dict[str, list[str]]            # path → raw `also` names (for background species outside the labels)
    snippet_labels: list[str]             # species of the snippet sets: the North American ones

    def from_source(self, folder_name: str) -> list[Recording]:
        return [r for r in self.long if r.group.split(":", 1)[0] == folder_name]


def subset_data(cfg, split: Split, holdout: Holdout, subset: str = "test") -> SubsetData:
    """One subset of a run's split, with the data, species filter and labels exactly as training built them."""
    run = load_recordings([resolve(d) for d in cfg.data], [resolve(d) for d in cfg.snippets], cfg.species)
    if not split.test:
        raise SystemExit("the split has no test list (a two-way split from before): the figures need one")
    part = split.select(run.recs, subset)
    others = set().union(*(getattr(split, s) for s in ("train", "val", "test") if s != subset))
    assert not any(r.group in others for r in part), f"split: a {subset} group is also in another subset"
    assert not any(is_excluded(r.path, holdout.exclude) for r in part), f"split: an excluded file is in {subset}"
    also: dict[str, list[str]] = {}
    for d in cfg.data:
        meta = Path(resolve(d)) / "metadata.csv"
        if meta.is_file():
            for row in csv.DictReader(open(meta, newline="", encoding="utf-8-sig")):
                if "filepath" in row:
                    also[str((Path(resolve(d)).resolve() / row["filepath"]))] = [
                        a.strip() for a in (row.get("also") or "").split(";") if a.strip()]
    return SubsetData(run.labels, run.names, [r for r in part if r.path not in run.snippet_paths],
                      [r for r in part if r.path in run.snippet_paths], also,
                      sorted({r.primary for r in run.recs if r.path in run.snippet_paths}))


@dataclass
class Run:
    """A training run folder as the evaluations read it back: its config, split and hold-out list."""
    cfg: TrainConfig
    split: Split
    holdout: Holdout
    holdout_file: str | None              # the hold-out JSON it was read from (None: none)

    def subset(self, subset: str = "test") -> SubsetData:
        return subset_data(self.cfg, self.split, self.holdout, subset)


def load_run(run_dir: str | Path, split_file: str | Path | None = None, holdout_file: str | None = None) -> Run:
    """A run folder's train.json, its split (`split_file`, default RUN/split.json) and its hold-out list
    (`holdout_file`, default the one train.json names; a relative path is found by `resolve`)."""
    from .loop import TrainConfig      # here, not at the top: the training loop imports this module
    run = Path(run_dir)
    cfg = TrainConfig.from_dict(json.loads((run / "train.json").read_text()))
    split = Split.load(split_file or run / "split.json")
    holdout_file = holdout_file or cfg.holdout
    return Run(cfg, split, Holdout.load(resolve(holdout_file) if holdout_file else None), holdout_file)


def add_scoring_options(ap: argparse.ArgumentParser, seed: bool = True) -> None:
    """The options of the benchmarks that score models on a run: --seed (with `seed`), --threads, --batch, --out."""
    if seed:
        ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default=None, help="JSON output")


# ------------------------------------------------------------------------------------------ windows, scores

def composed_set(mc, cfg, snips, cache, per_species: int, seed: int, backgrounds: list[Recording] | None = None):
    """`per_species` composed windows per species of `snips` (no augmentation, seeded), labelled in `mc.labels`:
    items, targets, masks, runs per species, species. The bed is coloured noise, or with `backgrounds` the
    quietest stretches of those (held-out) field recordings, their species masked."""
    pool = SnippetPool(snips, cache, cfg.composer.min_note_s)
    aug, beds = AugmentConfig.none(), None
    if backgrounds:
        aug = dataclasses.replace(aug, field_background_prob=1.0)
        beds = FieldBackgrounds(backgrounds, cache, mc.labels)
    comp = Composer(pool, mc.labels, NoiseBank([], None), mc.sample_rate, mc.out_fps, mc.window_s, cfg.composer,
                    aug, beds)
    items = composed_items(comp, per_species * len(comp.species), seed)
    targets = np.stack([it.target for it in items])
    masks = np.stack([it.mask for it in items])
    return items, targets, masks, {sp: len(rs) for sp, rs in pool.runs.items()}, comp.species


def recording_windows(recs, labels: list[str], cache, window_s: float):
    """Whole recordings cut into back-to-back windows: the recording items, one item per window (its
    recording's labels), and which recording owns each window."""
    rec_items = recording_items(recs, labels, cache, window_s, window_s, None)
    win_items = [EvalItem(f"{it.name}#{j}", w[None], it.target, it.mask)
                 for it in rec_items for j, w in enumerate(it.windows)]
    owner = np.array([k for k, it in enumerate(rec_items) for _ in it.windows])
    return rec_items, win_items, owner


def per_recording(w_scores: np.ndarray, owner: np.ndarray, n: int, how: str = "max") -> np.ndarray:
    """(n, K) recording scores: the max over each recording's windows (what a recording's best event reflects),
    or with `how="mean"` their mean (a species heard through the recording outranks one loud window of another:
    on the gate's validation recordings it names the primary species more often, for every model tried)."""
    pool = np.mean if how == "mean" else np.max
    return np.stack([pool(w_scores[owner == k], axis=0) for k in range(n)])


@dataclass
class ScoredRecordings:
    recs: list[Recording]
    rec_items: list[EvalItem]
    win_items: list[EvalItem]
    owner: np.ndarray
    w_scores: np.ndarray          # (windows, K)
    r_scores: np.ndarray          # (recordings, K): max over windows
    t_scores: np.ndarray | None = None   # (recordings, K): max of the track events come from (`track_scores`)

    def targets(self, level: str) -> tuple[np.ndarray, np.ndarray]:
        items = self.win_items if level == "window" else self.rec_items
        return np.stack([it.target for it in items]), np.stack([it.mask for it in items])


def score_recordings(model, recs: list[Recording], cache, batch: int) -> ScoredRecordings:
    mc = model.cfg
    rec_items, win_items, owner = recording_windows(recs, mc.labels, cache, mc.window_s)
    w_scores = predict_items(model, win_items, batch)
    return ScoredRecordings(recs, rec_items, win_items, owner, w_scores, per_recording(w_scores, owner, len(recs)))


def slim(m: dict) -> dict:
    """clip_metrics without the per-species entries that have no positive (they carry no AP)."""
    m = dict(m)
    m.pop("worst", None)
    m["species"] = [sp for sp in m["species"] if sp["n_pos"] > 0]
    return m


def classify_events(species: list[str], primary: str, secondary: set[str]) -> Counter[str]:
    c: Counter[str] = Counter()
    for s in species:
        c["right" if s == primary else "secondary" if s in secondary else "wrong"] += 1
    return c


def top1_hits(scores: np.ndarray, recs: list[Recording], labels: list[str],
              among: list[str] | None = None) -> list[bool]:
    """For each recording whose primary species is among `among` (default: all labels), in order: does that
    species have the highest score among them?"""
    cols = [labels.index(lab) for lab in (among or labels)]
    keep = [k for k, r in enumerate(recs) if r.primary in (among or labels)]
    if not keep:
        return []
    best = np.asarray(cols)[scores[np.ix_(keep, cols)].argmax(1)]
    return [labels[b] == recs[k].primary for b, k in zip(best, keep)]


def primary_ranks(scores: np.ndarray, recs: list[Recording], labels: list[str],
                  among: list[str] | None = None) -> list[int]:
    """For each recording whose primary species is among `among` (default: all labels), in order: the rank of
    that species' score among theirs (1 = highest; a tie counts against it, as a birder reading a list would)."""
    cols = [labels.index(lab) for lab in (among or labels)]
    keep = [k for k, r in enumerate(recs) if r.primary in (among or labels)]
    return [int((scores[k, cols] >= scores[k, labels.index(recs[k].primary)]).sum()) for k in keep]


def rank_summary(ranks: list[int]) -> dict | None:
    """Median rank and how many recordings have their species first, in the top 3 and in the top 10."""
    if not ranks:
        return None
    r = np.asarray(ranks)
    return {"n": len(ranks), "median": float(np.median(r)), "first": int((r == 1).sum()),
            "top3": int((r <= 3).sum()), "top10": int((r <= 10).sum())}


def top1(scores: np.ndarray, recs: list[Recording], labels: list[str], among: list[str] | None = None) -> float | None:
    """Share of recordings whose primary species has the highest score, among `among` (default: all labels)."""
    hits = top1_hits(scores, recs, labels, among)
    return float(np.mean(hits)) if hits else None


# ------------------------------------------------------------------------------------------------ stages

def composed_stage(model, cfg, snips, cache, per_species: int, seed: int, batch: int) -> tuple[dict, dict]:
    """clip_metrics of the composed windows of `snips`, and what later stages reuse (items, scores, targets)."""
    mc = model.cfg
    items, targets, masks, runs, _ = composed_set(mc, cfg, snips, cache, per_species, seed)
    scores = predict_items(model, items, batch)
    comp = slim(clip_metrics(scores, targets, masks, mc.labels, mc.threshold_on, mc.names))
    return comp, {"items": items, "scores": scores, "targets": targets, "masks": masks, "runs": runs}


def make_soundscapes(model, cfg, snips, cache, minutes: float, seed: int):
    mc = model.cfg
    pool = SnippetPool(snips, cache, cfg.composer.min_note_s)
    ccfg = dataclasses.replace(cfg.composer, species=SOUNDSCAPE_SPECIES, sequences=SOUNDSCAPE_SEQUENCES)
    comp = Composer(pool, mc.labels, NoiseBank([], None), mc.sample_rate, mc.out_fps, SOUNDSCAPE_S, ccfg,
                    AugmentConfig.none())
    rng = np.random.default_rng([seed, 60])
    waves, refs = {}, []
    for i in range(max(1, int(math.ceil(minutes * 60 / SOUNDSCAPE_S)))):
        ex, events = comp.compose(rng)
        key = f"soundscape-{i:02d}"
        waves[key] = ex.wave
        refs += [RefEvent(key, sp, float(a), float(b)) for sp, a, b in events]
    return waves, refs, ccfg


@torch.no_grad()
def soundscape_peaks(model, waves: dict, refs: list[RefEvent], batch: int) -> tuple[float, float]:
    """Highest framewise score in the soundscapes (5 s windows, hop 5 s), over all species and over the species
    present in each soundscape: says how far the detector's threshold is from firing at all."""
    n = model.cfg.window_samples
    any_, present = 0.0, 0.0
    for key, w in waves.items():
        idx = sorted({model.cfg.labels.index(r.species) for r in refs if r.file == key})
        x = np.stack([w[i:i + n] for i in range(0, len(w) - n + 1, n)])
        for s in range(0, len(x), batch):
            fw = model(torch.from_numpy(x[s:s + batch]))["framewise"].float().numpy()
            any_ = max(any_, float(fw.max()))
            if idx:
                present = max(present, float(fw[..., idx].max()))
    return any_, present


def merge_bouts(refs: list[RefEvent], gap_s: float) -> list[RefEvent]:
    """Notes of one species and file whose gap is <= gap_s (or that overlap) become one reference event."""
    by = defaultdict(list)
    for r in refs:
        by[(r.file, r.species)].append(r)
    out = []
    for (f, sp), rs in sorted(by.items()):
        rs = sorted(rs, key=lambda r: r.onset)
        on, off = rs[0].onset, rs[0].offset
        for r in rs[1:]:
            if r.onset - off <= gap_s + 1e-9:
                off = max(off, r.offset)
            else:
                out.append(RefEvent(f, sp, on, off))
                on, off = r.onset, r.offset
        out.append(RefEvent(f, sp, on, off))
    return out


def soundscape_stage(model, cfg, snips, cache, minutes: float, seed: int, batch: int, merge_gap_s: float):
    """Event F1 on composed soundscapes of `snips`; returns the figures and the waves (the replay-speed file)."""
    import time
    waves, refs, ccfg = make_soundscapes(model, cfg, snips, cache, minutes, seed)
    est = []
    t_det = time.perf_counter()
    for key, w in waves.items():
        est += [RefEvent(key, e.species, float(e.onset_s), float(e.offset_s))
                for e in detect_events(model, w, source=key)]
    det_s = time.perf_counter() - t_det
    peak_any, peak_present = soundscape_peaks(model, waves, refs, batch)
    bouts = merge_bouts(refs, merge_gap_s)
    audio_s = sum(len(w) for w in waves.values()) / model.cfg.sample_rate
    return {"n": len(waves), "seconds_each": SOUNDSCAPE_S, "audio_s": audio_s, "composer": ccfg.to_dict(),
            "n_notes": len(refs), "n_bouts": len(bouts), "n_estimated": len(est),
            "species_present": len({r.species for r in refs}), "notes": event_metrics(refs, est, 0.5),
            "bouts": event_metrics(bouts, est, 0.5), "detect_rtf_1thread": audio_s / det_s,
            "max_frame_score_any_species": peak_any, "max_frame_score_present_species": peak_present}, waves


def background_files(noise_dir: Path) -> list[Path]:
    """Every audio file in blanket/ and audiomentations/background_noises/ (impulse responses and the short
    transients of audiomentations/short_noises are not backgrounds)."""
    out = []
    for sub in ("blanket", "audiomentations/background_noises"):
        d = noise_dir / sub
        if d.is_dir():
            out += sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    return out


def background_noise_stage(model, noise_root: Path, holdout: Holdout, cache, max_files: int | None = None) -> dict:
    """Events on each real background file; files held out of training backgrounds counted apart."""
    held = holdout.heldout_noise(noise_root)
    held_set = {p.resolve() for p in held}
    trained = [p for p in background_files(noise_root) if p.resolve() not in held_set]
    files = {}
    for p in held[:max_files] + trained[:max_files]:
        x = cache.load(p)
        evs = detect_events(model, x, source=str(p))
        files[p.relative_to(noise_root).as_posix()] = {
            "seconds": round(len(x) / model.cfg.sample_rate, 1), "events": len(evs),
            "species": dict(Counter(e.name for e in evs)), "heldout": p.resolve() in held_set}

    def total(heldout: bool) -> dict:
        vs = [v for v in files.values() if v["heldout"] == heldout]
        return {"files": len(vs), "events": sum(v["events"] for v in vs),
                "seconds": round(sum(v["seconds"] for v in vs), 1)}
    return {"files": files, "total": sum(v["events"] for v in files.values()),
            "seconds": round(sum(v["seconds"] for v in files.values()), 1), "heldout": total(True),
            "training": total(False)}


def recording_events(model, scored: ScoredRecordings, cache,
                     also: dict[str, list[str]]) -> tuple[list[dict], np.ndarray]:
    """Per recording: top-1, and its events (`events_of_track`, as `detect_offline` makes them) sorted into right /
    background (`also`) / wrong; and (recordings, K) the maxima of the same tracks (`track_scores`' figures), so
    each track is computed once."""
    from birdlive.streamer.core.offline import events_of_track
    mc, out = model.cfg, []
    t_scores = np.zeros((len(scored.recs), mc.num_classes), np.float32)
    for k, r in enumerate(scored.recs):
        also_names = also.get(str(Path(r.path).resolve()), [])
        sec = set(r.secondary) | {lab for lab in mc.labels if norm(lab) in {norm(x) for x in also_names}}
        wave = cache.load(r.path)
        track = recording_track(model, wave)
        t_scores[k] = track_max(track, mc.num_classes)
        evs = events_of_track(mc, track, source=r.path)
        cls = classify_events([e.species for e in evs], r.primary, sec)
        out.append({
            "file": Path(r.path).relative_to(Path(r.path).parents[1]).as_posix(), "species": r.primary,
            "seconds": round(len(wave) / mc.sample_rate, 1), "windows": len(scored.rec_items[k].windows),
            "secondary": sorted(sec), "also": also_names,
            "top1": mc.labels[int(scored.r_scores[k].argmax())], "top1_score": float(scored.r_scores[k].max()),
            "events_right": cls["right"], "events_secondary": cls["secondary"], "events_wrong": cls["wrong"],
            "wrong_species": dict(Counter(e.species for e in evs if e.species != r.primary and e.species not in sec)),
        })
    return out, t_scores


def recordings_stage(model, recs: list[Recording], cache, also: dict[str, list[str]], batch: int):
    """Whole field recordings: window and recording AP, recording top-1, events. Returns (figures, scores)."""
    mc = model.cfg
    scored = score_recordings(model, recs, cache, batch)
    xc_win = clip_metrics(scored.w_scores, *scored.targets("window"), mc.labels, mc.threshold_on, mc.names)
    xc_rec = clip_metrics(scored.r_scores, *scored.targets("recording"), mc.labels, mc.threshold_on, mc.names)
    rows, scored.t_scores = recording_events(model, scored, cache, also)
    xc_track = clip_metrics(scored.t_scores, *scored.targets("recording"), mc.labels, mc.threshold_on, mc.names)
    return {
        "n_recordings": len(recs), "audio_s": round(sum(x["seconds"] for x in rows), 1),
        "n_windows": len(scored.win_items), "window_level": slim(xc_win), "recording_level": slim(xc_rec),
        "recording_top1": top1(scored.r_scores, recs, mc.labels),
        "recording_level_track": slim(xc_track), "recording_top1_track": top1(scored.t_scores, recs, mc.labels),
        "recordings_with_right_event": sum(x["events_right"] > 0 for x in rows),
        "events_right": sum(x["events_right"] for x in rows),
        "events_secondary": sum(x["events_secondary"] for x in rows),
        "events_wrong": sum(x["events_wrong"] for x in rows), "recordings": rows,
        "secondaries": "masked: neither positive nor negative in AP (a background species may or may not be "
                       "audible in a window); events of them counted apart, not as wrong",
    }, scored


def composed_figures(model, common: list[str], labels: list[str], composed, batch: int) -> dict:
    """clip_metrics of `model` on composed windows (items, targets, masks in `labels` order), species `common`."""
    index = {lab: k for k, lab in enumerate(model.cfg.labels)}
    ours, theirs = [index[lab] for lab in common], [labels.index(lab) for lab in common]
    items, tg, mk = composed
    return clip_metrics(predict_items(model, items, batch)[:, ours], tg[:, theirs], mk[:, theirs], common)


def gate_figures(model, common: list[str], labels: list[str], composed, recs: list[Recording], cache,
                 batch: int) -> dict:
    """The gate's figures of `model` on the species `common` to both models (targets are in `labels` order):
    composed-window mAP and top-1, field-recording window mAP, recording mAP and recording top-1 (and which
    recordings it names right, for a paired comparison), and recording top-1 with the mean over windows — all
    from clipwise scores of back-to-back windows — and the same recording figures from the track events come
    from (`track_scores`)."""
    index = {lab: k for k, lab in enumerate(model.cfg.labels)}
    ours, theirs = [index[lab] for lab in common], [labels.index(lab) for lab in common]
    c = composed_figures(model, common, labels, composed, batch)
    rec_items, win_items, owner = recording_windows(recs, labels, cache, model.cfg.window_s)
    w_scores = predict_items(model, win_items, batch)[:, ours]
    r_scores = per_recording(w_scores, owner, len(rec_items))
    mean_hits = top1_hits(per_recording(w_scores, owner, len(rec_items), "mean"), recs, common)

    def stack(its, attr):
        return np.stack([getattr(it, attr) for it in its])[:, theirs]
    w = clip_metrics(w_scores, stack(win_items, "target"), stack(win_items, "mask"), common)
    r_target, r_mask = stack(rec_items, "target"), stack(rec_items, "mask")
    r = clip_metrics(r_scores, r_target, r_mask, common)
    hits = top1_hits(r_scores, recs, common)
    op = operating_points(r_scores, r_target, r_mask)
    t_scores = track_scores(model, recs, cache)[:, ours]
    t = clip_metrics(t_scores, r_target, r_mask, common)
    t_hits = top1_hits(t_scores, recs, common)
    return {"composed_map": c["macro_map"], "composed_top1": c["top1"], "xc_window_map": w["macro_map"],
            "xc_recording_map": r["macro_map"], "xc_recording_top1": float(np.mean(hits)) if hits else None,
            "xc_recording_right": [int(h) for h in hits],
            "xc_recording_top1_mean": float(np.mean(mean_hits)) if mean_hits else None,
            "xc_recording_right_mean": [int(h) for h in mean_hits], "xc_operating_points": op,
            "xc_track_map": t["macro_map"], "xc_track_top1": float(np.mean(t_hits)) if t_hits else None,
            "xc_track_right": [int(h) for h in t_hits],
            "xc_track_operating_points": operating_points(t_scores, r_target, r_mask),
            TRACK_ARRAYS: (t_scores, r_target, r_mask)}


TRACK_ARRAYS = "_xc_track_arrays"   # gate_figures' scores, targets and masks of the recordings: not for the JSON


def paired_bootstrap_map(a: np.ndarray, b: np.ndarray, targets: np.ndarray, masks: np.ndarray,
                         resamples: int = 1000, seed: int = 0) -> dict:
    """How sure is a difference in recording mAP between two models' scores of the same recordings? Both are
    scored on the same resamples of the recordings (with replacement): the difference a − b as measured, its
    2.5th and 97.5th percentiles over the resamples, and the share of resamples where a is ahead."""
    rng = np.random.default_rng(seed)
    n, diffs = len(a), []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        ma, mb = macro_ap(a[idx], targets[idx], masks[idx]), macro_ap(b[idx], targets[idx], masks[idx])
        if ma is not None and mb is not None:
            diffs.append(ma - mb)
    d = np.asarray(diffs)
    ma, mb = macro_ap(a, targets, masks), macro_ap(b, targets, masks)
    if ma is None or mb is None:
        raise ValueError("no recording with a known species: nothing to compare")
    measured = ma - mb
    return {"difference": measured, "interval_95": [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))],
            "share_ahead": float((d > 0).mean()), "resamples": len(d), "seed": seed}


TRACK_HOP_S = 1.0     # the streamer's default hop, and the one calibration scores with


def track_scores(model, recs: list[Recording], cache) -> np.ndarray:
    """(recordings, K): the maximum over each whole recording of the score track its events come from — the
    framewise scores of 5 s windows every `TRACK_HOP_S`, stitched (`framewise_track`, as replay, analyze and
    `birdlive calibrate` compute it). An event's peak is this track's maximum over the event (after a 0.3 s
    median), so a recording's top event is, thresholds aside, its species with the highest maximum here; the
    clipwise scores of back-to-back windows (`per_recording`) are a path no event takes."""
    return np.stack([track_max(recording_track(model, cache.load(r.path)), model.cfg.num_classes) for r in recs]) \
        if recs else np.zeros((0, model.cfg.num_classes), np.float32)


def recording_track(model, wave: np.ndarray) -> np.ndarray:
    """(frames, K): the stitched framewise track of a whole recording, every `TRACK_HOP_S`."""
    from birdlive.streamer.core.offline import framewise_track
    return framewise_track(model, np.asarray(wave, np.float32), TRACK_HOP_S)


def track_max(track: np.ndarray, num_classes: int) -> np.ndarray:
    """(K,): each species' maximum over a track (zeros for a recording too short to make one)."""
    return track.max(0) if len(track) else np.zeros(num_classes, np.float32)


OPERATING_GRID = np.round(np.arange(0.05, 0.955, 0.01), 2)


def operating_points(r_scores: np.ndarray, targets: np.ndarray, masks: np.ndarray,
                     grid: np.ndarray = OPERATING_GRID) -> dict:
    """At each threshold of `grid`: the recordings where one of their own species reaches it ("right"), and the
    (recording, species) pairs where a species that is not in the recording does ("wrong"; background species
    are neither). The recording-level stand-in for recordings with a right event and wrong events: the max over
    windows, without the smoother or per-species thresholds."""
    pos, neg = targets > 0.5, (targets <= 0.5) & (masks > 0.5)
    above = r_scores[None] >= grid[:, None, None]                 # (thresholds, recordings, species)
    return {"thresholds": grid.tolist(), "right": (above & pos).any(2).sum(1).tolist(),
            "wrong": (above & neg).sum((1, 2)).tolist()}


def matched_false_alarms(candidate: dict, incumbent: dict, threshold: float) -> dict:
    """Right recordings of each model at the incumbent's false alarms: the incumbent at `threshold` (its global
    on), the candidate at the lowest threshold with no more wrong pairs. A model that scores everything higher
    gains nothing here, as it would gain nothing once calibrated."""
    t_inc = next((k for k, t in enumerate(incumbent["thresholds"]) if t >= threshold - 1e-9),
                 len(incumbent["thresholds"]) - 1)
    budget = incumbent["wrong"][t_inc]
    t_cand = next((k for k, w in enumerate(candidate["wrong"]) if w <= budget), len(candidate["wrong"]) - 1)
    return {"wrong_pairs": budget, "incumbent_threshold": incumbent["thresholds"][t_inc],
            "incumbent_right": incumbent["right"][t_inc], "candidate_threshold": candidate["thresholds"][t_cand],
            "candidate_right": candidate["right"][t_cand], "candidate_wrong": candidate["wrong"][t_cand]}


# ------------------------------------------------------------------------------ North American field test

@dataclass
class NAField:
    recordings: list[Recording]           # xc-north-america recordings of species the model knows (its labels)
    unknown: dict[str, int]               # common name → recordings of species the model does not know
    soundscapes: list[str]                # paths of the multi-species soundscapes (birds only in `also`)


def na_field_data(data_root: str | Path, labels: list[str], names: list[str]) -> NAField:
    """The xeno-canto recordings of North American birds, relabelled to the model's labels by common name
    (xeno-canto files them by scientific name, the snippet set by code). Test only: never train on them."""
    if not (Path(data_root) / NA_FIELD_DIR).is_dir():
        return NAField([], {}, [])
    ds = load_dataset(Path(data_root) / NA_FIELD_DIR)
    by_name = {name_key(n): lab for lab, n in zip(labels, names) if n}

    def ours(lab: str) -> str | None:
        return by_name.get(name_key(ds.names.get(lab, "")))
    known: list[Recording] = []
    unknown: Counter[str] = Counter()
    soundscapes: list[str] = []
    for r in ds.recordings:
        if r.primary == "Sonus_naturalis":            # xeno-canto's name for a soundscape
            soundscapes.append(r.path)
        elif primary := ours(r.primary):
            secondary = [x for x in map(ours, r.secondary) if x and x != primary]
            known.append(Recording(r.path, [primary], secondary, r.group))
        else:
            unknown[ds.names.get(r.primary, r.primary)] += 1
    return NAField(known, dict(unknown), soundscapes)


def read_raven(path: str | Path, codes: dict[str, str], file_key: str) -> list[RefEvent]:
    """A Raven selection table's boxes as reference events; `codes` maps its Species column to our labels (boxes
    of species we do not know are dropped)."""
    out = []
    for row in csv.DictReader(open(path, newline="", encoding="utf-8"), delimiter="\t"):
        lab = codes.get(row["Species"].strip())
        if lab:
            out.append(RefEvent(file_key, lab, float(row["Begin Time (s)"]), float(row["End Time (s)"])))
    return out


def chorus_stage(model, data_root: str | Path, cache, batch: int) -> dict | None:
    """The Pennsylvania dawn chorus (10 s, Raven boxes of 4 species): where the species present rank among all
    the model's species (max over windows), and event F1 of `detect_offline` against the boxes (onset ±0.5 s)."""
    stem = Path(data_root) / NA_CHORUS
    flac, table = stem.with_suffix(".flac"), stem.with_suffix(".selections.txt")
    if not flac.is_file():
        return None
    mc = model.cfg
    by_name = {name_key(n): lab for lab, n in zip(mc.labels, mc.names) if n}
    rows = csv.DictReader(open(stem.parent / "box_codes.csv", newline="", encoding="utf-8"))
    codes = {r["code"]: by_name.get(name_key(r["common_name"])) for r in rows}
    refs = read_raven(table, {c: lab for c, lab in codes.items() if lab}, "chorus")
    wave = cache.load(flac)
    rec = Recording(str(flac), sorted({r.species for r in refs}), [], "chorus")
    scored = score_recordings(model, [rec], cache, batch)
    order = list(np.argsort(-scored.r_scores[0]))
    present = rec.labels
    est = [RefEvent("chorus", e.species, float(e.onset_s), float(e.offset_s))
           for e in detect_events(model, wave, source="chorus")]
    return {"species_present": present, "species_unknown_to_model": [c for c, lab in codes.items() if not lab],
            "rank_of_present": {lab: int(order.index(mc.labels.index(lab))) + 1 for lab in present},
            "present_in_top_k": sum(mc.labels[k] in present for k in order[:len(present)]),
            "top_k": [mc.labels[k] for k in order[:len(present)]],
            "events": event_metrics(refs, est, 0.5), "n_events": len(est),
            "event_species": dict(Counter(e.species for e in est))}


def na_field_stage(model, data_root: str | Path, alberta: list[Recording], na_labels: list[str], cache,
                   batch: int) -> tuple[dict, dict[str, ScoredRecordings]]:
    """The North American field test split: xeno-canto USA/Canada recordings, the run's test Alberta clips and
    the dawn chorus. Top-1 over all the model's species, and over its North American species only, with where
    the right species ranks among those (a model that names it second is nearer than one that names it
    fiftieth). Returns the figures and the scored recordings per set (for a side-by-side with another model)."""
    mc = model.cfg
    field = na_field_data(data_root, mc.labels, mc.names)
    out: dict[str, object] = {"na_labels": len(na_labels)}
    scores: dict[str, ScoredRecordings] = {}
    for key, recs in (("xc_north_america", field.recordings), ("alberta_ovenbird", alberta)):
        if recs:
            fig, scores[key] = recordings_stage(model, recs, cache, {}, batch)
            fig["recording_top1_na_only"] = top1(scores[key].r_scores, recs, mc.labels, na_labels)
            fig["recording_rank_na_only"] = rank_summary(primary_ranks(scores[key].r_scores, recs, mc.labels,
                                                                       na_labels))
            fig["species"] = len({r.primary for r in recs})
            out[key] = fig
    out["xc_north_america_unknown_species"] = field.unknown
    out["chorus"] = chorus_stage(model, data_root, cache, batch)
    return out, scores
