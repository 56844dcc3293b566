"""What a teacher adds to a training step (`train --teacher`), on one thread: the network's step alone (forward,
loss, backward, AdamW), the same plus the teacher's forward pass as a plain eval network, and plus the teacher
as the detector's inference copy (BatchNorm folded, channels-last: what `train/distill.py` uses); with `--bf16`
also that copy under CPU bfloat16 autocast (not used by `train`: see the README's teacher paragraph).

    .venv/bin/python benchmarks/distill_step_cost.py [--presets lite0,lite2] [--steps 8]
        [--teacher model/weights/default_v3t_run/step14000] [--bf16] [--json benchmarks/results/distill_step_cost.json]

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


def step(net: BirdSED, opt, logmel: torch.Tensor, teacher: BirdSED | None, bf16: bool = False) -> float:
    start = time.process_time()
    out = net.forward_logmel(logmel)
    loss = out["clipwise"].mean()                                      # the label loss's cost is negligible
    if teacher is not None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            t = teacher.forward_logmel(logmel)
        loss = loss + distill_loss(out, Shared(t["clipwise"].shape[1]), {"clipwise": t["clipwise"].float(),
                                                                         "framewise": t["framewise"].float()})
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.process_time() - start


@torch.no_grad()
def bf16_score_change(teacher: BirdSED, recording: Path) -> dict[str, float]:
    """The largest change bfloat16 autocast makes to the teacher's probabilities, over the 5 s windows (hop 5 s)
    of a real recording (noise windows score near zero, where no change shows)."""
    from birdlive.train.cache import decode
    wave = torch.from_numpy(decode(recording, teacher.cfg.sample_rate))
    n = teacher.cfg.window_samples
    logmel = teacher.frontend(wave[: len(wave) // n * n].reshape(-1, n))
    want = teacher.forward_logmel(logmel)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = teacher.forward_logmel(logmel)
    return {k: (want[k].float() - got[k].float()).abs().max().item() for k in ("clipwise", "framewise")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="lite0,lite2")
    ap.add_argument("--teacher", default="model/weights/default_v3t_run/step14000")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--bf16", action="store_true", help="also the inference copy under bfloat16 autocast, and how "
                    "far its scores are from float32's")
    ap.add_argument("--recording", default=str(Path(__file__).resolve().parents[1] / "recordings" / "XC737279.mp3"),
                    help="with --bf16: the real recording the score change is measured on")
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    plain = load_checkpoint(a.teacher).eval().requires_grad_(False)
    fused = inference_copy(plain)
    variants = {"alone": (None, False), "plain teacher": (plain, False), "inference-copy teacher": (fused, False)}
    if a.bf16:
        variants["inference-copy teacher, bf16"] = (fused, True)
    cfg = plain.cfg
    logmel = plain.frontend(0.1 * torch.randn(a.batch, cfg.window_samples)).detach()
    res = {"teacher": a.teacher, "batch": a.batch, "steps": a.steps, "threads": 1, "cpu_s_per_step": {}}
    if a.bf16:
        res["bf16_score_change"] = bf16_score_change(fused, Path(a.recording))
        print("bf16 teacher scores, largest change from float32: " + ", ".join(
            f"{k} {v:.3f}" for k, v in res["bf16_score_change"].items()))
    for preset in a.presets.split(","):
        net, opt = student_for(preset, list(cfg.labels))
        times: dict[str, list[float]] = {name: [] for name in variants}
        for i in range(a.steps + 1):
            for name, (teacher, bf16) in variants.items():
                took = step(net, opt, logmel, teacher, bf16)
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
