"""Validation curves of several runs on one CPU-hour axis, each run starting where the run it was initialised
from stopped (v3 from v2's 2.09 CPU-hours): the default model's whole training history in one picture.

    python benchmarks/training_curves.py benchmarks/results/default_v2_metrics.jsonl:v2:0 \
        runs/default-v3/metrics.jsonl:v3:2.09 --out benchmarks/results/default_v3_curves.png

Each argument is METRICS.jsonl:NAME:OFFSET_CPU_HOURS. Validation sets differ between runs (v3's adds the
Alberta clips and 14 species), so a jump at a run's start is a change of yardstick as much as of model.
`--keys` picks the figures drawn (default val_map,val_top1; the gate's yardstick is val_rec_track_map, the
validation recordings' track mAP), and `--level NAME=VALUE` draws a horizontal line (a model to reach).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_rows(path: str) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


STYLES = ("-", ":", "--", "-.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="METRICS.jsonl:NAME:OFFSET_CPU_HOURS")
    ap.add_argument("--out", required=True)
    ap.add_argument("--keys", default="val_map,val_top1", help="metrics.jsonl fields to draw, comma-separated")
    ap.add_argument("--level", action="append", default=[], help="NAME=VALUE: a horizontal line")
    a = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, spec in enumerate(a.runs):
        path, name, offset = spec.rsplit(":", 2)
        rows = read_rows(path)
        hours = [float(offset) + r.get("cpu_s", 0.0) / 3600 for r in rows]
        for key, style in zip(a.keys.split(","), STYLES):
            ax.plot(hours, [r.get(key) for r in rows], style, marker=".", color=colors[i % len(colors)],
                    label=f"{name} {key}")
        print(f"{name}: " + ", ".join(f"{h:.2f} h {r.get('val_map') or 0:.3f}" for h, r in zip(hours, rows)))
    for level in a.level:
        name, value = level.rsplit("=", 1)
        ax.axhline(float(value), color="grey", linewidth=0.8)
        ax.annotate(name, (1, float(value)), xycoords=("axes fraction", "data"), fontsize=7, va="bottom",
                    ha="right")
    ax.set_xlabel("CPU-hours (all runs, data workers included)"), ax.set_ylim(0, 1), ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
