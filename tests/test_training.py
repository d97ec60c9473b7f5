"""`contourqa train` and `evaluate` on phantom data, with the quick configuration."""

import json
import pickle
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import torch

from conftest import headless_chromium, one_case_manifest, run_cli, set_image_tags
from contourqa.qa_models.errors import InputError
from contourqa.qa_models.predictor import DicePredictor, read_card


def test_model_folder_describes_itself(quick_model, phantom, phantom_cache):
    assert not (quick_model / "cache").exists() and len(list(phantom_cache.glob("*.npz"))) == 2  # `--cache DIR`
    card = read_card(quick_model)
    assert card.architecture == "regnet3d" and card.ensemble_size == 2
    assert card.modalities == ["MR"]
    assert sorted(n.lower() for n in card.roi_names) == ["bladder", "femoralhead_l", "femoralhead_r", "prostate", "rectum"]
    assert card.input.shape == (16, 32, 32)
    assert card.training_data["cases"] == 2 and 0 <= card.training_data["dice_min"] < card.training_data["dice_max"] <= 1
    assert card.cross_validation["n"] == 120 and 0 <= card.cross_validation["mae"] <= 1
    assert (quick_model / "checkpoints" / "fold1-epoch0003.pt").is_file()
    states = torch.load(quick_model / "weights.pt", weights_only=True)
    assert len(states) == 2
    # the cache keeps what the domain guard reads from the header, as read from DICOM
    from contourqa.training.cache import load_cases
    from contourqa.training.manifest import read_manifest

    assert [c.body_part for c in load_cases(read_manifest(phantom / "manifest.csv"), phantom_cache)] == ["PELVIS"] * 2


def test_training_learns(quick_model):
    """Three short epochs: each epoch's loss is a mean over 32 random samples, so the folds' mean is what
    falls; and on the case each fold never saw, its predictions already rank the candidates."""
    history = json.loads((quick_model / "history.json").read_text())
    losses = np.array([[h["train_loss"] for h in history if h["fold"] == fold] for fold in (0, 1)])
    assert losses.shape == (2, 3) and losses[:, -1].mean() < losses[:, 0].mean(), losses
    assert read_card(quick_model).cross_validation["spearman"] > 0.3


def test_fine_tuning_starts_from_the_given_model(quick_model, phantom, phantom_cache, tmp_path):
    out = tmp_path / "tuned"
    # A vanishing rate keeps the weights where they started, so they show where that was.
    result = run_cli("train", "--manifest", phantom / "manifest.csv", "--out", out, "--quick", "--init-from", quick_model,
                     "--cache", phantom_cache,
                     "--epochs", "2", "--steps-per-epoch", "1", "--learning-rate", "1e-12", "--lr-drop-epochs", "1",
                     "--input-shape", "16", "40", "40")
    assert result.returncode == 0, result.stderr
    assert "fold 0 epoch 2/2: train loss" in result.stderr  # progress without a terminal
    source = DicePredictor.from_model_folder(quick_model, "cpu").networks[0]
    tuned = DicePredictor.from_model_folder(out, "cpu")
    assert tuned.card.input.shape == (16, 40, 40)
    parent = read_card(quick_model)
    assert tuned.card.training_data["initialised_from"] == f"{parent.name} {parent.version} sha256:{parent.sha256}"
    assert parent.sha256 != tuned.card.sha256
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(source.parameters(), tuned.networks[0].parameters()))
    history = json.loads((out / "history.json").read_text())
    assert [h["learning_rate"] for h in history] == pytest.approx([1e-12, 1e-13])


def test_test_time_flip_is_recorded_and_used_for_cross_validation(quick_model, phantom, phantom_cache, tmp_path):
    out = tmp_path / "flipped"
    result = run_cli("train", "--manifest", phantom / "manifest.csv", "--out", out, "--quick", "--folds", "2",
                     "--seed", "3", "--test-time-flip", "--cache", phantom_cache)  # quick_model's command, plus the flip
    assert result.returncode == 0, result.stderr
    plain, flipped = read_card(quick_model), read_card(out)
    assert flipped.test_time_flip and not plain.test_time_flip
    # the flip changes how the model predicts, not how it learns
    weights = [torch.load(folder / "weights.pt", weights_only=True) for folder in (quick_model, out)]
    assert all(a[k].equal(b[k]) for a, b in zip(*weights) for k in a)
    assert flipped.cross_validation["mae"] != plain.cross_validation["mae"]


def test_fine_tuning_refuses_a_model_of_another_architecture(quick_model, phantom, tmp_path):
    result = run_cli("train", "--manifest", phantom / "manifest.csv", "--out", tmp_path / "m", "--quick",
                     "--arch", "efficientdet3d", "--init-from", quick_model)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"contourqa: error: --init-from {quick_model}: model is regnet3d with channels image+mask; "
        "this training is efficientdet3d with image+mask"]


@pytest.mark.parametrize("option", [["--input-shape", "4", "32", "32"], ["--lr-drop-epochs", "0"]])
def test_bad_training_options_are_refused_in_one_line(phantom, tmp_path, option):
    result = run_cli("train", "--manifest", phantom / "manifest.csv", "--out", tmp_path / "m", "--quick", *option)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "invalid training option" in result.stderr


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_weights_that_are_not_plain_tensors_are_refused(quick_model, phantom, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(quick_model, model, ignore=shutil.ignore_patterns("checkpoints", "cache"))
    torch.save({"state": Payload()}, model / "weights.pt", pickle_module=pickle)
    result = run_cli("assess", phantom / "case001" / "image", phantom / "case001" / "reference.dcm", "--model", model)
    assert result.returncode == 2 and "refused or unreadable weights" in result.stderr
    assert "this would run on load" not in result.stdout


def test_model_refuses_a_roi_it_was_not_trained_for(quick_model, case_copy):
    structure = pydicom.dcmread(case_copy / "reference.dcm")
    structure.StructureSetROISequence[0].ROIName = "Liver"
    structure.save_as(case_copy / "reference.dcm")
    result = run_cli("assess", case_copy / "image", case_copy / "reference.dcm", "--model", quick_model)
    assert result.returncode == 2
    assert "is not valid for ROI 'Liver'" in result.stderr and len(result.stderr.splitlines()) == 1


def test_model_refuses_another_modality(quick_model, case_copy):
    set_image_tags(case_copy / "image", Modality="CT")
    result = run_cli("assess", case_copy / "image", case_copy / "reference.dcm", "--model", quick_model)
    assert result.returncode == 2 and "valid for MR images, not CT" in result.stderr


def test_assess_reports_predicted_dice_and_interval(quick_model, phantom, tmp_path):
    study = phantom / "case000"
    result = run_cli("assess", study / "image", study / "candidates" / "auto02_fractional_seg.dcm",
                     "--model", quick_model, "--json", "--mc-samples", "6", "--sr", tmp_path / "sr.dcm")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"]["architecture"] == "regnet3d"
    for roi in report["rois"]:
        low, high = roi["predicted_dice_interval"]
        assert 0 <= low <= high <= 1 and 0 <= roi["predicted_dice"] <= 1
        assert roi["uncertainty_vs"] > 0  # FRACTIONAL segments carry the entropy sum
    dump = subprocess.run(["dsrdump", str(tmp_path / "sr.dcm")], capture_output=True, text=True).stdout
    assert '(130920,DCM,"Dice Similarity Coefficient")' in dump or "Dice Similarity Coefficient" in dump
    assert "Predicted without reference segmentation" in dump


def test_boundary_channel_model_trains_and_assesses(quick_model, phantom, phantom_cache, tmp_path):
    """`train --boundary-channels`: the card records the distance and edge channels, the network takes
    four, `assess` predicts with it, and fine-tuning a two-channel model into it is refused."""
    out = tmp_path / "boundary"
    result = run_cli("train", "--manifest", phantom / "manifest.csv", "--out", out, "--quick", "--boundary-channels",
                     "--epochs", "1", "--steps-per-epoch", "4", "--folds", "1", "--cache", phantom_cache)
    assert result.returncode == 0, result.stderr
    assert read_card(out).input.channels == ("image", "mask", "distance", "edge")
    first_conv = next(m for m in DicePredictor.from_model_folder(out).networks[0].modules()
                      if isinstance(m, torch.nn.Conv3d))
    assert first_conv.in_channels == 4
    study = phantom / "case000"
    report = run_cli("assess", study / "image", study / "reference.dcm", "--model", out, "--json")
    assert report.returncode == 0, report.stderr
    assert all(0 <= roi["predicted_dice"] <= 1 for roi in json.loads(report.stdout)["rois"])
    refused = run_cli("train", "--manifest", phantom / "manifest.csv", "--out", tmp_path / "tuned", "--quick",
                      "--boundary-channels", "--init-from", quick_model)
    assert refused.returncode == 2 and "channels image+mask; this training is" in refused.stderr
    both = run_cli("train", "--manifest", phantom / "manifest.csv", "--out", tmp_path / "x", "--quick",
                   "--boundary-channels", "--entropy-channel")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_predictions_are_deterministic_without_mc_dropout(quick_model, phantom):
    from contourqa.qa_models.assessment import assess_files
    predictor = DicePredictor.from_model_folder(quick_model)
    study = phantom / "case001"
    first = assess_files(study / "image", study / "reference.dcm", predictor=predictor)
    second = assess_files(study / "image", study / "reference.dcm", predictor=predictor)
    assert [r.prediction.dice for r in first.rois] == [r.prediction.dice for r in second.rois]


def test_test_time_flip_averages_the_mirrored_input(quick_model, phantom):
    from contourqa.qa_models.assessment import AssessConfig, load_structure, structure_masks
    from contourqa.qa_models.series import load_series
    predictor = DicePredictor.from_model_folder(quick_model)
    study = phantom / "case001"
    series = load_series(study / "image")
    masks = [m.mask for m, _ in structure_masks(load_structure(study / "reference.dcm"), series, AssessConfig())]
    inputs = [predictor.network_input(series.array, mask, series.grid) for mask in masks]
    plain = [p.dice for p in predictor.predict_batch(inputs)]
    mirrored = [p.dice for p in predictor.predict_batch([tuple(t.flip(-1) for t in x) for x in inputs])]
    predictor.card.test_time_flip = True
    both = predictor.predict_batch(inputs, mc_samples=4)
    assert [p.dice for p in both] == pytest.approx([(a + b) / 2 for a, b in zip(plain, mirrored)], abs=1e-5)
    assert plain != mirrored and all(p.low <= p.high for p in both)


@pytest.fixture(scope="module")
def evaluation(quick_model, phantom, phantom_cache, tmp_path_factory):
    """`evaluate --json --html` of the quick model on its own two studies, read from its training cache,
    with an edge picker model trained on the first and its limits set on the second (`contourqa picker`)."""
    folder = tmp_path_factory.mktemp("evaluation")
    html, picker = folder / "report.html", folder / "picker"
    trained = run_cli("picker", "--manifest", one_case_manifest(phantom, "case000", folder), "--out", picker,
                      "--held", one_case_manifest(phantom, "case001", folder), "--cache", phantom_cache)
    assert trained.returncode == 0 and "edge picker trained on 16000 vertices of" in trained.stdout, trained.stderr
    assert "withholds beyond a spread of" in trained.stdout and "MR, ROIs Bladder, FemoralHead_L" in trained.stdout
    result = run_cli("evaluate", "--manifest", phantom / "manifest.csv", "--model", quick_model, "--json",
                     "--html", html, "--baseline-trials", "2", "--cache", phantom_cache, "--picker", picker)
    assert result.returncode == 0, result.stderr
    return result, html


def test_evaluate_reports_metrics_baselines_and_html(evaluation, phantom, phantom_cache):
    result, html_file = evaluation
    folder = html_file.parent
    report = json.loads(result.stdout)
    assert report["realistic"]["n"] == 2 * 5 * 8
    assert set(report["failures"]) == {"failure_empty", "failure_all_ones", "failure_noise", "failure_shifted"}
    assert all(f["n"] == 10 for f in report["failures"].values())
    # as assess gives it: no failure of the phantom gets a number (each is off its organ, or outside the domain)
    assert all(f["given"] == 0 for f in report["failures"].values()), report["failures"]
    picker_row = f"edge picker (trained on {folder.name}/case000.csv)"
    sure_row = next(name for name in report["baselines"] if name.startswith("edge picker where it is sure (spread <= "))
    assert set(report["baselines"]) == {"naive (mean training Dice)", "CatBoost on clinical columns",
                                        "edge profile (nothing fitted)", "edge profile where its edges cohere",
                                        picker_row, sure_row}
    for metrics in (report["realistic"], *report["baselines"].values()):
        assert {"mae", "max_error", "spearman", "pearson", "global_accuracy", "flag_precision", "flag_recall",
                "mean_dice_before_filter", "mean_dice_after_filter", "mae_by_band"} <= set(metrics)
    low, high = report["realistic_interval_95"]["mae"]
    assert low <= report["realistic"]["mae"] <= high and low < high
    by_roi = report["realistic_by_roi"]
    assert set(by_roi) == {"Prostate", "Bladder", "Rectum", "FemoralHead_L", "FemoralHead_R"}
    assert all(r["n"] == 2 * 8 for r in by_roi.values())
    assert sum(r["mae"] * r["n"] for r in by_roi.values()) / 80 == pytest.approx(report["realistic"]["mae"], abs=1e-6)
    naive = report["baselines"]["naive (mean training Dice)"]["mae"]
    assert sum(r["naive_mae"] * r["n"] for r in by_roi.values()) / 80 == pytest.approx(naive, abs=1e-6)
    assert len({round(r["naive_mae"], 4) for r in by_roi.values()}) > 1  # each organ's own, not the overall one
    # nothing fitted, yet on organs that stand out the edges rank the candidates and beat the mean
    edge = report["baselines"]["edge profile (nothing fitted)"]
    assert edge["n"] == 80 and edge["spearman"] > 0.5 and edge["mae"] < naive
    coherent = report["baselines"]["edge profile where its edges cohere"]
    # the candidates whose edges do not cohere are those it gets worst
    assert 40 < coherent["n"] < 80 and coherent["mae"] < edge["mae"]
    # in its own style, half of it in-sample, so this says only that the picker learns which edge is the
    # organ's (docs/model.md has it across styles): it halves the edge profile's error and ranks the candidates
    picker = report["baselines"][picker_row]
    assert picker["n"] == 80 and picker["mae"] < edge["mae"] / 2 and picker["spearman"] > 0.9
    # its limit is the 99 % quantile of its spread on the second study: sure of nearly every candidate, and
    # no worse where it is sure
    sure = report["baselines"][sure_row]
    assert 76 <= sure["n"] <= 80 and sure["mae"] <= picker["mae"]
    # the quick network's own guard: the figures of the candidates it gives a number, as assess gives them
    given = report["realistic_given"]
    assert given["n"] == round(report["domain"]["inside_realistic"] * 80) and set(given) == set(report["realistic"])
    html = html_file.read_text()
    by_roi_table = html.split("By ROI", 1)[1].split("</table>", 1)[0]
    assert by_roi_table.count("<td>Rectum</td>") == 1 and "<th>naive MAE</th>" in by_roi_table
    assert "resampling whole cases" in html
    assert html.count("<circle") == report["realistic"]["n"]
    assert "Error histogram" in html and "CatBoost on clinical columns" in html
    assert "predicted − true Dice" in html and "candidates</text>" in html  # the histogram's axes are named
    # without a terminal every stage says how far it is
    assert {"cases evaluated: 2/2", "CatBoost baseline folds (2 Optuna trials each): 2/2"} <= set(result.stderr.splitlines())
    assert report["model"]["channels"] == ["image", "mask"] and report["model"]["calibrated"] is False
    assert report["model"]["input_shapes"] == [[16, 32, 32]] and "input image+mask at 16x32x32)" in html
    assert "cases rasterised or read from the cache: 2/2" in result.stderr
    assert len(list(phantom_cache.glob("*.npz"))) == 2  # `--cache`: the studies the training rasterised, none again


def test_evaluate_reads_each_reference_contour_as_assess_reads_it(evaluation, phantom, quick_model):
    """The report's reference contours are each study's reference.dcm as `assess` reads it: the number it
    gives, or none where it withholds it."""
    report = json.loads(evaluation[0].stdout)
    readings = []
    for case in ("case000", "case001"):
        assessed = run_cli("assess", phantom / case / "image", phantom / case / "reference.dcm", "--model", quick_model,
                           "--json")
        assert assessed.returncode == 0, assessed.stderr
        readings += [(case, roi["name"], roi["predicted_dice"]) for roi in json.loads(assessed.stdout)["rois"]]
    given = sorted((value, case, roi) for case, roi, value in readings if value is not None)
    references = report["references"]
    assert references["n"] == 10 and references["given"] == len(given) > 0
    assert references["lowest"] == pytest.approx(given[0][0], abs=1e-4)
    assert references["median"] == pytest.approx(float(np.median([value for value, _, _ in given])), abs=1e-4)
    assert [(r["case_id"], r["roi"]) for r in references["below"]] == [(case, roi) for value, case, roi in given
                                                                       if value < references["reads_at_least"]]
    assert "The reference contours themselves" in evaluation[1].read_text()


def test_evaluation_page_renders_in_headless_chromium(evaluation, tmp_path):
    html_file = evaluation[1]
    command = headless_chromium(tmp_path / "profile")
    dom = subprocess.run([*command, "--dump-dom", html_file.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<circle") == 80 and "Predicted vs true Dice" in dom
    subprocess.run([*command, f"--screenshot={tmp_path / 'page.png'}", "--window-size=1200,1400", html_file.as_uri()],
                   capture_output=True, timeout=120)
    assert (tmp_path / "page.png").stat().st_size > 10_000


@pytest.mark.parametrize("arguments, message", [
    (["picker", "--epochs", "0", "--held", "held.csv"], "--epochs, --vertices and --members must be at least 1"),
    (["picker", "--members", "0", "--held", "held.csv"], "--epochs, --vertices and --members must be at least 1"),
    (["picker", "--unscaled", "Rectum", "--held", "held.csv"], "--unscaled only applies with --proportional"),
    (["picker", "--held", "missing.csv"], "no such manifest"),
    (["picker", "--held", "held.csv", "--held", "missing.csv"], "missing.csv: no such manifest"),  # each read first
    (["picker", "--manifest", "missing.csv", "--held", "held.csv"], "missing.csv: no such manifest"),
    (["picker", "--held", "held.csv"], "the held-out studies must not be trained on; 2 image series are in both"),
    (["evaluate", "--picker", "notes.txt"], "notes.txt: not a model folder"),
    (["evaluate", "--picker", "missing"], "missing: not a model folder"),
])
def test_picker_bad_input(phantom, tmp_path, arguments, message):
    (tmp_path / "notes.txt").write_text("not a picker")
    (tmp_path / "held.csv").write_text((phantom / "manifest.csv").read_text().replace(",case0", f",{phantom}/case0"))
    command, *options = arguments
    paths = [str(tmp_path / o) if o.endswith((".txt", ".csv")) or o == "missing" else o for o in options]
    extra = ["--out", str(tmp_path / "p")] if command == "picker" else []
    result = run_cli(command, "--manifest", phantom / "manifest.csv", *extra, *paths)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("arguments, message", [
    (["--manifest", "missing.csv"], "no such manifest"),
    (["--folds", "5"], "--folds 5 needs at least 5 patients"),
    (["--epochs", "0"], "invalid training option: epochs"),
    (["--candidate-share", "1.5"], "invalid training option: candidate_share"),
])
def test_train_bad_input(phantom, tmp_path, arguments, message):
    base = {"--manifest": str(phantom / "manifest.csv"), "--out": str(tmp_path / "m")}
    for flag, value in zip(arguments[::2], arguments[1::2]):
        base[flag] = value if flag != "--manifest" else str(tmp_path / value)
    flat = [str(x) for pair in base.items() for x in pair]
    result = run_cli("train", *flat, "--quick")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_combined_verdict_thresholds():
    from contourqa.qa_models.assessment import AssessConfig, Verdict, combined_verdict
    config = AssessConfig()
    assert combined_verdict([], 0.74, config) is Verdict.REJECT
    assert combined_verdict([], 0.79, config) is Verdict.REVIEW
    assert combined_verdict([], 0.85, config) is Verdict.ACCEPT
    assert combined_verdict([], None, config) is Verdict.ACCEPT
    assert combined_verdict([], 0.85, AssessConfig(review_below=0.9)) is Verdict.REVIEW


def test_calibrate_stores_a_monotone_map_that_the_predictor_applies(quick_model, phantom, phantom_cache, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(quick_model, model, ignore=shutil.ignore_patterns("checkpoints", "cache"))
    raw = DicePredictor.from_model_folder(model)
    result = run_cli("calibrate", "--manifest", phantom / "manifest.csv", "--model", model,
                     "--cache", phantom_cache)
    assert result.returncode == 0, result.stderr
    assert "calibrated on 120 candidates" in result.stdout
    calibration = read_card(model).calibration
    assert calibration.candidates == 120 and calibration.manifest == "manifest.csv"
    assert all(a < b for a, b in zip(calibration.raw, calibration.raw[1:]))
    assert all(a <= b for a, b in zip(calibration.calibrated, calibration.calibrated[1:]))
    calibrated = DicePredictor.from_model_folder(model)
    study = phantom / "case001"
    from contourqa.qa_models.assessment import AssessConfig, load_structure, structure_masks
    from contourqa.qa_models.series import load_series
    series = load_series(study / "image")
    mask = structure_masks(load_structure(study / "reference.dcm"), series, AssessConfig())[0][0].mask
    before = raw.predict(series.array, mask, series.grid).dice
    assert calibrated.predict(series.array, mask, series.grid).dice == pytest.approx(
        float(calibration.apply(np.array([before]))[0]), abs=1e-6)


def test_isotonic_calibration_undoes_a_pull_towards_the_mean():
    from contourqa.qa_models.predictor import Calibration
    from contourqa.training.calibrate import fit_calibration
    rng = np.random.default_rng(0)
    true = rng.random(400)
    raw = 0.5 + 0.6 * (true - 0.5) + rng.normal(0, 0.03, 400)  # shrunk towards 0.5, as an MSE regressor does
    knots_raw, knots_calibrated = fit_calibration(raw, true)
    calibration = Calibration(raw=knots_raw, calibrated=knots_calibrated)
    test_true = rng.random(400)
    test_raw = 0.5 + 0.6 * (test_true - 0.5) + rng.normal(0, 0.03, 400)
    assert np.abs(calibration.apply(test_raw) - test_true).mean() < 0.5 * np.abs(test_raw - test_true).mean()


def test_calibrate_refuses_too_few_candidates(quick_model, phantom, tmp_path):
    manifest = tmp_path / "few.csv"
    lines = (phantom / "manifest.csv").read_text().splitlines()
    manifest.write_text("\n".join(lines[:6]).replace("case000/", str(phantom / "case000") + "/") + "\n")
    model = tmp_path / "model"
    shutil.copytree(quick_model, model, ignore=shutil.ignore_patterns("checkpoints", "cache"))
    result = run_cli("calibrate", "--manifest", manifest, "--model", model)
    assert result.returncode == 2 and "calibration needs at least 20 candidates" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and read_card(model).calibration is None


def test_combine_makes_a_multi_scale_ensemble_that_averages_its_members(quick_model, phantom, phantom_cache, tmp_path):
    from contourqa.qa_models.assessment import AssessConfig, load_structure, structure_masks
    from contourqa.qa_models.series import load_series

    fine = tmp_path / "fine"
    assert run_cli("train", "--manifest", phantom / "manifest.csv", "--out", fine, "--quick", "--init-from", quick_model,
                   "--epochs", "1", "--steps-per-epoch", "1", "--input-shape", "16", "40", "40",
                   "--cache", phantom_cache).returncode == 0
    result = run_cli("combine", quick_model, fine, "--out", tmp_path / "both", "--model-version", "7")
    assert result.returncode == 0, result.stderr
    both = DicePredictor.from_model_folder(tmp_path / "both", "cpu")
    assert both.card.version == "7" and both.card.ensemble_size == 3
    assert both.card.member_shapes == [(16, 32, 32), (16, 32, 32), (16, 40, 40)]
    assert [m["input_shape"] for m in both.card.training_data["members"]] == [[16, 32, 32], [16, 40, 40]]

    study = phantom / "case001"
    series = load_series(study / "image")
    masks = [m.mask for m, _ in structure_masks(load_structure(study / "reference.dcm"), series, AssessConfig())]
    coarse, detailed = (DicePredictor.from_model_folder(d, "cpu") for d in (quick_model, fine))
    for mask in masks:
        expected = (2 * coarse.predict(series.array, mask, series.grid).dice
                    + detailed.predict(series.array, mask, series.grid).dice) / 3
        assert both.predict(series.array, mask, series.grid).dice == pytest.approx(expected, abs=1e-5)
    assert coarse.predict(series.array, masks[0], series.grid).dice != detailed.predict(series.array, masks[0], series.grid).dice

    result = run_cli("combine", quick_model, fine, "--out", tmp_path / "flipped", "--test-time-flip")
    assert result.returncode == 0 and "test-time flip" in result.stdout, result.stderr
    flipped = DicePredictor.from_model_folder(tmp_path / "flipped", "cpu")
    assert flipped.card.test_time_flip and not both.card.test_time_flip
    inputs = both.network_input(series.array, masks[0], series.grid)
    [plain, mirrored] = both.predict_batch([inputs, tuple(t.flip(-1) for t in inputs)])
    assert plain.dice != mirrored.dice
    assert flipped.predict_batch([inputs])[0].dice == pytest.approx((plain.dice + mirrored.dice) / 2, abs=1e-5)


def test_combine_refuses_members_that_disagree(quick_model, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(quick_model, other)
    card = read_card(other)
    (other / "model.json").write_text(card.model_copy(update={"roi_names": ["Prostate"]}).model_dump_json())
    out = tmp_path / "out"
    cases = [([quick_model, other, "--out", out], "cannot combine models of different ROI names"),
             ([quick_model, "--out", out], "combine needs at least two model folders"),
             ([quick_model, tmp_path / "missing", "--out", out], "not a model folder"),
             ([quick_model, quick_model, "--out", other], "already holds a model")]
    for arguments, message in cases:
        result = run_cli("combine", *arguments)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()

    (other / "model.json").write_text(card.model_copy(update={"member_shapes": [(16, 32, 32)]}).model_dump_json())
    with pytest.raises(InputError, match="card lists 1 member shapes for 2 networks"):
        DicePredictor.from_model_folder(other, "cpu")
