"""The training loop: data → windows → BirdSED → loss → AdamW, with validation, checkpoints and logs.

Reads top to bottom: `train(TrainConfig)` sets up the run folder, the data and its split, the model, the optimizer
and (on --resume) the state of the last epoch, then loops over epochs.

Loss — binary cross-entropy, on both outputs:
    L = BCE(clipwise, clip targets)                          over the (clip, species) pairs whose label is known
      + frame_weight · [ BCE(max_t framewise_logit, clip targets)   same pairs: a present species must peak
                                                                     somewhere in the framewise track, an absent
                                                                     one nowhere (the BirdCLEF "SED" loss)
                       + BCE(framewise_logit, frame targets) ]  over the (frame, species) pairs that are known
Why BCE and not focal loss: the streamer turns scores into events with *fixed* thresholds (`threshold_on/off` in
the config), so the scores must be calibrated probabilities; BCE is a proper scoring rule and keeps them so, while
focal loss (γ > 0) deliberately flattens confident scores and moves the operating point. The usual reason for
focal loss — a flood of easy negatives — is much smaller here: windows are energy-cropped, species-balanced and
mixed, and the attention pooling already concentrates the clipwise gradient on the frames that matter.
`focal_gamma` stays available (0 = BCE) for experiments.
Masks: weak labels say nothing about *when* a present species calls, so framewise targets of present species are
masked on recordings and only the composed snippet windows (strong labels) train them; a secondary (background)
species is masked at clip level too, since it may or may not be in the crop.

Optimiser: AdamW (no weight decay on norms and biases), linear warm-up then cosine decay to 2 % of the peak
learning rate; with a time budget (`max_minutes`) the schedule follows whichever of steps and time runs out first.
Gradient-norm clipping; automatic mixed precision (bf16/fp16 autocast + GradScaler for fp16) on CUDA only.

Run folder:
    train.json       this TrainConfig          split.json     the seeded group split (never cut a recording)
    metrics.jsonl    one line per epoch         curves.png     loss and validation curves
    best.safetensors + best.json               the best epoch by validation macro mAP (`load_checkpoint(RUN)`)
    last.safetensors + last.json + last.optim.safetensors + last.state.json   for `--resume`
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from birdlive.errors import BirdliveError
from birdlive.model import BirdSED, create_config, load_checkpoint, pick_device, save_checkpoint

from .augment import AugmentConfig, NoiseBank
from .cache import AudioCache
from .composer import Composer, ComposerConfig, SnippetPool
from .datasets import Split, load_dataset, merge, select_species, split_groups
from .evaluate import clip_metrics
from .threads import cpu_threads
from .windows import WindowSet, composed_items, predict_items, recording_items


class TrainError(BirdliveError):
    """An expected problem with the inputs of a training run; the message says what, in one line."""


@dataclass
class TrainConfig:
    run_dir: str
    data: list[str] = field(default_factory=list)       # recording datasets (weak labels; energy crops)
    snippets: list[str] = field(default_factory=list)   # short-call datasets (composed windows, strong labels)
    noise_dir: str | None = None
    species: list[str] | None = None  # keep only these species (labels or common names); None: all
    preset: str = "cpu"
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields, e.g. {"n_mels": 96}
    window_s: float = 5.0
    epochs: int = 30
    epoch_size: int | None = None     # windows per epoch; default: one per training file/run, at least 8 batches
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup: float = 0.05              # fraction of the schedule
    clip_grad: float = 2.0
    frame_weight: float = 0.5
    focal_gamma: float = 0.0          # 0 = BCE (see the module docstring)
    val_fraction: float = 0.2
    seed: int = 0
    balance: bool = True              # draw species uniformly, then a file of it
    snippet_share: float | None = None  # share of windows composed from snippets (default 0.5 with both sources)
    val_max_windows: int = 24         # windows per validation file (evenly spread)
    val_composed: int | None = None   # composed validation windows (default: 4 per species with held-out runs)
    max_minutes: float | None = None  # wall-clock budget: stop after the epoch in which it runs out
    workers: int = 0                  # DataLoader worker processes (0: windows are made in the training process)
    threads: int | None = None        # torch CPU threads; default: all cores but one (see `train`)
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    amp: bool = True                  # mixed precision on CUDA
    cache_dir: str | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    composer: ComposerConfig = field(default_factory=ComposerConfig)
    command: str = ""                 # how the run was started (provenance)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["augment"] = AugmentConfig.from_dict(d.get("augment", {}))
        d["composer"] = ComposerConfig.from_dict(d.get("composer", {}))
        return cls(**d)


# ------------------------------------------------------------------------------------------------ loss

def sed_loss(out: dict, batch: dict, frame_weight: float = 0.5, focal_gamma: float = 0.0) -> tuple[torch.Tensor, dict]:
    clip = out["clipwise"].float().clamp(1e-7, 1 - 1e-7)
    ct, cm = batch["clip_target"], batch["clip_mask"]
    lc = F.binary_cross_entropy(clip, ct, reduction="none")
    if focal_gamma > 0:
        pt = ct * clip + (1 - ct) * (1 - clip)
        lc = lc * (1 - pt) ** focal_gamma
    clip_loss = (lc * cm).sum() / cm.sum().clamp(min=1.0)
    ft, fm = batch["frame_target"], batch["frame_mask"]
    logit = out["framewise_logit"].float()
    if logit.shape[1] != ft.shape[1]:   # window length off by a rounding: align the frame grids
        logit = F.interpolate(logit.transpose(1, 2), size=ft.shape[1], mode="linear").transpose(1, 2)
    lf = F.binary_cross_entropy_with_logits(logit, ft, reduction="none")
    lm = F.binary_cross_entropy_with_logits(logit.amax(dim=1), ct, reduction="none")   # max over time vs clip
    if focal_gamma > 0:
        p = torch.sigmoid(logit)
        lf = lf * (1 - (ft * p + (1 - ft) * (1 - p))) ** focal_gamma
        pm = torch.sigmoid(logit.amax(dim=1))
        lm = lm * (1 - (ct * pm + (1 - ct) * (1 - pm))) ** focal_gamma
    frame_loss = (lf * fm).sum() / fm.sum().clamp(min=1.0)
    max_loss = (lm * cm).sum() / cm.sum().clamp(min=1.0)
    loss = clip_loss + frame_weight * (max_loss + frame_loss)
    return loss, {"clip": float(clip_loss.detach()), "max": float(max_loss.detach()),
                  "frame": float(frame_loss.detach())}


def lr_at(progress: float, step: int, warmup_steps: int, base: float, floor: float = 0.02) -> float:
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# -------------------------------------------------------------------------------------- optimizer state

def save_optimizer(opt: torch.optim.Optimizer, stem: Path, extra: dict) -> None:
    sd = opt.state_dict()
    tensors, meta = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                meta[f"{pid}.{k}"] = v
    tensors["rng.torch_cpu"] = torch.get_rng_state()     # dropout / SpecAugment draws continue where they were
    if torch.cuda.is_available():
        tensors["rng.torch_cuda"] = torch.cuda.get_rng_state()
    tmp = stem.with_name(stem.name + ".optim.safetensors.tmp")
    save_file(tensors, str(tmp))
    tmp.replace(stem.with_name(stem.name + ".optim.safetensors"))
    state = {"param_groups": sd["param_groups"], "meta": meta, **extra}
    tmp = stem.with_name(stem.name + ".state.json.tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(stem.with_name(stem.name + ".state.json"))   # written last: marks a complete "last"


def load_optimizer(opt: torch.optim.Optimizer, stem: Path, device) -> dict:
    state = json.loads(stem.with_name(stem.name + ".state.json").read_text())
    tensors = load_file(str(stem.with_name(stem.name + ".optim.safetensors")), device=str(device))
    rng_cpu, rng_cuda = tensors.pop("rng.torch_cpu", None), tensors.pop("rng.torch_cuda", None)
    if rng_cpu is not None:
        torch.set_rng_state(rng_cpu.cpu())
    if rng_cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng_cuda.cpu())
    st: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(state.pop("meta").items()):
        pid, k = key.split(".", 1)
        st.setdefault(int(pid), {})[k] = v
    for pid in st:   # AdamW keeps `step` on the CPU unless capturable
        if "step" in st[pid] and torch.is_tensor(st[pid]["step"]):
            st[pid]["step"] = st[pid]["step"].cpu()
    opt.load_state_dict({"state": st, "param_groups": state.pop("param_groups")})
    return state


# ------------------------------------------------------------------------------------------------ plots

def plot_curves(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(ep, [r["train_loss"] for r in rows], label="train loss")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    for key, lab in (("val_map", "val macro mAP"), ("val_f1", "val F1@thr"), ("val_top1", "val top-1")):
        ys = [r.get(key) for r in rows]
        if any(y is not None for y in ys):
            b.plot(ep, [np.nan if y is None else y for y in ys], label=lab, marker=".")
    b.set_ylim(0, 1.02), b.set_xlabel("epoch"), b.legend(), b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ train

def train(cfg: TrainConfig, resume: bool = False, console=None, show_progress: bool = True) -> dict:
    """Trains per `cfg` into `cfg.run_dir`; returns a summary dict (best epoch and its validation figures, paths).
    With `resume`, continues the run in `cfg.run_dir` from its last complete epoch (its train.json and split are
    kept; `epochs`, `max_minutes`, `workers`, `threads`, `device` may be changed).
    CPU threads: all cores but one unless `threads` says otherwise (`threads.default_threads` says why)."""
    with cpu_threads(cfg.threads):
        return _train(cfg, resume, console, show_progress)


def _train(cfg: TrainConfig, resume: bool, console, show_progress: bool) -> dict:
    from rich.console import Console
    console = console or Console(quiet=not show_progress)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    resuming = resume and (run / "last.state.json").is_file()
    if resume and not resuming:
        console.print(f"[yellow]{run}: no complete last epoch to resume from; starting afresh[/]")
    if resuming:
        saved = TrainConfig.from_dict(json.loads((run / "train.json").read_text()))
        cfg = dataclasses.replace(saved, epochs=cfg.epochs, max_minutes=cfg.max_minutes, workers=cfg.workers,
                                  threads=cfg.threads, device=cfg.device, run_dir=cfg.run_dir)
    if not cfg.data and not cfg.snippets:
        raise TrainError("no training data: give at least one recordings dataset or snippet set")
    (run / "train.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    seed = cfg.seed
    torch.manual_seed(seed)
    np.random.seed(seed)

    # -- data, labels and the split (by recording / recording run, stratified by species, seeded, saved)
    rec_sets = [load_dataset(d) for d in cfg.data]      # DatasetError: the user's one line, as it is
    snip_sets = [load_dataset(d) for d in cfg.snippets]
    recs, labels, names = merge(rec_sets + snip_sets)
    if cfg.species:
        recs, labels, names = select_species(recs, labels, names, cfg.species)
        if not labels:
            raise TrainError(f"none of the {len(cfg.species)} species asked for is in the data")
    snippet_paths = {r.path for d in snip_sets for r in d.recordings}
    if resuming and (run / "split.json").is_file():
        split = Split.load(run / "split.json")
    else:
        split = split_groups(recs, cfg.val_fraction, seed)
        split.sources = [str(d) for d in cfg.data + cfg.snippets]
        split.save(run / "split.json")
    train_recs, val_recs = split.select(recs, "train"), split.select(recs, "val")
    console.print(f"{len(recs)} files, {len(labels)} species; split (seed {seed}): "
                  f"{len(split.train)} train / {len(split.val)} validation groups")

    # -- model
    overrides = dict(cfg.model_overrides)
    overrides.setdefault("window_s", cfg.window_s)
    if not cfg.augment.specaugment:
        overrides.update(time_stripes_num=0, freq_stripes_num=0)
    try:
        mcfg = create_config(cfg.preset, labels, names, **overrides)
    except (KeyError, TypeError, ValueError) as e:
        raise TrainError(str(e).strip("'\"")) from None
    device = pick_device(cfg.device)
    model = BirdSED(mcfg).to(device)

    # -- decode + resample every file once
    cache = AudioCache(cfg.cache_dir, mcfg.sample_rate)
    noise = NoiseBank.from_dir(cfg.noise_dir, cache)
    _warm(cache, [r.path for r in recs] + noise.files, console, show_progress)

    # -- training windows and the fixed validation set
    def sources(rs):
        return [r for r in rs if r.path not in snippet_paths], [r for r in rs if r.path in snippet_paths]
    tr_long, tr_snip = sources(train_recs)
    va_long, va_snip = sources(val_recs)
    composer = None
    if tr_snip:
        composer = Composer(SnippetPool(tr_snip, cache, cfg.composer.min_note_s), labels, noise, mcfg.sample_rate,
                            mcfg.out_fps, cfg.window_s, cfg.composer, cfg.augment)
    epoch_size = cfg.epoch_size or max(8 * cfg.batch_size, len(tr_long) + (len(composer.pool) if composer else 0))
    epoch_size = int(math.ceil(epoch_size / cfg.batch_size) * cfg.batch_size)
    trainset = WindowSet(tr_long, labels, cache, noise, cfg.augment, cfg.window_s, mcfg.out_fps, epoch_size, seed,
                         composer, cfg.snippet_share, cfg.balance)
    val_items = recording_items(va_long, labels, cache, cfg.window_s, cfg.window_s, cfg.val_max_windows)
    if va_snip:
        vcomp = Composer(SnippetPool(va_snip, cache, cfg.composer.min_note_s), labels, NoiseBank([], None),
                         mcfg.sample_rate, mcfg.out_fps, cfg.window_s, cfg.composer, AugmentConfig.none())
        n_val = cfg.val_composed if cfg.val_composed is not None else 4 * len(vcomp.species)
        val_items += composed_items(vcomp, n_val, seed)
    loader = torch.utils.data.DataLoader(trainset, batch_size=cfg.batch_size, shuffle=False,
                                         num_workers=cfg.workers, drop_last=True,
                                         pin_memory=device.type == "cuda")
    steps_per_epoch = len(loader)
    total_steps = max(1, steps_per_epoch * cfg.epochs)
    warmup_steps = max(1, int(cfg.warmup * total_steps))

    # -- optimiser: AdamW, no decay on norms/biases
    decay, no_decay = [], []
    for n_, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    # -- resume
    start_epoch, step, elapsed_before, best = 1, 0, 0.0, {"val_map": -1.0, "epoch": 0}
    rows: list[dict] = []
    if resuming:
        last = load_checkpoint(run / "last", device)
        model.load_state_dict(last.state_dict())
        state = load_optimizer(opt, run / "last", device)
        start_epoch, step = state["epoch"] + 1, state["step"]
        elapsed_before, best = state["elapsed_s"], state["best"]
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if (run / "metrics.jsonl").is_file():
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
            rows = [r for r in rows if r["epoch"] < start_epoch]
        console.print(f"resuming {run} at epoch {start_epoch} (step {step}, best val mAP {best['val_map']:.3f})")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    console.print(f"model {cfg.preset} ({mcfg.backbone}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
                  f"parameters) on {device}{' with AMP' if use_amp else ''}; {len(tr_long)} train recordings"
                  f"{f', {len(composer.pool)} snippet runs' if composer else ''}; {len(val_items)} validation items; "
                  f"{cfg.epochs} epochs × {steps_per_epoch} steps of {cfg.batch_size} × {cfg.window_s:g} s")

    t0 = time.time()
    budget = cfg.max_minutes * 60 if cfg.max_minutes else None
    interrupted = stopped_for_time = False
    epoch = start_epoch - 1
    progress = _progress(console, show_progress)
    with progress:
        task = progress.add_task("train", total=steps_per_epoch, info="")
        try:
            for epoch in range(start_epoch, cfg.epochs + 1):
                trainset.set_epoch(epoch)
                model.train()
                progress.reset(task, total=steps_per_epoch, description=f"epoch {epoch}/{cfg.epochs}")
                losses = []
                for batch in loader:
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                    elapsed = elapsed_before + time.time() - t0
                    frac = max(step / total_steps, elapsed / budget if budget else 0.0)
                    lr = lr_at(frac, step, warmup_steps, cfg.lr)
                    for g in opt.param_groups:
                        g["lr"] = lr
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        out = model(batch["wave"])
                    loss, parts = sed_loss(out, batch, cfg.frame_weight, cfg.focal_gamma)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                    scaler.step(opt)
                    scaler.update()
                    step += 1
                    losses.append(float(loss.detach()))
                    progress.update(task, advance=1, info=f"loss {np.mean(losses[-20:]):.4f}  lr {lr:.2e}")
                    if budget and elapsed_before + time.time() - t0 > budget:
                        stopped_for_time = True
                        break

                # -- validation, log, checkpoints
                row = {"epoch": epoch, "step": step, "time_s": round(elapsed_before + time.time() - t0, 1),
                       "lr": lr, "train_loss": float(np.mean(losses)) if losses else None}
                if val_items:
                    scores = predict_items(model, val_items, cfg.batch_size, device)
                    m = clip_metrics(scores, np.stack([it.target for it in val_items]),
                                     np.stack([it.mask for it in val_items]), labels, mcfg.threshold_on, names)
                    row.update(val_map=m["macro_map"], val_f1=m["f1_micro"], val_top1=m["top1"],
                               val_f1_best=m["f1_best"], val_f1_best_threshold=m["f1_best_threshold"],
                               val_worst=m["worst"][:3])
                rows.append(row)
                with open(run / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                plot_curves(rows, run / "curves.png")
                score = row.get("val_map")
                is_best = score is None or score > best["val_map"]
                if is_best:
                    best = {"val_map": -1.0 if score is None else score, "epoch": epoch,
                            "val_f1": row.get("val_f1"), "val_top1": row.get("val_top1")}
                    model.cfg.extra = _provenance(cfg, split, row, epoch, val_items, va_long)
                    save_checkpoint(model, run / "best")
                model.cfg.extra = _provenance(cfg, split, row, epoch, val_items, va_long)
                save_checkpoint(model, run / "last")
                save_optimizer(opt, run / "last", {"epoch": epoch, "step": step, "best": best,
                                                   "elapsed_s": row["time_s"], "scaler": scaler.state_dict()})
                console.print(f"epoch {epoch:3d}  loss {_f(row['train_loss'])}  val mAP {_f(row.get('val_map'))}  "
                              f"F1 {_f(row.get('val_f1'))}  top-1 {_f(row.get('val_top1'))}  "
                              f"{row['time_s']:.0f} s{'  ★ best' if is_best else ''}")
                if stopped_for_time:
                    console.print(f"[yellow]time budget of {cfg.max_minutes:g} min spent after epoch {epoch}[/]")
                    break
        except KeyboardInterrupt:
            interrupted = True
            console.print(f"[yellow]interrupted in epoch {epoch}; `--resume` continues after the last complete "
                          f"epoch[/]")
    return {"run_dir": str(run), "best": str(run / "best"), "best_epoch": best["epoch"],
            "val_map": None if best["val_map"] < 0 else best["val_map"], "val_f1": best.get("val_f1"),
            "val_top1": best.get("val_top1"), "epochs_done": epoch if not interrupted else epoch - 1,
            "steps": step, "time_s": round(elapsed_before + time.time() - t0, 1), "interrupted": interrupted,
            "labels": labels, "n_train_groups": len(split.train), "n_val_groups": len(split.val)}


def _provenance(cfg: TrainConfig, split: Split, row: dict, epoch: int, val_items, va_long) -> dict:
    return {
        "training": {"command": cfg.command, "data": cfg.data, "snippets": cfg.snippets, "noise_dir": cfg.noise_dir,
                     "preset": cfg.preset, "window_s": cfg.window_s, "epoch": epoch, "step": row["step"],
                     "split_seed": split.seed, "val_fraction": split.val_fraction, "split_file": "split.json",
                     "augment": cfg.augment.to_dict(), "date": datetime.date.today().isoformat()},
        "heldout": {"macro_map": row.get("val_map"), "f1": row.get("val_f1"), "top1": row.get("val_top1"),
                    "f1_best": row.get("val_f1_best"), "f1_best_threshold": row.get("val_f1_best_threshold"),
                    "n_items": len(val_items), "n_files": len(va_long), "n_groups": len(split.val)},
    }


def _f(v) -> str:
    return "  -  " if v is None else f"{v:.3f}"


def _progress(console, show: bool):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console, disable=not show,
                    transient=True)


def _warm(cache: AudioCache, paths: list[str], console, show: bool) -> None:
    todo = [p for p in paths if not cache.entry(p).is_file()]
    if not todo:
        return
    with _progress(console, show) as progress:
        task = progress.add_task(f"decoding {len(todo)} files once", total=len(todo), info=str(cache.dir))
        failed = cache.warm(todo, lambda: progress.advance(task))
    if failed:
        raise TrainError(f"{len(failed)} files cannot be decoded, e.g. {failed[0]}")


__all__ = ["TrainConfig", "TrainError", "train", "sed_loss", "lr_at", "plot_curves"]
