"""The training loop: data → windows → BirdSED → loss → AdamW, with validation, checkpoints and logs.

Reads top to bottom: `train(TrainConfig)` sets up the run folder, the data and its split, the model (from a
resumable state, else from `init` weights, else from scratch), fixes the length of the schedule in optimizer
steps, then runs steps, validating every `epoch_size` windows and saving its state every few minutes.

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
species is masked at clip level too, since it may or may not be in the crop — unless a `--guide` model of ours
hears it in the crop: then its clip target is the guide's score there, a soft one (`guide.py`).
With a `--teacher` of ours, L becomes (1 − distill) · L + distill · the BCE against the teacher's clipwise and
framewise scores of the same window, over every species both know (`distill.py`).

Schedule (nanoGPT's): the learning rate is a pure function of the step — linear warm-up, then cosine decay to
`lr_floor` of the peak at `total_steps` (`lr_at`). `total_steps` is fixed once, when the run starts: `max_steps`,
or `max_minutes` converted from a measured step (and validation) time, or `epochs` × steps per epoch; it is
recorded in train.json, so a resumed run continues the same curve and never jumps. Window i of the run is drawn
from (seed, i) alone and the state holds torch's RNG, so stopping and resuming changes no weight (a test).
Optimiser: AdamW (no weight decay on norms and biases), gradient-norm clipping; automatic mixed precision
(bf16/fp16 autocast + GradScaler for fp16) on CUDA only; channels-last memory for the convolutions (1.3× faster
training steps on the 2-core CPU).

Run folder:
    train.json       this TrainConfig, with the resolved total_steps      split.json   the split (never cut a group)
    guide.npz        with --guide: its scores of the training recordings, made once (`guide.py`)
    metrics.jsonl    one line per validation (step, windows, wall and CPU seconds, lr, loss, validation figures)
    curves.png       loss against steps, validation figures against CPU-hours
    best.safetensors + best.json     the best validation macro mAP so far (`load_checkpoint(RUN)`)
    last.safetensors + last.json     the latest weights, as a checkpoint
    stepN.safetensors + stepN.json   with --keep-every: the weights at step N, kept for a later gate
    state.safetensors                everything `--resume` needs (weights, optimizer, RNG, step, best), one file
                                     written under a temporary name and renamed: a kill -9 loses at most the
                                     steps since the last save (`checkpoint_minutes`, and at every validation)
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from birdlive.errors import BirdliveError
from birdlive.files import atomic_path
from birdlive.model import BirdSED, create_config, load_checkpoint, pick_device, save_checkpoint
from birdlive.model.checkpoint import load_config
from birdlive.model.fuse import inference_copy
from birdlive.model.sed import on_frames

from .augment import AugmentConfig, FieldBackgrounds, ImpulseResponses, NoiseBank, TempoPitchLogMel
from .cache import AudioCache
from .composer import Composer, ComposerConfig, SnippetPool
from .datasets import Holdout, Split, extend_split, split_groups
from .evaluate import clip_metrics, macro_ap
from .distill import Teacher, check_teacher_logmel, distill_loss
from .guide import guide_pass
from .evaluation import load_recordings
from .threads import cpu_threads
from .windows import WindowSet, composed_items, predict_items_and_peaks, recording_items

STATE = "state.safetensors"
GUIDE_FILE = "guide.npz"           # the `--guide` model's scores of the training recordings (`guide.py`)


class TrainError(BirdliveError):
    """An expected problem with the inputs of a training run; the message says what, in one line."""


@dataclass
class TrainConfig:
    run_dir: str
    data: list[str] = field(default_factory=list)       # recording datasets (weak labels; energy crops)
    snippets: list[str] = field(default_factory=list)   # short-call datasets (composed windows, strong labels)
    noise_dir: str | None = None
    species: list[str] | None = None  # keep only these species (labels or common names); None: all
    holdout: str | None = None        # JSON of files never trained on (`datasets.Holdout`: excluded, noise)
    preset: str = "cpu"
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields, e.g. {"n_mels": 96}
    init: str | None = None           # weights to start from when the run has no state: a checkpoint, "imagenet"
    freeze: int = 0                   # > 0: no gradients for the input BatchNorm's scale, the stem and the first
                                      # `freeze` - 1 blocks (for pretrained backbones: `freeze_early`)
    guide: str | None = None          # a checkpoint of our own guiding crops and background labels (`guide.py`)
    teacher: str | None = None        # a checkpoint of ours whose scores the student also learns (`distill.py`)
    distill: float = 0.5              # the teacher's share of the loss
    window_s: float = 5.0
    epochs: int = 30                  # validations in the run, when neither max_steps nor max_minutes is given
    epoch_size: int | None = None     # windows between validations; default: one per training file/run, ≥ 8 batches
    max_steps: int | None = None      # optimizer steps in the run: the schedule's length
    max_minutes: float | None = None  # wall-clock budget: fixes the steps once (measured step time); bounds a session
    batch_size: int = 16
    lr: float = 1e-3
    lr_floor: float = 0.02            # the cosine ends at lr × lr_floor
    weight_decay: float = 1e-2
    warmup: float = 0.05              # fraction of the schedule
    clip_grad: float = 2.0
    frame_weight: float = 0.5
    focal_gamma: float = 0.0          # 0 = BCE (see the module docstring)
    val_fraction: float = 0.2
    test_fraction: float = 0.0        # groups kept for figures only: never trained on, never used to choose
    split_file: str | None = None     # a split.json to use instead of making one
    seed: int = 0
    balance: bool = True              # draw species uniformly, then a file of it
    snippet_share: float | None = None  # share of windows composed from snippets (default 0.5 with both sources)
    val_max_windows: int = 24         # windows per validation file (evenly spread)
    val_composed: int | None = None   # composed validation windows (default: 4 per species with held-out runs)
    checkpoint_minutes: float = 2.0   # resumable state saved at least this often (and at every validation)
    keep_every: int | None = None     # > 0: also keep the weights as RUN/stepN at the first validation at or past
                                      # each multiple of this many steps (candidates to gate later; None/0: none)
    workers: int = 0                  # DataLoader worker processes (0: windows are made in the training process)
    threads: int | None = None        # torch CPU threads; default: all cores but one (see `train`)
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    amp: bool = True                  # mixed precision on CUDA
    channels_last: bool = True        # convolutions in channels-last memory
    cache_dir: str | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    composer: ComposerConfig = field(default_factory=ComposerConfig)
    command: str = ""                 # how the run was started (provenance)
    # fixed when the run starts, kept by --resume
    total_steps: int | None = None
    timing: dict = field(default_factory=dict)   # the measurement max_minutes was converted with

    # what a resumed run may change (None: keep the run's): where and how fast it runs, not what it learns;
    # max_minutes then bounds the session only (None: no bound)
    RESUMABLE = ("run_dir", "max_minutes", "checkpoint_minutes", "keep_every", "workers", "threads", "device",
                 "cache_dir")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

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
        logit = on_frames(logit, ft.shape[1])
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


# -------------------------------------------------------------------------------------------- schedule

def lr_at(step: int, total_steps: int, warmup_steps: int, base: float, floor: float = 0.02) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warm-up over `warmup_steps`, then a cosine
    from `base` down to `base · floor` at `total_steps`, flat after it."""
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def steps_for_budget(seconds: float, step_s: float, val_s: float, steps_per_val: int) -> int:
    """Optimizer steps that fit `seconds`, validating every `steps_per_val` steps (each taking `val_s`)."""
    return max(1, int(seconds / (step_s + val_s / max(1, steps_per_val))))


def cpu_seconds() -> float:
    """CPU time of this process, its live children (DataLoader workers: /proc, on Linux) and its reaped ones."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    with contextlib.suppress(OSError):
        tick = os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{os.getpid()}/task").iterdir():
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
                    total += (int(fields[11]) + int(fields[12])) / tick
    return total


# ------------------------------------------------------------------------------------ resumable state

def save_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, info: dict) -> None:
    """Weights, optimizer moments, torch's RNG and `info` (JSON: step, best, clocks, scaler) in ONE safetensors
    file, written under a temporary name and renamed: whatever moment a run is killed, the state on disk is a
    whole one."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    meta = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                meta[f"{pid}.{k}"] = v
    tensors["rng.torch_cpu"] = torch.get_rng_state()     # dropout / SpecAugment draws continue where they were
    if torch.cuda.is_available():
        tensors["rng.torch_cuda"] = torch.cuda.get_rng_state()
    info = {**info, "param_groups": sd["param_groups"], "optim_meta": meta}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"birdlive_state": json.dumps(info)})


def load_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, device) -> dict:
    """Restores what `save_state` wrote into `model`, `opt` and torch's RNG; returns its `info`."""
    with safe_open(str(path), "pt", device="cpu") as f:
        info = json.loads(f.metadata()["birdlive_state"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    torch.set_rng_state(tensors["rng.torch_cpu"])
    if "rng.torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.torch_cuda"])
    st: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            pid, k = key[6:].split(".", 1)
            st.setdefault(int(pid), {})[k] = v.to(device)
    for key, v in info.pop("optim_meta").items():
        pid, k = key.split(".", 1)
        st.setdefault(int(pid), {})[k] = v
    for s in st.values():   # AdamW keeps `step` on the CPU unless capturable
        if torch.is_tensor(s.get("step")):
            s["step"] = s["step"].cpu()
    opt.load_state_dict({"state": st, "param_groups": info.pop("param_groups")})
    return info


# ----------------------------------------------------------------------------------------- start weights

def init_weights(model: BirdSED, init: str, cache_dir: str | None = None) -> str:
    """Start `model` from `init`: "imagenet" (the backbone, `birdlive.model.pretrained`) or a checkpoint, whose
    tensors are copied where name and shape match; the head's per-species rows are copied for the species both
    know, so a changed species list keeps what the checkpoint learnt of the others. Returns what was loaded."""
    if init == "imagenet":
        from birdlive.model.pretrained import load_imagenet
        n = load_imagenet(model, cache_dir)
        return f"backbone from ImageNet ({n} tensors)"
    src = load_checkpoint(init)
    theirs, ours = src.state_dict(), model.state_dict()
    rows = {lab: i for i, lab in enumerate(src.cfg.labels)}
    shared = [(i, rows[lab]) for i, lab in enumerate(model.cfg.labels) if lab in rows]
    copied = per_species = 0
    with torch.no_grad():
        for k, v in ours.items():
            t = theirs.get(k)
            if t is None:
                continue
            if t.shape == v.shape and (not k.startswith("head.") or src.cfg.labels == model.cfg.labels):
                v.copy_(t)
                copied += 1
            elif k.startswith("head.") and t.shape[1:] == v.shape[1:] and shared:
                mine, src_rows = zip(*shared)
                v[list(mine)] = t[list(src_rows)].to(v.dtype)
                per_species += 1
    return (f"{init}: {copied} of {len(ours)} tensors" + (f", and the head's rows of the {len(shared)} of "
            f"{len(model.cfg.labels)} species it knows ({per_species} tensors)" if per_species else ""))


# ------------------------------------------------------------------------------------------------ data

@dataclass
class RunData:
    labels: list[str]
    names: list[str]
    split: Split
    trainset: WindowSet
    val_items: list
    n_val_files: int
    n_train_files: int
    n_snippet_runs: int


def load_data(cfg: TrainConfig, run: Path, resuming: bool, console) -> tuple[list, list, list, set, Split]:
    """Recordings, labels, common names, snippet paths and the split (the run's own on --resume; else the given
    split file; else a new seeded group split, saved)."""
    run_recs = load_recordings(cfg.data, cfg.snippets, cfg.species)   # DatasetError: the user's one line, as it is
    recs, labels, names, snippet_paths = run_recs.recs, run_recs.labels, run_recs.names, run_recs.snippet_paths
    if cfg.species and not labels:
        raise TrainError(f"none of the {len(cfg.species)} species asked for is in the data")
    given = run / "split.json" if resuming and (run / "split.json").is_file() else cfg.split_file
    if given:
        split = Split.load(given)
        added = extend_split(split, recs, Holdout.load(cfg.holdout).exclude)
        if added:
            split.sources = list(dict.fromkeys(split.sources + [str(d) for d in cfg.data + cfg.snippets]))
            console.print(f"{len(added)} groups the split {given} did not know (new data or species) split among "
                          f"themselves with its seed and fractions")
    else:
        holdout = Holdout.load(cfg.holdout)
        split = split_groups(recs, cfg.val_fraction, cfg.seed, cfg.test_fraction, holdout.exclude)
        split.sources = [str(d) for d in cfg.data + cfg.snippets]
    split.save(run / "split.json")
    console.print(f"{len(recs)} files, {len(labels)} species; split (seed {split.seed}): {len(split.train)} train / "
                  f"{len(split.val)} validation / {len(split.test)} test groups")
    return recs, labels, names, snippet_paths, split


def build_data(cfg: TrainConfig, recs: list, labels: list[str], names: list[str], snippet_paths: set, split: Split,
               mcfg, console, show: bool) -> RunData:
    """The training windows and the fixed validation items of the split, every file decoded once first."""
    cache = AudioCache(cfg.cache_dir, mcfg.sample_rate)
    noise = NoiseBank.from_dir(cfg.noise_dir, cache)
    if cfg.noise_dir:
        noise.files = Holdout.load(cfg.holdout).training_noise(noise.files, cfg.noise_dir)
    _warm(cache, [r.path for r in recs] + noise.files, console, show, cfg.workers)

    def sources(rs):
        return [r for r in rs if r.path not in snippet_paths], [r for r in rs if r.path in snippet_paths]
    tr_long, tr_snip = sources(split.select(recs, "train"))
    va_long, va_snip = sources(split.select(recs, "val"))
    composer = None
    if tr_snip:
        irs = ImpulseResponses.from_dir(cfg.noise_dir, cache)
        _warm(cache, irs.files, console, show, 0)
        composer = Composer(SnippetPool(tr_snip, cache, cfg.composer.min_note_s), labels, noise, mcfg.sample_rate,
                            mcfg.out_fps, cfg.window_s, cfg.composer, cfg.augment,
                            FieldBackgrounds(tr_long, cache, labels), irs)
    epoch_size = cfg.epoch_size or max(8 * cfg.batch_size, len(tr_long) + (len(composer.pool) if composer else 0))
    trainset = WindowSet(tr_long, labels, cache, noise, cfg.augment, cfg.window_s, mcfg.out_fps, epoch_size,
                         cfg.seed, composer, cfg.snippet_share, cfg.balance, TempoPitchLogMel(mcfg))
    trainset.prepare()
    if cfg.guide:     # the training recordings only: validation and test audio never reaches the guide
        try:
            trainset.guide = guide_pass(cfg.guide, tr_long, cache, Path(cfg.run_dir) / GUIDE_FILE, cfg.threads,
                                        console.print)
        except ValueError as e:
            raise TrainError(str(e)) from None
    val_items = recording_items(va_long, labels, cache, cfg.window_s, cfg.window_s, cfg.val_max_windows)
    if va_snip:
        vcomp = Composer(SnippetPool(va_snip, cache, cfg.composer.min_note_s), labels, NoiseBank([], None),
                         mcfg.sample_rate, mcfg.out_fps, cfg.window_s, cfg.composer, AugmentConfig.none())
        n_val = cfg.val_composed if cfg.val_composed is not None else 4 * len(vcomp.species)
        val_items += composed_items(vcomp, n_val, cfg.seed)
    return RunData(labels, names, split, trainset, val_items, len(va_long), len(tr_long),
                   len(composer.pool) if composer else 0)


# ------------------------------------------------------------------------------------- model and steps

def build_model(cfg: TrainConfig, labels: list[str], names: list[str], device) -> BirdSED:
    overrides = dict(cfg.model_overrides)
    overrides.setdefault("window_s", cfg.window_s)
    if not cfg.augment.specaugment:
        overrides.update(time_stripes_num=0, freq_stripes_num=0)
    try:
        mcfg = create_config(cfg.preset, labels, names, **overrides)
    except (KeyError, TypeError, ValueError) as e:
        raise TrainError(str(e).strip("'\"")) from None
    if round(cfg.window_s * mcfg.sample_rate) % mcfg.hop_length:
        raise TrainError(f"--window {cfg.window_s:g} is not a whole number of {mcfg.hop_length}-sample frames")
    model = BirdSED(mcfg).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.freeze:
        freeze_early(model, cfg.freeze)
    return model


def freeze_early(model: BirdSED, stages: int) -> int:
    """Stops training the network's first `stages` stages — stage 1 is the input BatchNorm's scale and shift and
    the backbone's stem, stage k + 1 its block k — and returns how many tensors it froze. Their BatchNorms still
    normalise with batch statistics. Backpropagation then ends where the frozen part begins: the layers at the
    highest resolution cost the most (251 × 32 positions a window), so a step is a fifth (lite0) to a quarter
    (cpu) cheaper at 3 stages (measured on the 2-core CPU). Meant for a backbone started from ImageNet, whose
    first filters are generic edges and blobs; a network trained from scratch needs all of its layers."""
    bb = model.backbone
    if not all(hasattr(bb, a) for a in ("conv_stem", "bn1", "blocks")):
        raise TrainError(f"--freeze needs an EfficientNet or MobileNet backbone, not {model.cfg.backbone}")
    parts = [model.frontend.bn0, bb.conv_stem, bb.bn1] + list(bb.blocks[:max(0, stages - 1)])
    frozen = [p for part in parts for p in part.parameters()]
    for p in frozen:
        p.requires_grad_(False)
    return len(frozen)


class Stepper:
    """One optimizer step on a batch: the tempo/pitch log-mel, the network, the loss, AdamW at a given rate."""

    def __init__(self, model: BirdSED, cfg: TrainConfig, device):
        self.model, self.cfg, self.device = model, cfg, device
        self.warp = TempoPitchLogMel(model.cfg)
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for p in model.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        self.amp = cfg.amp and device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        self.teacher = Teacher(cfg.teacher, model.cfg, device) if cfg.teacher else None

    def __call__(self, batch: dict, lr: float) -> float:
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        for g in self.opt.param_groups:
            g["lr"] = lr
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            logmel = self.warp(batch["wave"], batch["hop"], batch["semitones"])
            if "eq_db" in batch and batch["eq_db"].shape[-1] == logmel.shape[-1]:
                logmel = logmel + batch["eq_db"][:, None, None, :].to(logmel.dtype)   # microphone EQ (dB)
            out = self.model.forward_logmel(logmel)
            taught = self.teacher.targets(logmel) if self.teacher else None    # the log-mel before SpecAugment
        loss, _ = sed_loss(out, batch, self.cfg.frame_weight, self.cfg.focal_gamma)
        if self.teacher and taught is not None:
            loss = (1 - self.cfg.distill) * loss + self.cfg.distill * distill_loss(out, self.teacher, taught,
                                                                                     self.cfg.frame_weight)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        self.scaler.step(self.opt)
        self.scaler.update()
        return float(loss.detach())


def loader(trainset: WindowSet, cfg: TrainConfig, first_window: int, last_window: int, device):
    """Windows first_window … last_window - 1 in batches. Its own generator: building a DataLoader draws a seed
    from torch's global RNG, which would shift the dropout draws of a resumed run."""
    return torch.utils.data.DataLoader(trainset, batch_size=cfg.batch_size, sampler=range(first_window, last_window),
                                       num_workers=cfg.workers, drop_last=True, pin_memory=device.type == "cuda",
                                       generator=torch.Generator().manual_seed(cfg.seed))


def measure_step_s(model: BirdSED, cfg: TrainConfig, trainset: WindowSet, device) -> float:
    """Seconds per training step (data included), timed on a throwaway copy of the model over the run's first
    windows; torch's RNG is left as it was. Workers fill a queue of batches while they start, which would make
    the first steps look free: the probe runs past it and takes the median of its second half."""
    steps = 8 + 4 * cfg.workers
    probe = copy.deepcopy(model)
    stepper = Stepper(probe, cfg, device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        probe.train()
        times = []
        for batch in loader(trainset, cfg, 0, steps * cfg.batch_size, device):
            t = time.perf_counter()
            stepper(batch, cfg.lr * 0.01)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
    del probe, stepper
    return float(np.median(times[len(times) // 2:]))


def validate(model: BirdSED, data: RunData, cfg: TrainConfig, device) -> dict:
    """Macro mAP etc. over every validation item (the whole recordings first, then the composed windows), and
    apart the whole recordings alone: with four composed windows a species against one recording each, the
    composed windows outweigh the field audio in val_map, and a checkpoint can gain there while it names real
    recordings worse (v3t: val_map 0.519 → 0.526 from step 6,000 to 7,500, gate recording top-1 0.45 → 0.32).
    val_rec_track_* rank the recordings' species by their framewise peaks instead, as the events and the gate do."""
    if not data.val_items:
        return {}
    # scored as the detector scores (BatchNorm folded, channels-last): the pass costs about half
    scores, peaks = predict_items_and_peaks(inference_copy(model), data.val_items, cfg.batch_size, device)
    model.train()                      # inference_copy put the network in eval mode
    targets, masks = np.stack([it.target for it in data.val_items]), np.stack([it.mask for it in data.val_items])
    m = clip_metrics(scores, targets, masks, data.labels, model.cfg.threshold_on, data.names)
    row = {"val_map": m["macro_map"], "val_f1": m["f1_micro"], "val_top1": m["top1"], "val_f1_best": m["f1_best"],
           "val_f1_best_threshold": m["f1_best_threshold"], "val_worst": m["worst"][:3]}
    n = data.n_val_files
    if n:
        rec = clip_metrics(scores[:n], targets[:n], masks[:n], data.labels, model.cfg.threshold_on, data.names)
        row["val_rec_map"] = rec["macro_map"]
        # the top species is one of the recording's own (primary or co-labelled), whatever its background
        row["val_rec_top1"] = float(targets[np.arange(n), scores[:n].argmax(1)].mean())
        row["val_rec_track_map"] = macro_ap(peaks[:n], targets[:n], masks[:n])
        row["val_rec_track_top1"] = float(targets[np.arange(n), peaks[:n].argmax(1)].mean())
    return row


# ------------------------------------------------------------------------------------------------ train

def train(cfg: TrainConfig, resume: bool = False, console=None, show_progress: bool = True) -> dict:
    """Trains per `cfg` into `cfg.run_dir`; returns a summary dict (best step and its validation figures, paths).
    With `resume`, continues the run in `cfg.run_dir` from its saved state (its train.json and split are kept; the
    fields in `TrainConfig.RESUMABLE` may change); without a state it starts afresh, from `cfg.init` if given.
    CPU threads: all cores but one unless `threads` says otherwise (`threads.default_threads` says why).
    SIGTERM and Ctrl-C stop it after the current step, with its state saved."""
    with cpu_threads(cfg.threads), _stop_on_signals() as stop:
        return _train(cfg, resume, console, show_progress, stop)


@dataclass
class Progress:
    """Where the run is: what the state file holds besides tensors."""
    step: int = 0
    best: dict = field(default_factory=lambda: {"val_map": -1.0, "step": 0})
    time_s: float = 0.0          # wall seconds in training, all sessions
    cpu_s: float = 0.0           # CPU seconds (workers included), all sessions
    sessions: int = 0
    init: str = "scratch"


def _start(cfg: TrainConfig, run: Path, resume: bool, console) -> tuple[TrainConfig, bool]:
    resuming = resume and (run / STATE).is_file() and (run / "train.json").is_file()
    if resume and not resuming:
        console.print(f"[yellow]{run}: no saved state to resume from; starting afresh"
                      f"{f' from {cfg.init}' if cfg.init else ''}[/]")
    if resuming:
        saved = TrainConfig.from_dict(json.loads((run / "train.json").read_text()))
        given = {k: getattr(cfg, k) for k in TrainConfig.RESUMABLE}
        for name in ("guide", "teacher"):
            if getattr(cfg, name) and getattr(cfg, name) != getattr(saved, name):
                console.print(f"[yellow]--{name} {getattr(cfg, name)} ignored: the run keeps what it started with "
                              f"({getattr(saved, name) or f'no {name}'})[/]")
        cfg = dataclasses.replace(saved, **{k: v for k, v in given.items() if v is not None or k == "max_minutes"})
    if not cfg.data and not cfg.snippets:
        raise TrainError("no training data: give at least one recordings dataset or snippet set")
    # a missing guide or teacher, or a teacher of another log-mel, is said now, not after the audio is decoded
    if cfg.guide:
        load_config(cfg.guide)
    if cfg.teacher:
        student = create_config(cfg.preset, [], **cfg.model_overrides)
        check_teacher_logmel(cfg.teacher, load_config(cfg.teacher), student)
    if not 0.0 <= cfg.distill <= 1.0:
        raise TrainError(f"--distill must be between 0 and 1, not {cfg.distill:g}")
    return cfg, resuming


def _train(cfg: TrainConfig, resume: bool, console, show_progress: bool, stop) -> dict:
    from rich.console import Console
    console = console or Console(quiet=not show_progress)
    t_start = time.time()
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    cfg, resuming = _start(cfg, run, resume, console)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = pick_device(cfg.device)
    recs, labels, names, snippet_paths, split = load_data(cfg, run, resuming, console)
    model = build_model(cfg, labels, names, device)
    data = build_data(cfg, recs, labels, names, snippet_paths, split, model.cfg, console, show_progress)
    stepper = Stepper(model, cfg, device)
    console.print(f"model {cfg.preset} ({model.cfg.backbone}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
                  f"parameters) on {device}{' with AMP' if stepper.amp else ''}; {data.n_train_files} train recordings"
                  f"{f', {data.n_snippet_runs} snippet runs' if data.n_snippet_runs else ''}; {len(data.val_items)} "
                  f"validation items")
    prog, rows = Progress(), []
    if resuming:
        info = load_state(run / STATE, model, stepper.opt, device)
        prog = Progress(**{k: v for k, v in info.items() if k in Progress.__dataclass_fields__})
        if info.get("scaler"):
            stepper.scaler.load_state_dict(info["scaler"])
        rows = _metrics(run, prog.step)
        console.print(f"resuming {run} at step {prog.step} of {cfg.total_steps} "
                      f"(best val mAP {prog.best['val_map']:.3f} at step {prog.best['step']})")
    else:
        if cfg.init:
            prog.init = init_weights(model, cfg.init, cfg.cache_dir)
            console.print(f"start: {prog.init}")
        t = time.time()
        if data.val_items:     # the starting point of the validation curve (and the time a validation takes)
            row = {"step": 0, "windows": 0, "time_s": 0.0, "cpu_s": 0.0, "lr": 0.0, "train_loss": None,
                   **validate(model, data, cfg, device)}
            _log_row(run, rows, row, console)
            _keep_best(run, model, cfg, data, prog, row)
        _fix_schedule(cfg, model, data.trainset, device, t_start, time.time() - t, console)
    (run / "train.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    console.print(f"{cfg.total_steps} steps of {cfg.batch_size} × {cfg.window_s:g} s windows, validation every "
                  f"{_steps_per_val(cfg, data.trainset)}")
    prog.sessions += 1
    return _loop(cfg, run, stepper, data, prog, rows, device, console, show_progress, stop, t_start)


def _fix_schedule(cfg: TrainConfig, model: BirdSED, trainset: WindowSet, device, t_start: float, val_s: float,
                  console) -> None:
    """Sets `cfg.total_steps` once: max_steps, else max_minutes over a measured step time, else epochs."""
    per_val = _steps_per_val(cfg, trainset)
    if cfg.max_steps:
        cfg.total_steps = int(cfg.max_steps)
    elif cfg.max_minutes:
        step_s = measure_step_s(model, cfg, trainset, device)
        left = cfg.max_minutes * 60 - (time.time() - t_start)
        cfg.total_steps = steps_for_budget(left, step_s, val_s, per_val)
        cfg.timing = {"step_s": round(step_s, 4), "val_s": round(val_s, 2), "setup_s": round(time.time() - t_start, 1),
                      "threads": torch.get_num_threads(), "workers": cfg.workers, "device": str(device)}
        console.print(f"{cfg.max_minutes:g} min at {step_s:.3f} s a step (and {val_s:.1f} s a validation every "
                      f"{per_val} steps) → {cfg.total_steps} steps")
    else:
        cfg.total_steps = cfg.epochs * per_val


def _total_steps(cfg: TrainConfig) -> int:
    """The run's schedule length: set by `_fix_schedule` when the run started, read back from train.json since."""
    if cfg.total_steps is None:
        raise TrainError(f"{cfg.run_dir}: train.json has no total_steps (the run's schedule); start the run afresh")
    return cfg.total_steps


def _steps_per_val(cfg: TrainConfig, trainset: WindowSet) -> int:
    return max(1, trainset.epoch_size // cfg.batch_size)


def _loop(cfg: TrainConfig, run: Path, stepper: Stepper, data: RunData, prog: Progress, rows: list[dict], device,
          console, show: bool, stop, t_start: float) -> dict:
    model, B, per_val = stepper.model, cfg.batch_size, _steps_per_val(cfg, data.trainset)
    total_steps = _total_steps(cfg)
    warmup = max(1, int(cfg.warmup * total_steps))
    budget_end = t_start + cfg.max_minutes * 60 if cfg.max_minutes else None
    t0, c0, time0, cpu0 = time.time(), cpu_seconds(), prog.time_s, prog.cpu_s
    saved_at, last_save, losses, ended = prog.step, time.time(), [], "done"
    lr = lr_at(prog.step, total_steps, warmup, cfg.lr, cfg.lr_floor)
    model.train()
    with _progress(console, show) as bar, _worker_exit_on_stop(stop):
        task = bar.add_task("train", total=total_steps, completed=prog.step, info="")
        for batch in loader(data.trainset, cfg, prog.step * B, total_steps * B, device):
            lr = lr_at(prog.step, total_steps, warmup, cfg.lr, cfg.lr_floor)
            losses.append(stepper(batch, lr))
            prog.step += 1
            prog.time_s, prog.cpu_s = time0 + time.time() - t0, cpu0 + cpu_seconds() - c0
            bar.update(task, advance=1, info=f"loss {np.mean(losses[-20:]):.4f}  lr {lr:.2e}")
            if prog.step % per_val == 0 or prog.step == total_steps:
                row = {"step": prog.step, "windows": prog.step * B, "time_s": round(prog.time_s, 1),
                       "cpu_s": round(prog.cpu_s, 1), "lr": lr, "train_loss": float(np.mean(losses)),
                       **validate(model, data, cfg, device)}
                losses = []
                _log_row(run, rows, row, console)
                _keep_best(run, model, cfg, data, prog, row)
                _keep_step(run, model, cfg, data, prog, row, (prog.step - 1) // per_val * per_val)
            if prog.step % per_val == 0 or time.time() - last_save >= cfg.checkpoint_minutes * 60:
                _save(run, stepper, cfg, data, prog, console, show)
                saved_at, last_save = prog.step, time.time()
            if stop.is_set() or (budget_end and time.time() >= budget_end):
                ended = "stopped" if stop.is_set() else "time"
                break
    ended = "stopped" if stop.is_set() and ended == "done" and prog.step < total_steps else ended
    if saved_at != prog.step:
        _save(run, stepper, cfg, data, prog, console, show)
    if ended != "done":
        console.print(f"[yellow]{'stopped' if ended == 'stopped' else 'time budget spent'} at step {prog.step} of "
                      f"{total_steps}; `--resume` continues from there[/]")
    best = prog.best
    return {"run_dir": str(run), "best": str(run / "best"), "best_step": best["step"],
            "val_map": None if best["val_map"] < 0 else best["val_map"], "val_f1": best.get("val_f1"),
            "val_top1": best.get("val_top1"), "steps": prog.step, "total_steps": total_steps,
            "time_s": round(prog.time_s, 1), "cpu_s": round(prog.cpu_s, 1), "interrupted": ended == "stopped",
            "stopped_for_time": ended == "time", "labels": data.labels, "n_train_groups": len(data.split.train),
            "n_val_groups": len(data.split.val), "n_test_groups": len(data.split.test)}


def _keep_best(run: Path, model: BirdSED, cfg: TrainConfig, data: RunData, prog: Progress, row: dict) -> None:
    score = row.get("val_map")
    if score is None or score > prog.best["val_map"]:
        prog.best = {"val_map": -1.0 if score is None else score, "step": prog.step,
                     "val_f1": row.get("val_f1"), "val_top1": row.get("val_top1")}
        model.cfg.extra = _provenance(cfg, data, prog, row)
        save_checkpoint(model, run / "best")


def _keep_step(run: Path, model: BirdSED, cfg: TrainConfig, data: RunData, prog: Progress, row: dict,
               previous_validation: int) -> None:
    """RUN/stepN when a multiple of `keep_every` lies in (previous validation, this one]: the run's `best` picks
    one checkpoint by the validation mAP, and a gate on whole recordings may prefer another."""
    every = cfg.keep_every or 0
    if every > 0 and prog.step // every > previous_validation // every:
        model.cfg.extra = _provenance(cfg, data, prog, row)
        save_checkpoint(model, run / f"step{prog.step}")


def _save(run: Path, stepper: Stepper, cfg: TrainConfig, data: RunData, prog: Progress, console, show: bool) -> None:
    """The resumable state (one file), then the latest weights as a checkpoint (`last`)."""
    info = {**dataclasses.asdict(prog), "scaler": stepper.scaler.state_dict()}
    save_state(run / STATE, stepper.model, stepper.opt, info)
    stepper.model.cfg.extra = _provenance(cfg, data, prog, {})
    save_checkpoint(stepper.model, run / "last")
    if not (show and console.is_terminal):   # logs of background runs: a line per save
        console.print(f"{datetime.datetime.now():%H:%M:%S} step {prog.step}/{cfg.total_steps}  "
                      f"{prog.step * cfg.batch_size / max(prog.time_s, 1e-9):.1f} windows/s  "
                      f"{prog.cpu_s / 3600:.2f} CPU-h  state saved", highlight=False)


@contextlib.contextmanager
def _worker_exit_on_stop(stop):
    """Ctrl-C reaches the DataLoader's workers too, and a worker that quits makes the next batch raise: once a stop
    was asked for, that is the stop, not an error."""
    try:
        yield
    except RuntimeError:
        if not stop.is_set():
            raise


@contextlib.contextmanager
def _stop_on_signals():
    """An event set by SIGTERM or Ctrl-C: the loop ends after its current step and saves (a second Ctrl-C
    interrupts at once). Signals can only be caught in the main thread; elsewhere the event stays unset."""
    import threading
    stop = threading.Event()
    previous = {}

    def handler(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


# ------------------------------------------------------------------------------------------------ logs

def _metrics(run: Path, up_to_step: int) -> list[dict]:
    """The run's logged rows up to `up_to_step` (rows a killed session logged after its last state are dropped)."""
    path = run / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    rows = [r for r in rows if r.get("step", 0) <= up_to_step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _log_row(run: Path, rows: list[dict], row: dict, console) -> None:
    rows.append(row)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    plot_curves(rows, run / "curves.png")
    console.print(f"step {row['step']:6d}  loss {_f(row.get('train_loss'))}  val mAP {_f(row.get('val_map'))}  "
                  f"F1 {_f(row.get('val_f1'))}  top-1 {_f(row.get('val_top1'))}  recordings mAP "
                  f"{_f(row.get('val_rec_map'))} top-1 {_f(row.get('val_rec_top1'))} (track "
                  f"{_f(row.get('val_rec_track_map'))} / {_f(row.get('val_rec_track_top1'))})  {row['time_s']:.0f} s  "
                  f"{row['cpu_s'] / 3600:.2f} CPU-h", highlight=False)


def plot_curves(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure     # the object API: no pyplot, no global backend switch
    fig = Figure(figsize=(10, 3.6))
    a, b = fig.subplots(1, 2)
    trained = [r for r in rows if r.get("train_loss") is not None]
    a.plot([r["step"] for r in trained], [r["train_loss"] for r in trained], label="train loss")
    a.set_xlabel("step"), a.set_ylabel("loss"), a.grid(alpha=0.3)
    hours = [r.get("cpu_s", 0.0) / 3600 for r in rows]
    for key, lab in (("val_map", "val macro mAP"), ("val_f1", "val F1@thr"), ("val_top1", "val top-1"),
                     ("val_rec_map", "val recordings mAP"), ("val_rec_top1", "val recordings top-1"),
                     ("val_rec_track_top1", "val recordings top-1, track")):
        ys = [r.get(key) for r in rows]
        if any(y is not None for y in ys):
            b.plot(hours, [np.nan if y is None else y for y in ys], label=lab, marker=".")
    b.set_ylim(0, 1.02), b.set_xlabel("CPU-hours (all cores, data workers included)"), b.grid(alpha=0.3)
    for ax in (a, b):
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _provenance(cfg: TrainConfig, data: RunData, prog: Progress, row: dict) -> dict:
    split = data.split
    return {
        "training": {"command": cfg.command, "data": cfg.data, "snippets": cfg.snippets, "noise_dir": cfg.noise_dir,
                     "holdout": cfg.holdout, "preset": cfg.preset, "window_s": cfg.window_s, "init": prog.init,
                     "guide": cfg.guide, "teacher": cfg.teacher, "distill": cfg.distill if cfg.teacher else None,
                     "step": prog.step, "total_steps": cfg.total_steps, "windows": prog.step * cfg.batch_size,
                     "cpu_hours": round(prog.cpu_s / 3600, 3), "split_seed": split.seed,
                     "val_fraction": split.val_fraction, "test_fraction": split.test_fraction,
                     "split_file": "split.json", "augment": cfg.augment.to_dict(),
                     "date": datetime.date.today().isoformat()},
        "heldout": {"macro_map": row.get("val_map"), "f1": row.get("val_f1"), "top1": row.get("val_top1"),
                    "recordings_map": row.get("val_rec_map"), "recordings_top1": row.get("val_rec_top1"),
                    "recordings_track_map": row.get("val_rec_track_map"),
                    "recordings_track_top1": row.get("val_rec_track_top1"),
                    "f1_best": row.get("val_f1_best"), "f1_best_threshold": row.get("val_f1_best_threshold"),
                    "n_items": len(data.val_items), "n_files": data.n_val_files, "n_groups": len(split.val)},
    }


def _f(v) -> str:
    return "  -  " if v is None else f"{v:.3f}"


def _progress(console, show: bool):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console, disable=not show,
                    transient=True)


def _warm(cache: AudioCache, paths: list[str], console, show: bool, workers: int = 0) -> None:
    todo = [p for p in paths if not cache.entry(p).is_file()]
    if not todo:
        return
    with _progress(console, show) as progress:
        task = progress.add_task(f"decoding {len(todo)} files once", total=len(todo), info=str(cache.dir))
        failed = cache.warm(todo, lambda: progress.advance(task), workers)
    if failed:
        raise TrainError(f"{len(failed)} files cannot be decoded, e.g. {failed[0]}")


__all__ = ["TrainConfig", "TrainError", "train", "sed_loss", "lr_at", "steps_for_budget", "plot_curves",
           "save_state", "load_state", "init_weights", "freeze_early"]
