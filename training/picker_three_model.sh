#!/usr/bin/env bash
# Rebuilds the edge picker trained on three phantom styles (qa_models/picker_three_model, `--model
# edge-picker-three-styles`) and measures it, with the same recipe trained with each style left out in turn
# and on fse alone (docs/model.md, "Version 4" and "Each style left out").
# Usage: bash training/picker_three_model.sh [WORK_DIR]   (default /tmp/cqa_picker, shared with
# training/picker_model.sh, whose studies it reuses)
#
# Measured on the 2-core CPU (2026-12-07): the 48 fse studies 29 min; the picker 46 min wall, 59 min of
# CPU (2.0 million vertices, eight pickers of 10 epochs, the feature guard over 120 studies); each
# evaluation 6-8 min (2-3 min on an idle CPU with the studies cached); each two-style picker 29-37 min
# wall, the fse-only one 17 min. Studies and pickers are skipped where they exist, so the script resumes.
# The shipped folder was trained from one manifest holding the three manifests' rows in this order (case
# IDs prefixed); three --manifest flags read the same rows in the same order.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/phantom_sets.sh"
enter_work "${1:-}"

shared_sets
studies classic_train classic 40 2100
studies classic_held classic 8 2103
fse fse_train 40 2200
fse fse_held 8 2203

picker() {  # OUT NAME, then --manifest/--held flags: the shipped picker's recipe flags
    local out=$1 name=$2
    shift 2
    [ -f "$out/model.json" ] || contourqa picker "$@" --cache cache --out "$out" --name "$name" \
        --model-version 4 --seed 0 --members 4 --proportional --unscaled Rectum \
        --body-part ABDOMENPELVIS --body-part BLADDER --body-part PROSTATE --body-part RECTUM
}
# each style's held-out studies a set of their own: every limit is the largest of the sets' 99 % quantiles
picker picker_three contourqa-pelvis-picker-three-styles \
    --manifest synth_train/manifest.csv --manifest classic_train/manifest.csv --manifest fse_train/manifest.csv \
    --held synth_held/manifest.csv --held classic_held/manifest.csv --held fse_held/manifest.csv
picker picker_no_fse contourqa-pelvis-picker-without-fse \
    --manifest synth_train/manifest.csv --manifest classic_train/manifest.csv \
    --held synth_held/manifest.csv --held classic_held/manifest.csv
picker picker_no_classic contourqa-pelvis-picker-without-classic \
    --manifest synth_train/manifest.csv --manifest fse_train/manifest.csv \
    --held synth_held/manifest.csv --held fse_held/manifest.csv
picker picker_no_synth contourqa-pelvis-picker-without-synth \
    --manifest classic_train/manifest.csv --manifest fse_train/manifest.csv \
    --held classic_held/manifest.csv --held fse_held/manifest.csv
picker picker_fse_only contourqa-pelvis-picker-fse-only --manifest fse_train/manifest.csv --held fse_held/manifest.csv

evaluate() {  # MODEL SET [FLAG...]: MODEL-SET.json
    local model=$1 set=$2
    shift 2
    contourqa evaluate --manifest "$set/manifest.csv" --model "$model" --cache cache --baseline-trials 1 --json "$@" \
        > "$model-$set.json"
}
for set in synth_eval classic_903 fse_905; do evaluate picker_three $set; done
evaluate picker_three mrsim_904 --record
evaluate picker_no_fse fse_905
evaluate picker_no_classic classic_903
evaluate picker_no_synth synth_eval
for model in picker_no_fse picker_no_classic picker_no_synth; do evaluate $model mrsim_904; done
for set in synth_eval classic_903 mrsim_904 fse_905; do evaluate picker_fse_only $set; done
echo "$WORK/picker_three: copy model.json, weights.pt and domain.npz to qa_models/picker_three_model to ship it"
