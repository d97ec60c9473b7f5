# Sourced by the picker recipes: phantom study sets, each written once (skipped where its manifest exists).
studies() {  # NAME STYLE CASES SEED: 192x192x28
    [ -f "$1/manifest.csv" ] || contourqa phantom "$1" --style "$2" --cases "$3" --seed "$4" --size 192 192 28
}
fse() {  # NAME CASES SEED: at a prostate scan's matrix, 320x320 (about 20 s a study with --workers 2)
    [ -f "$1/manifest.csv" ] || contourqa phantom "$1" --style fse --cases "$2" --seed "$3" --workers 2
}
enter_work() {  # [WORK_DIR]: the folder both picker recipes share (default /tmp/cqa_picker), made and entered
    WORK=${1:-/tmp/cqa_picker}
    mkdir -p "$WORK"
    cd "$WORK"
}
shared_sets() {  # the studies both recipes train, hold out and evaluate on: one definition, as they share WORK
    studies synth_train synth 40 2000
    studies synth_held synth 8 2903
    studies synth_eval synth 8 2901
    studies classic_903 classic 12 903
    studies mrsim_904 mrsim 12 904  # a third style: the classic anatomy through a simulated MR acquisition
    fse fse_905 12 905  # a fourth, unlike all three in anatomy too (about 4 min)
}
