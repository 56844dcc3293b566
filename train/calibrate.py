"""Per-species event thresholds, calibrated on a model's validation split (`birdlive calibrate`).

One global on/off pair treats a species the network over-scores (false alarms on other birds) like one it
under-scores. Calibration picks an on threshold per species; off stays on × the checkpoint's off/on ratio, so the
hysteresis keeps its shape. The result goes into the checkpoint's JSON (`ModelConfig.thresholds`); what a user
sets on the command line still wins (`birdlive.streamer.core.thresholds`).

- **Data: the validation groups only.** The training run's `split.json` (`--split`, or the one beside a run's
  checkpoint), or the split rebuilt from the seed and validation share the checkpoint records, accepted only when
  its validation-group count is the one the checkpoint records (data that changed since training would move
  training files into "validation"). Never a training group. Whole recordings are one item each; snippet sets
  give composed 5 s windows of held-out runs drawn exactly as training validation drew them (4 per species, the
  run's seed), so calibration takes no new draws from the runs that held-out figures sample with other seeds.
- **Detection: what a user would get.** The offline reference (`birdlive.streamer.core.offline.framewise_track`,
  hop 1 s) scores each item once; the streaming smoother (`default_params`: same median, minimum duration, merge
  gap) runs over that track at every candidate. A species is detected in an item when at least one of its events
  comes out. Candidate on thresholds: the floor, then the 0.05 grid above it up to 0.95.
- **Unit: the item** (recording or composed window), positive when the species is its label, negative when it
  is not (background species: neither). Item level is what a birder asks of a recording ("is it here?") and what
  the model card counts (recordings with an event of the right species); it keeps one long recording from
  outweighing twenty short ones.
- **Score: F-beta, beta 1 (F1)** = 2·TP / (2·TP + FN + FP) (scikit-learn's `fbeta_score`, vectorised here
  over all candidates and species at once; `--beta`): recall counts as much as precision. v2 was calibrated
  with F0.5 (precision twice recall) and came out at 0.5 / 0.3, which left 79 of 90 hidden recordings without
  an event of their species: silence on four recordings in five is no use to a birder, while the noise check
  (below) still keeps the detector quiet where there is no bird. Ties go to fewer false alarms, then to the
  lower threshold (the one that keeps more recall on unseen audio). So a species whose events on validation
  were all wrong is raised until they stop.
- **Floor** (default: the checkpoint's global on): the global pair was checked for zero events on noise. With on
  and off both raised, every event lies inside one the lower pair gave (its run of frames above off is inside a
  longer run above the lower off, which reaches the lower on), so where the global pair gave no event — the
  noise check — a calibrated pair gives none either.
- **Fallback to the global pair** (species left out of the table) with fewer than `min_positives` positive items,
  or when no candidate gives that species any event on validation (nothing to calibrate on).
- **The global pair itself** (`--noise-dir`: a new model has none checked yet): among the candidates from 0.05
  up that give not one event on the noise items — white, pink and brown noise, and the real background files
  training mixed in (those a `--holdout` file keeps for the test are left out) — even at half their value (a
  margin for noise the model has never heard), the one with the best F-beta over every (recording, species) of
  the validation recordings (composed windows only where there are no recordings: the global pair is what a
  whole field recording gets); ties as above. It becomes the checkpoint's global pair and the floor of the
  per-species step, which then keeps the noise at zero (see Floor).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from birdlive.errors import OptionError
from birdlive.model.config import ModelConfig

from .datasets import Recording, Split, load_dataset, merge, name_key, select_species, split_groups

BETA = 1.0           # F1: see the module docstring (v2 used 0.5)
STEP = 0.05
TOP = 0.95


@dataclass
class Item:
    """One validation unit: a whole recording or a composed window."""
    name: str
    wave: np.ndarray        # mono float32 at the model's rate
    target: np.ndarray      # (K,) bool: the species it holds
    known: np.ndarray       # (K,) bool: False for background species (neither positive nor negative)
    composed: bool = False  # a composed window of snippets, not a recording


# ------------------------------------------------------------------------------------------- the data

def validation_recordings(cfg: ModelConfig, data: list[str], snippets: list[str], split: str | None
                          ) -> tuple[list[Recording], set[str], dict]:
    """The validation recordings of the model's training split, labelled with the model's labels; the paths that
    are snippets; and what was used (for the record)."""
    rec_sets, snip_sets = [load_dataset(d) for d in data], [load_dataset(d) for d in snippets]
    recs, labels, names = merge(rec_sets + snip_sets)      # the same label unification as training
    training = cfg.extra.get("training", {})
    if split:
        sp = Split.load(split)
        _to_model_labels(recs, labels, names, cfg)
    else:
        if "split_seed" not in training:
            raise OptionError("the checkpoint does not record its training split: give the run's --split "
                              "RUN/split.json")
        recs, labels, _ = select_species(recs, labels, names, cfg.labels)
        if labels != cfg.labels:
            raise OptionError("these datasets do not give the model's species list: give the datasets the model "
                              "was trained on, or the run's --split")
        sp = split_groups(recs, training.get("val_fraction", 0.2), training["split_seed"])
    expected = cfg.extra.get("heldout", {}).get("n_groups")   # a fingerprint of the training run's split
    if expected is not None and len(sp.val) != expected:
        what = f"{split} has" if split else f"the split rebuilt from seed {sp.seed} (the data changed since?) has"
        raise OptionError(f"{what} {len(sp.val)} validation groups, the model's training run had {expected}: "
                          f"give that run's --split")
    if set(sp.val) & set(sp.train):
        raise OptionError(f"{split}: a group is on both sides of the split")
    known = set(cfg.labels)
    val = [r for r in sp.select(recs, "val") if r.primary in known]
    if not val:
        raise OptionError("no validation recordings of the model's species in these datasets")
    snippet_paths = {r.path for d in snip_sets for r in d.recordings}
    info = {"data": [str(d) for d in data], "snippets": [str(d) for d in snippets],
            "split": {"file": str(split) if split else None, "seed": sp.seed, "val_fraction": sp.val_fraction,
                      "n_val_groups": len(sp.val), "val_groups_sha1": groups_sha1(sp.val),
                      "n_val_groups_found": len({r.group for r in val})}}
    return val, snippet_paths, info


def groups_sha1(groups: list[str]) -> str:
    """A fingerprint of a set of split groups, to tell later whether two splits are the same."""
    return hashlib.sha1("\n".join(sorted(groups)).encode()).hexdigest()[:12]


def _to_model_labels(recs: list[Recording], labels: list[str], names: list[str], cfg: ModelConfig) -> None:
    """A species the model knows under another dataset's label (same common name) gets the model's label."""
    by_name = {name_key(n): lab for lab, n in zip(cfg.labels, cfg.names) if n}
    rename = {lab: by_name[name_key(n)] for lab, n in zip(labels, names)
              if lab not in cfg.labels and n and name_key(n) in by_name}
    for r in recs:
        r.labels = [rename.get(x, x) for x in r.labels]
        r.secondary = [rename.get(x, x) for x in r.secondary]


def validation_items(cfg: ModelConfig, recs: list[Recording], snippet_paths: set[str], cache,
                     composed_per_species: int = 4, seed: int = 0) -> list[Item]:
    """Whole recordings, and composed windows of the held-out snippet runs (training validation's recipe)."""
    from .augment import AugmentConfig, NoiseBank
    from .composer import Composer, ComposerConfig, SnippetPool
    from .windows import composed_items
    index = {lab: i for i, lab in enumerate(cfg.labels)}
    items = []
    for r in (r for r in recs if r.path not in snippet_paths):
        target, known = np.zeros(cfg.num_classes, bool), np.ones(cfg.num_classes, bool)
        target[[index[x] for x in r.labels if x in index]] = True
        known[[index[x] for x in r.secondary if x in index]] = False
        items.append(Item(r.path, np.asarray(cache.load(r.path), np.float32), target, known))
    snips = [r for r in recs if r.path in snippet_paths]
    if snips and composed_per_species > 0:
        comp = Composer(SnippetPool(snips, cache, ComposerConfig().min_note_s), cfg.labels, NoiseBank([], None),
                        cfg.sample_rate, cfg.out_fps, cfg.window_s, ComposerConfig(), AugmentConfig.none())
        for it in composed_items(comp, composed_per_species * len(comp.species), seed):
            items.append(Item(it.name, it.windows[0], it.target > 0.5, it.mask > 0.5, composed=True))
    return items


# ------------------------------------------------------------------------------------- detection + choice

def candidates(floor: float) -> np.ndarray:
    """On thresholds tried: floor, then the 0.05 grid above it, up to 0.95."""
    grid = np.round(np.arange(STEP, TOP + 1e-9, STEP), 2)
    return np.concatenate([[floor], grid[grid > floor + 1e-9]])


def detections(model, items: list[Item], on: np.ndarray, ratio: float, hop_s: float = 1.0,
               progress=None) -> np.ndarray:
    """(C, N, K) bool: at candidate c (on = on[c], off = on[c] × ratio, every species), item n gave at least one
    event of species k. The network runs once per item; the smoother once per item and candidate."""
    from birdlive.streamer.core.offline import framewise_track
    from birdlive.streamer.core.smoother import EventSmoother
    from birdlive.streamer.core.stream import default_params
    cfg = model.cfg
    index = {lab: i for i, lab in enumerate(cfg.labels)}
    params = [default_params(cfg, threshold_on=float(t), threshold_off=float(t) * ratio) for t in on]
    det = np.zeros((len(on), len(items), cfg.num_classes), bool)
    for n, it in enumerate(items):
        track = framewise_track(model, it.wave, hop_s)
        for c, p in enumerate(params):
            sm = EventSmoother(cfg.labels, cfg.names, cfg.frame_s, p)
            for e in sm.push(track) + sm.finish():
                det[c, n, index[e.species]] = True
        if progress:
            progress(n + 1, len(items))
    return det


def fbeta(tp: np.ndarray, fn: np.ndarray, fp: np.ndarray, beta: float = BETA) -> np.ndarray:
    """F-beta from counts (scikit-learn's `fbeta_score`, vectorised); 0 where there is nothing to score."""
    b2 = beta * beta
    denom = (1 + b2) * tp + b2 * fn + fp
    return np.where(denom > 0, (1 + b2) * tp / np.maximum(denom, 1), 0.0)


def choose(det: np.ndarray, target: np.ndarray, known: np.ndarray, on: np.ndarray, min_positives: int = 3,
           beta: float = BETA) -> list[dict]:
    """Per species: the candidate with the best F-beta (ties: fewer false alarms, then lower), or a fallback.
    det (C, N, K); target, known (N, K). on[0] is the floor."""
    pos, neg = target & known, ~target & known
    tp = (det & pos).sum(axis=1)                       # (C, K)
    fp = (det & neg).sum(axis=1)
    n_pos = pos.sum(axis=0)
    f = fbeta(tp, n_pos - tp, fp, beta)
    out = []
    for k in range(det.shape[2]):
        row = {"n_pos": int(n_pos[k]), "n_neg": int(neg[:, k].sum()),
               "floor": {"tp": int(tp[0, k]), "fp": int(fp[0, k]), "f": float(f[0, k])}}
        if n_pos[k] < min_positives:
            out.append(row | {"on": None, "reason": f"fewer than {min_positives} positives"})
        elif not (tp[:, k].any() or fp[:, k].any()):
            out.append(row | {"on": None, "reason": "no events at any candidate"})
        else:
            c = int(np.lexsort((np.arange(len(on)), fp[:, k], -f[:, k]))[0])   # best f, then fewest fp, then lowest
            out.append(row | {"on": float(on[c]), "reason": "calibrated",
                              "chosen": {"tp": int(tp[c, k]), "fp": int(fp[c, k]), "f": float(f[c, k])}})
    return out


# ------------------------------------------------------------------------------------------ the whole job

def noise_items(cfg: ModelConfig, files: list[str], cache, minutes: float = 1.0, dbfs: float = -30.0,
                seed: int = 0) -> list[Item]:
    """Items with no species in them: `minutes` each of white, pink and brown noise at `dbfs` (the noise check's
    recipe, `birdlive.train.evaluate.noise_false_positives`) and the real background `files`."""
    from .synthetic import noise_check_waves
    none = np.zeros(cfg.num_classes, bool)
    waves = [(f"{c}-noise", w) for c, w in noise_check_waves(minutes, cfg.sample_rate, dbfs, seed)]
    waves += [(f, cache.load(f)) for f in files]
    return [Item(name, np.asarray(w, np.float32), none, ~none) for name, w in waves]


def choose_global(det: np.ndarray, target: np.ndarray, known: np.ndarray, noise_det: np.ndarray, on: np.ndarray,
                  beta: float = BETA, margin: float = 0.5) -> tuple[int, list[dict]]:
    """The global on threshold: of the candidates t with no event on any noise item (noise_det (C, M, K)) at the
    highest candidate <= t × margin either (the lowest candidate when there is none), the best F-beta over every
    (item, species) of det (C, N, K); ties: fewer false alarms, then lower. (index, rows)."""
    pos, neg = target & known, ~target & known
    tp, fp = (det & pos).sum(axis=(1, 2)), (det & neg).sum(axis=(1, 2))
    f = fbeta(tp, pos.sum() - tp, fp, beta)
    noise = noise_det.any(axis=2).sum(axis=1)                     # noise items with an event, per candidate
    below = np.maximum(np.searchsorted(on, on * margin + 1e-9, side="right") - 1, 0)   # candidate at t × margin
    rows = [{"on": float(t), "tp": int(a), "fp": int(b), "f": float(c), "noise_items_with_events": int(n),
             "noise_items_with_events_at_margin": int(noise[j])}
            for t, a, b, c, n, j in zip(on, tp, fp, f, noise, below)]
    safe = np.flatnonzero((noise == 0) & (noise[below] == 0))
    if not len(safe):
        raise OptionError(f"no threshold up to {on[-1]:g} keeps the noise free of events with a margin")
    best = safe[np.lexsort((safe, fp[safe], -f[safe]))[0]]
    return int(best), rows


def calibrate(model, items: list[Item], floor: float | None = None, min_positives: int = 3, hop_s: float = 1.0,
              progress=None, noise: list[Item] | None = None, beta: float = BETA
              ) -> tuple[dict[str, list[float]], dict]:
    """({label: [on, off]} for the calibrated species, a summary with one row per species). With `noise` items,
    the global on threshold is chosen first (`choose_global`) and is the floor; the summary's `global` has it."""
    cfg = model.cfg
    ratio = cfg.threshold_off / cfg.threshold_on if cfg.threshold_on > 0 else 1.0
    target, known = np.stack([it.target for it in items]), np.stack([it.known for it in items])
    chosen_global = None
    if noise:                            # the global pair first: it is the floor
        on = candidates(STEP)
        det_all = detections(model, items + noise, on, ratio, hop_s, progress)
        det, noise_det = det_all[:, :len(items)], det_all[:, len(items):]
        whole = np.array([not it.composed for it in items])
        whole = whole if whole.any() else ~whole                 # snippet-only data: the composed windows
        # the top candidate is left to the per-species step (a floor must lie below it)
        g, sweep = choose_global(det[:-1, whole], target[whole], known[whole], noise_det[:-1], on[:-1], beta)
        floor = float(on[g])
        on, det = on[g:], det[g:]
        chosen_global = {"on": floor, "off": round(floor * ratio, 4), "noise_items": len(noise), "sweep": sweep}
    else:
        floor = cfg.threshold_on if floor is None else floor
        if not 0 < floor < TOP:
            raise OptionError(f"--floor must be above 0 and below {TOP}, not {floor:g}")
        on = candidates(floor)
        det = detections(model, items, on, ratio, hop_s, progress)
    rows = choose(det, target, known, on, min_positives, beta)
    table = {lab: [r["on"], round(r["on"] * ratio, 4)] for lab, r in zip(cfg.labels, rows) if r["on"] is not None}
    summary = _summary(cfg, rows, table, floor, ratio, on, min_positives, hop_s, beta)
    if chosen_global:
        summary["global"] = chosen_global
    return table, summary


def _summary(cfg: ModelConfig, rows: list[dict], table: dict, floor: float, ratio: float, on: np.ndarray,
             min_positives: int, hop_s: float, beta: float = BETA) -> dict:
    chosen = [v[0] for v in table.values()]
    reasons: dict[str, int] = {}
    for r in rows:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    def totals(key: str) -> dict:     # validation items with events, summed over species (fallbacks: at the floor)
        return {x: sum(r.get(key, r["floor"])[x] for r in rows) for x in ("tp", "fp")}
    return {"method": f"per species, the on threshold with the best F{beta:g} of item-level detection "
                      f"(offline reference + streaming smoother, hop {hop_s:g} s); ties: fewer false alarms, then "
                      f"lower; off = on x {ratio:.4g}; floor {floor:g}; fallback to the global pair below "
                      f"{min_positives} positives or without events (see birdlive/train/calibrate.py)",
            "candidates": [round(float(t), 4) for t in on], "floor": floor, "off_on_ratio": ratio, "beta": beta,
            "min_positives": min_positives, "n_species": len(rows), "n_calibrated": len(table),
            "n_raised": sum(t > floor + 1e-9 for t in chosen), "reasons": reasons,
            "on_range": [min(chosen), max(chosen)] if chosen else None,
            "validation_events": {"at_floor": totals("floor"), "calibrated": totals("chosen"),
                                  "note": "item-level true/false detections on the calibration items themselves "
                                          "(in-sample)"},
            "species": [{"label": lab, **r} for lab, r in zip(cfg.labels, rows)]}


def write_calibrated(path: str | Path, cfg: ModelConfig, table: dict, record: dict, out: str | Path | None = None
                     ) -> Path:
    """The checkpoint's JSON with `table` and `record` (in `extra.calibration`): replaced in place, or written as
    a new checkpoint `out` (the weights copied beside it)."""
    from birdlive.model.checkpoint import checkpoint_paths, save_config
    new = dataclasses.replace(cfg, thresholds=table, extra={**cfg.extra, "calibration": record})
    if "global" in record:                                  # the global pair was chosen too
        new = dataclasses.replace(new, threshold_on=record["global"]["on"], threshold_off=record["global"]["off"])
    if out is not None:
        src, _ = checkpoint_paths(path)
        dst, _ = checkpoint_paths(out)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        return save_config(new, out)
    return save_config(new, path)


def record_for(summary: dict, info: dict, command: str, n_recordings: int, n_composed: int, seed: int) -> dict:
    """What goes into the checkpoint's `extra.calibration`: how, on what, and the outcome (not the per-species
    rows: those are the `--report`)."""
    keep = {k: v for k, v in summary.items() if k not in ("species", "candidates")}
    on = summary["candidates"]
    return {"command": command, "date": datetime.date.today().isoformat(), **info,
            "items": {"recordings": n_recordings, "composed_windows": n_composed, "composed_seed": seed},
            **keep, "candidates": {"from": on[0], "step": STEP, "to": on[-1]},
            "note": "species not in `thresholds` use the global pair. Calibrated on the training run's validation "
                    "groups: figures measured on those groups at these thresholds are in-sample."}
