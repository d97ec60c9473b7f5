#!/usr/bin/env bash
# Rebuilds the shipped default model (qa_models/default_model) from seeded phantom studies.
# Usage: bash training/default_model.sh [WORK_DIR]   (about 22 min on 2 idle CPU cores)
set -euo pipefail
work="${1:-/tmp/contourqa-default-model}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
[ -f "$work/train/manifest.csv" ] || contourqa phantom "$work/train" --cases 20 --seed 100 --size 192 192 28
contourqa -v train --manifest "$work/train/manifest.csv" --out "$work/model" --arch efficientdet3d \
    --epochs 30 --steps-per-epoch 80 --batch-size 8 --seed 0 --name contourqa-pelvis-phantom --model-version 1
mkdir -p "$repo/qa_models/default_model"
cp "$work/model/model.json" "$work/model/weights.pt" "$repo/qa_models/default_model/"
