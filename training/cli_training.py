"""Training's commands: `phantom`, `candidates`, `train`, `calibrate`, `guard`, `combine`, `picker` and `evaluate`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from contourqa.qa_models.errors import InputError

if TYPE_CHECKING:
    from pydantic import ValidationError

EXIT_OK = 0


def add_training_commands(commands: argparse._SubParsersAction) -> None:
    phantom = commands.add_parser("phantom", help="generate synthetic pelvis MR studies with reference and candidates")
    phantom.add_argument("out_dir", type=Path)
    phantom.add_argument("--cases", type=int, default=1, help="number of studies (default 1)")
    phantom.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    phantom.add_argument("--size", type=int, nargs=3, metavar=("ROWS", "COLUMNS", "SLICES"), default=(320, 320, 28),
                         help="image matrix (default 320 320 28; synth: the fewest slices, spacings are drawn)")
    phantom.add_argument("--style", choices=("classic", "synth", "mrsim", "fse"), default="classic",
                         help="classic: fixed T2-like contrast; synth: a random contrast, texture, resolution and "
                              "noise per study, from label maps; mrsim: the classic anatomy through a simulated MR "
                              "acquisition (relaxation times, receive coils, cut k-space, ghosts); fse: an anatomy of its own "
                              "as a turbo spin echo, the reference drawn as polygons (default classic)")
    phantom.add_argument("--workers", type=int, default=1, metavar="N",
                         help="processes writing studies at once (default 1); the studies are the same")
    phantom.set_defaults(run=_run_phantom)

    candidates = commands.add_parser(
        "candidates", help="write realistic auto-contour errors of a site's own reference contours, with a manifest "
                           "for evaluate")
    candidates.add_argument("image_dir", type=Path, help="folder of the image series")
    candidates.add_argument("reference", type=Path, help="the expert's RTSTRUCT or SEG on that series")
    candidates.add_argument("--out", type=Path, required=True,
                            help="folder gathering the cases and their manifest.csv (a case's rows replace its own)")
    candidates.add_argument("--roi", action="append", metavar="NAME", help="only this ROI (repeatable; default all)")
    candidates.add_argument("--count", type=int, default=6,
                            help="candidate structure sets, each with one realistic error per ROI (default 6)")
    candidates.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    candidates.add_argument("--case-id", help="the case's name in the manifest and its folder under --out "
                                              "(default: the reference's SOP Instance UID)")
    candidates.set_defaults(run=_run_candidates)

    train = commands.add_parser("train", help="train a Dice regressor on a manifest of images, references and candidates")
    train.add_argument("--manifest", type=Path, required=True, help="CSV: case_id,image,reference,candidate,roi[,...]")
    train.add_argument("--out", type=Path, required=True, help="model folder to write")
    train.add_argument("--arch", help=("network: efficientdet3d (default), efficientdet3d-seg (draws the reference "
                                       "in the crop and scores the candidate against it) or regnet3d"))
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
    train.add_argument("--workers", type=int, metavar="N",
                       help="processes that draw training samples beside the network (default 0: the main process)")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    train.add_argument("--test-time-flip", action="store_true",
                       help="the model averages each prediction with that of the left-right mirrored input")
    extra_channels = train.add_mutually_exclusive_group()
    extra_channels.add_argument("--entropy-channel", action="store_true",
                                help="a third input channel: the voxel-wise entropy of FRACTIONAL SEG candidates")
    extra_channels.add_argument("--boundary-channels", action="store_true",
                                help="two more input channels: the mask's signed distance and the image's edge strength")
    extra_channels.add_argument("--edge-only", action="store_true",
                                help="as --boundary-channels, but without the image's grey values: the network "
                                     "sees the image's edge strength, the mask and its signed distance")
    train.add_argument("--quick", action="store_true", help="a tiny configuration that trains in minutes on a CPU")
    _add_cache_option(train, ", shared by every model trained on them (default: OUT/cache)")
    train.set_defaults(run=_run_train)

    calibrate = commands.add_parser("calibrate", help="fit a model's calibration on held-out candidates (stored in its card)")
    calibrate.add_argument("--manifest", type=Path, required=True, help="cases the model was not trained on")
    calibrate.add_argument("--model", type=Path, required=True, help="model folder whose card is updated")
    _add_cache_option(calibrate)
    calibrate.set_defaults(run=_run_calibrate)

    guard = commands.add_parser("guard", help="fit a model's domain guard (stored beside its weights); for an edge "
                                              "picker trained before it had one, its feature guard")
    guard.add_argument("--fit", type=Path, required=True, action="append", metavar="MANIFEST",
                       help="studies the model was trained on: the class means and covariance (repeatable)")
    guard.add_argument("--threshold", type=Path, required=True, action="append", metavar="MANIFEST",
                       help="in-domain studies neither trained nor fitted on: the threshold (repeatable: one per "
                            "style or site, the threshold the largest of their own quantiles)")
    guard.add_argument("--model", type=Path, required=True, help="model folder whose card is updated")
    guard.add_argument("--quantile", type=float, default=0.99,
                       help="quantile of the held-out distances taken as threshold (default 0.99; 1: the largest)")
    guard.add_argument("--body-part", action="append", default=[], dest="extra_body_parts", metavar="TERM",
                       help="another Body Part Examined term for the anatomy of the fitted images (repeatable); the "
                            "card records these with the fitted images' own, and images naming others are outside")
    _add_cache_option(guard)
    guard.set_defaults(run=_run_guard)

    combine = commands.add_parser("combine", help="several trained models (e.g. of different input shapes) into one ensemble")
    combine.add_argument("models", type=Path, nargs="+", metavar="MODEL_DIR", help="model folders, the first giving the defaults")
    combine.add_argument("--out", type=Path, required=True, help="ensemble model folder to write")
    combine.add_argument("--name", help="model name written in the card (default: the first member's)")
    combine.add_argument("--model-version", dest="version", help="model version written in the card")
    combine.add_argument("--test-time-flip", action="store_true",
                         help="average each prediction with that of the left-right mirrored input")
    combine.set_defaults(run=_run_combine)

    picker = commands.add_parser("picker", help="train an edge picker (which edge along each normal is the organ's) "
                                               "as a model folder for assess, serve and evaluate")
    picker.add_argument("--manifest", type=Path, required=True, action="append",
                        help="training manifest (its references give the targets); repeat it to train on several")
    picker.add_argument("--held", type=Path, required=True, action="append", metavar="HELD.csv",
                        help="held-out studies (never trained on) that set the spread beyond which the picker "
                             "withholds its number (its 99 %% quantile over their candidates) and its interval; "
                             "give it once per style the picker is trained on: each limit is then the largest "
                             "of the styles' own, so every style's studies stay inside")
    picker.add_argument("--out", type=Path, required=True, help="model folder to write")
    picker.add_argument("--epochs", type=int, default=10, help="passes over the training vertices (default 10)")
    picker.add_argument("--vertices", type=int, default=400, help="vertices drawn per candidate (default 400)")
    picker.add_argument("--seed", type=int, default=0, help="seed of the vertices drawn and of the first member")
    picker.add_argument("--members", type=int, default=1,
                        help="pickers trained from seeds SEED, SEED+1, ... whose distributions are averaged (default 1)")
    picker.add_argument("--proportional", action="store_true",
                        help="also train on each reference scaled up and down about its centre: contours too large or "
                             "too small in proportion, which the synth error model does not draw")
    picker.add_argument("--unscaled", action="append", default=[], metavar="ROI",
                        help="with --proportional: this ROI (a walled organ, such as a rectum) reads with pickers of "
                             "its own, trained without the scaled references, and gets its own spread limit")
    picker.add_argument("--name", default="contourqa-edge-picker", help="model name written in the card")
    picker.add_argument("--model-version", dest="version", default="1", help="model version written in the card")
    picker.add_argument("--body-part", action="append", default=[], dest="extra_body_parts", metavar="TERM",
                        help="another Body Part Examined term for the trained anatomy (repeatable)")
    _add_cache_option(picker)
    picker.set_defaults(run=_run_picker)

    evaluate = commands.add_parser("evaluate", help="measure a model on a manifest's candidates, beside baselines")
    evaluate.add_argument("--manifest", type=Path, required=True)
    evaluate.add_argument("--model", type=Path, help="model folder, or a shipped model's name (default: edge-picker)")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.add_argument("--html", type=Path, help="write the report as HTML with plots")
    evaluate.add_argument("--baseline-trials", type=int, default=20, help="Optuna trials per fold for CatBoost")
    evaluate.add_argument("--record", action="store_true", help="store the figures in the model's card")
    evaluate.add_argument("--picker", type=Path, metavar="DIR",
                          help="also report this edge picker model (`contourqa picker`) as a baseline")
    _add_cache_option(evaluate)
    evaluate.set_defaults(run=_run_evaluate)


def _run_phantom(args: argparse.Namespace) -> int:
    from contourqa.training.phantom import PhantomSpec, generate_phantom_studies

    if args.cases < 1:
        raise InputError("--cases must be at least 1")
    rows, columns, slices = args.size
    if min(rows, columns) < 32 or slices < 4:
        raise InputError("--size must be at least 32 32 4")
    if args.workers < 1:
        raise InputError("--workers must be at least 1")
    manifest = generate_phantom_studies(args.out_dir, args.cases, args.seed, PhantomSpec(rows, columns, slices),
                                        style=args.style, workers=args.workers)
    print(manifest)
    return EXIT_OK


def _run_candidates(args: argparse.Namespace) -> int:
    from contourqa.training.site_candidates import write_site_candidates

    print(write_site_candidates(args.image_dir, args.reference, args.out, args.roi, args.count, args.seed, args.case_id))
    return EXIT_OK


def _add_cache_option(command: argparse.ArgumentParser, detail: str = " (default: rasterise again)") -> None:
    command.add_argument("--cache", type=Path, metavar="DIR",
                         help=f"keep the rasterised studies here and reuse them{detail}")


def _run_train(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from contourqa.qa_models.crop import BOUNDARY_LAYOUT, EDGE_LAYOUT, ENTROPY_LAYOUT, InputSpec
    from contourqa.training.train import TrainConfig, train

    overrides = {key: value for key, value in {
        "architecture": args.arch, "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
        "batch_size": args.batch_size, "folds": args.folds, "seed": args.seed, "loss": args.loss,
        "learning_rate": args.learning_rate, "lr_drop_epochs": args.lr_drop_epochs,
        "candidate_share": args.candidate_share, "test_time_flip": args.test_time_flip or None,
        "name": args.name, "version": args.version, "device": args.device, "workers": args.workers}.items() if value is not None}
    try:
        config = TrainConfig.quick(**overrides) if args.quick else TrainConfig(**overrides)
        input_changes = {"shape": args.input_shape} if args.input_shape else {}
        if args.entropy_channel:
            input_changes["channels"] = ENTROPY_LAYOUT
        if args.boundary_channels:
            input_changes["channels"] = BOUNDARY_LAYOUT
        if args.edge_only:
            input_changes["channels"] = EDGE_LAYOUT
        config.input = InputSpec.model_validate({**config.input.model_dump(), **input_changes})
    except ValidationError as error:
        raise InputError(f"invalid training option: {_first_validation_message(error)}") from None
    card = train(args.manifest, args.out, config, resume=args.resume, cache_dir=args.cache,
                 init_from=args.init_from)
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

    _, summary = calibrate(args.manifest, args.model, args.cache)
    print(f"{args.model}: calibrated on {summary['candidates']} candidates ({summary['knots']} knots); "
          f"in-sample MAE {summary['mae_raw']:.4f} -> {summary['mae_calibrated']:.4f}")
    return EXIT_OK


def _run_guard(args: argparse.Namespace) -> int:
    from contourqa.training.domain_fit import fit_guard

    if not 0.5 <= args.quantile <= 1:
        raise InputError("--quantile must be between 0.5 and 1")
    s = fit_guard(args.model, args.fit, args.threshold, args.quantile, cache_dir=args.cache,
                  extra_body_parts=args.extra_body_parts)
    body_parts = ", ".join(s["body_parts"]) or "none named by the fitted images: not checked"
    print(f"{args.model}: domain guard on {s['features']} features fitted on {s['fit_candidates']} candidates; "
          f"threshold {s['threshold']:.2f} (the {args.quantile:.1%} quantile of {s['held_cases']} held-out studies"
          f"{f', the largest of {len(args.threshold)} sets' if len(args.threshold) > 1 else ''}); "
          f"median distance fitted {s['fit_median']:.2f}, held-out {s['held_median']:.2f}; body parts {body_parts}")
    return EXIT_OK


def _run_picker(args: argparse.Namespace) -> int:
    from contourqa.training.cache import load_apart
    from contourqa.training.edge_picker import train_picker_set, training_vertices, write_picker_model

    if min(args.epochs, args.vertices, args.members) < 1:
        raise InputError("--epochs, --vertices and --members must be at least 1")
    if args.unscaled and not args.proportional:
        raise InputError("--unscaled only applies with --proportional (pickers trained without the scaled references)")
    # every manifest is read, refused and loaded before training
    trained_on, held_out = load_apart(args.manifest, args.held, args.cache, "the held-out studies must not be trained on")
    vertices = training_vertices([case for _, cases in trained_on for case in cases], args.vertices, args.seed,
                                 args.proportional)
    picker = train_picker_set(vertices, args.members, args.epochs, args.seed, args.unscaled)
    card = write_picker_model(args.out, picker, trained_on, held_out, len(vertices.offsets), args.seed,
                              args.name, args.version, args.extra_body_parts)
    print(f"{args.out}: edge picker trained on {len(vertices.offsets)} vertices of "
          f"{', '.join(map(str, args.manifest))} ({args.members} "
          f"member{'s' * (args.members > 1)}); withholds beyond a spread of {card.domain.threshold} mm"
          f"{''.join(f', {roi} {limit} mm' for roi, limit in card.spread_limit_by_roi.items())}"
          f"{f', or a feature distance of {card.feature_guard.threshold}' if card.feature_guard else ''}"
          f"; interval +-{card.interval_half_width}"
          f"{''.join(f', {roi} +-{w}' for roi, w in card.interval_half_width_by_roi.items())}; {', '.join(card.modalities)}, "
          f"ROIs {', '.join(card.roi_names)}, body parts {', '.join(card.domain.body_parts) or 'not checked'}")
    return EXIT_OK


def _run_evaluate(args: argparse.Namespace) -> int:
    from contourqa.qa_models.predictor import default_model_dir
    from contourqa.training.evaluate import evaluate, record_in_card, render_html

    model_dir = args.model or default_model_dir()
    report = evaluate(args.manifest, model_dir, baseline_trials=args.baseline_trials, cache_dir=args.cache,
                      picker_dir=args.picker)
    if args.record:
        record_in_card(report, model_dir)
    if args.html:
        render_html(report, args.html)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        m = report["realistic"]
        print(f"realistic candidates: n={m['n']} MAE={m['mae']:.4f} max={m['max_error']:.3f} "
              f"Spearman={_rounded(m['spearman'])} global accuracy={m['global_accuracy']:.1%}")
        for name, (low, high) in report["realistic_interval_95"].items():
            interval = f"{low:.1%}-{high:.1%}" if name == "global_accuracy" else f"{low:.4f}-{high:.4f}"
            print(f"  95% interval by case bootstrap: {name} {interval}")
        given = report["realistic_given"]
        if given:
            print(f"  given a number: n={given['n']} MAE={given['mae']:.4f} Spearman={_rounded(given['spearman'])} "
                  f"global accuracy={given['global_accuracy']:.1%}")
        for roi, r in report["realistic_by_roi"].items():
            print(f"  {roi}: n={r['n']} MAE={r['mae']:.4f} bias={r['bias']:+.4f} naive MAE={r['naive_mae']:.4f}")
        if len(report["realistic_by_series"]) > 1:
            for name, r in report["realistic_by_series"].items():
                print(f"  series '{name}': n={r['n']} MAE={r['mae']:.4f} bias={r['bias']:+.4f} given={r['given']:.1%}")
        references = report["references"]
        line = f"reference contours: n={references['n']} given={references['given']}"
        if references["given"]:
            line += (f" median={references['median']:.3f} lowest={references['lowest']:.3f}; below "
                     f"{references['reads_at_least']}: " + (", ".join(f"{r['case_id']} {r['roi']} {r['predicted']:.3f}"
                                                                    for r in references["below"]) or "none"))
        print(line)
        if report["domain"]["guard"]:
            d = report["domain"]
            print(f"  domain guard: {d['inside_realistic']:.1%} of realistic candidates inside (given a number)"
                  + (f"; {d['body_part_unknown_realistic']:.1%} on images naming a body part the model was not "
                     f"fitted on ({', '.join(d['unknown_body_parts'])})" if d["unknown_body_parts"] else ""))
        for kind, f in report["failures"].items():
            print(f"{kind}: flagged {f['flagged']}/{f['n']}, given a number {f['given']}, MAE {f['mae']:.3f}")
        for name, b in report["baselines"].items():
            print(f"baseline {name}: n={b['n']} MAE={b['mae']:.4f} Spearman={_rounded(b['spearman'])} "
                  f"global accuracy={b['global_accuracy']:.1%}")
    return EXIT_OK


def _rounded(value: float | None) -> str:
    """Three decimals; "n/a" where the figure is undefined (a constant prediction has no rank correlation)."""
    return "n/a" if value is None else f"{value:.3f}"


def _first_validation_message(error: "ValidationError") -> str:
    first = error.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
