#!/usr/bin/env bash
# The randomised-appearance Dice regressor (issue 15) on one GPU machine in one sitting: the studies are
# written and rasterised by every core at once, the samples drawn by all cores but one while the GPU trains.
#
# Usage: WORK=/tmp/cqa_gpu INIT=MODEL_DIR bash training/synth_model_gpu.sh
#   CASES (default 160) synth studies, seed 2000: the first 120 are the CPU recipe's (synth_model.sh) studies;
#   EPOCHS (default 30) of STEPS (default 100) batches of BATCH (default 32), Adam from RATE (default 1e-3)
#   dropped tenfold after epochs DROPS (default "20 26"); INIT (optional) a model folder to start from;
#   TRAIN_SECONDS (default 0: no limit) stops training after that long and writes the model from the last
#   whole epoch, so a lease of fixed length always ends with a model. Rerunning resumes.
#   EXTRA (optional) more `train` options, e.g. EXTRA=--boundary-channels or EXTRA="--arch efficientdet3d-seg
#   --boundary-channels" (later options win; see boundary_channels_trial.sh).
# Measured on an H200 with 16 cores: see docs/model.md. The guard and the evaluations need no GPU:
# run `contourqa guard` and `contourqa evaluate` as synth_model.sh does.
set -euo pipefail
WORK=${WORK:-/tmp/cqa_gpu}
CASES=${CASES:-160}
EPOCHS=${EPOCHS:-30}
STEPS=${STEPS:-100}
BATCH=${BATCH:-32}
RATE=${RATE:-1e-3}
DROPS=${DROPS:-20 26}
TRAIN_SECONDS=${TRAIN_SECONDS:-0}
CORES=$(nproc)
mkdir -p "$WORK"

[ -f "$WORK/train/manifest.csv" ] || contourqa phantom "$WORK/train" --style synth --cases "$CASES" --seed 2000 \
    --size 192 192 28 --workers "$CORES"

# shellcheck disable=SC2206
args=(--manifest "$WORK/train/manifest.csv" --out "$WORK/model" --arch efficientdet3d --input-shape 32 64 64
      --steps-per-epoch "$STEPS" --batch-size "$BATCH" --learning-rate "$RATE" --lr-drop-epochs $DROPS
      --candidate-share 0.5 --seed 61 --name contourqa-pelvis-synth --model-version 3
      --workers $((CORES > 1 ? CORES - 1 : 1)) --resume ${INIT:+--init-from "$INIT"} ${EXTRA:-})
if [ "$TRAIN_SECONDS" -gt 0 ]; then
    timeout --signal=INT "$TRAIN_SECONDS" contourqa train "${args[@]}" --epochs "$EPOCHS" \
        || echo "training stopped after ${TRAIN_SECONDS}s; the model is written from the last whole epoch" >&2
    last=$(find "$WORK/model/checkpoints" -name 'fold0-epoch*.pt' | sort | tail -1 | sed 's/.*epoch0*\([0-9]*\)\.pt/\1/')
    contourqa train "${args[@]}" --epochs "${last:-$EPOCHS}"  # no epoch left to run: writes the model folder
else
    contourqa train "${args[@]}" --epochs "$EPOCHS"
fi
