"""The engine's commands: `assess` and `rasterise` one structure set against its image series."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    from .assessment import Assessment
    from .predictor import CardPredictor

EXIT_OK = 0


def add_assess_commands(commands: argparse._SubParsersAction) -> None:
    assess = commands.add_parser("assess", help="screen every ROI of an RTSTRUCT or SEG against its image series")
    assess.add_argument("image_dir", type=Path, help="folder holding the image series the structures were drawn on")
    assess.add_argument("structure_file", type=Path, help="RTSTRUCT or SEG file")
    assess.add_argument("--roi", action="append", default=[], help="assess only this ROI (repeatable)")
    assess.add_argument("--sr", type=Path, help="write the QA report as a DICOM Comprehensive 3D SR here")
    assess.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    model = assess.add_mutually_exclusive_group()
    model.add_argument("--model", type=Path, help="model folder for the Dice prediction, or a shipped model's name: "
                                                  "edge-picker (the default), edge-picker-three-styles, phantom-v15")
    model.add_argument("--no-model", action="store_true", help="screens only, no Dice prediction")
    assess.add_argument("--mc-samples", type=int, default=10, help="MC dropout passes for the interval (default 10)")
    assess.add_argument("--body-part", action="append", default=[], dest="extra_body_parts", metavar="TERM",
                        help="a Body Part Examined term of this site for the anatomy the model knows, accepted beside "
                             "its card's (repeatable; e.g. BECKEN)")
    assess.set_defaults(run=_run_assess)

    rasterise = commands.add_parser("rasterise", help="write one NIfTI mask per ROI on the image grid")
    rasterise.add_argument("image_dir", type=Path)
    rasterise.add_argument("structure_file", type=Path)
    rasterise.add_argument("--out", type=Path, required=True, help="folder for <roi name>.nii.gz files")
    rasterise.add_argument("--roi", action="append", default=[], help="only this ROI (repeatable)")
    rasterise.set_defaults(run=_run_rasterise)


def _predictor(args: argparse.Namespace) -> "CardPredictor | None":
    """The named model, else the shipped default when it is installed, else none."""
    from .predictor import default_model_dir, load_predictor

    if args.no_model:
        return None
    if args.model is not None:
        return load_predictor(args.model)
    default = default_model_dir()
    return load_predictor(default) if (default / "model.json").exists() else None


def _run_assess(args: argparse.Namespace) -> int:
    from .assessment import AssessConfig, assess, load_inputs
    from .sr_report import write_sr

    if args.mc_samples < 0:
        raise InputError("--mc-samples must be 0 or more")
    if args.sr is not None:
        _check_writable(args.sr)
    config = AssessConfig(mc_samples=args.mc_samples, extra_body_parts=args.extra_body_parts)
    # the inputs before the model: a bad file is refused without waiting for torch and the weights to load
    series, structure = load_inputs(args.image_dir, args.structure_file)
    assessment = assess(series, structure, config, args.roi, _predictor(args), strict_model=args.model is not None)
    if args.sr:
        write_sr(assessment, args.sr)
    if args.json:
        print(json.dumps(assessment.as_dict(), indent=2))
    else:
        _print_table(assessment)
    return EXIT_OK


def _print_table(assessment: "Assessment") -> None:
    """One row per ROI; each further reason for its verdict on a line of its own below it."""
    print(f"{'ROI':<24} {'volume ml':>10} {'Dice (5-95 %)':>20}  {'verdict':<8} reasons")
    for roi in assessment.rois:
        p = roi.prediction
        withheld = roi.outside_domain or roi.unreadable is not None
        dice = f"{p.dice:.3f} ({p.low:.2f}-{p.high:.2f})" if p else "withheld" if withheld else "-"
        reasons = [r.detail for r in roi.reasons] or ["-"]
        print(f"{roi.name[:24]:<24} {roi.volume_ml:>10.2f} {dice:>20}  {roi.verdict.value:<8} {reasons[0]}")
        for reason in reasons[1:]:
            print(f"{'':<66} {reason}")


def _check_writable(path: Path) -> None:
    """Refuse an output that cannot be written before the work, not after it."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError(f"{path}: a folder; --sr takes a file name")
    if not folder.is_dir():
        raise InputError(f"{path}: its folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"{path}: not writable")


def _safe_file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._ -]+", "_", name).strip(" .") or "roi"


def _run_rasterise(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from .assessment import AssessConfig, load_structure, structure_masks
    from .atomic import atomic_path
    from .geometry import to_sitk
    from .series import load_series

    structure = load_structure(args.structure_file)
    series = load_series(args.image_dir)
    masks = structure_masks(structure, series, AssessConfig(), args.roi)
    args.out.mkdir(parents=True, exist_ok=True)
    for roi_mask, _ in masks:
        target = args.out / f"{_safe_file_name(roi_mask.name)}.nii.gz"
        with atomic_path(target) as temporary:
            sitk.WriteImage(to_sitk(roi_mask.mask.astype("uint8"), series.grid), str(temporary), useCompression=True)
        print(f"{target}\t{int(roi_mask.mask.sum())} voxels")
    return EXIT_OK
