"""`birdlive finetune`: a model that learns from what its birder said in the web page's reviews.

From the detection database (`--db`) it takes every reviewed event and makes training windows of the model's
length around it, from the recording the event came from (or from its clip where the recording is gone):

- confirmed: its species is there (1); rejected: its species is not (0); relabelled: the old species is not, the
  new one is (a relabel to "no bird": only the 0);
- background: stretches of the same recordings with no event at all, where the species rejected in that
  recording are not (0).

Every other species of a window is left unsupervised: a review says nothing about them. Only the network's last
layer (the attention head: per species a weight vector over the 256 hidden features) is trained, on features the
frozen network computes once, with the head pulled towards its starting weights: minutes on two CPU cores, and a
model that changes only where the reviews say it should. The score trained is what makes an event: the highest
framewise score of the species in the window.

Part of the reviews (whole recordings, VAL_FRACTION of them) is kept out for validation. The new model replaces
nothing unless it makes fewer wrong decisions on those (an event kept that was rejected, or lost that was
confirmed; ties: the lower loss). Per-site thresholds come from the reviews too: per species with enough of them,
the on threshold with the best F0.5 (precision counts twice: a site's wrong events are what its birder reviewed
away), never below the model's global one.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import resource
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from birdlive.errors import BirdliveError, OptionError
from birdlive.streamer.sinks.database import connect

from .cache import AudioError, decode
from .calibrate import candidates, fbeta

log = logging.getLogger(__name__)

VAL_FRACTION = 0.3          # of the reviewed recordings, kept for validation
MIN_REVIEWS = 10            # fewer: nothing to learn from, nothing to validate on
BACKGROUND_GAP_S = 1.0      # background windows stay this far from any event of their recording
BACKGROUNDS_PER_SOURCE = 2
BETA = 0.5                  # per-site thresholds: F0.5
MIN_SITE_REVIEWS = 3        # per species, for its own threshold (with at least one of each verdict)


@dataclass
class Example:
    wave: np.ndarray                    # one window at the model's rate
    targets: dict[int, float]           # species index → 1 (there) or 0 (not there); the others unsupervised
    source: str
    reviewed: bool                      # a reviewed event (validation counts its decisions), not background


@dataclass
class FinetuneResult:
    replaced: bool
    reviews: int
    train_examples: int
    val_reviews: int
    errors_before: int
    errors_after: int
    loss_before: float
    loss_after: float
    thresholds: dict[str, list[float]] = field(default_factory=dict)
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def line(self) -> str:
        verdict = "replaced" if self.replaced else "kept the model (not better on the validation reviews)"
        return (f"finetune: {self.reviews} reviews ({self.train_examples} training windows, {self.val_reviews} "
                f"validation reviews): wrong decisions on validation {self.errors_before} → {self.errors_after}, "
                f"loss {self.loss_before:.3f} → {self.loss_after:.3f}; {len(self.thresholds)} site thresholds; "
                f"{self.cpu_s / 60:.1f} CPU-min; {verdict}")


def reviewed_events(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT e.id, e.source, e.species, e.onset_s, e.offset_s, e.clip, r.verdict, "
                        "r.species AS new_species FROM events e JOIN latest_reviews r ON r.event_id = e.id "
                        "ORDER BY e.id").fetchall()


def _window(wave: np.ndarray, center_s: float, n: int, rate: int) -> np.ndarray:
    """`n` samples centred on `center_s`, inside the recording where it is long enough; zeros past its ends."""
    start = int(round(center_s * rate)) - n // 2
    start = max(0, min(start, len(wave) - n))
    out = np.zeros(n, np.float32)
    piece = wave[start:start + n]
    out[:len(piece)] = piece
    return out


def examples(conn: sqlite3.Connection, cfg) -> tuple[list[Example], int]:
    """Training windows from the database's reviews, and how many reviews they came from."""
    index = {lab: i for i, lab in enumerate(cfg.labels)}
    rate, n = cfg.sample_rate, int(round(cfg.window_s * cfg.sample_rate))
    rows = [r for r in reviewed_events(conn) if r["species"] in index]
    audio: dict[str, np.ndarray | None] = {}
    out: list[Example] = []
    rejected: dict[str, set[int]] = {}
    for r in rows:
        targets = {index[r["species"]]: 1.0 if r["verdict"] == "confirm" else 0.0}
        if r["verdict"] == "relabel" and r["new_species"] in index:
            targets[index[r["new_species"]]] = 1.0
        if targets[index[r["species"]]] == 0.0:
            rejected.setdefault(r["source"], set()).add(index[r["species"]])
        wave, center = _event_audio(r, audio, rate)
        if wave is None:
            log.warning("finetune: neither the recording nor the clip of event %s can be read; left out", r["id"])
            continue
        out.append(Example(_window(wave, center, n, rate), targets, r["source"], reviewed=True))
    for source, species in rejected.items():
        out += _backgrounds(conn, source, audio.get(source), species, n, rate)
    return out, len(rows)


def _event_audio(r: sqlite3.Row, audio: dict[str, np.ndarray | None], rate: int) -> tuple[np.ndarray | None, float]:
    """The event's recording and the event's centre in it; else its clip (the event in its middle)."""
    if r["source"] not in audio:
        try:
            audio[r["source"]] = decode(r["source"], rate) if Path(r["source"]).is_file() else None
        except AudioError:
            audio[r["source"]] = None
    wave = audio[r["source"]]
    if wave is not None:
        return wave, (r["onset_s"] + r["offset_s"]) / 2
    if r["clip"] and Path(r["clip"]).is_file():
        try:
            clip = decode(r["clip"], rate)
            return clip, len(clip) / rate / 2
        except AudioError:
            pass
    return None, 0.0


def _backgrounds(conn: sqlite3.Connection, source: str, wave: np.ndarray | None, species: set[int], n: int,
                 rate: int) -> list[Example]:
    """Up to BACKGROUNDS_PER_SOURCE windows of `source` clear of all its events: the rejected `species` are not
    there."""
    if wave is None:
        return []
    spans = conn.execute("SELECT onset_s, offset_s FROM events WHERE source = ? ORDER BY onset_s", (source,))
    busy = [(on - BACKGROUND_GAP_S, off + BACKGROUND_GAP_S) for on, off in spans]
    length_s, window_s = len(wave) / rate, n / rate
    out: list[Example] = []
    t = 0.0
    while t + window_s <= length_s and len(out) < BACKGROUNDS_PER_SOURCE:
        clash = next((b for b in busy if b[0] < t + window_s and b[1] > t), None)
        if clash is not None:
            t = clash[1]
            continue
        out.append(Example(wave[int(t * rate):int(t * rate) + n].astype(np.float32), {k: 0.0 for k in species},
                           source, reviewed=False))
        t += window_s
    return out


def _warn_one_sided(items: list[Example], labels: list[str]) -> None:
    """Species the reviews only ever say are there: nothing teaches the model where they are not, and it learns
    to call them on other audio too (measured: benchmarks/results/learning_loop.md)."""
    pos: set[int] = set()
    neg: set[int] = set()
    for e in items:
        for k, y in e.targets.items():
            (pos if y > 0.5 else neg).add(k)
    one_sided = sorted(labels[k] for k in pos - neg)
    if one_sided:
        log.warning("finetune: no review says where %s is absent; the new model may call it on other audio too "
                    "(reviews of its wrong detections, rejected or relabelled, teach that)", ", ".join(one_sided))


def split(items: list[Example], fraction: float = VAL_FRACTION) -> tuple[list[Example], list[Example]]:
    """Whole recordings to validation (by a hash of their path: the same reviews give the same split), at least
    one, never all."""
    sources = sorted({e.source for e in items}, key=lambda s: hashlib.sha1(s.encode()).hexdigest())
    n_val = min(max(1, round(len(sources) * fraction)), len(sources) - 1)
    val = set(sources[:n_val])
    return [e for e in items if e.source not in val], [e for e in items if e.source in val]


def _features(net, items: list[Example], batch: int = 16):
    """The head's input for each window (B, H, T'): the frozen network runs once."""
    import torch
    captured = []
    hook = net.head.register_forward_hook(lambda module, args, output: captured.append(args[0].detach()))
    try:
        with torch.no_grad():
            for i in range(0, len(items), batch):
                net(torch.from_numpy(np.stack([e.wave for e in items[i:i + batch]])))
    finally:
        hook.remove()
    return torch.cat(captured) if captured else torch.zeros((0, net.cfg.hidden, 1))


def _targets(items: list[Example], k: int):
    import torch
    target, mask = torch.zeros(len(items), k), torch.zeros(len(items), k)
    for i, e in enumerate(items):
        for j, y in e.targets.items():
            target[i, j], mask[i, j] = y, 1.0
    return target, mask


def _scores(head, feats):
    """What makes an event: each species' highest framewise score in the window (B, K)."""
    import torch
    logits, _ = head(feats)
    return torch.sigmoid(logits).amax(dim=-1)


def _loss(scores, target, mask):
    import torch
    bce = torch.nn.functional.binary_cross_entropy(scores.clamp(1e-6, 1 - 1e-6), target, reduction="none")
    return (bce * mask).sum() / mask.sum().clamp(min=1.0)


def _errors(scores, target, mask, on) -> int:
    """Wrong decisions: a supervised (window, species) whose event would (not) come out against its review."""
    decided = scores >= on
    return int(((decided != (target > 0.5)) & (mask > 0)).sum())


def train_head(net, train_items: list[Example], steps: int = 300, lr: float = 3e-3, anchor: float = 1e-2):
    """A copy of the net's head, trained on `train_items`' features; the original stays untouched."""
    import torch
    feats = _features(net, train_items)
    target, mask = _targets(train_items, net.cfg.num_classes)
    pos = (target * mask).sum().clamp(min=1.0)
    neg = ((1 - target) * mask).sum().clamp(min=1.0)
    weight = mask * torch.where(target > 0.5, 0.5 * mask.sum() / pos, 0.5 * mask.sum() / neg)   # classes balanced
    head = copy.deepcopy(net.head)
    start = [p.detach().clone() for p in head.parameters()]
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = _loss(_scores(head, feats), target, weight)
        loss = loss + anchor * sum(((p - p0) ** 2).sum() for p, p0 in zip(head.parameters(), start))
        loss.backward()
        opt.step()
    return head


def site_thresholds(cfg, scores: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, list[float]]:
    """Per species with MIN_SITE_REVIEWS reviews, both verdicts among them: the on threshold (never below the
    global one) with the best F0.5 on the reviewed windows; off keeps the checkpoint's off/on ratio."""
    ratio = cfg.threshold_off / cfg.threshold_on
    on = candidates(cfg.threshold_on)
    out = {}
    for k, label in enumerate(cfg.labels):
        known = mask[:, k] > 0
        pos, neg = known & (target[:, k] > 0.5), known & (target[:, k] <= 0.5)
        if known.sum() < MIN_SITE_REVIEWS or not pos.any() or not neg.any():
            continue
        det = scores[None, :, k] >= on[:, None]                 # (candidates, windows)
        tp, fp = (det & pos).sum(1), (det & neg).sum(1)
        f = fbeta(tp, pos.sum() - tp, fp, BETA)
        c = int(np.lexsort((np.arange(len(on)), fp, -f))[0])
        out[label] = [round(float(on[c]), 3), round(float(on[c]) * ratio, 3)]
    return out


def finetune(db: Path, model: str | Path, run: Path, threads: int | None = None, steps: int = 300,
             seed: int = 0) -> FinetuneResult:
    """Train from `model` on `db`'s reviews; write `run/best` (a checkpoint `--model run` takes) only when it
    is better on the validation reviews. `run/finetune.json` records what was done either way."""
    import torch

    from birdlive.model import load_checkpoint, save_checkpoint
    t0, cpu0 = time.perf_counter(), _cpu_s()
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    net = load_checkpoint(model)
    conn = connect(db, read_only=True)
    try:
        items, n_reviews = examples(conn, net.cfg)
    finally:
        conn.close()
    if n_reviews < MIN_REVIEWS:
        raise OptionError(f"--db {db}: {n_reviews} reviews of this model's species; finetune needs at least "
                          f"{MIN_REVIEWS} (review detections in `birdlive serve` first)")
    _warn_one_sided(items, net.cfg.labels)
    train_items, val_items = split(items)
    val_reviews = [e for e in val_items if e.reviewed]
    if not val_reviews or not train_items:
        raise OptionError(f"--db {db}: the reviews come from too few recordings to keep some for validation")
    head = train_head(net, train_items, steps=steps)
    k = net.cfg.num_classes
    on = torch.tensor([(net.cfg.thresholds.get(lab) or [net.cfg.threshold_on])[0] for lab in net.cfg.labels])
    feats = _features(net, val_reviews)
    target, mask = _targets(val_reviews, k)
    with torch.no_grad():
        before, after = _scores(net.head, feats), _scores(head, feats)
        result = FinetuneResult(False, n_reviews, len(train_items), len(val_reviews),
                                _errors(before, target, mask, on), _errors(after, target, mask, on),
                                float(_loss(before, target, mask)), float(_loss(after, target, mask)))
    better = result.errors_after < result.errors_before or (result.errors_after == result.errors_before and
                                                            result.loss_after < result.loss_before)
    run.mkdir(parents=True, exist_ok=True)
    if better:
        net.head = head
        reviewed_items = [e for e in items if e.reviewed]
        with torch.no_grad():
            scores = _scores(head, _features(net, reviewed_items)).numpy()
        t, m = _targets(reviewed_items, k)
        result.thresholds = site_thresholds(net.cfg, scores, t.numpy(), m.numpy())
        net.cfg.thresholds = {**net.cfg.thresholds, **result.thresholds}
        result.replaced = True
    result.cpu_s, result.wall_s = _cpu_s() - cpu0, time.perf_counter() - t0
    record = {**result.__dict__, "db": str(db), "from": str(model), "steps": steps, "seed": seed}
    if better:
        net.cfg.extra = {**net.cfg.extra, "finetune": record}
        try:
            save_checkpoint(net, run / "best")
        except OSError as e:
            raise BirdliveError(f"--run {run}: cannot write the checkpoint ({e.strerror or e})") from None
    (run / "finetune.json").write_text(json.dumps(record, indent=1) + "\n")
    return result


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
