# Sourced by the picker recipes: phantom study sets, each written once (skipped where its manifest exists).
studies() {  # NAME STYLE CASES SEED: 192x192x28
    [ -f "$1/manifest.csv" ] || contourqa phantom "$1" --style "$2" --cases "$3" --seed "$4" --size 192 192 28
}
fse() {  # NAME CASES SEED: at a prostate scan's matrix, 320x320 (about 20 s a study with --workers 2)
    [ -f "$1/manifest.csv" ] || contourqa phantom "$1" --style fse --cases "$2" --seed "$3" --workers 2
}
