"""The models shipped in the package: self-describing, small, the edge picker used by default, and
catching failures."""

import json
import re
import shutil

import pytest

from conftest import THIGH, run_cli, set_image_tags
from contourqa.qa_models.assessment import AssessConfig, assess_files
from contourqa.qa_models.picker_predictor import PickerPredictor
from contourqa.qa_models.predictor import (SHIPPED_MODELS, DicePredictor, default_model_dir, load_predictor, read_card,
                                          shipped_model_dir)
from contourqa.qa_models.screens import says_off_organ

V15 = shipped_model_dir("phantom-v15")
THREE_STYLES = shipped_model_dir("edge-picker-three-styles")


def test_the_default_is_the_edge_picker_trained_on_randomised_images_and_measured_on_another_style():
    folder = default_model_dir()
    card = read_card(folder)
    assert card.architecture == "edge_picker" and card.modalities == ["MR"]
    assert {"prostate", "bladder", "rectum"} <= {n.lower() for n in card.roi_names}
    assert (folder / "weights.pt").stat().st_size < 2 * 1024 * 1024  # eight pickers of 220 kB: four per ROI, four for the rectum
    assert card.training_data["manifest"].startswith("synth") and card.training_data["cases"] == 40
    assert card.domain.threshold_from["manifest"].startswith("synth") and card.interval_half_width > 0
    # recorded on a style it was never trained on: the classic phantom
    assert card.evaluation["manifest"].startswith("classic") and card.evaluation["realistic"]["n"] > 100
    assert "PELVIS" in card.domain.body_parts and "rectum" in card.spread_limit_by_roi  # the rectum reads with its own
    assert isinstance(load_predictor(folder), PickerPredictor)


def test_the_picker_trained_on_three_styles_is_shipped_beside_it_measured_on_a_fourth():
    card = read_card(THREE_STYLES)
    assert card.architecture == "edge_picker" and card.training_data["cases"] == 120  # 40 of each style
    # its limits set on held-out studies of each style, each a set of its own
    held = "synth_held/manifest.csv, classic_held/manifest.csv, fse_held/manifest.csv"
    assert card.domain.threshold_from["manifest"] == card.feature_guard.threshold_from["manifest"] == held
    # recorded on images of an acquisition it was never trained on
    assert card.evaluation["manifest"].startswith("mrsim") and card.evaluation["realistic"]["n"] > 100
    assert "rectum" in card.spread_limit_by_roi and isinstance(load_predictor(THREE_STYLES), PickerPredictor)


def test_the_phantom_network_v15_is_shipped_beside_it():
    card = read_card(V15)
    assert card.architecture == "efficientdet3d" and card.modalities == ["MR"]
    assert (V15 / "weights.pt").stat().st_size < 20 * 1024 * 1024
    assert card.evaluation["realistic"]["n"] > 100  # measured on phantom cases of a seed it never saw
    assert card.training_data["cases"] == 640
    DicePredictor.from_model_folder(V15, device="cpu")


def test_assess_uses_the_default_model(phantom):
    study = phantom / "case001"
    result = run_cli("assess", study / "image", study / "candidates" / "auto03.dcm", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"]["name"] == read_card(default_model_dir()).name
    assert all(roi["predicted_dice"] is None or 0 <= roi["predicted_dice"] <= 1 for roi in report["rois"])
    assert any(roi["predicted_dice"] is not None for roi in report["rois"])


@pytest.mark.parametrize("model", [default_model_dir(), THREE_STYLES, V15],
                         ids=["edge-picker", "edge-picker-three-styles", "phantom-v15"])
def test_every_constructed_failure_is_flagged(phantom, model):
    # in process, one model load for all eight (the command line itself is tested in test_cli)
    predictor, config = load_predictor(model, device="cpu"), AssessConfig(mc_samples=0)
    for case in ("case000", "case001"):
        for candidate in ("failure_empty.dcm", "failure_all_ones.dcm", "failure_noise_seg.dcm", "failure_shifted.dcm"):
            rois = assess_files(phantom / case / "image", phantom / case / "candidates" / candidate, config,
                                predictor=predictor).rois
            assert all(roi.verdict.value in ("review", "reject") for roi in rois), (case, candidate)
            for roi in rois:  # a low number, or none: the input lies outside the model's domain, or off its organ
                off_organ = any(says_off_organ(s) for s in roi.screens)
                assert (roi.prediction.dice < 0.5 if roi.prediction is not None
                        else off_organ or roi.domain is not None and roi.domain.inside is False), (case, candidate, roi.name)


@pytest.mark.parametrize("model", ["edge-picker", "edge-picker-three-styles", "phantom-v15"])
def test_reference_contours_are_predicted_good(phantom, model):
    study = phantom / "case001"
    result = run_cli("assess", study / "image", study / "reference.dcm", "--json", "--mc-samples", "0", "--model", model)
    predicted = [roi["predicted_dice"] for roi in json.loads(result.stdout)["rois"]]
    assert min(predicted) > 0.75, predicted


def test_no_model_gives_screens_only(phantom):
    study = phantom / "case001"
    result = run_cli("assess", study / "image", study / "reference.dcm", "--json", "--no-model")
    report = json.loads(result.stdout)
    assert report["model"] is None and all(roi["predicted_dice"] is None for roi in report["rois"])


def test_the_networks_interval_depends_on_the_input_only(phantom):
    # MC dropout is seeded from each ROI's own input: the same ROI gets the same interval in another run
    # and whether or not the other ROIs are assessed with it
    study = phantom / "case001"
    predictor = DicePredictor.from_model_folder(V15)
    config = AssessConfig(mc_samples=10)
    first = assess_files(study / "image", study / "candidates" / "auto02.dcm", config, predictor=predictor)
    again = assess_files(study / "image", study / "candidates" / "auto02.dcm", config, predictor=predictor)
    alone = assess_files(study / "image", study / "candidates" / "auto02.dcm", config, ["Rectum"], predictor)
    intervals = [(r.prediction.low, r.prediction.high) for r in first.rois]
    assert intervals == [(r.prediction.low, r.prediction.high) for r in again.rois]
    rectum = next(r for r in first.rois if r.name == "Rectum")
    # (approximately: a batch of one may take other floating-point paths through the encoder)
    assert (alone.rois[0].prediction.low, alone.rois[0].prediction.high) == pytest.approx(
        (rectum.prediction.low, rectum.prediction.high), abs=1e-5)
    assert any(low < high for low, high in intervals)  # the passes did draw different dropout masks


def test_the_default_pickers_interval_is_each_organs_own(phantom):
    """Split conformal per organ: the picker errs more on the rectum than on a bladder, and says so."""
    widths = read_card(default_model_dir()).interval_half_width_by_roi
    assert set(widths) == {"bladder", "femoralhead_l", "femoralhead_r", "prostate", "rectum"}
    assert widths["rectum"] > 2 * widths["bladder"]
    study = phantom / "case001"
    report = json.loads(run_cli("assess", study / "image", study / "reference.dcm", "--json").stdout)
    for roi in report["rois"]:
        if roi["predicted_dice"] is not None:
            low, high = roi["predicted_dice_interval"]
            assert low == pytest.approx(max(roi["predicted_dice"] - widths[roi["name"].lower()], 0), abs=1e-3)
            assert high == pytest.approx(min(roi["predicted_dice"] + widths[roi["name"].lower()], 1), abs=1e-3)


@pytest.mark.parametrize("model", ["edge-picker", "edge-picker-three-styles"])
def test_the_shipped_pickers_withhold_on_real_mr_of_other_anatomy_by_its_edges_alone(thigh_named_prostate, model,
                                                                                   tmp_path):
    """The real thigh, its ROI named Prostate and its Body Part Examined removed: the spread alone must
    withhold the number (the header is no help where a scanner leaves it out)."""
    image = tmp_path / "image"
    shutil.copytree(THIGH / "image", image)
    set_image_tags(image, BodyPartExamined=None)
    result = run_cli("assess", image, thigh_named_prostate, "--model", model, "--json")
    roi = json.loads(result.stdout)["rois"][0]
    assert roi["predicted_dice"] is None and roi["verdict"] == "review", roi
    assert roi["domain"]["inside"] is False and roi["domain"]["score"] > roi["domain"]["threshold"]
    assert "body_part" not in roi["domain"]  # the header did not decide it


def test_assess_help_names_every_shipped_model():
    help_text = re.sub(r"-\s+", "-", run_cli("assess", "--help").stdout)  # argparse wraps at hyphens
    assert all(name in help_text for name in SHIPPED_MODELS), help_text
