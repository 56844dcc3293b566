"""Test-split evaluation of a trained birdlive model (the default model), side by side with BirdNET V2.4.

    python benchmarks/evaluate_default.py --model runs/default/best --run runs/default [--birdnet] \
        [--split runs/default/split.json] [--minutes 10] --out benchmarks/results/default.json

Everything runs on the TEST groups of the run's saved `split.json` (test essential-set recording runs, test
xeno-canto recordings): data never used for training, for checkpoint choice or for thresholds, which use the
validation groups. A split without a test list (two-way, from before) is refused. The data, species filter and
split are rebuilt exactly as `train/loop.py` does from the run's `train.json`, and the model's labels must match.

1. Composed test windows: `Composer` over the test snippet runs only, the run's `ComposerConfig`, no
   augmentation, coloured-noise bed (the validation recipe of `train/loop.py`), seeded with `--seed`.
   `clip_metrics`: macro mAP, per-species AP (scikit-learn), top-1 on single-species windows.
2. Event F1 (onset tolerance 0.5 s, `event_metrics`) on `--minutes` composed 60 s soundscapes from the test
   runs (2-4 species, 3-6 note sequences each), detected with `detect_offline` at the checkpoint's thresholds.
   Two references: every note, and "bouts" (a species' notes merged when the gap is <= the smoother's merge
   gap, which is what one detector event stands for).
3. Events on pure white, pink and brown noise (`noise_false_positives`, `--noise-minutes` each, -30 dBFS).
4. BirdNET (`--birdnet`, via benchmarks/birdnet_peer.py in .venv-peers) on the same composed windows (written
   as float WAVs to a temporary folder) and the same xc windows; macro mAP of both on the species both know
   (benchmarks/species_map.py); replay real-time factor of both on one FLAC (48 kHz, the soundscapes end to
   end): ours through the `birdlive replay` path (FileSource -> runner -> shared scorer), BirdNET as its
   `recordings` mode reports it.
5. Test xc-puerto-rico recordings, whole: window-level AP (5 s windows, hop 5 s; every window carries its
   recording's labels), recording-level AP and top-1 (max over windows), and `detect_offline` events per
   recording (right species, secondary species, wrong species); BirdNET's detections (min confidence 0.25,
   consecutive 3 s detections of one species merged into one event) counted the same way.
   Secondary (`also`) species are masked: neither positive nor negative in AP, not wrong as events.
6. Events on the real background files of the noise folder (blanket/ and audiomentations/background_noises/),
   apart: those held out of training (`--holdout`, default the run's `holdout` file: never heard in training)
   and those that were training backgrounds.

Writes JSON (`--out`) and the same tables as markdown (`--md`, default: beside the JSON). Audio is only ever
written to a temporary folder that is deleted at the end.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch: a spinning pool is ~30x slower on a busy CPU

import argparse
import csv
import dataclasses
import datetime
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from rich.console import Console
from rich.table import Table

import hashlib

from birdlive.model import load_checkpoint
from birdlive.model.checkpoint import checkpoint_paths
from birdlive.streamer import default_params, file_specs, make_runner
from birdlive.train.augment import AugmentConfig, NoiseBank
from birdlive.train.cache import AudioCache
from birdlive.train.composer import Composer, SnippetPool
from birdlive.train.datasets import AUDIO_EXTENSIONS, Holdout, Split, is_excluded, load_dataset, merge, select_species
from birdlive.train.evaluate import RefEvent, clip_metrics, detect_events, event_metrics, noise_false_positives
from birdlive.train.loop import TrainConfig
from birdlive.train.threads import cpu_threads
from birdlive.train.windows import EvalItem, composed_items, predict_items, recording_items

REPO = Path(__file__).resolve().parents[1]
console = Console(width=140)

SOUNDSCAPE_S = 60.0
SOUNDSCAPE_SPECIES = (2, 4)      # species per soundscape
SOUNDSCAPE_SEQUENCES = (3, 6)    # note sequences per species in one soundscape
BIRDNET_MIN_CONF = 0.25          # BirdNET's default detection confidence


# ------------------------------------------------------------------------------------------------ tables

class Tab:
    """One table, rendered both as a rich Table (console) and as markdown (README)."""

    def __init__(self, title: str, columns: list[str], note: str = ""):
        self.title, self.columns, self.rows, self.note = title, columns, [], note

    def add(self, *cells) -> None:
        self.rows.append([_cell(c) for c in cells])

    def rich(self) -> Table:
        t = Table(title=self.title, title_justify="left", caption=self.note or None, caption_justify="left")
        for i, c in enumerate(self.columns):
            t.add_column(c, justify="left" if i == 0 else "right", overflow="fold")
        for r in self.rows:
            t.add_row(*r)
        return t

    def md(self) -> str:
        def numeric(j):
            cells = [r[j] for r in self.rows if r[j] not in ("-", "")]
            return bool(cells) and all(re.fullmatch(r"[-+]?[\d.]+(×.*)?( \(.*\))?|\d+/\d+", c) for c in cells)
        align = [" ---: " if j and numeric(j) else " --- " for j in range(len(self.columns))]
        out = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |", "|" + "|".join(align) + "|"]
        out += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in self.rows]
        if self.note:
            out += ["", self.note]
        return "\n".join(out) + "\n"


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def norm(name: str) -> str:
    s = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]", "", s.lower())


# ------------------------------------------------------------------------------------------- the run's data

def resolve(p: str) -> str:
    """A data path of train.json, relative to the working directory or else to the repository."""
    q = Path(p)
    return str(q if q.exists() or q.is_absolute() else REPO / q)


def rebuild_data(cfg: TrainConfig, split: Split, holdout: Holdout, subset: str = "test"):
    """The recordings, labels and names exactly as `train/loop.py` builds them, plus the parts of one subset (the
    test groups here; `compare_validation.py` asks for the validation ones)."""
    rec_sets = [load_dataset(resolve(d)) for d in cfg.data]
    snip_sets = [load_dataset(resolve(d)) for d in cfg.snippets]
    recs, labels, names = merge(rec_sets + snip_sets)
    if cfg.species:
        recs, labels, names = select_species(recs, labels, names, cfg.species)
    snippet_paths = {r.path for d in snip_sets for r in d.recordings}
    if not split.test:
        raise SystemExit("the split has no test list (a two-way split from before): the figures need one")
    part = split.select(recs, subset)
    others = set().union(*(getattr(split, s) for s in ("train", "val", "test") if s != subset))
    assert not any(r.group in others for r in part), f"split: a {subset} group is also in another subset"
    assert not any(is_excluded(r.path, holdout.exclude) for r in part), f"split: an excluded file is in {subset}"
    te_long = [r for r in part if r.path not in snippet_paths]
    te_snip = [r for r in part if r.path in snippet_paths]
    # raw `also` names (scientific) of the recordings datasets, for secondaries outside our label set
    also: dict[str, list[str]] = {}
    for d in cfg.data:
        meta = Path(resolve(d)) / "metadata.csv"
        if meta.is_file():
            for row in csv.DictReader(open(meta, newline="", encoding="utf-8-sig")):
                if "filepath" in row:
                    also[str((Path(resolve(d)).resolve() / row["filepath"]))] = [
                        a.strip() for a in (row.get("also") or "").split(";") if a.strip()]
    return labels, names, te_long, te_snip, also


# ------------------------------------------------------------------------------------------------ stages

def composed_set(mc, cfg: TrainConfig, snips, cache, per_species: int, seed: int):
    """`per_species` composed windows per species of `snips` (no augmentation, seeded), labelled in `mc.labels`:
    items, targets, masks, runs per species, species."""
    pool = SnippetPool(snips, cache, cfg.composer.min_note_s)
    comp = Composer(pool, mc.labels, NoiseBank([], None), mc.sample_rate, mc.out_fps, mc.window_s, cfg.composer,
                    AugmentConfig.none())
    items = composed_items(comp, per_species * len(comp.species), seed)
    targets = np.stack([it.target for it in items])
    masks = np.stack([it.mask for it in items])
    return items, targets, masks, {sp: len(rs) for sp, rs in pool.runs.items()}, comp.species


def eval_composed(model, cfg: TrainConfig, te_snip, cache, per_species: int, seed: int, batch: int):
    items, targets, masks, runs, species = composed_set(model.cfg, cfg, te_snip, cache, per_species, seed)
    return items, predict_items(model, items, batch), targets, masks, runs, species


def recording_windows(recs, labels: list[str], cache, window_s: float):
    """Whole recordings cut into back-to-back windows: the recording items, one item per window (its
    recording's labels), and which recording owns each window."""
    rec_items = recording_items(recs, labels, cache, window_s, window_s, None)
    win_items = [EvalItem(f"{it.name}#{j}", w[None], it.target, it.mask)
                 for it in rec_items for j, w in enumerate(it.windows)]
    owner = np.array([k for k, it in enumerate(rec_items) for _ in it.windows])
    return rec_items, win_items, owner


def per_recording(w_scores: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """(n, K) recording scores: the max over each recording's windows."""
    return np.stack([w_scores[owner == k].max(0) for k in range(n)])


def make_soundscapes(model, cfg: TrainConfig, te_snip, cache, minutes: float, seed: int):
    mc = model.cfg
    pool = SnippetPool(te_snip, cache, cfg.composer.min_note_s)
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


def background_files(noise_dir: Path) -> list[Path]:
    """Every audio file in blanket/ and audiomentations/background_noises/ (impulse responses and the short
    transients of audiomentations/short_noises are not backgrounds)."""
    out = []
    for sub in ("blanket", "audiomentations/background_noises"):
        d = noise_dir / sub
        if d.is_dir():
            out += sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    return out


def replay_rtf(model, path: Path, threads: int) -> dict:
    """Our replay real-time factor, the `birdlive replay` path without sinks: FileSource (decode + soxr to the
    model's rate, 16 s blocks) -> runner (log-mel once per hop, 5 s windows every 1 s, shared scorer)."""
    with cpu_threads(threads):
        (st,) = make_runner(model, []).run(file_specs([path], model.cfg.sample_rate))
    return {"audio_s": st.audio_s, "wall_s": st.wall_s, "rtf": st.realtime_factor, "events": st.events,
            "threads": threads, "windows": st.windows}


def classify_events(species: list[str], primary: str, secondary: set[str]) -> Counter:
    c = Counter()
    for s in species:
        c["right" if s == primary else "secondary" if s in secondary else "wrong"] += 1
    return c


# ------------------------------------------------------------------------------------------------- BirdNET

def run_birdnet_windows(py: str, wav_dir: Path, labels: list[str], out: Path, threads: int) -> tuple[np.ndarray, dict]:
    out.parent.mkdir(parents=True, exist_ok=True)
    lab_json = out.with_name("labels.json")
    lab_json.write_text(json.dumps(labels))
    cmd = [py, str(REPO / "benchmarks" / "birdnet_peer.py"), "--threads", str(threads), "windows", str(wav_dir),
           str(lab_json), "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    if r.returncode:
        raise RuntimeError(f"BirdNET windows failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    console.print(f"[dim]{r.stdout.strip()}[/]")
    return np.load(out), json.loads(out.with_suffix(".json").read_text())


def run_birdnet_recordings(py: str, files: list[Path], out_csv: Path, threads: int) -> tuple[list[dict], dict]:
    cmd = [py, str(REPO / "benchmarks" / "birdnet_peer.py"), "--threads", str(threads), "recordings",
           *map(str, files), "-o", str(out_csv), "--min-conf", str(BIRDNET_MIN_CONF)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    if r.returncode:
        raise RuntimeError(f"BirdNET recordings failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    per_file = {}
    for line in r.stdout.splitlines():
        m = re.match(r"^(.*): ([\d.]+)s, ([\d.]+)x RT -> ", line)
        if m:
            per_file[m.group(1)] = {"audio_s": float(m.group(2)), "rtf": float(m.group(3))}
    rows = list(csv.DictReader(open(out_csv, newline="", encoding="utf-8")))
    return rows, per_file


def merge_detections(rows: list[dict]) -> list[dict]:
    """Consecutive (touching or overlapping) BirdNET chunk detections of one species in one file -> one event."""
    by = defaultdict(list)
    for r in rows:
        by[(r["file"], r["scientific_name"], r["common_name"])].append((float(r["start_s"]), float(r["end_s"]),
                                                                        float(r["confidence"])))
    out = []
    for (f, sci, com), ds in by.items():
        ds.sort()
        cur = list(ds[0])
        for a, b, c in ds[1:]:
            if a <= cur[1] + 1e-6:
                cur[1], cur[2] = max(cur[1], b), max(cur[2], c)
            else:
                out.append({"file": f, "sci": sci, "common": com, "start": cur[0], "end": cur[1], "conf": cur[2]})
                cur = [a, b, c]
        out.append({"file": f, "sci": sci, "common": com, "start": cur[0], "end": cur[1], "conf": cur[2]})
    return out


def write_wav(path: Path, x: np.ndarray, sr: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(x, np.float32), sr, subtype="FLOAT")


# ---------------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint (STEM, STEM.safetensors or a run folder)")
    ap.add_argument("--run", required=True, help="training run folder (train.json, split.json)")
    ap.add_argument("--birdnet", action="store_true", help="also run BirdNET V2.4 (.venv-peers) side by side")
    ap.add_argument("--minutes", type=float, default=10.0, help="minutes of composed soundscapes for event F1")
    ap.add_argument("--split", default=None, help="the run's split.json with a test list (default: RUN/split.json)")
    ap.add_argument("--holdout", default=None, help="hold-out JSON naming the noise files never trained on "
                                                    "(default: the run's train.json `holdout`)")
    ap.add_argument("--per-species", type=int, default=8, help="composed windows per test species")
    ap.add_argument("--noise-minutes", type=float, default=2.0, help="minutes of each noise colour")
    ap.add_argument("--max-species", type=int, default=None, help="development: only the first N test "
                                                                    "snippet species")
    ap.add_argument("--max-xc", type=int, default=None, help="development: only the first N test recordings")
    ap.add_argument("--max-noise-files", type=int, default=None, help="development: only the first N noise files")
    ap.add_argument("--seed", type=int, default=1, help="seed of the composed windows and soundscapes "
                                                        "(training validation used the run's seed, 0)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for scoring (default: cores-1)")
    ap.add_argument("--rtf-threads", type=int, default=2, help="threads of both models in the speed comparison")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--peers-python", default=str(REPO / ".venv-peers" / "bin" / "python"))
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary audio folder (printed)")
    ap.add_argument("--out", required=True, help="JSON output")
    ap.add_argument("--md", default=None, help="markdown output (default: --out with .md)")
    a = ap.parse_args(argv)

    t_start = time.perf_counter()
    timing: dict[str, float] = {}

    def lap(name, t0):
        timing[name] = round(time.perf_counter() - t0, 1)
        console.print(f"[dim]{name}: {timing[name]:.1f} s[/]")

    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    model = load_checkpoint(a.model)
    weights = checkpoint_paths(a.model)[0]
    load_start = os.getloadavg()[0]
    mc = model.cfg
    run = Path(a.run)
    train_json = json.loads((run / "train.json").read_text())
    cfg = TrainConfig.from_dict(train_json)
    split = Split.load(a.split or run / "split.json")
    holdout_file = a.holdout or train_json.get("holdout")
    holdout = Holdout.load(resolve(holdout_file) if holdout_file else None)
    t0 = time.perf_counter()
    labels, names, te_long, te_snip, also_raw = rebuild_data(cfg, split, holdout)
    if labels != mc.labels:
        raise SystemExit(f"the model's {len(mc.labels)} labels are not the run's {len(labels)}: wrong --run?")
    if a.max_species:
        keep = sorted({r.primary for r in te_snip})[: a.max_species]
        te_snip = [r for r in te_snip if r.primary in keep]
    if a.max_xc:
        te_long = te_long[: a.max_xc]
    cache = AudioCache(cfg.cache_dir, mc.sample_rate)
    lap("data", t0)
    params = default_params(model.cfg)
    extra = mc.extra or {}
    tr = extra.get("training", {})
    settings = {
        "model": str(a.model), "weights_sha1": hashlib.sha1(weights.read_bytes()).hexdigest()[:12], "run": str(run), "labels": len(mc.labels), "backbone": mc.backbone,
        "step": tr.get("step"), "total_steps": tr.get("total_steps"),
        "training_cpu_hours": tr.get("cpu_hours"), "validation_map_at_save": extra.get("heldout", {}).get(
            "macro_map"),
        "threshold_on": mc.threshold_on, "threshold_off": mc.threshold_off,
        "species_thresholds": dict(mc.thresholds or {}), "median_s": params.median_s,
        "min_duration_s": params.min_duration_s, "merge_gap_s": params.merge_gap_s,
        "max_event_s": params.max_event_s, "hop_s": 1.0, "window_s": mc.window_s, "out_fps": mc.out_fps,
        "sample_rate": mc.sample_rate, "seed": a.seed, "split_seed": split.seed,
        "per_species": a.per_species, "test_snippet_runs": len({r.group for r in te_snip}),
        "test_snippet_species": len({r.primary for r in te_snip}), "test_recordings": len(te_long),
        "split": str(a.split or run / "split.json"), "holdout": holdout_file,
        "torch_threads": a.threads or max(1, (os.cpu_count() or 1) - 1), "cpu_count": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]) if argv is None else " ".join(argv),
    }
    result: dict = {"settings": settings}
    tmp = Path(tempfile.mkdtemp(prefix="birdlive-eval-"))
    bn_py = a.peers_python
    if a.birdnet and not Path(bn_py).is_file():
        raise SystemExit(f"--birdnet: no {bn_py} (see benchmarks/README.md)")

    try:
        with cpu_threads(a.threads):
            # 1 ---------------------------------------------------------------- composed test windows
            t0 = time.perf_counter()
            items, c_scores, c_tg, c_mk, c_runs, c_species = eval_composed(model, cfg, te_snip, cache,
                                                                           a.per_species, a.seed, a.batch)
            comp = clip_metrics(c_scores, c_tg, c_mk, mc.labels, mc.threshold_on, mc.names)
            comp.pop("worst", None)
            comp["species"] = [sp for sp in comp["species"] if sp["n_pos"] > 0]
            result["composed_windows"] = comp
            lap("composed windows (ours)", t0)

            # 2 ---------------------------------------------------------------- soundscapes, event F1
            t0 = time.perf_counter()
            waves, refs, ccfg = make_soundscapes(model, cfg, te_snip, cache, a.minutes, a.seed)
            est = []
            t_det = time.perf_counter()
            for key, w in waves.items():
                est += [RefEvent(key, e.species, float(e.onset_s), float(e.offset_s))
                        for e in detect_events(model, w, source=key)]
            det_s = time.perf_counter() - t_det
            peak_any, peak_present = soundscape_peaks(model, waves, refs, a.batch)
            bouts = merge_bouts(refs, params.merge_gap_s)
            ev_notes = event_metrics(refs, est, 0.5)
            ev_bouts = event_metrics(bouts, est, 0.5)
            audio_s = sum(len(w) for w in waves.values()) / mc.sample_rate
            result["soundscapes"] = {
                "n": len(waves), "seconds_each": SOUNDSCAPE_S, "audio_s": audio_s,
                "composer": ccfg.to_dict(), "n_notes": len(refs), "n_bouts": len(bouts), "n_estimated": len(est),
                "species_present": len({r.species for r in refs}),
                "notes": ev_notes, "bouts": ev_bouts, "detect_rtf_1thread": audio_s / det_s,
                "max_frame_score_any_species": peak_any, "max_frame_score_present_species": peak_present,
            }
            lap("soundscapes + detect_offline", t0)

            # 3 ---------------------------------------------------------------- coloured noise
            t0 = time.perf_counter()
            result["coloured_noise"] = noise_false_positives(model, a.noise_minutes, seed=a.seed)
            lap("coloured noise", t0)

            # 6 ---------------------------------------------------------------- real background noise files
            t0 = time.perf_counter()
            noise_root = Path(resolve(cfg.noise_dir or "../shared/data/noise"))
            held = holdout.heldout_noise(noise_root)          # never training backgrounds
            held_set = {p.resolve() for p in held}
            trained = [p for p in background_files(noise_root) if p.resolve() not in held_set]
            bg = {}
            for p in held[: a.max_noise_files] + trained[: a.max_noise_files]:
                x = cache.load(p)
                evs = detect_events(model, x, source=str(p))
                bg[p.relative_to(noise_root).as_posix()] = {
                    "seconds": round(len(x) / mc.sample_rate, 1), "events": len(evs),
                    "species": dict(Counter(e.name for e in evs)), "heldout": p.resolve() in held_set}

            def noise_total(heldout: bool) -> dict:
                vs = [v for v in bg.values() if v["heldout"] == heldout]
                return {"files": len(vs), "events": sum(v["events"] for v in vs),
                        "seconds": round(sum(v["seconds"] for v in vs), 1)}
            result["background_noise"] = {"files": bg, "total": sum(v["events"] for v in bg.values()),
                                          "seconds": round(sum(v["seconds"] for v in bg.values()), 1),
                                          "heldout": noise_total(True), "training": noise_total(False),
                                          "used_in_training_as_background": bool(cfg.noise_dir)}
            lap("background noise files", t0)

            # 5 ---------------------------------------------------------------- xc field recordings
            t0 = time.perf_counter()
            index = {lab: i for i, lab in enumerate(mc.labels)}
            rec_items, win_items, owner = recording_windows(te_long, mc.labels, cache, mc.window_s)
            w_scores = predict_items(model, win_items, a.batch)
            w_tg = np.stack([it.target for it in win_items])
            w_mk = np.stack([it.mask for it in win_items])
            r_scores = per_recording(w_scores, owner, len(rec_items))
            r_tg = np.stack([it.target for it in rec_items])
            r_mk = np.stack([it.mask for it in rec_items])
            xc_win = clip_metrics(w_scores, w_tg, w_mk, mc.labels, mc.threshold_on, mc.names)
            xc_rec = clip_metrics(r_scores, r_tg, r_mk, mc.labels, mc.threshold_on, mc.names)
            prim = np.array([index[r.primary] for r in te_long])
            recs_out = []
            for k, r in enumerate(te_long):
                also_names = also_raw.get(str(Path(r.path).resolve()), [])
                sec = set(r.secondary) | {lab for lab in mc.labels if norm(lab) in {norm(x) for x in also_names}}
                wave = cache.load(r.path)
                evs = detect_events(model, wave, source=r.path)
                cls = classify_events([e.species for e in evs], r.primary, sec)
                recs_out.append({
                    "file": Path(r.path).relative_to(Path(r.path).parents[1]).as_posix(), "species": r.primary,
                    "seconds": round(len(wave) / mc.sample_rate, 1), "windows": len(rec_items[k].windows),
                    "secondary": sorted(sec), "also": also_names,
                    "top1": mc.labels[int(r_scores[k].argmax())], "top1_score": float(r_scores[k].max()),
                    "events_right": cls["right"], "events_secondary": cls["secondary"],
                    "events_wrong": cls["wrong"],
                    "wrong_species": dict(Counter(e.species for e in evs if e.species != r.primary
                                                  and e.species not in sec)),
                })
            xc = {
                "n_recordings": len(te_long), "audio_s": round(sum(x["seconds"] for x in recs_out), 1),
                "n_windows": len(win_items),
                "window_level": _slim(xc_win), "recording_level": _slim(xc_rec),
                "recording_top1": float((r_scores.argmax(1) == prim).mean()) if len(prim) else None,
                "recordings_with_right_event": sum(x["events_right"] > 0 for x in recs_out),
                "events_right": sum(x["events_right"] for x in recs_out),
                "events_secondary": sum(x["events_secondary"] for x in recs_out),
                "events_wrong": sum(x["events_wrong"] for x in recs_out),
                "recordings": recs_out,
                "secondaries": "masked: neither positive nor negative in AP (a background species may or may not "
                               "be audible in a window); events of them counted apart, not as wrong",
            }
            result["xc"] = xc
            lap("xc recordings (ours)", t0)

        # 4 -------------------------------------------------------------------- BirdNET + replay speed
        replay_flac = tmp / "replay" / "soundscapes_48k.flac"
        replay_flac.parent.mkdir(parents=True)
        long = np.concatenate(list(waves.values()))
        long = soxr.resample(long, mc.sample_rate, 48000, quality="HQ")
        sf.write(str(replay_flac), np.clip(long / max(1.0, float(np.abs(long).max())), -1, 1), 48000,
                 subtype="PCM_16")
        t0 = time.perf_counter()
        ours_rtf = replay_rtf(model, replay_flac, a.rtf_threads)
        lap("replay speed (ours)", t0)
        result["speed"] = {"ours_replay": ours_rtf, "file_s": ours_rtf["audio_s"]}

        bn = None
        if a.birdnet:
            t0 = time.perf_counter()
            wdir = tmp / "windows"
            for i, it in enumerate(items):
                write_wav(wdir / "a_composed" / f"{i:06d}.wav", it.windows[0], mc.sample_rate)
            for i, it in enumerate(win_items):
                write_wav(wdir / "b_xc" / f"{i:06d}.wav", it.windows[0], mc.sample_rate)
            bn_scores, bn_meta = run_birdnet_windows(bn_py, wdir, mc.labels, tmp / "bn" / "scores.npy",
                                                     a.rtf_threads)
            files = bn_meta["files"]
            ci = [files.index(f"a_composed/{i:06d}.wav") for i in range(len(items))]
            xi = [files.index(f"b_xc/{i:06d}.wav") for i in range(len(win_items))]
            lap("BirdNET windows", t0)
            t0 = time.perf_counter()
            xc_paths = [Path(r.path) for r in te_long]
            det_rows, per_file = run_birdnet_recordings(bn_py, xc_paths + [replay_flac],
                                                        tmp / "bn" / "detections.csv", a.rtf_threads)
            lap("BirdNET recordings", t0)
            bn = {"windows_meta": {k: bn_meta[k] for k in ("unknown_labels", "overlap_s", "timing")},
                  "birdnet_label": dict(zip(mc.labels, bn_meta["birdnet_label"]))}
            common = [k for k, lab in enumerate(mc.labels) if bn_meta["birdnet_label"][k] is not None]
            bn["common_labels"] = [mc.labels[k] for k in common]
            bn["unknown_names"] = [mc.display_name(k) for k, lab in enumerate(bn_meta["birdnet_label"]) if lab is None]
            common_l = [mc.labels[k] for k in common]
            common_n = [mc.names[k] for k in common]

            def sub(scores, tg, mk, rows):
                return clip_metrics(scores[np.ix_(rows, common)], tg[np.ix_(rows, common)],
                                    mk[np.ix_(rows, common)], common_l, mc.threshold_on, common_n)

            allr = list(range(len(items)))
            bc = sub(bn_scores[ci], c_tg, c_mk, allr)
            oc = sub(c_scores, c_tg, c_mk, allr)
            bn["composed"] = {"birdnet": _slim(bc), "ours": _slim(oc)}
            # xc: windows, recordings (common species; recordings whose primary BirdNET knows)
            bw = bn_scores[xi]
            xcr = [k for k, r in enumerate(te_long) if r.primary in set(common_l)]
            wr = [j for j in range(len(win_items)) if owner[j] in set(xcr)]
            br = np.stack([bw[owner == k].max(0) for k in range(len(rec_items))])
            bn_xw, our_xw = sub(bw, w_tg, w_mk, wr), sub(w_scores, w_tg, w_mk, wr)
            bn_xr, our_xr = sub(br, r_tg, r_mk, xcr), sub(r_scores, r_tg, r_mk, xcr)
            cpos = {lab: j for j, lab in enumerate(common_l)}
            cprim = np.array([cpos[te_long[k].primary] for k in xcr])
            top_bn = float((np.nan_to_num(br[np.ix_(xcr, common)], nan=-1).argmax(1) == cprim).mean()) if xcr else None
            top_ours_c = float((r_scores[np.ix_(xcr, common)].argmax(1) == cprim).mean()) if xcr else None
            # BirdNET detections at its default confidence, merged into events
            to_ours = {v: k for k, v in zip(mc.labels, bn_meta["birdnet_label"]) if v}
            evs_bn = merge_detections(det_rows)
            bn_recs = []
            for k, r in enumerate(te_long):
                also_names = {norm(x) for x in also_raw.get(str(Path(r.path).resolve()), [])}
                sec = set(recs_out[k]["secondary"])
                mine = [e for e in evs_bn if Path(e["file"]).resolve() == Path(r.path).resolve()]
                c = Counter()
                wrong_sp = Counter()
                for e in mine:
                    ours_lab = to_ours.get(f"{e['sci']}_{e['common']}")
                    if ours_lab == r.primary:
                        c["right"] += 1
                    elif ours_lab in sec or norm(e["sci"]) in also_names:
                        c["secondary"] += 1
                    else:
                        c["wrong_in_our_set" if ours_lab else "wrong_outside_our_set"] += 1
                        wrong_sp[e["common"]] += 1
                best = max(mine, key=lambda e: e["conf"], default=None)
                raw = [d for d in det_rows if Path(d["file"]).resolve() == Path(r.path).resolve()]
                bn_recs.append({
                    "file": recs_out[k]["file"], "species": r.primary, "birdnet_knows": r.primary in cpos,
                    "detections": len(raw), "events_right": c["right"], "events_secondary": c["secondary"],
                    "events_wrong_in_our_set": c["wrong_in_our_set"],
                    "events_wrong_outside_our_set": c["wrong_outside_our_set"],
                    "wrong_species": dict(wrong_sp),
                    "top1_all_classes": f"{best['sci']} ({best['common']})" if best else None,
                    "top1_all_classes_right": bool(best and to_ours.get(f"{best['sci']}_{best['common']}")
                                                   == r.primary),
                    "top1_common": common_l[int(np.nan_to_num(br[k, common], nan=-1).argmax())],
                })
            sel = [bn_recs[k] for k in xcr]
            ours_sel = [recs_out[k] for k in xcr]
            bn["xc"] = {
                "n_recordings_common": len(xcr), "n_windows_common": len(wr),
                "window_level": {"birdnet": _slim(bn_xw), "ours": _slim(our_xw)},
                "recording_level": {"birdnet": _slim(bn_xr), "ours": _slim(our_xr)},
                "recording_top1_common": {"birdnet": top_bn, "ours": top_ours_c},
                "recording_top1_all_classes_birdnet": float(np.mean([x["top1_all_classes_right"] for x in sel]))
                if sel else None,
                "ours_common": {
                    "recordings_with_right_event": sum(x["events_right"] > 0 for x in ours_sel),
                    "events_right": sum(x["events_right"] for x in ours_sel),
                    "events_secondary": sum(x["events_secondary"] for x in ours_sel),
                    "events_wrong": sum(x["events_wrong"] for x in ours_sel)},
                "birdnet_common": {
                    "recordings_with_right_event": sum(x["events_right"] > 0 for x in sel),
                    "events_right": sum(x["events_right"] for x in sel),
                    "events_secondary": sum(x["events_secondary"] for x in sel),
                    "events_wrong_in_our_set": sum(x["events_wrong_in_our_set"] for x in sel),
                    "events_wrong_outside_our_set": sum(x["events_wrong_outside_our_set"] for x in sel),
                    "detections": sum(x["detections"] for x in sel)},
                "birdnet_all": {
                    "recordings_with_right_event": sum(x["events_right"] > 0 for x in bn_recs),
                    "events_wrong": sum(x["events_wrong_in_our_set"] + x["events_wrong_outside_our_set"]
                                        for x in bn_recs)},
                "recordings": bn_recs, "min_conf": BIRDNET_MIN_CONF,
                "events": "consecutive 3 s detections (overlap 0) of one species merged into one event",
            }
            rf = per_file.get(str(replay_flac))
            xc_audio = sum(v["audio_s"] for f, v in per_file.items() if f != str(replay_flac))
            xc_wall = sum(v["audio_s"] / v["rtf"] for f, v in per_file.items() if f != str(replay_flac) and v["rtf"])
            result["speed"]["birdnet_recordings_same_file"] = rf
            result["speed"]["birdnet_recordings_xc"] = {"audio_s": xc_audio, "rtf": xc_audio / xc_wall if xc_wall
                                                        else None}
            result["speed"]["birdnet_windows"] = bn_meta["timing"]
            result["birdnet"] = bn
            # our RTF once more after BirdNET, so that both sit between the same two points in time
            with cpu_threads(a.rtf_threads):
                result["speed"]["ours_replay_after"] = replay_rtf(model, replay_flac, a.rtf_threads)
    finally:
        if a.keep_tmp:
            console.print(f"temporary audio kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    timing["total"] = round(time.perf_counter() - t_start, 1)
    settings["load_average_1min"] = {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)}
    result["timing_s"] = timing
    tables = build_tables(result, mc, c_runs, te_long)
    for t in tables:
        console.print(t.rich())
        console.print()
    console.print("Caveats:\n" + "\n".join(f"- {x}" for x in caveats(result)), highlight=False)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    md = Path(a.md) if a.md else out.with_suffix(".md")
    md.write_text(render_md(result, tables))
    console.print(f"wrote {out} and {md} in {timing['total']:.0f} s")
    return 0


def _slim(m: dict) -> dict:
    """clip_metrics without the per-species entries that have no positive (they carry no AP)."""
    m = dict(m)
    m.pop("worst", None)
    m["species"] = [sp for sp in m["species"] if sp["n_pos"] > 0]
    return m


# ------------------------------------------------------------------------------------------------ tables

def build_tables(res: dict, mc, c_runs: dict, te_long) -> list[Tab]:
    s, comp, bn = res["settings"], res["composed_windows"], res.get("birdnet")
    name = {lab: (nm or lab) for lab, nm in zip(mc.labels, mc.names)}
    tabs = []

    t = Tab("Model and detector settings", ["setting", "value"])
    for k in ("model", "weights_sha1", "step", "total_steps", "training_cpu_hours", "validation_map_at_save",
              "labels", "backbone", "threshold_on", "threshold_off", "median_s", "min_duration_s", "merge_gap_s", "max_event_s", "hop_s", "window_s",
              "seed", "split", "test_snippet_species", "test_snippet_runs", "test_recordings", "holdout",
              "torch_threads"):
        t.add(k, s.get(k))
    tabs.append(t)

    # 1 + 4: composed windows
    t = Tab("Composed test windows (essential-set runs of the test split)",
            ["model", "species set", "windows", "species", "macro mAP", "top-1 (single-species)", "F1@thr micro",
             "best F1 (at thr)"],
            note=f"{comp['n_items']} composed 5 s windows ({s['per_species']} per test species, seed {s['seed']}), "
                 f"1-3 species each, coloured-noise bed; top-1 over {comp['n_single']} single-species windows. "
                 "Test runs were used neither for training nor for checkpoint choice or thresholds.")
    t.add("birdlive", f"all {mc.num_classes}", comp["n_items"], comp["n_species_evaluated"], comp["macro_map"],
          comp["top1"], comp["f1_micro"], _best(comp))
    if bn:
        for who in ("ours", "birdnet"):
            m = bn["composed"][who]
            t.add("birdlive" if who == "ours" else "BirdNET V2.4", f"common {len(bn['common_labels'])}",
                  m["n_items"], m["n_species_evaluated"], m["macro_map"], m["top1"],
                  m["f1_micro"] if who == "ours" else None, _best(m))
    tabs.append(t)

    bn_ap = {sp["label"]: sp["ap"] for sp in bn["composed"]["birdnet"]["species"]} if bn else {}
    t = Tab("Per-species AP, composed test windows (worst first)",
            ["species", "test runs", "windows+", "AP", "top-1", "confused with"] + (["BirdNET AP"] if bn else []))
    for sp in sorted(comp["species"], key=lambda sp: (sp["ap"] if sp["ap"] is not None else 2, sp["label"])):
        row = [sp["name"] or sp["label"], c_runs.get(sp["label"], "-"), sp["n_pos"], sp["ap"], sp["top1"], ", ".join(f"{name.get(lab, lab)} ×{c}" for lab, c in sp["confused_with"])]
        if bn:
            row.append(bn_ap.get(sp["label"]) if sp["label"] in bn["common_labels"] else "n/a")
        t.add(*row)
    tabs.append(t)

    # 2: soundscapes
    sc = res["soundscapes"]
    t = Tab(f"Event F1 on composed test soundscapes ({sc['n']} × {sc['seconds_each']:g} s, onset ±0.5 s)",
            ["reference", "ref events", "detected", "TP", "precision", "recall", "F1 (micro)", "F1 (macro)"],
            note=f"{sc['species_present']} species; notes = every snippet; bouts = a species' notes merged when "
                 f"the gap ≤ {s['merge_gap_s']:g} s (the smoother's merge gap: one detector event). Highest raw "
                 f"framewise score (5 s windows, before stitching and smoothing) in these soundscapes: {sc['max_frame_score_any_species']:.3f} (any species), "
                 f"{sc['max_frame_score_present_species']:.3f} (species present); threshold_on "
                 f"{s['threshold_on']:g}.")
    for key, lab in (("bouts", "bouts"), ("notes", "notes")):
        m = sc[key]
        t.add(lab, m["tp"] + m["fn"], m["tp"] + m["fp"], m["tp"], m["precision"], m["recall"], m["f1"],
              m["f1_macro"])
    tabs.append(t)

    # 3 + 6: noise
    cn, bg = res["coloured_noise"], res["background_noise"]
    t = Tab("Events on noise at the default thresholds (goal 0)", ["noise", "seconds", "events", "species"],
            note=f"Coloured noise at {cn['dbfs']:g} dBFS; real files at their recorded level. 'never trained on': "
                 "held out of training backgrounds (the run's hold-out list); the other real files "
                 f"{'were' if bg['used_in_training_as_background'] else 'were not'} training backgrounds.")
    for c, n in cn["events"].items():
        t.add(f"{c} noise", round(cn["minutes_each"] * 60), n, _species(cn.get("species", {}).get(c, {})))
    for f, v in bg["files"].items():
        t.add(f + (" (never trained on)" if v.get("heldout") else ""), f"{v['seconds']:.1f}", v["events"],
              _species(v["species"]))
    t.add("total coloured", round(cn["minutes_each"] * 60 * len(cn["events"])), cn["total"], "")
    for key, label in (("heldout", "total real files never trained on"),
                       ("training", "total real training backgrounds")):
        if key in bg:
            t.add(f"{label} ({bg[key]['files']})", f"{bg[key]['seconds']:.1f}", bg[key]["events"], "")
    tabs.append(t)

    # 5: xc
    xc = res["xc"]
    cols = ["model", "species set", "recordings", "window mAP", "recording mAP", "recording top-1",
            "recs with right event", "right events", "secondary events", "wrong events"]
    unknown = ", ".join(name.get(x, x) for x in bn["windows_meta"]["unknown_labels"]) if bn else ""
    t = Tab("Test xeno-canto Puerto Rico recordings (whole recordings)", cols,
            note="Secondary (`also`) species: masked in AP (neither positive nor negative), their events counted "
                 "apart, not as wrong. Top-1: the species with the highest max-over-windows score within the "
                 "species set is the primary. Events: ours from detect_offline at the default thresholds; "
                 f"BirdNET's 3 s detections ≥ {BIRDNET_MIN_CONF} (no location filter), consecutive ones of a species "
                 "merged into one event; for BirdNET 'wrong' = wrong species in our label set + species outside it."
                 + (f" 'common' = the {len(bn['common_labels'])} species both models know (BirdNET V2.4 lacks "
                    f"{unknown}), and the test recordings of those species." if bn else ""))
    t.add("birdlive", f"all {mc.num_classes}", xc["n_recordings"], xc["window_level"]["macro_map"],
          xc["recording_level"]["macro_map"], xc["recording_top1"],
          f"{xc['recordings_with_right_event']}/{xc['n_recordings']}", xc["events_right"], xc["events_secondary"],
          xc["events_wrong"])
    if bn:
        b = bn["xc"]
        n = b["n_recordings_common"]
        oc = b["ours_common"]
        t.add("birdlive", f"common {len(bn['common_labels'])}", n, b["window_level"]["ours"]["macro_map"],
              b["recording_level"]["ours"]["macro_map"], b["recording_top1_common"]["ours"],
              f"{oc['recordings_with_right_event']}/{n}", oc["events_right"], oc["events_secondary"],
              oc["events_wrong"])
        bc = b["birdnet_common"]
        t.add("BirdNET V2.4", f"common {len(bn['common_labels'])}", n, b["window_level"]["birdnet"]["macro_map"],
              b["recording_level"]["birdnet"]["macro_map"], b["recording_top1_common"]["birdnet"],
              f"{bc['recordings_with_right_event']}/{n}", bc["events_right"], bc["events_secondary"],
              f"{bc['events_wrong_in_our_set'] + bc['events_wrong_outside_our_set']} "
              f"({bc['events_wrong_in_our_set']} + {bc['events_wrong_outside_our_set']})")
        t.add("BirdNET V2.4", "all 6522 (its detections)", n, None, None, b["recording_top1_all_classes_birdnet"],
              None, None, None, None)
    tabs.append(t)

    ap_w = {sp["label"]: sp["ap"] for sp in xc["window_level"]["species"]}
    bn_w = {sp["label"]: sp["ap"] for sp in bn["xc"]["window_level"]["birdnet"]["species"]} if bn else {}
    bn_by_file = {x["file"]: x for x in bn["xc"]["recordings"]} if bn else {}
    cols = ["recording", "species", "s", "windows", "window AP", "top-1", "right/sec/wrong events"]
    if bn:
        cols += ["BirdNET window AP", "BirdNET top-1 (all classes)", "BirdNET right/sec/wrong events"]
    t = Tab("Test xc recordings, one row each", cols)
    for x in xc["recordings"]:
        row = [Path(x["file"]).stem, name.get(x["species"], x["species"]), f"{x['seconds']:.1f}", x["windows"],
               ap_w.get(x["species"]),
               name.get(x["top1"], x["top1"]) + (" ✓" if x["top1"] == x["species"] else " ✗"),
               f"{x['events_right']}/{x['events_secondary']}/{x['events_wrong']}"]
        if bn:
            y = bn_by_file[x["file"]]
            if y["birdnet_knows"]:
                row += [bn_w.get(x["species"]), _common(y["top1_all_classes"]) +
                        (" ✓" if y["top1_all_classes_right"] else " ✗"),
                        f"{y['events_right']}/{y['events_secondary']}/"
                        f"{y['events_wrong_in_our_set'] + y['events_wrong_outside_our_set']}"]
            else:
                row += ["n/a (not in BirdNET)", _common(y["top1_all_classes"]),
                        f"-/{y['events_secondary']}/{y['events_wrong_in_our_set'] + y['events_wrong_outside_our_set']}"]
        t.add(*row)
    tabs.append(t)

    # speed
    sp = res["speed"]
    t = Tab("Replay speed, same machine, same run (audio seconds per wall second)",
            ["model", "path", "audio s", "threads", "real-time factor"],
            note="Same 48 kHz FLAC (the soundscapes end to end) for both 'recordings/replay' rows; decode and "
                 "resampling included.")
    o = sp["ours_replay"]
    t.add("birdlive", "replay (FileSource → runner, 5 s windows every 1 s)", f"{o['audio_s']:.0f}",
          o["threads"], f"{o['rtf']:.1f}×")
    if "ours_replay_after" in sp:
        o2 = sp["ours_replay_after"]
        t.add("birdlive", "same, rerun after BirdNET", f"{o2['audio_s']:.0f}", o2["threads"], f"{o2['rtf']:.1f}×")
    if sp.get("birdnet_recordings_same_file"):
        b = sp["birdnet_recordings_same_file"]
        t.add("BirdNET V2.4", "recordings mode (3 s chunks, no overlap)", f"{b['audio_s']:.0f}",
              sp["birdnet_windows"]["threads"], f"{b['rtf']:.1f}×")
    if sp.get("birdnet_recordings_xc", {}).get("rtf"):
        b = sp["birdnet_recordings_xc"]
        t.add("BirdNET V2.4", "recordings mode on the test xc files", f"{b['audio_s']:.0f}",
              sp["birdnet_windows"]["threads"], f"{b['rtf']:.1f}×")
    if sp.get("birdnet_windows"):
        b = sp["birdnet_windows"]
        t.add("BirdNET V2.4", "windows mode (3 s chunks, 1 s overlap)", f"{b['audio_s']:.0f}", b["threads"],
              f"{b['rtf_audio_per_wall_s']:.1f}× (model only {b['rtf_model_only']:.1f}×)")
    tabs.append(t)

    t = Tab("Time per stage (s)", ["stage", "seconds"])
    for k, v in res["timing_s"].items():
        t.add(k, f"{v:.1f}")
    tabs.append(t)
    return tabs


def _best(m: dict) -> str | None:
    """clip_metrics' best micro F1 over thresholds 0.05..0.95 and where it is (absent in older versions)."""
    if m.get("f1_best") is None:
        return None
    return f"{m['f1_best']:.3f} ({m['f1_best_threshold']:g})"


def _common(top: str | None) -> str:
    """'Sci name (Common Name)' -> 'Common Name'."""
    if not top:
        return "none"
    m = re.search(r"\((.*)\)$", top)
    return m.group(1) if m else top


def _species(d: dict) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))


def caveats(res: dict) -> list[str]:
    s, xc, bn = res["settings"], res["xc"], res.get("birdnet")
    per = Counter(r["species"] for r in xc["recordings"])
    c = [
        f"Test data is small: {xc['n_recordings']} xc recordings ({xc['audio_s'] / 60:.1f} min; "
        f"{Counter(per.values())[1]} species with 1 recording, {Counter(per.values())[2]} with 2), so a species' "
        f"xc AP rests on one or two recordings; {s['test_snippet_runs']} essential-set runs of "
        f"{s['test_snippet_species']} species, many species with a single test run (all of its composed "
        "windows then come from one source recording).",
        "The test groups were used neither for training nor for checkpoint choice or thresholds (validation "
        "groups); species with fewer than three recordings or runs have none and are not in these figures.",
    ]
    bg = res.get("background_noise", {})
    if bg.get("heldout", {}).get("files"):
        c.append(f"{bg['heldout']['files']} real noise files ({bg['heldout']['seconds']:.0f} s) were held out of "
                 "training; the others were training backgrounds (never labelled as birds), not unseen audio.")
    else:
        c.append("The real noise files were training backgrounds (never labelled as birds), so they are not "
                 "unseen audio.")
    if bn:
        c.append(f"BirdNET V2.4: bundled model, sensitivity 1.0, location/date filter off (all 6,522 classes "
                 f"scored); it lacks {len(bn['windows_meta']['unknown_labels'])} of our species "
                 f"({', '.join(bn['unknown_names'])}), left out of every 'common' figure. It sees "
                 "the composed and xc windows at our 32 kHz rate (upsampled to its 48 kHz; nothing above 16 kHz, "
                 "its spectrogram stops at 15 kHz) and its own recordings mode reads the original files.")
    la = s.get("load_average_1min", {})
    c.append(f"Speeds are from one run on a {s['cpu_count']}-core machine (1-min load average {la.get('start')} at "
             f"the start, {la.get('end')} at the end); compare the ratio, not the absolute numbers.")
    return c


def render_md(res: dict, tables: list[Tab]) -> str:
    s = res["settings"]
    head = [f"## Test-split evaluation of `{s['model']}`", "",
            f"Generated {s['date']} by `{s['command']}` (run `{s['run']}`, step {s['step']} of {s['total_steps']}, "
            f"weights sha1 {s['weights_sha1']}; split seed {s['split_seed']}, evaluation seed {s['seed']}; {s['cpu_count']} CPU "
            "cores).", "", "Caveats:", ""] + [f"- {x}" for x in caveats(res)] + [""]
    return "\n".join(head) + "\n" + "\n".join(t.md() for t in tables)


if __name__ == "__main__":
    sys.exit(main())
