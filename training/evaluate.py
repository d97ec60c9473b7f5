"""`contourqa evaluate`: how a model does on a manifest's candidates, beside three baselines.

Baselines in the same report: the naive predictor (the mean Dice the model was trained on), a
gradient-boosted model on the clinical columns only (CatBoost tuned with Optuna, cross-validated by
case), so a user sees what the image adds, and the edge profile (``edge_profile``: nothing fitted, no
grey value read; on every candidate, and on those where its edges cohere, that is where the image shows
the boundary), so a user sees whether the network reads more from the image than where its edges lie;
and, on request, an edge picker (``edge_picker``), which learned which edge is the organ's.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from contourqa.qa_models.assessment import AssessConfig, combined_verdict, withheld_because
from contourqa.qa_models.edge_picker import NOT_PICKED, picked_edge_of
from contourqa.qa_models.edge_surface import contour_surface
from contourqa.qa_models.picker_predictor import PickerPredictor
from contourqa.qa_models.predictor import CardPredictor, Prediction, load_predictor, model_folder, read_card, write_card
from contourqa.qa_models.screens import body_mask, run_screens
from contourqa.qa_models.series import read_dicom, series_files
from contourqa.reporting import charts
from contourqa.reporting.agreement import case_bootstrap_intervals, metrics_by_group, regression_metrics
from contourqa.reporting.html import render_page

from .cache import CachedCase, Candidate, load_cases
from .edge_profile import NO_SURFACE, edge_profile_of
from .manifest import ManifestRow, read_manifest
from .progress import progress

log = logging.getLogger(__name__)

# an expert's own contour should read at least this (the target for any style's reference)
REFERENCE_READS_AT_LEAST = 0.9
NO_DESCRIPTION = "(no series description)"


def _clinical_baseline(rows: list[ManifestRow], true: np.ndarray, trials: int, seed: int) -> np.ndarray | None:
    """Out-of-fold CatBoost predictions from the clinical columns, folds by case; None without clinical columns."""
    columns = sorted({key for row in rows for key in row.clinical})
    if not columns or len({r.case_id for r in rows}) < 2:
        return None
    import optuna
    from catboost import CatBoostRegressor

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = [[row.clinical.get(c, "") for c in columns] + [row.roi] for row in rows]
    numeric = [all(_is_number(r[n]) for r in table) for n in range(len(columns))] + [False]
    features = [[float(v) if numeric[n] else str(v) for n, v in enumerate(r)] for r in table]
    categorical = [n for n, is_numeric in enumerate(numeric) if not is_numeric]
    cases = sorted({r.case_id for r in rows})
    fold_count = min(3, len(cases))
    fold_of = {case: n % fold_count for n, case in enumerate(np.random.default_rng(seed).permutation(cases))}
    folds = np.array([fold_of[r.case_id] for r in rows])
    X = np.array(features, dtype=object)
    predicted = np.zeros(len(rows))
    for fold in progress(range(fold_count), f"CatBoost baseline folds ({trials} Optuna trials each)"):
        train, test = folds != fold, folds == fold

        def regressor(params: dict) -> "CatBoostRegressor":
            return CatBoostRegressor(**params, loss_function="RMSE", random_seed=seed, verbose=False,
                                     cat_features=categorical, thread_count=2, allow_writing_files=False)

        def objective(trial) -> float:
            params = {"depth": trial.suggest_int("depth", 2, 6),
                      "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
                      "iterations": trial.suggest_int("iterations", 50, 300)}
            inner = np.random.default_rng(trial.number).random(train.sum()) < 0.8
            model = regressor(params).fit(X[train][inner], true[train][inner])
            return float(np.abs(model.predict(X[train][~inner]) - true[train][~inner]).mean()) if (~inner).any() else 0.0

        study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
        study.optimize(objective, n_trials=trials)
        predicted[test] = regressor(study.best_params).fit(X[train], true[train]).predict(X[test])
    return np.clip(predicted, 0, 1)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def candidate_predictions(predictor: CardPredictor, case: CachedCase,
                          batch_size: int = 16) -> Iterator[tuple[Candidate, Prediction]]:
    """Every candidate of ``case`` with the model's prediction, refusing a ROI or modality it does not cover.
    Candidates go through the network in batches: fewer, larger convolutions than one by one."""
    for candidate in case.candidates:
        predictor.check_applicable(candidate.row.roi, case.modality)
    for start in range(0, len(case.candidates), batch_size):
        chunk = case.candidates[start:start + batch_size]
        yield from zip(chunk, predictor.predict_rois(case.image, case.grid, [c.mask for c in chunk],
                                                     [c.row.roi for c in chunk], [c.probabilities for c in chunk],
                                                     body_part=case.body_part))


def reference_readings(predictor: CardPredictor, case: CachedCase, body: np.ndarray,
                       config: AssessConfig) -> list[tuple[str, float | None]]:
    """Each evaluated ROI's reference contour as the model reads it: (ROI, the number ``assess`` would give,
    or None where it withholds it). A model that knows the image reads its expert's contour near 1."""
    names = sorted({c.row.roi for c in case.candidates}, key=str.lower)
    masks = [case.references[name.lower()] for name in names]
    predictions = predictor.predict_rois(case.image, case.grid, masks, names, body_part=case.body_part)
    return [(name, None if withheld_because(p, run_screens(mask, case.grid, name, body, config.screens)) else p.dice)
            for name, mask, p in zip(names, masks, predictions)]


def series_description(image: Path) -> str:
    """The Series Description of a case's image folder, from the first file ``load_series`` read there: the
    protocol a site knows its scans by, so a model weak on one protocol shows as such."""
    header = read_dicom(series_files(image)[0], stop_before_pixels=True)
    return str(header.get("SeriesDescription", "")).strip() or NO_DESCRIPTION


def metrics_by_series(true: np.ndarray, predicted: np.ndarray, given: np.ndarray, series: list[str]) -> dict:
    """Count, MAE and bias per series description, with the share of candidates given a number."""
    groups, series = metrics_by_group(true, predicted, series), np.asarray(series)
    for name, group in groups.items():
        group["given"] = float(given[series == name].mean())
    return groups


def reference_summary(readings: list[tuple[str, str, float | None]]) -> dict:
    """How the references (case, ROI, reading) read: how many got a number, their median and lowest, and
    each below ``REFERENCE_READS_AT_LEAST``."""
    given = [(case_id, roi, value) for case_id, roi, value in readings if value is not None]
    values = np.array([value for _, _, value in given])
    return {"n": len(readings), "given": len(given),
            "median": float(np.median(values)) if given else None, "lowest": float(values.min()) if given else None,
            "reads_at_least": REFERENCE_READS_AT_LEAST,
            "below": [{"case_id": case_id, "roi": roi, "predicted": round(value, 4)}
                      for case_id, roi, value in sorted(given, key=lambda item: item[2])
                      if value < REFERENCE_READS_AT_LEAST]}


def evaluate(manifest: str | Path, model_dir: str | Path, config: AssessConfig | None = None,
             baseline_trials: int = 20, seed: int = 0, cache_dir: Path | None = None,
             picker_dir: Path | None = None) -> dict:
    """Every metric of the report as one JSON-ready dictionary; with ``picker_dir``, that edge picker model
    is reported as a baseline too."""
    config = config or AssessConfig()
    rows = read_manifest(manifest)
    predictor = load_predictor(model_dir)
    picker = PickerPredictor.from_model_folder(model_folder(picker_dir)) if picker_dir else None
    cases = load_cases(rows, cache_dir)
    ordered_rows, true, predicted, flagged, inside, given, body_part_unknown, edge = [], [], [], [], [], [], [], []
    picked, references, series = [], [], []
    for case in progress(cases, "cases evaluated"):
        body = body_mask(case.image, case.modality)
        description = series_description(case.candidates[0].row.image)
        for candidate, prediction in candidate_predictions(predictor, case):
            mask = candidate.mask  # unpacked from its bits at every read: once here
            if not candidate.row.kind.startswith("failure"):  # one surface for the edge profile and the picker
                surface = None if mask is None else contour_surface(case.image, mask, case.grid.spacing[::-1])
                edge.append(NO_SURFACE if surface is None else edge_profile_of(surface))
                if picker is not None:
                    picked.append(NOT_PICKED if surface is None else
                                  picked_edge_of(picker.network_for(candidate.row.roi), surface))
            screens = run_screens(mask, case.grid, candidate.row.roi, body, config.screens)
            given.append(withheld_because(prediction, screens) is None)  # as assess gives it
            verdict = combined_verdict(screens, prediction.dice if given[-1] else None, config, prediction.domain,
                                       prediction.unreadable)
            inside.append(prediction.trusted)
            known = prediction.domain.body_part_known if prediction.domain else None
            body_part_unknown.append(prediction.domain.body_part if known is False else None)
            ordered_rows.append(candidate.row)
            series.append(description)
            true.append(candidate.dice)
            predicted.append(prediction.dice)
            flagged.append(verdict.value != "accept")
        # after the candidates, which refuse a ROI or modality the model does not cover
        references += [(case.case_id, roi, value) for roi, value in reference_readings(predictor, case, body, config)]
    true, predicted, flagged, inside, given = (np.array(values) for values in (true, predicted, flagged, inside, given))
    failure = np.array([r.kind.startswith("failure") for r in ordered_rows])
    realistic = ~failure
    realistic_rows = [r for r, keep in zip(ordered_rows, realistic) if keep]
    card = predictor.card
    report = {
        "model": {"name": card.name, "version": card.version, "architecture": card.architecture,
                  "ensemble_size": card.ensemble_size, "channels": list(card.input.channels) if card.input else [],
                  "input_shapes": sorted(set(card.input_shapes)),
                  "calibrated": card.calibration is not None, "test_time_flip": card.test_time_flip},
        "manifest": str(manifest),
        "realistic": regression_metrics(true[realistic], predicted[realistic], config.reject_below, config.review_below)
        if realistic.any() else {},
        "realistic_interval_95": case_bootstrap_intervals(
            true[realistic], predicted[realistic], [r.case_id for r in realistic_rows],
            seed=seed, flag_below=config.reject_below, accept_above=config.review_below) if realistic.any() else {},
        "realistic_by_roi": metrics_by_group(true[realistic], predicted[realistic], [r.roi for r in realistic_rows]),
        # per protocol: a model may hold on one sequence of a site and not on another (docs/model.md, fse)
        "realistic_by_series": metrics_by_series(true[realistic], predicted[realistic], given[realistic],
                                                 [d for d, keep in zip(series, realistic) if keep]),
        # the candidates assess gives a number (inside the domain, on their organ), as a user sees them
        "realistic_given": regression_metrics(true[realistic & given], predicted[realistic & given],
                                              config.reject_below, config.review_below) if (realistic & given).any() else {},
        "all": regression_metrics(true, predicted, config.reject_below, config.review_below),
        "failures": {kind: {"n": int(m.sum()), "mae": float(np.abs(predicted[m] - true[m]).mean()),
                            "flagged": int(flagged[m].sum()), "given": int(given[m].sum())}
                     for kind in sorted({r.kind for r in ordered_rows if r.kind.startswith("failure")})
                     for m in [np.array([r.kind == kind for r in ordered_rows])]},
        # with a domain guard, the share of candidates given a number; the figures above use every raw prediction
        "domain": {"guard": card.domain is not None, "inside_realistic": float(inside[realistic].mean()) if realistic.any() else None,
                   "inside_failures": float(inside[failure].mean()) if failure.any() else None,
                   "mae_inside_realistic": float(np.abs(predicted - true)[realistic & inside].mean())
                   if (realistic & inside).any() else None,
                   # of those outside, the ones whose image names a body part the model was not fitted on
                   "body_part_unknown_realistic": float(np.mean([b is not None for b, keep in
                                                                  zip(body_part_unknown, realistic) if keep]))
                   if realistic.any() else None,
                   "unknown_body_parts": sorted({b for b in body_part_unknown if b is not None})},
        # the expert's own contours: a model should read them near 1 wherever it gives a number
        "references": reference_summary(references),
        "baselines": {},
        "points": {"true": true.round(4).tolist(), "predicted": predicted.round(4).tolist(),
                   "failure": failure.tolist()},
    }
    training_mean = card.training_data.get("dice_mean_realistic", card.training_data.get("dice_mean", float(true.mean())))
    naive = np.full(realistic.sum(), training_mean)
    if realistic.any():
        report["baselines"]["naive (mean training Dice)"] = regression_metrics(true[realistic], naive,
                                                                               config.reject_below, config.review_below)
        # per ROI beside the model's: whether the model beats the mean on each organ, not only on all of them
        for roi, naive_roi in metrics_by_group(true[realistic], naive, [r.roi for r in realistic_rows]).items():
            report["realistic_by_roi"][roi]["naive_mae"] = naive_roi["mae"]
        def add_baseline(name: str, estimates: np.ndarray, given: np.ndarray) -> None:
            """A baseline row over the realistic candidates it gives a number for (none: no row)."""
            if given.any():
                report["baselines"][name] = regression_metrics(true[realistic][given], estimates[given],
                                                               config.reject_below, config.review_below)

        edge_dice = np.array([e.dice for e in edge])
        # a missing or empty mask has no surface to measure; coherent is False where NaN
        add_baseline("edge profile (nothing fitted)", edge_dice, np.isfinite(edge_dice))
        add_baseline("edge profile where its edges cohere", edge_dice, np.array([e.coherent for e in edge]))
        if picker is not None:
            picked_dice = np.array([p.dice for p in picked])
            trained_on, limit = picker.card.training_data["manifest"], picker.card.domain.threshold
            add_baseline(f"edge picker (trained on {trained_on})", picked_dice, np.isfinite(picked_dice))
            own = "".join(f", {roi} {value}" for roi, value in picker.card.spread_limit_by_roi.items())
            add_baseline(f"edge picker where it is sure (spread <= {limit} mm{own})", picked_dice,
                         np.array([p.spread_mm <= picker.spread_limit(r.roi) for p, r in zip(picked, realistic_rows)]))
        clinical = _clinical_baseline(realistic_rows, true[realistic], baseline_trials, seed)
        if clinical is not None:
            report["baselines"]["CatBoost on clinical columns"] = regression_metrics(
                true[realistic], clinical, config.reject_below, config.review_below)
    return report


def record_in_card(report: dict, model_dir: str | Path) -> None:
    """Store the headline figures of ``report`` in the model's card, so the model carries its own evaluation."""
    card = read_card(Path(model_dir))
    summary = {key: value for key, value in report.items() if key not in ("points",)}
    summary["evaluated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    card.evaluation = summary
    write_card(card, Path(model_dir))


def render_html(report: dict, path: str | Path) -> Path:
    """The report as one self-contained HTML page with a scatter plot and an error histogram."""
    points = report["points"]
    keep = ~np.array(points["failure"], dtype=bool)
    true, predicted = np.array(points["true"])[keep], np.array(points["predicted"])[keep]
    return render_page(
        "evaluation.html.j2", path, report=report, model=report["model"],
        manifest=Path(report["manifest"]).name, rows=[("model", report["realistic"]), *report["baselines"].items()],
        failure_total=sum(f["n"] for f in report["failures"].values()),
        scatter=charts.scatter(true, predicted), histogram=charts.histogram(predicted - true))
