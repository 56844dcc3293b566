"""A checkpoint's region table from its training data: which species each data set's region holds.

    python -m birdlive.train.regions --model model/weights/default \
        ../shared/data/xc-puerto-rico=puerto-rico ../shared/data/essential-set=north-america

A species is in a region when a data set of that region has recordings of it as a primary label, after the
names two data sets spell alike are merged (as training merges them): the xeno-canto Mourning Dove and the
essential set's `mourning_dove` are one species of both regions. Written into the checkpoint's JSON as
`extra["regions"]`, which `--region` and `--lat/--lon` read (`birdlive.model.regions`).
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from birdlive.model.checkpoint import checkpoint_paths
from birdlive.model.regions import REGION_BOXES

from .datasets import load_dataset, merge


def species_regions(data: dict[str, str], labels: list[str]) -> dict[str, list[str]]:
    """{region: the `labels` with recordings in that region's data sets}, for {data folder: region}."""
    datasets = [load_dataset(folder) for folder in data]
    merge(datasets)                                 # relabels in place, as training does
    known = set(labels)
    table: dict[str, set[str]] = defaultdict(set)
    for dataset, region in zip(datasets, data.values()):
        table[region].update(r.primary for r in dataset.recordings if r.primary in known)
    return {region: sorted(species) for region, species in sorted(table.items())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="Checkpoint STEM whose JSON gets the table.")
    ap.add_argument("data", nargs="+", help="FOLDER=REGION, one per training data set; regions: "
                                            + ", ".join(REGION_BOXES))
    args = ap.parse_args(argv)
    data = {}
    for item in args.data:
        folder, _, region = item.rpartition("=")
        if region not in REGION_BOXES or not folder:
            ap.error(f"{item}: want FOLDER=REGION with REGION one of {', '.join(REGION_BOXES)}")
        data[folder] = region
    config_path = checkpoint_paths(args.model)[1]
    config = json.loads(Path(config_path).read_text())
    table = species_regions(data, config["labels"])
    config.setdefault("extra", {})["regions"] = table
    Path(config_path).write_text(json.dumps(config, indent=1) + "\n")
    missing = set(config["labels"]) - {s for species in table.values() for s in species}
    for region, species in table.items():
        print(f"{region}: {len(species)} species")
    if missing:
        print(f"in no region ({len(missing)}): {', '.join(sorted(missing))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
