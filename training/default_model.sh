#!/usr/bin/env bash
# Rebuilds the shipped phantom network v15 (qa_models/phantom_model, `--model phantom-v15`; the default until the edge picker) from seeded phantom studies.
# Usage: bash training/default_model.sh [WORK_DIR]   (about 500 min on 2 idle CPU cores)
# Version 15 is made in sixteen legs and a combination:
# 1. version 2: 70 epochs on a 24x48x48 input, rate 2e-3 dropped tenfold after epoch 24 (about 55 min);
# 2. version 2 fine-tuned on a 32x48x48 input (slices sampled about as finely as the images' own):
#    40 epochs from 2e-4, dropped tenfold after epoch 28, fresh samples (seed 1) (about 30 min);
# 3. version 3 fine-tuned on 40 studies (seed 100 draws the same 20 first, with new UIDs, then 20 more):
#    20 epochs from 2e-4, dropped tenfold after epoch 12, seed 2 (about 25 min with the new studies);
# 4. version 4 fine-tuned on 80 studies (again the same 40 first, then 40 more):
#    30 epochs from 2e-4, dropped tenfold after epoch 18, seed 3 (about 40 min with the new studies);
# 5. version 5 fine-tuned on 160 studies (again the same 80 first, then 80 more):
#    30 epochs from 2e-4, dropped tenfold after epoch 18, seed 4 (about 45 min with the new studies);
# 6. version 6 fine-tuned on 320 studies (again the same 160 first, then 160 more):
#    30 epochs from 2e-4, dropped tenfold after epoch 18, seed 5 (about 50 min with the new studies);
# 7. version 7 trained on for another 30 epochs on the same 320 studies, half the samples now the studies'
#    own candidates (--candidate-share 0.5, default 0.25), the rate again from 2e-4 dropped tenfold after
#    epoch 18, fresh samples (seed 6) (about 30 min, the cached rasterisations reused);
# 8. version 9: version 8 fine-tuned on a finer 32x64x64 input, otherwise as leg 7 (seed 7) (about 25 min);
# 9. version 9 trained on for 24 more epochs, the rate dropped after epoch 14 (seed 9) (about 20 min);
# 10. version 11: leg 9 trained on for 30 more epochs, three quarters of the samples the studies' own
#     candidates (seed 11) (about 25 min);
# 11. version 12: version 11 trained on for 30 more epochs, nine tenths of them candidates (seed 13) (about 25 min);
# 12. version 12 fine-tuned on a still finer 32x80x80 input: 20 epochs, the rate dropped after epoch 12 (seed 17)
#     (about 25 min);
# 13. leg 12 trained on for 14 more epochs from 1e-4, dropped tenfold after epoch 8 (seed 19) (about 15 min);
# (version 14, the previous default, was the mean of version 12 and leg 13 with test-time flip;)
# 14. version 12 trained on for 30 more epochs on 640 studies (the same 320 first, then 320 more), otherwise
#     as leg 11 (seed 23) (about 40 min, rasterising the new studies first);
# 15. leg 13 trained on for 16 more epochs on the 640 studies from 1e-4, dropped tenfold after epoch 10
#     (seed 29) (about 20 min);
# 16. leg 14 trained on for 16 more epochs from 1e-4, dropped tenfold after epoch 10 (seed 31) (about 15 min);
# version 15 is the mean of legs 16 and 15 (`contourqa combine`), each averaged with its
# left-right mirrored input (--test-time-flip): the two views err differently, so their mean errs less
# than either.
# Every epoch draws from its own seed and --resume restores the optimiser, so a leg stopped and
# resumed gives the same weights as an unbroken one (the shipped leg 2 was resumed after epoch 14).
set -euo pipefail
work="${1:-/tmp/contourqa-default-model}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
[ -f "$work/train/manifest.csv" ] || contourqa phantom "$work/train" --cases 20 --seed 100 --size 192 192 28
[ -f "$work/train40/manifest.csv" ] || contourqa phantom "$work/train40" --cases 40 --seed 100 --size 192 192 28
[ -f "$work/train80/manifest.csv" ] || contourqa phantom "$work/train80" --cases 80 --seed 100 --size 192 192 28
[ -f "$work/train160/manifest.csv" ] || contourqa phantom "$work/train160" --cases 160 --seed 100 --size 192 192 28
[ -f "$work/train320/manifest.csv" ] || contourqa phantom "$work/train320" --cases 320 --seed 100 --size 192 192 28
[ -f "$work/train640/manifest.csv" ] || contourqa phantom "$work/train640" --cases 640 --seed 100 --size 192 192 28
common=(--arch efficientdet3d --steps-per-epoch 80 --batch-size 8
        --name contourqa-pelvis-phantom)
reuse_cache() {  # reuse_cache SOURCE LEG...: legs on SOURCE's studies share its rasterisations (hard links)
    local source="$1" leg; shift
    for leg in "$@"; do
        mkdir -p "$work/$leg" && { [ -d "$work/$leg/cache" ] || cp -al "$work/$source/cache" "$work/$leg/cache"; }
    done
}
contourqa -v train "${common[@]}" --manifest "$work/train/manifest.csv" --out "$work/v2" --seed 0 --model-version 2 --epochs 70 --lr-drop-epochs 24
contourqa -v train "${common[@]}" --manifest "$work/train/manifest.csv" --out "$work/v3" --seed 1 --model-version 3 \
    --init-from "$work/v2" --input-shape 32 48 48 --learning-rate 2e-4 --epochs 40 --lr-drop-epochs 28
contourqa -v train "${common[@]}" --manifest "$work/train40/manifest.csv" --out "$work/v4" --seed 2 --model-version 4 \
    --init-from "$work/v3" --input-shape 32 48 48 --learning-rate 2e-4 --epochs 20 --lr-drop-epochs 12
contourqa -v train "${common[@]}" --manifest "$work/train80/manifest.csv" --out "$work/v5" --seed 3 --model-version 5 \
    --init-from "$work/v4" --input-shape 32 48 48 --learning-rate 2e-4 --epochs 30 --lr-drop-epochs 18
contourqa -v train "${common[@]}" --manifest "$work/train160/manifest.csv" --out "$work/v6" --seed 4 --model-version 6 \
    --init-from "$work/v5" --input-shape 32 48 48 --learning-rate 2e-4 --epochs 30 --lr-drop-epochs 18
contourqa -v train "${common[@]}" --manifest "$work/train320/manifest.csv" --out "$work/v7" --seed 5 --model-version 7 \
    --init-from "$work/v6" --input-shape 32 48 48 --learning-rate 2e-4 --epochs 30 --lr-drop-epochs 18
reuse_cache v7 v8 v9 v10-64 v11 v12 v13-80 v14-80
contourqa -v train "${common[@]}" --manifest "$work/train320/manifest.csv" --out "$work/v8" --seed 6 --model-version 8 \
    --init-from "$work/v7" --input-shape 32 48 48 --learning-rate 2e-4 --epochs 30 --lr-drop-epochs 18 --candidate-share 0.5
contourqa -v train "${common[@]}" --manifest "$work/train320/manifest.csv" --out "$work/v9" --seed 7 --model-version 9 \
    --init-from "$work/v8" --input-shape 32 64 64 --learning-rate 2e-4 --epochs 30 --lr-drop-epochs 18 --candidate-share 0.5
contourqa -v train "${common[@]}" --manifest "$work/train320/manifest.csv" --out "$work/v10-64" --seed 9 --model-version 10 \
    --init-from "$work/v9" --input-shape 32 64 64 --learning-rate 2e-4 --epochs 24 --lr-drop-epochs 14 --candidate-share 0.5
contourqa -v train "${common[@]}" --manifest "$work/train320/manifest.csv" --out "$work/v11" --seed 11 --model-version 11 \
    --init-from "$work/v10-64" --input-shape 32 64 64 --learning-rate 2e-4 --epochs 30 --lr-drop-epochs 18 --candidate-share 0.75
contourqa -v train "${common[@]}" --manifest "$work/train320/manifest.csv" --out "$work/v12" --seed 13 --model-version 12 \
    --init-from "$work/v11" --input-shape 32 64 64 --learning-rate 2e-4 --epochs 30 --lr-drop-epochs 18 --candidate-share 0.9
contourqa -v train "${common[@]}" --manifest "$work/train320/manifest.csv" --out "$work/v13-80" --seed 17 --model-version 13 \
    --init-from "$work/v12" --input-shape 32 80 80 --learning-rate 2e-4 --epochs 20 --lr-drop-epochs 12 --candidate-share 0.9
contourqa -v train "${common[@]}" --manifest "$work/train320/manifest.csv" --out "$work/v14-80" --seed 19 --model-version 14 \
    --init-from "$work/v13-80" --input-shape 32 80 80 --learning-rate 1e-4 --epochs 14 --lr-drop-epochs 8 --candidate-share 0.9
contourqa -v train "${common[@]}" --manifest "$work/train640/manifest.csv" --out "$work/v15-64a" --seed 23 --model-version 15 \
    --init-from "$work/v12" --input-shape 32 64 64 --learning-rate 2e-4 --epochs 30 --lr-drop-epochs 18 --candidate-share 0.9
reuse_cache v15-64a v15-80 v15-64
contourqa -v train "${common[@]}" --manifest "$work/train640/manifest.csv" --out "$work/v15-80" --seed 29 --model-version 15 \
    --init-from "$work/v14-80" --input-shape 32 80 80 --learning-rate 1e-4 --epochs 16 --lr-drop-epochs 10 --candidate-share 0.9
contourqa -v train "${common[@]}" --manifest "$work/train640/manifest.csv" --out "$work/v15-64" --seed 31 --model-version 15 \
    --init-from "$work/v15-64a" --input-shape 32 64 64 --learning-rate 1e-4 --epochs 16 --lr-drop-epochs 10 --candidate-share 0.9
contourqa combine "$work/v15-64" "$work/v15-80" --out "$work/model" --model-version 15 --test-time-flip
# Evaluated on 12 phantom studies it never saw (seed 901, 480 realistic candidates), figures recorded in the card:
[ -f "$work/eval/manifest.csv" ] || contourqa phantom "$work/eval" --cases 12 --seed 901 --size 192 192 28
contourqa evaluate --manifest "$work/eval/manifest.csv" --model "$work/model" --record --html "$work/evaluation.html"
mkdir -p "$repo/qa_models/phantom_model"
cp "$work/model/model.json" "$work/model/weights.pt" "$repo/qa_models/phantom_model/"
