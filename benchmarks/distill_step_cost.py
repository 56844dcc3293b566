"""What a teacher adds to a training step (`train --teacher`), on one thread: the network's step alone (forward,
loss, backward, AdamW), the same plus the teacher's forward pass as a plain eval network, and plus the teacher
as the detector's inference copy (BatchNorm folded, channels-last: what `train/distill.py` uses).

    .venv/bin/python benchmarks/distill_step_cost.py [--presets lite0,lite2] [--steps 8]
        [--teacher model/weights/default_v3t_run/step14000] [--json benchmarks/results/distill_step_cost.json]

Random log-mel windows (16 × 5 s, the teacher's log-mel); the student from random weights with `--freeze 3` and
channels-last memory, as `train` builds it. The three variants alternate step by step, and each figure is the
median CPU seconds of the process over `--steps` steps after one untimed step. Pause any training run first
(`pkill -STOP -f "birdlive train"`): the figures are CPU time, but a busy machine still slows memory-bound
passes.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from birdlive.model import BirdSED, create_config, load_checkpoint
from birdlive.model.fuse import inference_copy
from birdlive.train.distill import distill_loss
from birdlive.train.loop import freeze_early


class Shared:
    """The attributes `distill_loss` reads of a `train.distill.Teacher`: every species, same order."""

    def __init__(self, k: int):
        self.student_cols = torch.arange(k)


def student_for(preset: str, labels: list[str]) -> tuple[BirdSED, torch.optim.Optimizer]:
    net = BirdSED(create_config(preset, labels)).train().to(memory_format=torch.channels_last)
    freeze_early(net, 3)
    return net, torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)


def step(net: BirdSED, opt, logmel: torch.Tensor, teacher: BirdSED | None) -> float:
    start = time.process_time()
    out = net.forward_logmel(logmel)
    loss = out["clipwise"].mean()                                      # the label loss's cost is negligible
    if teacher is not None:
        with torch.no_grad():
            t = teacher.forward_logmel(logmel)
        loss = loss + distill_loss(out, Shared(t["clipwise"].shape[1]), {"clipwise": t["clipwise"].float(),
                                                                         "framewise": t["framewise"].float()})
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.process_time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="lite0,lite2")
    ap.add_argument("--teacher", default="model/weights/default_v3t_run/step14000")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    plain = load_checkpoint(a.teacher).eval().requires_grad_(False)
    variants = {"alone": None, "plain teacher": plain, "inference-copy teacher": inference_copy(plain)}
    cfg = plain.cfg
    logmel = plain.frontend(0.1 * torch.randn(a.batch, cfg.window_samples)).detach()
    res = {"teacher": a.teacher, "batch": a.batch, "steps": a.steps, "threads": 1, "cpu_s_per_step": {}}
    for preset in a.presets.split(","):
        net, opt = student_for(preset, list(cfg.labels))
        times: dict[str, list[float]] = {name: [] for name in variants}
        for i in range(a.steps + 1):
            for name, teacher in variants.items():
                took = step(net, opt, logmel, teacher)
                if i:
                    times[name].append(took)
        med = {name: statistics.median(t) for name, t in times.items()}
        res["cpu_s_per_step"][preset] = med
        print(f"{preset}: " + ", ".join(f"{name} {s:.2f} CPU s ({s / med['alone']:.2f}×)" for name, s in med.items()))
    print(f"load average {os.getloadavg()[0]:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
