"""The `contourqa` command: argument parsing and wiring only; the work is done in qa_models and training.

Errors a user can cause end as one line on stderr and exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

import SimpleITK as sitk
from pydantic import ValidationError

from contourqa import __version__
from contourqa.qa_models.assessment import AssessConfig, Assessment, assess_files, structure_masks, load_structure
from contourqa.qa_models.errors import ContourQAError, InputError
from contourqa.qa_models.geometry import to_sitk
from contourqa.qa_models.networks import ARCHITECTURES
from contourqa.qa_models.predictor import DicePredictor, default_model_dir
from contourqa.qa_models.series import load_series
from contourqa.qa_models.sr_report import write_sr

from .cli_node import add_node_commands

EXIT_OK, EXIT_INPUT_ERROR, EXIT_INTERRUPTED = 0, 2, 130

log = logging.getLogger("contourqa")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="contourqa", description="Quality checks of automatically generated contours.")
    parser.add_argument("--version", action="version", version=f"contourqa {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and library warnings")
    commands = parser.add_subparsers(dest="command", required=True)

    assess = commands.add_parser("assess", help="screen every ROI of an RTSTRUCT or SEG against its image series")
    assess.add_argument("image_dir", type=Path, help="folder holding the image series the structures were drawn on")
    assess.add_argument("structure_file", type=Path, help="RTSTRUCT or SEG file")
    assess.add_argument("--roi", action="append", default=[], help="assess only this ROI (repeatable)")
    assess.add_argument("--sr", type=Path, help="write the QA report as a DICOM Comprehensive 3D SR here")
    assess.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    model = assess.add_mutually_exclusive_group()
    model.add_argument("--model", type=Path, help="model folder for the Dice prediction (default: the shipped model)")
    model.add_argument("--no-model", action="store_true", help="screens only, no Dice prediction")
    assess.add_argument("--mc-samples", type=int, default=10, help="MC dropout passes for the interval (default 10)")
    assess.set_defaults(run=_run_assess)

    rasterise = commands.add_parser("rasterise", help="write one NIfTI mask per ROI on the image grid")
    rasterise.add_argument("image_dir", type=Path)
    rasterise.add_argument("structure_file", type=Path)
    rasterise.add_argument("--out", type=Path, required=True, help="folder for <roi name>.nii.gz files")
    rasterise.add_argument("--roi", action="append", default=[], help="only this ROI (repeatable)")
    rasterise.set_defaults(run=_run_rasterise)

    phantom = commands.add_parser("phantom", help="generate synthetic pelvis MR studies with reference and candidates")
    phantom.add_argument("out_dir", type=Path)
    phantom.add_argument("--cases", type=int, default=1, help="number of studies (default 1)")
    phantom.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    phantom.add_argument("--size", type=int, nargs=3, metavar=("ROWS", "COLUMNS", "SLICES"), default=(320, 320, 28),
                         help="image matrix (default 320 320 28; synth: the fewest slices, spacings are drawn)")
    phantom.add_argument("--style", choices=("classic", "synth"), default="classic",
                         help="classic: fixed T2-like contrast; synth: a random contrast, texture, resolution and "
                              "noise per study, from label maps (default classic)")
    phantom.set_defaults(run=_run_phantom)

    train = commands.add_parser("train", help="train a Dice regressor on a manifest of images, references and candidates")
    train.add_argument("--manifest", type=Path, required=True, help="CSV: case_id,image,reference,candidate,roi[,...]")
    train.add_argument("--out", type=Path, required=True, help="model folder to write")
    train.add_argument("--arch", choices=ARCHITECTURES, help="network (default efficientdet3d)")
    train.add_argument("--epochs", type=int, help="epochs per fold (default 30)")
    train.add_argument("--steps-per-epoch", type=int, help="batches per epoch (default 100)")
    train.add_argument("--batch-size", type=int, help="samples per batch (default 8)")
    train.add_argument("--folds", type=int, help="k-fold cross-validation by case; the folds form the ensemble (default 1)")
    train.add_argument("--seed", type=int, help="random seed (default 0)")
    train.add_argument("--loss", choices=("mse", "huber"), help="loss (default mse)")
    train.add_argument("--learning-rate", type=float, help="Adam's starting rate (default 0.002)")
    train.add_argument("--candidate-share", type=float, metavar="F",
                       help="share of samples that are the manifest's own candidates (default 0.25)")
    train.add_argument("--lr-drop-epochs", type=int, nargs="+", metavar="EPOCH",
                       help="drop the rate tenfold after each of these epochs (default: after 60%% of the epochs)")
    train.add_argument("--input-shape", type=int, nargs=3, metavar=("SLICES", "ROWS", "COLUMNS"),
                       help="network input shape (default 24 48 48)")
    train.add_argument("--init-from", type=Path, metavar="MODEL_DIR",
                       help="start from this model's weights (fine-tune; same architecture and channels)")
    train.add_argument("--name", help="model name written in the card")
    train.add_argument("--model-version", dest="version", help="model version written in the card")
    train.add_argument("--device", help="auto (CUDA when present), cpu or cuda[:N]")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    train.add_argument("--test-time-flip", action="store_true",
                       help="the model averages each prediction with that of the left-right mirrored input")
    train.add_argument("--entropy-channel", action="store_true",
                       help="a third input channel: the voxel-wise entropy of FRACTIONAL SEG candidates")
    train.add_argument("--quick", action="store_true", help="a tiny configuration that trains in minutes on a CPU")
    train.set_defaults(run=_run_train)

    calibrate = commands.add_parser("calibrate", help="fit a model's calibration on held-out candidates (stored in its card)")
    calibrate.add_argument("--manifest", type=Path, required=True, help="cases the model was not trained on")
    calibrate.add_argument("--model", type=Path, required=True, help="model folder whose card is updated")
    calibrate.set_defaults(run=_run_calibrate)

    guard = commands.add_parser("guard", help="fit a model's domain guard (stored beside its weights)")
    guard.add_argument("--fit", type=Path, required=True, metavar="MANIFEST",
                       help="studies the model was trained on: the class means and covariance")
    guard.add_argument("--threshold", type=Path, required=True, metavar="MANIFEST",
                       help="in-domain studies neither trained nor fitted on: the threshold")
    guard.add_argument("--model", type=Path, required=True, help="model folder whose card is updated")
    guard.add_argument("--quantile", type=float, default=1.0,
                       help="quantile of the held-out distances taken as threshold (default 1: the largest)")
    guard.set_defaults(run=_run_guard)

    combine = commands.add_parser("combine", help="several trained models (e.g. of different input shapes) into one ensemble")
    combine.add_argument("models", type=Path, nargs="+", metavar="MODEL_DIR", help="model folders, the first giving the defaults")
    combine.add_argument("--out", type=Path, required=True, help="ensemble model folder to write")
    combine.add_argument("--name", help="model name written in the card (default: the first member's)")
    combine.add_argument("--model-version", dest="version", help="model version written in the card")
    combine.add_argument("--test-time-flip", action="store_true",
                         help="average each prediction with that of the left-right mirrored input")
    combine.set_defaults(run=_run_combine)

    evaluate = commands.add_parser("evaluate", help="measure a model on a manifest's candidates, beside baselines")
    evaluate.add_argument("--manifest", type=Path, required=True)
    evaluate.add_argument("--model", type=Path, help="model folder (default: the shipped model)")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.add_argument("--html", type=Path, help="write the report as HTML with plots")
    evaluate.add_argument("--baseline-trials", type=int, default=20, help="Optuna trials per fold for CatBoost")
    evaluate.add_argument("--record", action="store_true", help="store the figures in the model's card")
    evaluate.set_defaults(run=_run_evaluate)
    add_node_commands(commands)
    return parser


def _predictor(args: argparse.Namespace) -> DicePredictor | None:
    """The named model, else the shipped default when it is installed, else none."""
    if args.no_model:
        return None
    if args.model is not None:
        return DicePredictor.from_model_folder(args.model)
    default = default_model_dir()
    return DicePredictor.from_model_folder(default) if (default / "model.json").exists() else None


def _run_assess(args: argparse.Namespace) -> int:
    if args.mc_samples < 0:
        raise InputError("--mc-samples must be 0 or more")
    config = AssessConfig(mc_samples=args.mc_samples)
    assessment = assess_files(args.image_dir, args.structure_file, config, args.roi, _predictor(args),
                              strict_model=args.model is not None)
    if args.sr:
        write_sr(assessment, args.sr)
    if args.json:
        print(json.dumps(assessment.as_dict(), indent=2))
    else:
        _print_table(assessment)
    return EXIT_OK


def _print_table(assessment: Assessment) -> None:
    print(f"{'ROI':<24} {'volume ml':>10} {'Dice (5-95 %)':>20}  {'verdict':<8} reasons")
    for roi in assessment.rois:
        reasons = [f"{s.name}: {s.detail}" for s in roi.screens if not s.passed]
        if roi.outside_domain:
            reasons.append(f"image outside the model's training domain (score {roi.domain.score:.1f} > "
                           f"{roi.domain.threshold:.1f})")
        failed = "; ".join(reasons) or "-"
        p = roi.prediction
        dice = f"{p.dice:.3f} ({p.low:.2f}-{p.high:.2f})" if p else "withheld" if roi.outside_domain else "-"
        print(f"{roi.name[:24]:<24} {roi.volume_ml:>10.2f} {dice:>20}  {roi.verdict.value:<8} {failed}")


def _safe_file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._ -]+", "_", name).strip(" .") or "roi"


def _run_rasterise(args: argparse.Namespace) -> int:
    structure = load_structure(args.structure_file)
    series = load_series(args.image_dir)
    masks = structure_masks(structure, series, AssessConfig(), args.roi)
    args.out.mkdir(parents=True, exist_ok=True)
    for roi_mask, _ in masks:
        target = args.out / f"{_safe_file_name(roi_mask.name)}.nii.gz"
        temporary = target.with_name(f".partial-{target.name}")
        sitk.WriteImage(to_sitk(roi_mask.mask.astype("uint8"), series.grid), str(temporary), useCompression=True)
        temporary.replace(target)
        print(f"{target}\t{int(roi_mask.mask.sum())} voxels")
    return EXIT_OK


def _run_phantom(args: argparse.Namespace) -> int:
    from contourqa.training.phantom import PhantomSpec, generate_phantom_studies

    if args.cases < 1:
        raise InputError("--cases must be at least 1")
    rows, columns, slices = args.size
    if min(rows, columns) < 32 or slices < 4:
        raise InputError("--size must be at least 32 32 4")
    manifest = generate_phantom_studies(args.out_dir, args.cases, args.seed, PhantomSpec(rows, columns, slices),
                                        style=args.style)
    print(manifest)
    return EXIT_OK


def _run_train(args: argparse.Namespace) -> int:
    from contourqa.qa_models.crop import InputSpec
    from contourqa.training.train import TrainConfig, train

    overrides = {key: value for key, value in {
        "architecture": args.arch, "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
        "batch_size": args.batch_size, "folds": args.folds, "seed": args.seed, "loss": args.loss,
        "learning_rate": args.learning_rate, "lr_drop_epochs": args.lr_drop_epochs,
        "candidate_share": args.candidate_share, "test_time_flip": args.test_time_flip or None,
        "name": args.name, "version": args.version, "device": args.device}.items() if value is not None}
    try:
        config = TrainConfig.quick(**overrides) if args.quick else TrainConfig(**overrides)
        input_changes = {"shape": args.input_shape} if args.input_shape else {}
        if args.entropy_channel:
            input_changes["channels"] = ("image", "mask", "entropy")
        config.input = InputSpec.model_validate({**config.input.model_dump(), **input_changes})
    except ValidationError as error:
        raise InputError(f"invalid training option: {_first_validation_message(error)}") from None
    card = train(args.manifest, args.out, config, resume=args.resume, init_from=args.init_from)
    summary = card.cross_validation
    print(f"{args.out}: {card.architecture} x{card.ensemble_size}, trained on {card.training_data['cases']} cases"
          + (f"; cross-validated MAE {summary['mae']:.4f}, Spearman {summary['spearman']:.3f}" if summary else ""))
    return EXIT_OK


def _run_combine(args: argparse.Namespace) -> int:
    from contourqa.training.combine import combine_models

    card = combine_models(args.models, args.out, args.name, args.version, args.test_time_flip)
    print(f"{args.out}: {card.architecture} x{card.ensemble_size} (input shapes "
          f"{', '.join('x'.join(map(str, s)) for s in card.input_shapes)}"
          f"{'; test-time flip' if card.test_time_flip else ''})")
    return EXIT_OK


def _run_calibrate(args: argparse.Namespace) -> int:
    from contourqa.training.calibrate import calibrate

    _, summary = calibrate(args.manifest, args.model)
    print(f"{args.model}: calibrated on {summary['candidates']} candidates ({summary['knots']} knots); "
          f"in-sample MAE {summary['mae_raw']:.4f} -> {summary['mae_calibrated']:.4f}")
    return EXIT_OK


def _run_guard(args: argparse.Namespace) -> int:
    from contourqa.training.domain_fit import fit_guard

    if not 0.5 <= args.quantile <= 1:
        raise InputError("--quantile must be between 0.5 and 1")
    s = fit_guard(args.model, args.fit, args.threshold, args.quantile)
    print(f"{args.model}: domain guard on {s['features']} features fitted on {s['fit_candidates']} candidates; "
          f"threshold {s['threshold']:.2f} (the {args.quantile:.1%} quantile of {s['held_cases']} held-out studies); "
          f"median distance fitted {s['fit_median']:.2f}, held-out {s['held_median']:.2f}")
    return EXIT_OK


def _run_evaluate(args: argparse.Namespace) -> int:
    from contourqa.training.evaluate import evaluate, record_in_card, render_html

    model_dir = args.model or default_model_dir()
    report = evaluate(args.manifest, model_dir, baseline_trials=args.baseline_trials)
    if args.record:
        record_in_card(report, model_dir)
    if args.html:
        render_html(report, args.html)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        m = report["realistic"]
        print(f"realistic candidates: n={m['n']} MAE={m['mae']:.4f} max={m['max_error']:.3f} "
              f"Spearman={m['spearman']} global accuracy={m['global_accuracy']:.3%}")
        for name, (low, high) in report["realistic_interval_95"].items():
            print(f"  95% interval by case bootstrap: {name} {low:.4f}-{high:.4f}")
        for roi, r in report["realistic_by_roi"].items():
            print(f"  {roi}: n={r['n']} MAE={r['mae']:.4f} bias={r['bias']:+.4f}")
        if report["domain"]["guard"]:
            d = report["domain"]
            print(f"  domain guard: {d['inside_realistic']:.1%} of realistic candidates inside (given a number)")
        for kind, f in report["failures"].items():
            print(f"{kind}: flagged {f['flagged']}/{f['n']}, MAE {f['mae']:.3f}")
        for name, b in report["baselines"].items():
            print(f"baseline {name}: MAE={b['mae']:.4f} Spearman={b['spearman']}")
    return EXIT_OK


def _first_validation_message(error: ValidationError) -> str:
    first = error.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    if not verbose:
        # highdicom and pydicom warn about inherited header quirks; they are not the user's problem here.
        logging.getLogger("py.warnings").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return args.run(args)
    except ContourQAError as error:
        print(f"contourqa: error: {error}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except OSError as error:  # unreadable input or unwritable output named on the command line
        print(f"contourqa: error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
