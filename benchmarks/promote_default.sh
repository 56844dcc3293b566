#!/usr/bin/env bash
# Make a checkpoint that won the gate (compare_validation.py) the embedded default, in the order the model card
# gives: float16 weights, the region table, thresholds calibrated on its run's validation split (F1, noise-safe),
# the ONNX graphs, the golden snapshots. The test-split figures (evaluate_default.py --birdnet) and the model card
# come after, by hand.
#
#   bash benchmarks/promote_default.sh CANDIDATE_STEM RUN_FOLDER
#
# e.g. bash benchmarks/promote_default.sh model/weights/default_v3t_run/step10500 model/weights/default_v3t_run
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: bash benchmarks/promote_default.sh CANDIDATE_STEM RUN_FOLDER" >&2; exit 2; }
candidate=$1 run=$2
data=../shared/data
py=.venv/bin/python
birdlive=.venv/bin/birdlive
default=model/weights/default

$py - "$candidate" "$default" <<'EOF'
import sys

import torch

from birdlive.model import load_checkpoint, save_checkpoint

save_checkpoint(load_checkpoint(sys.argv[1]), sys.argv[2], dtype=torch.float16)
print(f"{sys.argv[1]} -> {sys.argv[2]} (float16)")
EOF
$py -m birdlive.train.regions --model "$default" "$data/xc-puerto-rico=puerto-rico" \
    "$data/essential-set=north-america" "$data/ovenbird-alberta=north-america"
$birdlive calibrate "$data/xc-puerto-rico" "$data/ovenbird-alberta" --snippets "$data/essential-set" \
    --model "$default" --split "$run/split.json" --noise-dir "$data/noise" \
    --holdout model/weights/default_holdout.json --in-place --beta 1
$birdlive export --model "$default"
BIRDLIVE_UPDATE_GOLDEN=1 $py -m pytest -q tests/golden
