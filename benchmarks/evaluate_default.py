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
import datetime
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from rich.console import Console
from rich.table import Table

from birdlive.model import load_for_inference
from birdlive.model.checkpoint import checkpoint_paths
from birdlive.streamer import default_params, file_specs, make_runner
from birdlive.train.cache import AudioCache
from birdlive.train.datasets import Holdout, Split
from birdlive.train.evaluate import clip_metrics, noise_false_positives
from birdlive.train.evaluation import (ALBERTA_DIR, SubsetData, background_noise_stage, composed_stage, load_run,
                                       na_field_stage, norm, per_recording, recordings_stage, resolve, slim,
                                       soundscape_stage, top1)
from birdlive.train.loop import TrainConfig
from birdlive.train.threads import cpu_threads

REPO = Path(__file__).resolve().parents[1]
console = Console(width=140)

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


# ------------------------------------------------------------------------------------------------ setup

@dataclass
class Context:
    """What every stage reads: the arguments, the model, the run's config, its test subset and the cache."""
    a: argparse.Namespace
    model: object
    cfg: TrainConfig
    split: Split
    holdout: Holdout
    holdout_file: str | None
    test: SubsetData
    pr_test: list            # the test field recordings of the recordings data sets but the Alberta clips
    alberta_test: list       # the Alberta Ovenbird clips of the test split (North American field test)
    cache: AudioCache
    data_root: Path          # ../shared/data: where xc-north-america and soundscapes-na lie

    @property
    def mc(self):
        return self.model.cfg


def setup(a: argparse.Namespace) -> Context:
    model = load_for_inference(a.model)
    run = load_run(a.run, a.split, a.holdout)
    cfg, test = run.cfg, run.subset()
    if test.labels != model.cfg.labels:
        raise SystemExit(f"the model's {len(model.cfg.labels)} labels are not the run's {len(test.labels)}: "
                         "wrong --run?")
    if a.max_species:
        keep = sorted({r.primary for r in test.snippets})[: a.max_species]
        test.snippets = [r for r in test.snippets if r.primary in keep]
    alberta = test.from_source(ALBERTA_DIR)
    pr = [r for r in test.long if r.group.split(":", 1)[0] != ALBERTA_DIR][: a.max_xc]
    if a.data_root:
        data_root = Path(a.data_root)
    else:       # the recordings data sets' folder (../shared/data)
        data_root = Path(resolve(cfg.data[0] if cfg.data else "../shared/data/x")).parent
    return Context(a, model, cfg, run.split, run.holdout, run.holdout_file, test, pr, alberta,
                   AudioCache(cfg.cache_dir, model.cfg.sample_rate), data_root)


def settings_of(ctx: Context, argv) -> dict:
    a, mc = ctx.a, ctx.mc
    params = default_params(mc)
    extra = mc.extra or {}
    tr = extra.get("training", {})
    weights = checkpoint_paths(a.model)[0]
    return {
        "model": str(a.model), "weights_sha1": hashlib.sha1(weights.read_bytes()).hexdigest()[:12], "run": str(a.run),
        "labels": len(mc.labels), "backbone": mc.backbone, "step": tr.get("step"), "total_steps": tr.get("total_steps"),
        "training_cpu_hours": tr.get("cpu_hours"), "validation_map_at_save": extra.get("heldout", {}).get("macro_map"),
        "threshold_on": mc.threshold_on, "threshold_off": mc.threshold_off,
        "species_thresholds": dict(mc.thresholds or {}), "median_s": params.median_s,
        "min_duration_s": params.min_duration_s, "merge_gap_s": params.merge_gap_s,
        "max_event_s": params.max_event_s, "hop_s": 1.0, "window_s": mc.window_s, "out_fps": mc.out_fps,
        "sample_rate": mc.sample_rate, "seed": a.seed, "split_seed": ctx.split.seed,
        "per_species": a.per_species, "test_snippet_runs": len({r.group for r in ctx.test.snippets}),
        "test_snippet_species": len({r.primary for r in ctx.test.snippets}), "test_recordings": len(ctx.pr_test),
        "test_alberta_clips": len(ctx.alberta_test),
        "split": str(a.split or Path(a.run) / "split.json"), "holdout": ctx.holdout_file,
        "torch_threads": a.threads or max(1, (os.cpu_count() or 1) - 1), "cpu_count": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]) if argv is None else " ".join(argv),
    }


# ------------------------------------------------------------------------------------------------ our stages

def our_stages(ctx: Context, result: dict, lap) -> dict:
    """Every figure of our model (train/evaluation.py, one function per stage) into `result`; returns what the
    BirdNET and speed stages reuse."""
    a, model, cfg, cache = ctx.a, ctx.model, ctx.cfg, ctx.cache
    shared = {}
    with cpu_threads(a.threads):
        t0 = time.perf_counter()
        result["composed_windows"], shared["composed"] = composed_stage(model, cfg, ctx.test.snippets, cache,
                                                                        a.per_species, a.seed, a.batch)
        lap("composed windows (ours)", t0)
        t0 = time.perf_counter()
        result["soundscapes"], shared["waves"] = soundscape_stage(model, cfg, ctx.test.snippets, cache, a.minutes,
                                                                  a.seed, a.batch, default_params(ctx.mc).merge_gap_s)
        lap("soundscapes + detect_offline", t0)
        t0 = time.perf_counter()
        result["coloured_noise"] = noise_false_positives(model, a.noise_minutes, seed=a.seed)
        lap("coloured noise", t0)
        t0 = time.perf_counter()
        noise_root = Path(resolve(cfg.noise_dir or "../shared/data/noise"))
        result["background_noise"] = background_noise_stage(model, noise_root, ctx.holdout, cache, a.max_noise_files)
        result["background_noise"]["used_in_training_as_background"] = bool(cfg.noise_dir)
        lap("background noise files", t0)
        t0 = time.perf_counter()
        result["xc"], shared["xc"] = recordings_stage(model, ctx.pr_test, cache, ctx.test.also, a.batch)
        lap("xc recordings (ours)", t0)
        if not a.no_na_field:
            t0 = time.perf_counter()
            result["na_field"], shared["na_field"] = na_field_stage(model, ctx.data_root, ctx.alberta_test,
                                                                    ctx.test.snippet_labels, cache, a.batch)
            lap("North American field test (ours)", t0)
    return shared


def replay_rtf(model, path: Path, threads: int) -> dict:
    """Our replay real-time factor, the `birdlive replay` path without sinks: FileSource (decode + soxr to the
    model's rate, 16 s blocks) -> runner (log-mel once per hop, 5 s windows every 1 s, shared scorer)."""
    with cpu_threads(threads):
        (st,) = make_runner(model, []).run(file_specs([path], model.cfg.sample_rate))
    return {"audio_s": st.audio_s, "wall_s": st.wall_s, "rtf": st.realtime_factor, "events": st.events,
            "threads": threads, "windows": st.windows}


def speed_stage(ctx: Context, waves: dict, tmp: Path, lap) -> tuple[Path, dict]:
    """The soundscapes end to end as one 48 kHz FLAC, replayed by our whole streaming path."""
    mc = ctx.mc
    replay_flac = tmp / "replay" / "soundscapes_48k.flac"
    replay_flac.parent.mkdir(parents=True)
    long = soxr.resample(np.concatenate(list(waves.values())), mc.sample_rate, 48000, quality="HQ")
    sf.write(str(replay_flac), np.clip(long / max(1.0, float(np.abs(long).max())), -1, 1), 48000, subtype="PCM_16")
    t0 = time.perf_counter()
    ours = replay_rtf(ctx.model, replay_flac, ctx.a.rtf_threads)
    lap("replay speed (ours)", t0)
    return replay_flac, {"ours_replay": ours, "file_s": ours["audio_s"]}


# ------------------------------------------------------------------------------------------------- BirdNET

def birdnet_stage(ctx: Context, shared: dict, replay_flac: Path, tmp: Path, result: dict, lap) -> dict:
    """BirdNET V2.4 on the same windows (composed, test recordings, North American field test) and on the test
    recordings' files (detections → events), on the species both know."""
    a, mc = ctx.a, ctx.mc
    t0 = time.perf_counter()
    groups = {"a_composed": [it.windows[0] for it in shared["composed"]["items"]],
              "b_xc": [it.windows[0] for it in shared["xc"].win_items]}
    for key, scored in shared.get("na_field", {}).items():
        groups[f"c_{key}"] = [it.windows[0] for it in scored.win_items]
    for group, windows in groups.items():
        for i, w in enumerate(windows):
            write_wav(tmp / "windows" / group / f"{i:06d}.wav", w, mc.sample_rate)
    scores, meta = run_birdnet_windows(a.peers_python, tmp / "windows", mc.labels, tmp / "bn" / "scores.npy",
                                       a.rtf_threads)
    rows = {g: [meta["files"].index(f"{g}/{i:06d}.wav") for i in range(len(w))] for g, w in groups.items()}
    lap("BirdNET windows", t0)
    t0 = time.perf_counter()
    det_rows, per_file = run_birdnet_recordings(a.peers_python, [Path(r.path) for r in ctx.pr_test] + [replay_flac],
                                                tmp / "bn" / "detections.csv", a.rtf_threads)
    lap("BirdNET recordings", t0)
    bn = {"windows_meta": {k: meta[k] for k in ("unknown_labels", "overlap_s", "timing")},
          "birdnet_label": dict(zip(mc.labels, meta["birdnet_label"]))}
    common = [k for k, lab in enumerate(mc.labels) if meta["birdnet_label"][k] is not None]
    bn["common_labels"] = [mc.labels[k] for k in common]
    bn["unknown_names"] = [mc.display_name(k) for k, lab in enumerate(meta["birdnet_label"]) if lab is None]
    c = shared["composed"]
    bn["composed"] = {"birdnet": _common_metrics(ctx, scores[rows["a_composed"]], c["targets"], c["masks"], common),
                      "ours": _common_metrics(ctx, c["scores"], c["targets"], c["masks"], common)}
    bn["xc"] = birdnet_recordings(ctx, shared["xc"], scores[rows["b_xc"]], det_rows, meta, common, result["xc"])
    bn["na_field"] = {key: birdnet_top1(ctx, scored, scores[rows[f"c_{key}"]], common)
                      for key, scored in shared.get("na_field", {}).items()}
    speed = result["speed"]
    xc_audio = sum(v["audio_s"] for f, v in per_file.items() if f != str(replay_flac))
    xc_wall = sum(v["audio_s"] / v["rtf"] for f, v in per_file.items() if f != str(replay_flac) and v["rtf"])
    speed["birdnet_recordings_same_file"] = per_file.get(str(replay_flac))
    speed["birdnet_recordings_xc"] = {"audio_s": xc_audio, "rtf": xc_audio / xc_wall if xc_wall else None}
    speed["birdnet_windows"] = meta["timing"]
    # our RTF once more after BirdNET, so that both sit between the same two points in time
    speed["ours_replay_after"] = replay_rtf(ctx.model, replay_flac, a.rtf_threads)
    return bn


def _common_metrics(ctx: Context, scores, targets, masks, common: list[int], rows=None) -> dict:
    """clip_metrics on the species both models know (columns `common`), on `rows` (default all)."""
    mc = ctx.mc
    rows = list(range(len(scores))) if rows is None else rows
    return slim(clip_metrics(scores[np.ix_(rows, common)], targets[np.ix_(rows, common)],
                             masks[np.ix_(rows, common)], [mc.labels[k] for k in common], mc.threshold_on,
                             [mc.names[k] for k in common]))


def birdnet_top1(ctx: Context, scored, bn_windows: np.ndarray, common: list[int]) -> dict:
    """Recording top-1 of both models among the species both know, on the recordings whose species both know."""
    labels = [ctx.mc.labels[k] for k in common]
    bn_rec = np.nan_to_num(per_recording(bn_windows, scored.owner, len(scored.recs)), nan=-1.0)
    keep = [k for k, r in enumerate(scored.recs) if r.primary in labels]
    recs = [scored.recs[k] for k in keep]
    return {"n_recordings_common": len(keep), "species_common": len({r.primary for r in recs}),
            "recording_top1_common": {"ours": top1(scored.r_scores[np.ix_(keep, common)], recs, labels),
                                      "birdnet": top1(bn_rec[np.ix_(keep, common)], recs, labels)}}


def birdnet_recordings(ctx: Context, scored, bw: np.ndarray, det_rows: list[dict], meta: dict, common: list[int],
                       ours: dict) -> dict:
    """Both models on the test recordings, species both know: window and recording AP, recording top-1, and
    events (ours: detect_offline; BirdNET: its detections ≥ BIRDNET_MIN_CONF merged into events)."""
    mc = ctx.mc
    common_l = [mc.labels[k] for k in common]
    xcr = [k for k, r in enumerate(scored.recs) if r.primary in set(common_l)]
    wr = [j for j in range(len(scored.win_items)) if scored.owner[j] in set(xcr)]
    br = per_recording(bw, scored.owner, len(scored.recs))
    (w_tg, w_mk), (r_tg, r_mk) = scored.targets("window"), scored.targets("recording")
    recs = [scored.recs[k] for k in xcr]
    bn_recs = birdnet_recording_events(ctx, det_rows, meta, ours["recordings"], common_l, br, common)
    sel, ours_sel = [bn_recs[k] for k in xcr], [ours["recordings"][k] for k in xcr]
    return {
        "n_recordings_common": len(xcr), "n_windows_common": len(wr),
        "window_level": {"birdnet": _common_metrics(ctx, bw, w_tg, w_mk, common, wr),
                         "ours": _common_metrics(ctx, scored.w_scores, w_tg, w_mk, common, wr)},
        "recording_level": {"birdnet": _common_metrics(ctx, br, r_tg, r_mk, common, xcr),
                            "ours": _common_metrics(ctx, scored.r_scores, r_tg, r_mk, common, xcr),
                            "ours_track": _common_metrics(ctx, scored.t_scores, r_tg, r_mk, common, xcr)},
        "recording_top1_common": {
            "birdnet": top1(np.nan_to_num(br[np.ix_(xcr, common)], nan=-1), recs, common_l) if xcr else None,
            "ours": top1(scored.r_scores[np.ix_(xcr, common)], recs, common_l) if xcr else None,
            "ours_track": top1(scored.t_scores[np.ix_(xcr, common)], recs, common_l) if xcr else None},
        "recording_top1_all_classes_birdnet": float(np.mean([x["top1_all_classes_right"] for x in sel]))
        if sel else None,
        "ours_common": {"recordings_with_right_event": sum(x["events_right"] > 0 for x in ours_sel),
                        **{k: sum(x[k] for x in ours_sel) for k in ("events_right", "events_secondary",
                                                                     "events_wrong")}},
        "birdnet_common": {"recordings_with_right_event": sum(x["events_right"] > 0 for x in sel),
                           **{k: sum(x[k] for x in sel) for k in (
                               "events_right", "events_secondary", "events_wrong_in_our_set",
                               "events_wrong_outside_our_set", "detections")}},
        "birdnet_all": {"recordings_with_right_event": sum(x["events_right"] > 0 for x in bn_recs),
                        "events_wrong": sum(x["events_wrong_in_our_set"] + x["events_wrong_outside_our_set"]
                                            for x in bn_recs)},
        "recordings": bn_recs, "min_conf": BIRDNET_MIN_CONF,
        "events": "consecutive 3 s detections (overlap 0) of one species merged into one event",
    }


def birdnet_recording_events(ctx: Context, det_rows: list[dict], meta: dict, ours_rows: list[dict],
                             common_l: list[str], br: np.ndarray, common: list[int]) -> list[dict]:
    """Per test recording: BirdNET's events sorted into right / background / wrong (in our label set or not)."""
    to_ours = {v: k for k, v in zip(ctx.mc.labels, meta["birdnet_label"]) if v}
    evs_bn = merge_detections(det_rows)
    cpos = set(common_l)
    out = []
    for k, r in enumerate(ctx.pr_test):
        also_names = {norm(x) for x in ctx.test.also.get(str(Path(r.path).resolve()), [])}
        sec = set(ours_rows[k]["secondary"])
        mine = [e for e in evs_bn if Path(e["file"]).resolve() == Path(r.path).resolve()]
        c, wrong_sp = Counter(), Counter()
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
        out.append({
            "file": ours_rows[k]["file"], "species": r.primary, "birdnet_knows": r.primary in cpos,
            "detections": len(raw), "events_right": c["right"], "events_secondary": c["secondary"],
            "events_wrong_in_our_set": c["wrong_in_our_set"],
            "events_wrong_outside_our_set": c["wrong_outside_our_set"],
            "wrong_species": dict(wrong_sp), "top1_all_classes": f"{best['sci']} ({best['common']})" if best else None,
            "top1_all_classes_right": bool(best and to_ours.get(f"{best['sci']}_{best['common']}") == r.primary),
            "top1_common": common_l[int(np.nan_to_num(br[k, common], nan=-1).argmax())],
        })
    return out


# ---------------------------------------------------------------------------------------------------- main

def arguments(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint (STEM, STEM.safetensors or a run folder)")
    ap.add_argument("--run", required=True, help="training run folder (train.json, split.json)")
    ap.add_argument("--birdnet", action="store_true", help="also run BirdNET V2.4 (.venv-peers) side by side")
    ap.add_argument("--minutes", type=float, default=10.0, help="minutes of composed soundscapes for event F1")
    ap.add_argument("--split", default=None, help="the run's split.json with a test list (default: RUN/split.json)")
    ap.add_argument("--holdout", default=None, help="hold-out JSON naming the noise files never trained on "
                                                    "(default: the run's train.json `holdout`)")
    ap.add_argument("--data-root", default=None, help="folder of xc-north-america/ and soundscapes-na/ (default: "
                                                      "the folder of the run's first recordings data set)")
    ap.add_argument("--no-na-field", action="store_true", help="skip the North American field test")
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
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = arguments(argv)
    t_start = time.perf_counter()
    timing: dict[str, float] = {}

    def lap(name, t0):
        timing[name] = round(time.perf_counter() - t0, 1)
        console.print(f"[dim]{name}: {timing[name]:.1f} s[/]")

    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    ctx = setup(a)
    lap("data", t0)
    if a.birdnet and not Path(a.peers_python).is_file():
        raise SystemExit(f"--birdnet: no {a.peers_python} (see benchmarks/README.md)")
    result: dict = {"settings": settings_of(ctx, argv)}
    tmp = Path(tempfile.mkdtemp(prefix="birdlive-eval-"))
    try:
        shared = our_stages(ctx, result, lap)
        replay_flac, result["speed"] = speed_stage(ctx, shared["waves"], tmp, lap)
        if a.birdnet:
            result["birdnet"] = birdnet_stage(ctx, shared, replay_flac, tmp, result, lap)
    finally:
        if a.keep_tmp:
            console.print(f"temporary audio kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    timing["total"] = round(time.perf_counter() - t_start, 1)
    result["settings"]["load_average_1min"] = {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)}
    result["timing_s"] = timing
    write_outputs(a, result, build_tables(result, ctx.mc, shared["composed"]["runs"]))
    return 0


def write_outputs(a: argparse.Namespace, result: dict, tables: list) -> None:
    for t in tables:
        console.print(t.rich())
        console.print()
    console.print("Caveats:\n" + "\n".join(f"- {x}" for x in caveats(result)), highlight=False)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    md = Path(a.md) if a.md else out.with_suffix(".md")
    md.write_text(render_md(result, tables))
    console.print(f"wrote {out} and {md} in {result['timing_s']['total']:.0f} s")



# ------------------------------------------------------------------------------------------------ tables

def build_tables(res: dict, mc, c_runs: dict) -> list[Tab]:
    """The report's tables, in the order of the markdown: settings, composed windows, soundscapes, noise,
    the Puerto Rican recordings, the North American field test, speed."""
    name = {lab: (nm or lab) for lab, nm in zip(mc.labels, mc.names)}
    tabs = [settings_table(res["settings"])]
    tabs += composed_tables(res, mc, c_runs, name)
    tabs += [soundscape_table(res), noise_table(res)]
    tabs += [xc_summary_table(res, mc, name), xc_recordings_table(res, name)]
    if res.get("na_field"):
        tabs += na_field_tables(res["na_field"], res.get("birdnet"), name)
    tabs += speed_tables(res)
    return tabs


def settings_table(s: dict) -> Tab:
    t = Tab("Model and detector settings", ["setting", "value"])
    for k in ("model", "weights_sha1", "step", "total_steps", "training_cpu_hours", "validation_map_at_save",
              "labels", "backbone", "threshold_on", "threshold_off", "median_s", "min_duration_s", "merge_gap_s",
              "max_event_s", "hop_s", "window_s",
              "seed", "split", "test_snippet_species", "test_snippet_runs", "test_recordings", "holdout",
              "torch_threads"):
        t.add(k, s.get(k))
    return t


def composed_tables(res: dict, mc, c_runs: dict, name: dict) -> list[Tab]:
    s, comp, bn = res["settings"], res["composed_windows"], res.get("birdnet")
    tabs = []
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
        row = [sp["name"] or sp["label"], c_runs.get(sp["label"], "-"), sp["n_pos"], sp["ap"], sp["top1"],
               ", ".join(f"{name.get(lab, lab)} ×{c}" for lab, c in sp["confused_with"])]
        if bn:
            row.append(bn_ap.get(sp["label"]) if sp["label"] in bn["common_labels"] else "n/a")
        t.add(*row)
    tabs.append(t)
    return tabs


def soundscape_table(res: dict) -> Tab:
    s, sc = res["settings"], res["soundscapes"]
    t = Tab(f"Event F1 on composed test soundscapes ({sc['n']} × {sc['seconds_each']:g} s, onset ±0.5 s)",
            ["reference", "ref events", "detected", "TP", "precision", "recall", "F1 (micro)", "F1 (macro)"],
            note=f"{sc['species_present']} species; notes = every snippet; bouts = a species' notes merged when "
                 f"the gap ≤ {s['merge_gap_s']:g} s (the smoother's merge gap: one detector event). Highest raw "
                 "framewise score (5 s windows, before stitching and smoothing) in these soundscapes: "
                 f"{sc['max_frame_score_any_species']:.3f} (any species), "
                 f"{sc['max_frame_score_present_species']:.3f} (species present); threshold_on "
                 f"{s['threshold_on']:g}.")
    for key, lab in (("bouts", "bouts"), ("notes", "notes")):
        m = sc[key]
        t.add(lab, m["tp"] + m["fn"], m["tp"] + m["fp"], m["tp"], m["precision"], m["recall"], m["f1"],
              m["f1_macro"])
    return t


def noise_table(res: dict) -> Tab:
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
    return t


def xc_summary_table(res: dict, mc, name: dict) -> Tab:
    xc, bn = res["xc"], res.get("birdnet")
    cols = ["model", "species set", "recordings", "window mAP", "recording mAP", "recording top-1",
            "recs with right event", "right events", "secondary events", "wrong events"]
    unknown = ", ".join(name.get(x, x) for x in bn["windows_meta"]["unknown_labels"]) if bn else ""
    t = Tab("Test xeno-canto Puerto Rico recordings (whole recordings)", cols,
            note="Secondary (`also`) species: masked in AP (neither positive nor negative), their events counted "
                 "apart, not as wrong. Top-1: the species with the highest max-over-windows score within the "
                 "species set is the primary; 'event track': recording scores from the stitched framewise track "
                 "events come from (5 s windows every 1 s), the gate's since 2026-12-03. "
                 "Events: ours from detect_offline at the default thresholds; "
                 f"BirdNET's 3 s detections ≥ {BIRDNET_MIN_CONF} (no location filter), consecutive ones of a species "
                 "merged into one event; for BirdNET 'wrong' = wrong species in our label set + species outside it."
                 + (f" 'common' = the {len(bn['common_labels'])} species both models know (BirdNET V2.4 lacks "
                    f"{unknown}), and the test recordings of those species." if bn else ""))
    t.add("birdlive", f"all {mc.num_classes}", xc["n_recordings"], xc["window_level"]["macro_map"],
          xc["recording_level"]["macro_map"], xc["recording_top1"],
          f"{xc['recordings_with_right_event']}/{xc['n_recordings']}", xc["events_right"], xc["events_secondary"],
          xc["events_wrong"])
    if "recording_top1_track" in xc:
        t.add("birdlive, event track", f"all {mc.num_classes}", xc["n_recordings"], None,
              xc["recording_level_track"]["macro_map"], xc["recording_top1_track"], None, None, None, None)
    if bn:
        b = bn["xc"]
        n = b["n_recordings_common"]
        oc = b["ours_common"]
        t.add("birdlive", f"common {len(bn['common_labels'])}", n, b["window_level"]["ours"]["macro_map"],
              b["recording_level"]["ours"]["macro_map"], b["recording_top1_common"]["ours"],
              f"{oc['recordings_with_right_event']}/{n}", oc["events_right"], oc["events_secondary"],
              oc["events_wrong"])
        if "ours_track" in b["recording_top1_common"]:
            t.add("birdlive, event track", f"common {len(bn['common_labels'])}", n, None,
                  b["recording_level"]["ours_track"]["macro_map"], b["recording_top1_common"]["ours_track"],
                  None, None, None, None)
        bc = b["birdnet_common"]
        t.add("BirdNET V2.4", f"common {len(bn['common_labels'])}", n, b["window_level"]["birdnet"]["macro_map"],
              b["recording_level"]["birdnet"]["macro_map"], b["recording_top1_common"]["birdnet"],
              f"{bc['recordings_with_right_event']}/{n}", bc["events_right"], bc["events_secondary"],
              f"{bc['events_wrong_in_our_set'] + bc['events_wrong_outside_our_set']} "
              f"({bc['events_wrong_in_our_set']} + {bc['events_wrong_outside_our_set']})")
        t.add("BirdNET V2.4", "all 6522 (its detections)", n, None, None, b["recording_top1_all_classes_birdnet"],
              None, None, None, None)
    return t


def xc_recordings_table(res: dict, name: dict) -> Tab:
    xc, bn = res["xc"], res.get("birdnet")
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
    return t


def speed_tables(res: dict) -> list[Tab]:
    tabs = []
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


def na_field_tables(na: dict, bn: dict | None, name: dict) -> list[Tab]:
    """The North American field test: recording top-1 (all species, North American species only, and beside
    BirdNET on the species both know), events, and the dawn chorus."""
    t = Tab("North American field test (real recordings, never trained or tuned on)",
            ["set", "recordings", "species", "recording mAP", "top-1 (all our species)",
             f"top-1 (our {na['na_labels']} North American species)", "recs with right event", "wrong events"]
            + (["top-1, species both know: ours / BirdNET (recordings)"] if bn else []),
            note="xc-north-america: xeno-canto recordings from the USA and Canada of the species the model knows "
                 f"(it does not know {sum(na['xc_north_america_unknown_species'].values())} more recordings: "
                 f"{', '.join(sorted(na['xc_north_america_unknown_species']))}); alberta: the Ovenbird clips of "
                 "the run's test split (birds never trained on). Top-1: the highest max-over-windows score.")
    for key in ("xc_north_america", "alberta_ovenbird"):
        f = na.get(key)
        if not f:
            continue
        row = [key.replace("_", " "), f["n_recordings"], f["species"], f["recording_level"]["macro_map"],
               f["recording_top1"], f["recording_top1_na_only"],
               f"{f['recordings_with_right_event']}/{f['n_recordings']}", f["events_wrong"]]
        if bn:
            b = bn["na_field"].get(key, {})
            t1 = b.get("recording_top1_common", {})
            row.append(f"{_cell(t1.get('ours'))} / {_cell(t1.get('birdnet'))} ({b.get('n_recordings_common')})")
        t.add(*row)
    tabs = [t]
    ch = na.get("chorus")
    if ch:
        t = Tab("Pennsylvania dawn chorus (10 s, Raven boxes)", ["figure", "value"])
        t.add("species in the boxes that the model knows", ", ".join(name.get(x, x) for x in ch["species_present"]))
        t.add("their rank among all our species (max over windows)",
              ", ".join(f"{name.get(k, k)} {v}" for k, v in ch["rank_of_present"].items()))
        t.add(f"present among our top {len(ch['species_present'])}", ch["present_in_top_k"])
        t.add("events (species ×n)", _species(ch["event_species"]) or "none")
        t.add("event F1 vs the boxes (onset ±0.5 s)", ch["events"]["f1"])
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
            f"weights sha1 {s['weights_sha1']}; split seed {s['split_seed']}, evaluation seed {s['seed']}; "
            f"{s['cpu_count']} CPU "
            "cores).", "", "Caveats:", ""] + [f"- {x}" for x in caveats(res)] + [""]
    return "\n".join(head) + "\n" + "\n".join(t.md() for t in tables)


if __name__ == "__main__":
    sys.exit(main())
