#!/usr/bin/env bash
# Rebuilds the shipped default model (qa_models/default_model) from seeded phantom studies.
# Usage: bash training/default_model.sh [WORK_DIR]   (about 55 min on 2 idle CPU cores)
# Version 2: 70 epochs, rate 2e-3 dropped tenfold after epoch 24 (first trained as 40 epochs, then
# resumed to 70 at the dropped rate: the same schedule, samples and weights, as every epoch draws from
# its own seed and --resume restores the optimiser).
set -euo pipefail
work="${1:-/tmp/contourqa-default-model}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
[ -f "$work/train/manifest.csv" ] || contourqa phantom "$work/train" --cases 20 --seed 100 --size 192 192 28
common=(--manifest "$work/train/manifest.csv" --out "$work/model" --arch efficientdet3d --steps-per-epoch 80
        --batch-size 8 --seed 0 --name contourqa-pelvis-phantom --model-version 2)
contourqa -v train "${common[@]}" --epochs 70 --lr-drop-epochs 24
# Evaluated on phantom studies it never saw (seed 900), figures recorded in the card:
[ -f "$work/eval/manifest.csv" ] || contourqa phantom "$work/eval" --cases 4 --seed 900 --size 192 192 28
contourqa evaluate --manifest "$work/eval/manifest.csv" --model "$work/model" --record
mkdir -p "$repo/qa_models/default_model"
cp "$work/model/model.json" "$work/model/weights.pt" "$repo/qa_models/default_model/"
