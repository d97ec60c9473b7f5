#!/usr/bin/env bash
# The randomised-appearance Dice regressor (issue 15), leg by leg. Every leg resumes (`--resume`) and
# is skipped when its model folder is complete, so the script can be run again after an interruption
# or in the next session. WORK holds the studies, caches and legs (default /tmp/cqa_synth).
#
# Leg 1 (measured on the 2-core CPU: about 10 min of studies, 8 min of rasterising, 2 min per epoch): efficientdet3d at 32x64x64
# from random weights on 40 synth-style studies only, so the classic style stays a style it never saw.
# Then its domain guard, and the evaluations in-style (synth, seed 2901) and cross-style (classic, seed 901).
# Leg 2 (about 30 min of studies, 25 min of rasterising, 2 min per epoch): leg 1 trained on for 20 epochs on
# 120 synth studies (the same 40 first, then 80 more), rate 1e-3 dropped tenfold after epoch 14.
# Later legs (more studies, more epochs, a second view) follow the recipe of training/default_model.sh.
set -euo pipefail
WORK=${WORK:-/tmp/cqa_synth}
mkdir -p "$WORK"
cd "$WORK"

studies() {  # NAME STYLE CASES SEED
    [ -f "$1/manifest.csv" ] || contourqa phantom "$1" --style "$2" --cases "$3" --seed "$4" --size 192 192 28
}

studies synth_train synth 40 2000
if [ ! -f leg1/weights.pt ]; then
    contourqa train --manifest synth_train/manifest.csv --out leg1 --arch efficientdet3d --input-shape 32 64 64 \
        --epochs 8 --steps-per-epoch 80 --batch-size 8 --learning-rate 2e-3 --lr-drop-epochs 6 \
        --candidate-share 0.5 --seed 51 --name contourqa-pelvis-synth --model-version 1 --resume
fi
studies synth_guard synth 12 2903      # held out: the guard's threshold
studies synth_eval synth 8 2901        # held out: in-style evaluation
studies classic_eval classic 12 901    # a style leg 1 never saw: cross-style evaluation
# the studies name PELVIS; the other DICOM terms for the region of the five ROIs, as the shipped card has them
PELVIC_TERMS="--body-part ABDOMENPELVIS --body-part BLADDER --body-part PROSTATE --body-part RECTUM"
[ -f leg1/domain.npz ] || contourqa guard --fit synth_train/manifest.csv --threshold synth_guard/manifest.csv --model leg1 $PELVIC_TERMS
contourqa evaluate --manifest synth_eval/manifest.csv --model leg1 --baseline-trials 3 --json > leg1-in-style.json
contourqa evaluate --manifest classic_eval/manifest.csv --model leg1 --baseline-trials 3 --json > leg1-cross-style.json

studies synth_train120 synth 120 2000
if [ ! -f leg2/weights.pt ]; then
    contourqa train --manifest synth_train120/manifest.csv --out leg2 --arch efficientdet3d --input-shape 32 64 64 \
        --init-from leg1 --epochs 20 --steps-per-epoch 80 --batch-size 8 --learning-rate 1e-3 --lr-drop-epochs 14 \
        --candidate-share 0.5 --seed 52 --name contourqa-pelvis-synth --model-version 2 --resume
fi
[ -f leg2/domain.npz ] || contourqa guard --fit synth_train120/manifest.csv --threshold synth_guard/manifest.csv --model leg2 $PELVIC_TERMS
contourqa evaluate --manifest synth_eval/manifest.csv --model leg2 --baseline-trials 3 --json > leg2-in-style.json
contourqa evaluate --manifest classic_eval/manifest.csv --model leg2 --baseline-trials 3 --json > leg2-cross-style.json
