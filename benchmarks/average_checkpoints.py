"""Average the weights of checkpoints that share a network and species list (a "model soup"; with the incumbent
as one of them, WiSE-FT's interpolation between a model and its fine-tuned descendant):

    python benchmarks/average_checkpoints.py --out /tmp/soup/best A/best B/best [C/best …]

Floating-point tensors are averaged (batch-norm statistics too); integer ones (batch counters) are the first
checkpoint's, and so is the config (thresholds, provenance): calibrate a soup before it ships. Only models
fine-tuned from a common ancestor average into a working one. timm's `avg_checkpoints.py` does this for its own
training checkpoints, but it is a repository script, not in the wheel, and knows nothing of our configs.
"""
from __future__ import annotations

import argparse
import sys

from birdlive.model import load_checkpoint, save_checkpoint


def average(paths: list[str]):
    models = [load_checkpoint(p) for p in paths]
    first = models[0]
    for path, m in zip(paths[1:], models[1:]):
        if m.cfg.labels != first.cfg.labels or m.cfg.backbone != first.cfg.backbone:
            raise SystemExit(f"{path}: another network or species list than {paths[0]}")
    states = [m.state_dict() for m in models]
    mean = {k: sum(s[k] for s in states) / len(states) if v.is_floating_point() else v
            for k, v in states[0].items()}
    first.load_state_dict(mean)
    return first


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="STEM of the averaged checkpoint")
    ap.add_argument("checkpoints", nargs="+")
    a = ap.parse_args(argv)
    print(save_checkpoint(average(a.checkpoints), a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
