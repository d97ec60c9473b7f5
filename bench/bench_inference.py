"""Dice-predictor inference for one ROI on the CPU: a network beside its bare forward pass as reference,
and the edge picker beside scikit-image's marching cubes of the same mask (the surface it starts from).

    python bench/bench_inference.py [--model DIR] [--picker DIR] [--repeat 20]

predict() = crop + resample + normalise + forward (ensemble, and the mirrored input when the card asks for
test-time flip); the bare forward pass of the unmirrored input is its floor. The defaults are the two
shipped models: the network v15 and the edge picker (the default model).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pydicom
import torch

from timing import median_seconds

from contourqa.qa_models.assessment import AssessConfig, structure_masks
from contourqa.qa_models.edge_surface import surface_mesh
from contourqa.qa_models.predictor import DicePredictor, default_model_dir, load_predictor, shipped_model_dir
from contourqa.qa_models.series import load_series
from contourqa.training.phantom import PhantomSpec, generate_phantom_studies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=shipped_model_dir("phantom-v15"), help="a network model folder")
    parser.add_argument("--picker", type=Path, default=default_model_dir(), help="an edge picker model folder")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    predictor = DicePredictor.from_model_folder(args.model, device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        generate_phantom_studies(folder, cases=1, seed=4242, spec=PhantomSpec(320, 320, 28))
        study = Path(folder) / "case000"
        series = load_series(study / "image")
        masks = structure_masks(pydicom.dcmread(study / "candidates" / "auto01.dcm"), series, AssessConfig())
        # what a node is sent: the reference and the six auto-contours, from nearly right to far off
        every = [structure_masks(pydicom.dcmread(path), series, AssessConfig())
                 for path in [study / "reference.dcm", *sorted((study / "candidates").glob("auto0?.dcm"))]]
    prostate = next(m for m, _ in masks if m.name == "Prostate").mask
    xs = [x[None].contiguous(memory_format=torch.channels_last_3d)
          for x in predictor.network_input(series.array, prostate, series.grid)]
    with torch.no_grad():
        forward = median_seconds(lambda: [network(x) for network, x in zip(predictor.networks, xs)], args.repeat, warm_up=True)
    rows = [
        ("bare forward pass, every member (reference)", forward),
        ("predict, one ROI, no MC dropout", median_seconds(lambda: predictor.predict(series.array, prostate, series.grid), args.repeat, warm_up=True)),
        ("predict, one ROI, 10 MC dropout passes",
         median_seconds(lambda: predictor.predict(series.array, prostate, series.grid, mc_samples=10), args.repeat, warm_up=True)),
        ("predict_batch, 5 ROIs, no MC dropout",
         median_seconds(lambda: predictor.predict_batch(
             [predictor.network_input(series.array, m.mask, series.grid) for m, _ in masks]), args.repeat, warm_up=True)),
    ]
    card = predictor.card
    print(f"model {card.name} {card.version} ({card.architecture} x{card.ensemble_size}, input {card.input_shapes}"
          f"{', test-time flip' if card.test_time_flip else ''}), {torch.get_num_threads()} CPU threads, 320x320x28 series")
    print(f"{'step':<46} {'median s':>9} {'x forward':>10}")
    for name, seconds in rows:
        print(f"{name:<46} {seconds:>9.4f} {seconds / forward:>10.2f}")
    bench_picker(args.picker, series, masks, every, prostate, args.repeat)
    return 0


def bench_picker(model_dir: Path, series, masks, every, prostate, repeat: int) -> None:
    picker = load_predictor(model_dir)
    spacing = series.grid.spacing[::-1]

    def predict(structure_set) -> None:
        picker.predict_rois(series.array, series.grid, [m.mask for m, _ in structure_set],
                            [m.name for m, _ in structure_set])

    mesh = median_seconds(lambda: surface_mesh(prostate, spacing), repeat, warm_up=True)
    one = median_seconds(lambda: picker.predict_rois(series.array, series.grid, [prostate], ["Prostate"]), repeat, warm_up=True)
    five = median_seconds(lambda: predict(masks), repeat, warm_up=True)
    rois = sum(len(structure_set) for structure_set in every)
    mixed = median_seconds(lambda: [predict(structure_set) for structure_set in every], max(repeat // 5, 1),
                           warm_up=True)
    print(f"\nedge picker {picker.card.name} {picker.card.version}")
    print(f"{'step':<46} {'median s':>9} {'x mesh':>10}")
    for name, seconds in [("marching cubes of the mask (reference)", mesh), ("predict_rois, the prostate", one),
                          ("predict_rois, 5 ROIs, per ROI", five / len(masks)),
                          (f"reference and 6 auto-contours, per ROI ({rois})", mixed / rois)]:
        print(f"{name:<46} {seconds:>9.4f} {seconds / mesh:>10.2f}")


if __name__ == "__main__":
    sys.exit(main())
