"""Train the default model on a lent GPU in at most 10 minutes of device time, and bring the checkpoint back.

The `device` tool lends one H200 with 16 CPU cores for data loading; nothing but the working tree travels (64 MiB
with everything carried), `../shared` does not, and the machine's Python (3.12, torch, timm, numpy, safetensors,
rich, typer) lacks soundfile, soxr, cffi, librosa and torchlibrosa. So:

  1. here, once:  .venv/bin/python benchmarks/gpu_recipe.py pack
     packs what training needs into runs/gpu-pack/ (git-ignored, carried): the train and validation groups of the
     run's split (never its test groups, excluded files or held-out noise) as Ogg/Opus at 48 kHz and --kbps
     (xeno-canto recordings cut to their most energetic --cap seconds, the cap chosen to fit the budget), the
     essential-set snippets and noise files likewise, metadata.csv / snippets.csv / split.json rewritten for the
     packed files, the species list, a starting checkpoint (--init: ImageNet or a checkpoint, float16), and the
     five missing wheels for CPython 3.12;
  2. here:        .venv/bin/python benchmarks/gpu_recipe.py command
     prints the `run` call: the command, carry=["runs/gpu-pack"] and the timeout;
  3. there:       python3 benchmarks/gpu_recipe.py train --pack runs/gpu-pack --out $OUT --minutes 6.5
                  [--recipe RUN/train.json] [--freeze N]
     installs the wheels into /tmp/site, decodes the pack on 16 processes, trains (CUDA, bf16 autocast,
     DataLoader workers on 14 cores, `--max-minutes` turned into steps from a measured step time) and copies
     best.*, last.*, metrics.jsonl, train.json, curves.png and the log to $OUT (8 files at most come back).
     `--recipe` trains as a run of ours did (`RECIPE_FIELDS`: its augmentations, composer, frozen stages,
     teacher; a teacher is a checkpoint in the checkout, which travels), e.g. the distillation run's
     `model/weights/lite2_kd_run/train.json` with a pack made with `--preset lite2`; `--freeze 0` trains the
     whole backbone, as a GPU affords. Recordings are cut to their loudest stretch to fit, except those whose
     call's time is known (the Alberta clips' song at 3.5-6.5 s), which stay whole;
  4. here:        the files under the reply's files_at: a checkpoint to evaluate, or `--init` for a CPU run.

Why benchmarks/ and not birdlive.train: this is tooling for this workplace's device machine (its 64 MiB, its
$OUT, its missing packages), not part of the installed package a user trains with; it only calls
`birdlive.train.train` like the command line does.
Tested on CPU end to end with a tiny budget (tests/test_train_loop.py::test_gpu_recipe_packs_and_trains_on_cpu).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PACK = ROOT / "runs" / "gpu-pack"
TREE_LIMIT_MIB = 64.0           # what the device tool carries, working tree and carried folders together
MARGIN_MIB = 3.0                # for files the tree gains before the run (a new checkpoint, notes)
OPUS_RATE = 48000               # Opus codes 8/12/16/24/48 kHz only
WHEELS = ("soundfile", "cffi", "soxr", "librosa", "torchlibrosa")   # what the device's Python lacks
# what a run learns with, taken from its train.json by `train --recipe` (data, split, schedule and machine stay the
# pack's and the command line's; the preset must be the pack's, whose starting weights are for it)
RECIPE_FIELDS = ("augment", "composer", "freeze", "teacher", "distill", "snippet_share", "balance", "frame_weight",
                 "focal_gamma", "weight_decay", "warmup", "lr_floor", "clip_grad", "model_overrides", "window_s",
                 "val_max_windows", "val_composed")
RESULTS = ("best.safetensors", "best.json", "last.safetensors", "last.json", "metrics.jsonl", "train.json",
           "curves.png")


def use_source_tree() -> None:
    """`import birdlive` from this checkout where it is not installed (the device machine): the package folders
    are pyproject.toml's `package-dir`, read from there, so the mapping is not written down twice."""
    try:
        import birdlive  # noqa: F401
        return
    except ImportError:
        pass
    import importlib.abc
    import importlib.util
    import tomllib
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]

    class SourceTree(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name not in dirs:
                return None      # submodules are found through their package's __path__
            folder = ROOT / dirs[name]
            return importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                          submodule_search_locations=[str(folder)])
    sys.meta_path.insert(0, SourceTree())


# --------------------------------------------------------------------------------------------- pack

def opus_level(kbps: float) -> float:
    """libsndfile's Opus `compression_level` for a bitrate: 0 is 256 kb/s, 1 is 6 kb/s, linear in between."""
    return min(1.0, max(0.0, (256.0 - kbps) / 250.0))


def write_opus(x, sample_rate: int, path: Path, kbps: float) -> None:
    import numpy as np
    import soundfile as sf
    import soxr
    y = soxr.resample(np.asarray(x, np.float32), sample_rate, OPUS_RATE, quality="HQ") if len(x) else x
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(y, -1.0, 1.0), OPUS_RATE, format="OGG", subtype="OPUS",
             compression_level=opus_level(kbps))


def loudest(x, sample_rate: int, seconds: float):
    """The `seconds` of `x` with the most energy above its floor (what energy crops would draw from anyway)."""
    import numpy as np
    from birdlive.train.augment import energy_profile
    n = int(seconds * sample_rate)
    if len(x) <= n:
        return np.asarray(x)
    fps = 100
    e = energy_profile(x, sample_rate, fps)
    excess = np.clip(e - np.median(e), 0, None)
    width = max(1, int(seconds * fps))
    sums = np.convolve(excess, np.ones(width), mode="valid")
    start = int(np.argmax(sums)) * (sample_rate // fps) if len(sums) else 0
    start = min(start, len(x) - n)
    return np.asarray(x[start:start + n])


def tree_mib() -> float:
    """MiB of what the device tool sends besides carried folders: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "-c", "-o", "--exclude-standard"],
                         capture_output=True, check=True).stdout.decode()
    return sum((ROOT / p).stat().st_size for p in out.split("\0") if p and (ROOT / p).is_file()) / 2**20


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def packed_split(args, recs):
    """The split to pack: the given split.json, else the one `birdlive train` makes with these settings."""
    from birdlive.train.datasets import Holdout, Split, split_groups
    if args.split:
        return Split.load(args.split)
    holdout = Holdout.load(args.holdout)
    return split_groups(recs, args.val_fraction, args.seed, args.test_fraction, holdout.exclude)


def load_sources(args):
    from birdlive.train.datasets import load_dataset, merge, select_species
    rec_sets = [load_dataset(d) for d in args.data]
    snip_sets = [load_dataset(d) for d in args.snippets]
    recs, labels, names = merge(rec_sets + snip_sets)
    species = None
    if args.species:
        species = [x.strip() for x in Path(args.species).read_text().splitlines() if x.strip()]
        recs, labels, names = select_species(recs, labels, names, species)
    return rec_sets, snip_sets, recs, labels, names, species


def pack(args) -> None:
    """Writes the pack (see the module docstring) and prints what it holds and weighs."""
    from birdlive.train.cache import AudioCache
    from birdlive.train.datasets import Holdout
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rec_sets, snip_sets, recs, labels, names, species = load_sources(args)
    split = packed_split(args, recs)
    keep = set(split.train) | set(split.val)
    chosen = [r for r in recs if r.group in keep]
    chosen_paths = {r.path for r in chosen}
    cache = AudioCache(args.cache_dir, args.sample_rate)
    cache.warm([r.path for r in chosen], workers=args.jobs)
    renamed: dict[str, str] = {}            # old group id → packed group id
    for ds in snip_sets:
        rows = _pack_snippets(ds, chosen_paths, cache, out, args.kbps)
        print(f"{Path(ds.root).name}: {rows} snippets")
    noise_files = []
    if args.noise_dir:
        from birdlive.train.augment import NoiseBank
        files = Holdout.load(args.holdout).training_noise(NoiseBank.from_dir(args.noise_dir).files, args.noise_dir)
        for f in files:
            rel = Path(f).relative_to(Path(args.noise_dir).resolve()).with_suffix(".ogg")
            write_opus(loudest(cache.load(f), args.sample_rate, args.cap_max), args.sample_rate,
                       out / "noise" / rel, args.kbps)
            noise_files.append(str(rel))
    if species is not None:
        (out / "species.txt").write_text("\n".join(species) + "\n")
    init = _pack_init(args, labels, names, out) if args.init else None
    wheels = _pack_wheels(out / "wheels") if args.wheels else []
    budget = TREE_LIMIT_MIB - MARGIN_MIB - tree_mib() - folder_mib(out)
    cap = _pack_recordings(rec_sets, chosen_paths, cache, out, args, budget, renamed)
    split.train = sorted(renamed.get(g, g) for g in split.train)
    split.val = sorted(renamed.get(g, g) for g in split.val)
    split.test, split.excluded = [], []
    split.sources = [str(out / Path(d).name) for d in args.data + args.snippets]
    split.save(out / "split.json")
    manifest = {"data": [Path(d).name for d in args.data], "snippets": [Path(d).name for d in args.snippets],
                "preset": args.preset, "init": init, "kbps": args.kbps, "cap_s": cap, "labels": len(labels),
                "train_groups": len(split.train), "val_groups": len(split.val), "noise_files": noise_files,
                "wheels": wheels, "sample_rate": args.sample_rate, "source_split": args.split,
                "date": time.strftime("%Y-%m-%d")}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = folder_mib(out)
    print(f"{out}: {total:.1f} MiB (tree {tree_mib():.1f} MiB; limit {TREE_LIMIT_MIB:g}); {len(labels)} species, "
          f"{len(split.train)} train / {len(split.val)} validation groups; recordings cut to {cap:.0f} s")
    if total + tree_mib() > TREE_LIMIT_MIB:
        raise SystemExit(f"error: the pack and the tree weigh {total + tree_mib():.1f} MiB, over {TREE_LIMIT_MIB:g}")


def _pack_snippets(ds, chosen: set[str], cache, out: Path, kbps: float) -> int:
    """A snippet set's chosen files as Opus, and its snippets.csv for them."""
    root = Path(ds.root)
    dest = out / root.name
    table = root / "snippets.csv"
    rows = list(csv.DictReader(open(table, newline="", encoding="utf-8-sig"))) if table.is_file() else []
    by_file = {r["file"]: r for r in rows}
    written = []
    for r in ds.recordings:
        if r.path not in chosen:
            continue
        rel = Path(r.path).relative_to(root)
        new = rel.with_suffix(".ogg")
        write_opus(cache.load(r.path, mmap=False), cache.sample_rate, dest / new, kbps)
        row = dict(by_file.get(rel.as_posix(), {"species_code": r.primary}))
        row["file"] = new.as_posix()
        written.append(row)
    if written:
        with open(dest / "snippets.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in written for k in row)))
            w.writeheader()
            w.writerows(written)
    return len(written)


def _pack_recordings(rec_sets, chosen: set[str], cache, out: Path, args, budget_mib: float,
                     renamed: dict[str, str]) -> float:
    """The recordings, each cut to its loudest `cap` seconds, the cap as long as `budget_mib` allows
    (first from the durations at the nominal bitrate, then shortened while the files weigh more)."""
    items = [(ds, r) for ds in rec_sets for r in ds.recordings if r.path in chosen]
    seconds = [len(cache.load(r.path)) / cache.sample_rate for _, r in items]
    bytes_per_s = args.kbps * 1000 / 8
    cap = args.cap_max
    while cap > 5 and sum(min(s, cap) for s in seconds) * bytes_per_s / 2**20 > 0.95 * budget_mib:
        cap *= 0.9
    for _ in range(6):
        for ds in rec_sets:
            shutil.rmtree(out / Path(ds.root).name, ignore_errors=True)
        for ds in rec_sets:
            _write_recordings(ds, [r for d, r in items if d is ds], cache, out, args.kbps, cap, renamed)
        used = sum(folder_mib(out / Path(ds.root).name) for ds in rec_sets)
        if used <= budget_mib:
            return cap
        cap *= 0.9 * budget_mib / used
    raise SystemExit(f"error: the recordings do not fit {budget_mib:.1f} MiB")


# a recordings layout's table and its column of file paths: xeno-canto's metadata.csv, the Alberta clips' labels.csv
TABLES = (("metadata.csv", "filepath"), ("labels.csv", "file"))


def _write_recordings(ds, recs, cache, out: Path, kbps: float, cap: float, renamed: dict[str, str]) -> None:
    """Each recording as Opus, cut to its loudest `cap` seconds unless its call's time is known (the Alberta
    clips: the crops keep that song, so the clip stays whole), and its layout's table for the packed files."""
    root = Path(ds.root)
    dest = out / root.name
    table, column = next(((root / t, c) for t, c in TABLES if (root / t).is_file()), (None, "filepath"))
    rows = list(csv.DictReader(open(table, newline="", encoding="utf-8-sig"))) if table else []
    by_file = {r.get(column): r for r in rows}
    written = []
    for r in recs:
        rel = Path(r.path).relative_to(root)
        new = rel.with_suffix(".ogg")
        audio = cache.load(r.path)
        keep = cap if r.call_s is None else max(cap, len(audio) / cache.sample_rate)
        write_opus(loudest(audio, cache.sample_rate, keep), cache.sample_rate, dest / new, kbps)
        row = dict(by_file.get(rel.as_posix(), {"label": r.primary}))
        row[column] = new.as_posix()
        written.append(row)
        renamed[r.group] = r.group.replace(rel.as_posix(), new.as_posix())
    if written and table:
        with open(dest / table.name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(written)


def _pack_init(args, labels, names, out: Path) -> str:
    """The starting weights as our own float16 checkpoint (`pack/init`): no pickle, no download there."""
    import torch
    from birdlive.model import BirdSED, create_config, save_checkpoint
    from birdlive.train.loop import init_weights
    model = BirdSED(create_config(args.preset, labels, names))
    said = init_weights(model, args.init, args.cache_dir)
    save_checkpoint(model, out / "init", dtype=torch.float16)
    print(f"init: {said}")
    return said


def _pack_wheels(dest: Path) -> list[str]:
    """The wheels the device's CPython 3.12 lacks, at the versions this .venv runs (pip download, no deps)."""
    from importlib.metadata import version
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 27, 28)] + ["--platform=manylinux2014_x86_64"]
    for name in WHEELS:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--implementation", "cp", *platforms, "-d", str(dest), f"{name}=={version(name)}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"error: pip download {name}: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return sorted(p.name for p in dest.glob("*.whl"))


# ------------------------------------------------------------------------------------------ command

def command(args) -> None:
    """The device call, exactly: give `command`, `carry` and `timeout_s` to the `run` tool."""
    pack_rel = Path(args.pack).resolve().relative_to(ROOT)
    cmd = (f"set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "
           f"--target /tmp/site {pack_rel}/wheels/*.whl && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 && "
           f"python3 benchmarks/gpu_recipe.py train --pack {pack_rel} --out $OUT --minutes {args.minutes:g} "
           + (f"--recipe {args.recipe} " if args.recipe else "")
           + (f"--freeze {args.freeze} " if args.freeze is not None else "")
           + "2>&1 | tee $OUT/log.txt")
    print(json.dumps({"command": cmd, "carry": [str(pack_rel)], "timeout_s": int(args.minutes * 60 + 60)}, indent=1))


# -------------------------------------------------------------------------------------------- train

def train_there(args) -> None:
    """Trains from the pack (on the device: CUDA, bf16, workers on all cores but two) and copies the results
    to --out."""
    use_source_tree()
    import torch
    from birdlive.model import load_checkpoint, save_checkpoint
    from birdlive.train import TrainConfig, train
    pack_dir = Path(args.pack)
    manifest = json.loads((pack_dir / "manifest.json").read_text())
    species = pack_dir / "species.txt"
    workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 4) - 2)
    cfg = TrainConfig(
        run_dir=args.run, data=[str(pack_dir / d) for d in manifest["data"] if (pack_dir / d).is_dir()],
        snippets=[str(pack_dir / d) for d in manifest["snippets"] if (pack_dir / d).is_dir()],
        noise_dir=str(pack_dir / "noise") if (pack_dir / "noise").is_dir() else None,
        species=species.read_text().splitlines() if species.is_file() else None,
        split_file=str(pack_dir / "split.json"), preset=args.preset or manifest["preset"],
        init=str(pack_dir / "init") if (pack_dir / "init.json").is_file() else None,
        max_minutes=args.minutes, max_steps=args.max_steps, batch_size=args.batch, lr=args.lr,
        epoch_size=args.batch * args.val_every, workers=workers, threads=args.threads, device=args.device,
        cache_dir=args.cache, checkpoint_minutes=1.0, seed=args.seed,
        command="python3 benchmarks/gpu_recipe.py " + " ".join(sys.argv[1:]))
    cfg = with_recipe(cfg, args.recipe, args.freeze)
    print(f"training on {torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}, "
          f"{workers} workers, batch {args.batch}", flush=True)
    from rich.console import Console
    summary = train(cfg, console=Console(width=150), show_progress=True)   # plain lines in the log: a line a save
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stem in ("best", "last"):     # float16 weights: half the bytes to bring back
        if (Path(args.run) / f"{stem}.json").is_file():
            save_checkpoint(load_checkpoint(Path(args.run) / stem), out / stem, dtype=torch.float16)
    for name in RESULTS:
        if not (out / name).exists() and (Path(args.run) / name).is_file():
            shutil.copy2(Path(args.run) / name, out / name)
    print(json.dumps({k: v for k, v in summary.items() if k != "labels"}), flush=True)


def with_recipe(cfg, recipe: str | None, freeze: int | None):
    """`cfg` learning as the run of `recipe` (its train.json) did — augmentations, composer, frozen stages, teacher —
    and `--freeze` over both. A teacher's path is the run's, relative to the checkout (it travels with the tree)."""
    import dataclasses

    from birdlive.train import TrainConfig
    if recipe:
        run = TrainConfig.from_dict(json.loads(Path(recipe).read_text()))
        if run.preset != cfg.preset:
            raise SystemExit(f"error: {recipe} trains preset {run.preset}; the pack's is {cfg.preset} "
                             f"(pack again with --preset {run.preset})")
        cfg = dataclasses.replace(cfg, **{k: getattr(run, k) for k in RECIPE_FIELDS})
    return cfg if freeze is None else dataclasses.replace(cfg, freeze=freeze)


# --------------------------------------------------------------------------------------------- main

def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack", help="pack the training data, split, init weights and wheels (here)")
    p.add_argument("--out", default=str(PACK))
    p.add_argument("--data", nargs="*", default=[str(SHARED / "xc-puerto-rico")])
    p.add_argument("--snippets", nargs="*", default=[str(SHARED / "essential-set")])
    p.add_argument("--noise-dir", default=str(SHARED / "noise"))
    p.add_argument("--species", default=str(ROOT / "model" / "weights" / "default_species_v2.txt"))
    p.add_argument("--holdout", default=str(ROOT / "model" / "weights" / "default_holdout.json"))
    p.add_argument("--split", help="a run's split.json (default: made like `birdlive train` with the options below)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--preset", default="lite0")
    p.add_argument("--init", default="imagenet", help="'imagenet', a checkpoint, or '' for none")
    p.add_argument("--kbps", type=float, default=32.0, help="Opus bitrate")
    p.add_argument("--cap-max", type=float, default=120.0, help="longest stretch of a recording kept, seconds")
    p.add_argument("--sample-rate", type=int, default=32000)
    p.add_argument("--cache-dir")
    p.add_argument("--jobs", type=int, default=2, help="decoding processes")
    p.add_argument("--no-wheels", dest="wheels", action="store_false")
    c = sub.add_parser("command", help="print the device call")
    c.add_argument("--pack", default=str(PACK))
    c.add_argument("--minutes", type=float, default=6.5, help="the training call; with the machine's start (1-2 "
                                                                "min) and the install the lease stays under 10")
    t = sub.add_parser("train", help="train from a pack (on the device)")
    for verb in (c, t):
        verb.add_argument("--recipe", help="a run's train.json (in the checkout): train as it did (RECIPE_FIELDS)")
        verb.add_argument("--freeze", type=int, help="frozen stages (default: the recipe's, else 0)")
    t.add_argument("--pack", default=str(PACK))
    t.add_argument("--out", required=True)
    t.add_argument("--run", default="/tmp/birdlive-run")
    t.add_argument("--cache", default="/tmp/birdlive-cache")
    t.add_argument("--minutes", type=float, default=6.5, help="the whole training call, decoding included")
    t.add_argument("--max-steps", type=int)
    t.add_argument("--preset", help="default: the pack's")
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--val-every", type=int, default=1000, help="steps between validations")
    t.add_argument("--workers", type=int, help="DataLoader workers (default: CPU cores - 2)")
    t.add_argument("--threads", type=int)
    t.add_argument("--device", default="auto")
    t.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.verb == "pack":
        args.init = args.init or None
        use_source_tree()
        pack(args)
    elif args.verb == "command":
        command(args)
    else:
        train_there(args)


if __name__ == "__main__":
    main()
