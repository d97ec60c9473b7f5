#!/usr/bin/env bash
# Do the boundary channels (`train --boundary-channels`: the mask's signed distance and the image's edge
# strength) let the network learn a contour's fit from randomised images? Leg 1 of synth_model.sh
# (efficientdet3d, 32x64x64, 8 epochs of 80 batches of 8 on the 40 synth studies of seed 2000) trained
# twice on the same studies and samples, with and without them, then evaluated in-style (synth, seed
# 2901) and cross-style (classic, seed 901, never trained on). A third arm, with the channels, is the
# network that draws the reference and scores the candidate against its drawing (--arch
# efficientdet3d-seg), also on the same samples. A fourth leaves the grey values out (--edge-only: the
# image's edge strength, the mask and its signed distance), so no style's contrast can be learned.
# CPU only; each arm resumes. WORK as in synth_model.sh (default /tmp/cqa_synth); every arm reads one
# rasterised copy of the studies (--cache). The synth generator has changed between the trials in
# docs/model.md (flat organs, wall-only rectums); each figure there names the generator it came from, and a
# run now trains and tests on the current generator's studies.
set -euo pipefail
WORK=${WORK:-/tmp/cqa_synth}
mkdir -p "$WORK"
cd "$WORK"

studies() {  # NAME STYLE CASES SEED
    [ -f "$1/manifest.csv" ] || contourqa phantom "$1" --style "$2" --cases "$3" --seed "$4" --size 192 192 28 --workers 2
}
leg1() {  # OUT ARCH [extra train options]
    local out=$1 arch=$2; shift 2
    if [ ! -f "$out/weights.pt" ]; then
        contourqa train --manifest synth_train/manifest.csv --out "$out" --arch "$arch" --input-shape 32 64 64 \
            --epochs 8 --steps-per-epoch 80 --batch-size 8 --learning-rate 2e-3 --lr-drop-epochs 6 \
            --candidate-share 0.5 --seed 51 --name contourqa-pelvis-synth --model-version 1 --resume \
            --cache train_cache "$@"
    fi
    for eval in synth_eval classic_eval; do
        [ -f "$out-$eval.json" ] || contourqa evaluate --manifest $eval/manifest.csv --model "$out" --baseline-trials 3 \
            --cache eval_cache --json > "$out-$eval.json"
    done
}

studies synth_train synth 40 2000
studies synth_eval synth 8 2901
studies classic_eval classic 12 901
leg1 channels efficientdet3d --boundary-channels
leg1 plain efficientdet3d
leg1 seg efficientdet3d-seg --boundary-channels
leg1 edge efficientdet3d --edge-only
