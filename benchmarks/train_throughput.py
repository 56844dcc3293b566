"""Training throughput: the loop as it was (git commit `--legacy`, default 410fd02) against today's, in one process,
on the same data, model preset, batch and threads.

    .venv/bin/python benchmarks/train_throughput.py [--preset cpu] [--threads 2] [--steps 20] [--repeat 2]
                                                   [--workers 0] [--json benchmarks/results/train_throughput.json]

Data: the xeno-canto recordings of the first `--pr-species` Puerto Rican species of the default species list, the
essential-set snippets of its first `--na-species` North American ones, and the noise folder (../shared/data),
decoded once into each loop's own cache before anything is timed. Both loops train the same network from
scratch with their default augmentations (mixing, noise, gain, tempo and pitch, SpecAugment) and no validation.

The old loop's code is `train/` of that commit, unpacked from git into a temporary package and imported beside
today's (it uses today's `birdlive.model`, so the network is the same on both sides). Each loop's `sed_loss` is
wrapped to stamp the wall clock and the CPU time of the process and its DataLoader workers at every step; the
first `--warmup` steps are not counted. Figures:

- windows/s: training windows (5 s) per wall second on this machine;
- CPU ms a window: CPU time of every core and worker per window;
- windows per CPU-hour: 3600 s / that — what an hour of one core's time buys, the currency of a background run
  that spends the spare CPU of a shared machine;
- windows per hour of this machine: 3600 × windows/s (two cores, `--threads`).

The old loop's snippets and energy profiles are made before timing (it made them on first use, a cost that a long
run amortises), so the comparison is of steady states. Run it on a quiet machine: `uptime` before and after is
printed, and with `--repeat` the loops alternate and the best of each is kept.
"""
from __future__ import annotations

import os

# before torch loads OpenMP (birdlive sets the same when imported first): spinning threads on a shared 2-core
# machine make every step tens of times slower and burn CPU while they wait
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
LEGACY_COMMIT = "410fd02"     # the loop before issue 9: phase-vocoder stretch/pitch per window, workers=0


def species_subset(pr: int, na: int) -> list[str]:
    """The first `pr` Puerto Rican (Genus_species) and `na` North American labels of the default species list."""
    listed = ROOT / "model" / "weights" / "default_species_v2.txt"
    labels = [x.strip() for x in listed.read_text().splitlines() if x.strip()]
    return [x for x in labels if x[:1].isupper()][:pr] + [x for x in labels if x[:1].islower()][:na]


def load_legacy(commit: str, into: Path):
    """`train/` at `commit` as the package `birdlive_legacy_train` (its relative imports stay inside it)."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, "train"], check=True,
                         capture_output=True).stdout
    tarfile.open(fileobj=io.BytesIO(tar)).extractall(into, filter="data")
    spec = importlib.util.spec_from_file_location("birdlive_legacy_train", into / "train" / "__init__.py",
                                                  submodule_search_locations=[str(into / "train")])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["birdlive_legacy_train"] = pkg
    spec.loader.exec_module(pkg)
    return pkg


class StepClock:
    """Wraps a loop module's `sed_loss` (called once per step) to stamp wall and CPU time at every step."""

    def __init__(self, module):
        from birdlive.train.loop import cpu_seconds
        self.module, self.original, self.cpu, self.stamps = module, module.sed_loss, cpu_seconds, []

    def __enter__(self):
        def stamped(*args, **kw):
            self.stamps.append((time.perf_counter(), self.cpu()))
            return self.original(*args, **kw)
        self.module.sed_loss = stamped
        return self

    def __exit__(self, *exc):
        self.module.sed_loss = self.original

    def figures(self, warmup: int, batch: int) -> dict:
        (t0, c0), (t1, c1) = self.stamps[warmup], self.stamps[-1]
        windows = (len(self.stamps) - 1 - warmup) * batch
        return {"windows": windows, "wall_s": round(t1 - t0, 2), "cpu_s": round(c1 - c0, 2),
                "windows_per_s": round(windows / (t1 - t0), 2),
                "cpu_ms_per_window": round(1000 * (c1 - c0) / windows, 1),
                "windows_per_cpu_hour": round(3600 * windows / (c1 - c0)),
                "windows_per_machine_hour": round(3600 * windows / (t1 - t0))}


def preload(legacy) -> None:
    """What the old loop made on first use, a cost a long run amortises, made at construction instead: the decoded
    snippets (its SnippetPool kept a dict of them) and the energy profile of every recording."""
    pool_cls, windows_cls = legacy.composer.SnippetPool, legacy.windows.WindowSet
    pool_init, windows_init = pool_cls.__init__, windows_cls.__init__

    def pool_init_and_load(self, recordings, cache, min_note_s=0.02):
        pool_init(self, recordings, cache, min_note_s)
        for r in recordings:
            self._audio[r.path] = np.asarray(cache.load(r.path, mmap=False), np.float32)

    def windows_init_and_profile(self, *args, **kw):
        windows_init(self, *args, **kw)
        for i, r in enumerate(self.recs):
            self._profiles[i] = legacy.augment.energy_profile(self.cache.load(r.path), self.sr)
    pool_cls.__init__, windows_cls.__init__ = pool_init_and_load, windows_init_and_profile


def run_loop(name: str, package, args, species: list[str], work: Path) -> dict:
    loop = sys.modules[f"{package.__name__}.loop"]
    steps = args.warmup + args.steps + 1
    common = dict(data=[str(DATA / "xc-puerto-rico")], snippets=[str(DATA / "essential-set")],
                  noise_dir=str(DATA / "noise"), species=species, preset=args.preset, batch_size=args.batch,
                  val_fraction=0.0, seed=0, device="cpu", cache_dir=str(work / f"cache-{name}"),
                  threads=args.new_threads or args.threads if name == "new" else args.threads,
                  workers=args.workers if name == "new" else 0)
    if name == "old":
        cfg = loop.TrainConfig(run_dir=str(work / f"run-{name}"), epochs=1, epoch_size=steps * args.batch, **common)
    else:
        cfg = loop.TrainConfig(run_dir=str(work / f"run-{name}"), max_steps=steps, epoch_size=steps * args.batch,
                               freeze=args.freeze, **common)
    with StepClock(loop) as clock:
        package.train(cfg, show_progress=False)
    return clock.figures(args.warmup, args.batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--legacy", default=LEGACY_COMMIT, help="git commit of the old loop")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per loop")
    ap.add_argument("--warmup", type=int, default=4, help="steps not timed")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the new loop (the old one: 0)")
    ap.add_argument("--new-threads", type=int, help="torch threads of the new loop (default: --threads)")
    ap.add_argument("--freeze", type=int, default=0, help="the new loop's --freeze (stages without gradients)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--pr-species", type=int, default=20)
    ap.add_argument("--na-species", type=int, default=40)
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-train"), help="caches and run folders")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    import birdlive.train as new
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    species = species_subset(args.pr_species, args.na_species)
    with tempfile.TemporaryDirectory() as tmp:
        old = load_legacy(args.legacy, Path(tmp))
        preload(old)
        load_before = os.getloadavg()
        results: dict[str, list[dict]] = {"old": [], "new": []}
        for r in range(args.repeat):
            for name, pkg in (("old", old), ("new", new)):
                res = run_loop(name, pkg, args, species, work)
                res["load_avg_1min"] = round(os.getloadavg()[0], 2)
                results[name].append(res)
                print(f"{name} #{r + 1}: {res}", flush=True)
    best = {k: max(v, key=lambda x: x["windows_per_s"]) for k, v in results.items()}
    report(best, args, species, load_before)
    if args.json:
        out = {"args": vars(args), "species": species, "runs": results, "best": best,
               "ratio": {k: round(best["new"][k] / best["old"][k], 2)
                         for k in ("windows_per_s", "windows_per_cpu_hour")},
               "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "cpus": os.cpu_count()}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


def report(best: dict, args, species: list[str], load_before) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"training throughput: preset {args.preset}, batch {args.batch} × 5 s windows, "
                    f"{len(species)} species ({os.cpu_count()} CPUs; load {load_before[0]:.2f} before, "
                    f"{os.getloadavg()[0]:.2f} after)")
    for col in ("loop", "windows/s", "CPU ms a window", "windows per CPU-hour", "windows per machine-hour"):
        t.add_column(col, justify="right")
    for name, label in (("old", f"old ({args.legacy}): {args.threads} threads, workers 0"),
                        ("new", f"new: {args.new_threads or args.threads} threads, workers {args.workers}"
                                + (f", --freeze {args.freeze}" if args.freeze else ""))):
        b = best[name]
        t.add_row(label, f"{b['windows_per_s']:.1f}", f"{b['cpu_ms_per_window']:.0f}",
                  f"{b['windows_per_cpu_hour']:,}", f"{b['windows_per_machine_hour']:,}")
    t.add_row("new ÷ old", f"{best['new']['windows_per_s'] / best['old']['windows_per_s']:.2f}×",
              f"{best['old']['cpu_ms_per_window'] / best['new']['cpu_ms_per_window']:.2f}×",
              f"{best['new']['windows_per_cpu_hour'] / best['old']['windows_per_cpu_hour']:.2f}×",
              f"{best['new']['windows_per_machine_hour'] / best['old']['windows_per_machine_hour']:.2f}×")
    Console().print(t)


if __name__ == "__main__":
    main()
