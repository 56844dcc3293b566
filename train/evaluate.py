"""Evaluation: clip/file-level metrics (scikit-learn), event-based F1 against strong labels, and a false-positive
count on pure noise.

Unit of the clip metrics: one file (a recording, cut into windows of the model's `window_s`, scored by the
maximum of the window scores per species — "is this species anywhere in the file"), or one composed window.
Secondary (background) species of a file are neither positives nor negatives: masked out of every metric.

- per-species AP (`sklearn.metrics.average_precision_score`) over the files where that species is known; macro
  mAP = mean over species with at least one positive file;
- F1 at the model threshold (`cfg.threshold_on`): micro over all known (file, species) pairs, and per species;
- top-1 accuracy on single-species files (exactly one positive, no masked species);
- confusion summary: the species with the lowest AP, how often their files are top-1 right, and which species
  wins instead.

Event-based F1 (`event_metrics`): estimated events (from `birdlive.streamer.core.offline.detect_offline`) are matched
one-to-one to reference events of the same species and file when their onsets differ by at most
`onset_tolerance` seconds (and, optionally, offsets by at most max(offset_tolerance, offset_pct × reference
length)); the matching is a maximum bipartite matching, as in sed_eval's `EventBasedMetrics`. It is written here
(40 lines) because sed_eval and sed_scores_eval install from PyPI but do not import: both go through
dcase_util, which imports `pkg_resources`, gone from current setuptools. `tests/test_evaluate.py` checks this
code on cases worked by hand; it was also cross-checked against sed_eval 0.2.1 in a separate environment.
"""
from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, precision_recall_fscore_support

from birdlive.errors import OptionError


# ------------------------------------------------------------------------------------------ clip metrics

class SpeciesMetrics(TypedDict):
    """One species' entry in `clip_metrics`' "species" (None: no positive, or none known, to compute it on)."""
    label: str
    name: str
    n_pos: int
    n: int
    ap: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    top1: float | None
    n_single: int
    confused_with: list[list[str | int]]     # [[label, files of this species it won on], ...], most first
    false_alarms: int


def species_ap(y: np.ndarray, s: np.ndarray) -> float | None:
    """One species' average precision over the items where it is known: None without a positive, 1.0 when every
    item is one."""
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    return 1.0 if n_pos == len(y) else float(average_precision_score(y, s))


def macro_ap(scores: np.ndarray, targets: np.ndarray, masks: np.ndarray) -> float | None:
    """clip_metrics' macro mAP alone (the mean of `species_ap` over the species with a positive): for resampling."""
    targets, masks = np.asarray(targets) > 0.5, np.asarray(masks) > 0.5
    aps = [ap for k in range(scores.shape[1])
           if (ap := species_ap(targets[masks[:, k], k], scores[masks[:, k], k])) is not None]
    return float(np.mean(aps)) if aps else None


def clip_metrics(scores: np.ndarray, targets: np.ndarray, masks: np.ndarray | None, labels: list[str],
                 threshold: float = 0.5, names: list[str] | None = None, worst: int = 5) -> dict:
    """scores, targets, masks: (N, K). Returns a JSON-able dict (see the module docstring)."""
    scores, targets = np.asarray(scores, np.float64), np.asarray(targets) > 0.5
    masks = np.ones_like(scores, bool) if masks is None else np.asarray(masks) > 0.5
    N, K = scores.shape
    names = names or [""] * K
    pred = scores >= threshold
    top = scores.argmax(axis=1) if K else np.zeros(N, int)
    single = (targets.sum(axis=1) == 1) & masks.all(axis=1)
    species: list[SpeciesMetrics] = []
    for k in range(K):
        m = masks[:, k]
        y, s = targets[m, k], scores[m, k]
        n_pos = int(y.sum())
        ap = species_ap(y, s)
        if n_pos:
            p, r, f, _ = precision_recall_fscore_support(y, pred[m, k], average="binary", zero_division=0)
        else:
            p = r = f = None
        own = single & targets[:, k]
        wrong = Counter(int(j) for j in top[own] if j != k)
        species.append({
            "label": labels[k], "name": names[k], "n_pos": n_pos, "n": int(m.sum()), "ap": ap,
            "precision": None if p is None else float(p), "recall": None if r is None else float(r),
            "f1": None if f is None else float(f),
            "top1": float((top[own] == k).mean()) if own.any() else None, "n_single": int(own.sum()),
            "confused_with": [[labels[j], c] for j, c in wrong.most_common(3)],
            "false_alarms": int((pred[m, k] & ~y).sum()),
        })
    with_ap = [(sp, ap) for sp in species if (ap := sp["ap"]) is not None]
    aps = [ap for _, ap in with_ap]
    f1s = [f1 for sp in species if (f1 := sp["f1"]) is not None]
    known = masks.ravel()
    f1_micro = float(f1_score(targets.ravel()[known], pred.ravel()[known], zero_division=0)) if known.any() else None
    ranked = [sp for sp, _ in sorted(with_ap, key=lambda pair: pair[1])]
    # the threshold that would maximise micro F1 here (a hint for calibrating threshold_on; not used by the model)
    best_f1, best_thr = None, None
    if known.any() and targets.ravel()[known].any():
        for thr in np.round(np.arange(0.05, 0.96, 0.05), 2):
            f = f1_score(targets.ravel()[known], scores.ravel()[known] >= thr, zero_division=0)
            if best_f1 is None or f > best_f1:
                best_f1, best_thr = float(f), float(thr)
    return {
        "n_items": N, "n_species_evaluated": len(aps), "threshold": threshold,
        "macro_map": float(np.mean(aps)) if aps else None,
        "f1_micro": f1_micro, "f1_macro": float(np.mean(f1s)) if f1s else None,
        "f1_best": best_f1, "f1_best_threshold": best_thr,
        "top1": float((top[single] == targets[single].argmax(axis=1)).mean()) if single.any() else None,
        "n_single": int(single.sum()),
        "species": species,
        "worst": [sp["label"] for sp in ranked[:worst]],
    }


# ----------------------------------------------------------------------------------------- event metrics

@dataclass(frozen=True)
class RefEvent:
    file: str
    species: str
    onset: float
    offset: float


def read_strong_labels(path: str | Path) -> list[RefEvent]:
    """CSV with columns file, species, onset, offset (seconds). `file` is matched by path, then by name."""
    rows = list(csv.DictReader(open(path, newline="", encoding="utf-8-sig")))
    need = {"file", "species", "onset", "offset"}
    if not rows or not need <= set(rows[0]):
        raise OptionError(f"{path}: needs columns {', '.join(sorted(need))}")
    return [RefEvent(r["file"].strip(), r["species"].strip(), float(r["onset"]), float(r["offset"])) for r in rows]


def _max_matching(adj: list[list[int]], n_right: int) -> int:
    """Size of a maximum bipartite matching (Kuhn's augmenting paths); adj[i] = right nodes left i may take."""
    match_r = [-1] * n_right

    def augment(i, seen):
        for j in adj[i]:
            if not seen[j]:
                seen[j] = True
                if match_r[j] < 0 or augment(match_r[j], seen):
                    match_r[j] = i
                    return True
        return False

    return sum(augment(i, [False] * n_right) for i in range(len(adj)))


def event_metrics(reference: list[RefEvent], estimated: list[RefEvent], onset_tolerance: float = 0.5,
                  offset_tolerance: float | None = None, offset_pct: float = 0.2) -> dict:
    """Event-based precision/recall/F1, micro over all events and per species (see the module docstring).
    `offset_tolerance=None` evaluates onsets only."""
    groups: dict[tuple[str, str], tuple[list, list]] = defaultdict(lambda: ([], []))
    for e in reference:
        groups[(e.file, e.species)][0].append(e)
    for e in estimated:
        groups[(e.file, e.species)][1].append(e)
    counts: dict[str, Counter] = defaultdict(Counter)
    for (_, sp), (ref, est) in groups.items():
        adj = []
        for r in ref:
            ok = []
            for j, e in enumerate(est):
                hit = abs(e.onset - r.onset) <= onset_tolerance + 1e-9
                if hit and offset_tolerance is not None:
                    hit = abs(e.offset - r.offset) <= max(offset_tolerance, offset_pct * (r.offset - r.onset)) + 1e-9
                if hit:
                    ok.append(j)
            adj.append(ok)
        tp = _max_matching(adj, len(est))
        counts[sp].update(tp=tp, fp=len(est) - tp, fn=len(ref) - tp)

    def prf(c):
        p = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
        r = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
        return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                "tp": c["tp"], "fp": c["fp"], "fn": c["fn"]}

    total: Counter[str] = Counter()
    for c in counts.values():
        total.update(c)
    per = {sp: prf(c) for sp, c in sorted(counts.items())}
    with_ref = [v["f1"] for v in per.values() if v["tp"] + v["fn"] > 0]
    return {"onset_tolerance": onset_tolerance, "offset_tolerance": offset_tolerance, **prf(total),
            "f1_macro": float(np.mean(with_ref)) if with_ref else None, "species": per}


def detect_events(model, wave: np.ndarray, source: str = "") -> list:
    from birdlive.streamer.core.offline import detect_offline

    from .threads import cpu_threads
    with cpu_threads():
        return detect_offline(model, np.asarray(wave, np.float32), source=source)


def evaluate_events(model, reference: list[RefEvent], waves: dict[str, np.ndarray], onset_tolerance: float = 0.5,
                    offset_tolerance: float | None = None) -> dict:
    """Runs the streaming detector over each file of `waves` ({file key as in `reference`: waveform}) and scores
    its events against `reference`."""
    est = []
    for key, wave in waves.items():
        for ev in detect_events(model, wave, source=key):
            est.append(RefEvent(key, ev.species, float(ev.onset_s), float(ev.offset_s)))
    ref = [r for r in reference if r.file in waves]
    out = event_metrics(ref, est, onset_tolerance, offset_tolerance)
    out["n_files"], out["n_reference"], out["n_estimated"] = len(waves), len(ref), len(est)
    return out


def noise_false_positives(model, minutes: float = 1.0, colors=("white", "pink", "brown"), dbfs: float = -30.0,
                          seed: int = 0) -> dict:
    """Events the detector reports, at the model's default thresholds, on `minutes` of pure coloured noise each."""
    from .synthetic import noise_check_waves
    n_events: dict[str, int] = {}
    species: dict[str, dict[str, int]] = {}
    for c, x in noise_check_waves(minutes, model.cfg.sample_rate, dbfs, seed, colors):
        events = detect_events(model, x, source=f"{c}-noise")
        n_events[c] = len(events)
        species[c] = dict(Counter(e.species for e in events))
    out: dict[str, object] = {"minutes_each": minutes, "dbfs": dbfs, "events": n_events}
    if species:                 # no colours, no "species"
        out["species"] = species
    out["total"] = sum(n_events.values())
    return out


# ----------------------------------------------------------------------------------------------- report

def results_table(result: dict, rows: int = 30):
    """A rich Table: the worst species first (lowest AP), with AP, F1, top-1 and confusions."""
    from rich.table import Table
    t = Table(title=f"macro mAP {fmt(result.get('macro_map'))}   F1@{result.get('threshold')} "
                    f"{fmt(result.get('f1_micro'))}   top-1 {fmt(result.get('top1'))} "
                    f"({result.get('n_single', 0)} single-species)   {result.get('n_items', 0)} items   "
                    f"(best F1 {fmt(result.get('f1_best'))} at {result.get('f1_best_threshold')})")
    for col in ("species", "files+", "AP", "P", "R", "F1", "top-1", "confused with"):
        t.add_column(col, justify="left" if col in ("species", "confused with") else "right")
    ranked = sorted((sp for sp in result["species"] if sp["ap"] is not None), key=lambda sp: sp["ap"])
    for sp in ranked[:rows]:
        t.add_row(sp["name"] or sp["label"], str(sp["n_pos"]), fmt(sp["ap"]), fmt(sp["precision"]),
                  fmt(sp["recall"]), fmt(sp["f1"]), fmt(sp["top1"]),
                  ", ".join(f"{lab} ×{c}" for lab, c in sp["confused_with"]))
    return t


def fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def write_json(result: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1))


# ------------------------------------------------------------------------------------- whole evaluation

def evaluate_model(model, data: list[str], split: str | None = None, subset: str = "val", cache_dir=None,
                   hop_s: float | None = None, max_windows: int | None = None, strong: str | None = None,
                   onset_tolerance: float = 0.5, offset_tolerance: float | None = None, noise_minutes: float = 0.0,
                   noise_dbfs: float = -30.0, batch_size: int = 16, device="cpu", worst: int = 5) -> dict:
    """Everything `birdlive evaluate` reports, as a dict: clip metrics over the files of `data` (only the `subset`
    of a saved `split` when given), event F1 against `strong` labels, and false positives on pure noise."""
    from .cache import AudioCache
    from .datasets import Split, load_dataset
    from .windows import predict_items, recording_items

    from .datasets import name_key
    cfg = model.cfg
    by_name = {name_key(n): lab for lab, n in zip(cfg.labels, cfg.names) if n}
    recs = []
    for d in data:
        ds = load_dataset(d)
        # a species the model knows under another dataset's label (same common name) is scored as that label
        rename = {lab: by_name[name_key(n)] for lab, n in ds.names.items()
                  if lab not in cfg.labels and n and name_key(n) in by_name}
        for r in ds.recordings:
            r.labels = [rename.get(x, x) for x in r.labels]
            r.secondary = [rename.get(x, x) for x in r.secondary]
        recs += ds.recordings
    if split:
        recs = Split.load(split).select(recs, subset)
    known = set(cfg.labels)
    unknown = sorted({r.primary for r in recs if r.primary not in known})
    recs = [r for r in recs if r.primary in known]
    if not recs:
        hint = f" (the data's species are not the model's: {', '.join(unknown[:5])} ...)" if unknown else ""
        raise OptionError("no files of the model's species to evaluate" + hint)
    cache = AudioCache(cache_dir, cfg.sample_rate)
    items = recording_items(recs, cfg.labels, cache, cfg.window_s, hop_s or cfg.window_s / 2, max_windows)
    from .threads import cpu_threads
    with cpu_threads():
        scores = predict_items(model, items, batch_size, device)
    result = clip_metrics(scores, np.stack([it.target for it in items]), np.stack([it.mask for it in items]),
                          cfg.labels, cfg.threshold_on, cfg.names, worst)
    result.update(data=[str(d) for d in data], split=split, subset=subset if split else None,
                  skipped_species=unknown)
    if strong:
        ref = read_strong_labels(strong)
        base = Path(strong).parent
        by_name = {Path(r.path).name: r.path for r in recs}
        by_path = {str(Path(r.path).resolve()): r.path for r in recs}
        waves = {}
        for f in sorted({r.file for r in ref}):
            cand = [base / f, Path(f)] + [Path(d) / f for d in data if Path(d).is_dir()]
            path = next((by_path[str(c.resolve())] for c in cand if str(c.resolve()) in by_path), None)
            path = path or by_name.get(Path(f).name) or next((str(c) for c in cand if c.is_file()), None)
            if path:
                waves[f] = cache.load(path)
        result["events"] = evaluate_events(model, ref, waves, onset_tolerance, offset_tolerance)
    if noise_minutes > 0:
        result["noise_fp"] = noise_false_positives(model, noise_minutes, dbfs=noise_dbfs)
    return result
