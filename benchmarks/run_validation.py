"""A training run's own validation (`train/loop.py:validate`, the figures of its metrics.jsonl) for any
checkpoints with the run's species: puts a model that did not come from the run (the teacher, the default) on the
run's yardstick, for its curve (`training_curves.py --level`).

    python benchmarks/run_validation.py --run runs/lite0-kd --models model/weights/default_v3t_run/step14000 \
        runs/lite0-kd/step10000 [--threads 1] [--out benchmarks/results/FILE.json]

The run folder is only read (its train.json and split.json are copied to a temporary folder, where the data
loading writes); the validation items are built as the run builds them, from the same seed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from rich.console import Console

from birdlive.model import load_checkpoint
from birdlive.train.loop import TrainConfig, build_data, load_data, validate
from birdlive.train.threads import cpu_threads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a training run's folder (train.json, split.json)")
    ap.add_argument("--models", nargs="+", required=True, help="checkpoints (STEM) with the run's species")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    console = Console(stderr=True)
    res: dict = {"run": a.run}
    with tempfile.TemporaryDirectory() as tmp, cpu_threads(a.threads):
        run = Path(tmp)
        for name in ("train.json", "split.json"):
            shutil.copy(Path(a.run) / name, run / name)
        cfg = TrainConfig.from_dict(json.loads((run / "train.json").read_text()))
        cfg.run_dir, cfg.workers = str(run), 0
        recs, labels, names, snippet_paths, split = load_data(cfg, run, True, console)
        for m in a.models:
            model = load_checkpoint(m)
            if list(model.cfg.labels) != list(labels):
                raise SystemExit(f"error: {m} does not have the run's {len(labels)} species in its order")
            data = build_data(cfg, recs, labels, names, snippet_paths, split, model.cfg, console, False)
            row = validate(model, data, cfg, torch.device("cpu"))
            res[m] = {k: v for k, v in row.items() if k != "val_worst"}
            print(f"{m}: " + ", ".join(f"{k} {v:.3f}" for k, v in res[m].items()), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
