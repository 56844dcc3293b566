"""The North American field test split alone, for several models (and BirdNET V2.4 beside them): quicker than
the whole `evaluate_default.py` when only the North American figures are asked for.

    python benchmarks/na_field_test.py --run RUN --models model/weights/default RUN/best [--birdnet] \
        --out benchmarks/results/na_field_test.json

Data (`train/evaluation.py`, `na_field_stage`): the xeno-canto recordings of `xc-north-america/` of species
each model knows (test only: never trained or tuned on), the Alberta Ovenbird clips of RUN's test split, and
the Pennsylvania dawn chorus. BirdNET scores the same 5 s windows (its 3 s chunks inside them); top-1 among the
species both know, on the recordings of those species.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from evaluate_default import REPO, birdnet_top1, run_birdnet_windows, write_wav

from birdlive.model import load_for_inference
from birdlive.train.cache import AudioCache
from birdlive.train.evaluation import ALBERTA_DIR, add_scoring_options, load_run, na_field_stage, resolve
from birdlive.train.threads import cpu_threads


class _Ctx:        # what `birdnet_top1` reads of evaluate_default's Context
    def __init__(self, model):
        self.mc = model.cfg


def birdnet_na(model, scored: dict, threads: int, peers_python: str) -> dict:
    """BirdNET's recording top-1 beside the model's, per set, on the species both know."""
    mc, tmp = model.cfg, Path(tempfile.mkdtemp(prefix="birdlive-na-"))
    try:
        for key, s in scored.items():
            for i, it in enumerate(s.win_items):
                write_wav(tmp / "windows" / key / f"{i:06d}.wav", it.windows[0], mc.sample_rate)
        scores, meta = run_birdnet_windows(peers_python, tmp / "windows", mc.labels, tmp / "bn" / "scores.npy",
                                           threads)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    common = [k for k, lab in enumerate(meta["birdnet_label"]) if lab is not None]
    out = {}
    for key, s in scored.items():
        rows = [meta["files"].index(f"{key}/{i:06d}.wav") for i in range(len(s.win_items))]
        out[key] = birdnet_top1(_Ctx(model), s, scores[rows], common)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run folder (train.json, split.json): its Alberta test clips")
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--data-root", default=None, help="folder of xc-north-america/ (default: beside the run's data)")
    ap.add_argument("--birdnet", action="store_true", help="BirdNET V2.4 (.venv-peers) beside each model")
    ap.add_argument("--peers-python", default=str(REPO / ".venv-peers" / "bin" / "python"))
    add_scoring_options(ap, seed=False)
    a = ap.parse_args(argv)
    run = load_run(a.run)
    cfg, test = run.cfg, run.subset()
    root = Path(a.data_root) if a.data_root else Path(resolve(cfg.data[0])).parent
    res = {}
    for m in a.models:
        model = load_for_inference(m)
        cache = AudioCache(cfg.cache_dir, model.cfg.sample_rate)
        na_labels = [lab for lab in test.snippet_labels if lab in model.cfg.labels]
        with cpu_threads(a.threads):
            res[m], scored = na_field_stage(model, root, test.from_source(ALBERTA_DIR), na_labels, cache, a.batch)
        for key in ("xc_north_america", "alberta_ovenbird"):
            res[m].get(key, {}).pop("recordings", None)
            res[m].get(key, {}).pop("window_level", None)
        if a.birdnet:
            res[m]["birdnet"] = birdnet_na(model, scored, 2, a.peers_python)
        print_model(m, res[m])
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


def print_model(name: str, r: dict) -> None:
    print(f"\n{name}")
    for key in ("xc_north_america", "alberta_ovenbird"):
        f = r.get(key)
        if f:
            line = (f"  {key:18s} {f['n_recordings']:3d} recordings, {f['species']:2d} species: top-1 "
                    f"{f['recording_top1']:.3f} (North American species only {f['recording_top1_na_only']:.3f}, "
                    f"{rank_line(f.get('recording_rank_na_only'))}), "
                    f"recording mAP {f['recording_level']['macro_map']:.3f}, right event in "
                    f"{f['recordings_with_right_event']}, wrong events {f['events_wrong']}")
            bn = r.get("birdnet", {}).get(key)
            if bn:
                t = bn["recording_top1_common"]
                line += (f"; species both know ({bn['n_recordings_common']} recordings): ours {t['ours']:.3f}, "
                         f"BirdNET {t['birdnet']:.3f}")
            print(line)
    ch = r.get("chorus")
    if ch:
        print(f"  chorus: ranks of the species present {ch['rank_of_present']}, events {ch['event_species']}, "
              f"event F1 {ch['events']['f1']:.3f}")


def rank_line(r: dict | None) -> str:
    if not r:
        return "no rank"
    return (f"right species' median rank {r['median']:g}: first in {r['first']}, top 3 in {r['top3']}, "
            f"top 10 in {r['top10']} of {r['n']}")


if __name__ == "__main__":
    sys.exit(main())
