"""The model shipped in the package: self-describing, small, used by default, and catching failures."""

import json

import pytest

from conftest import run_cli
from contourqa.qa_models.assessment import AssessConfig, assess_files
from contourqa.qa_models.predictor import DicePredictor, default_model_dir, read_card


def test_shipped_model_card_and_size():
    folder = default_model_dir()
    card = read_card(folder)
    assert card.architecture == "efficientdet3d" and card.modalities == ["MR"]
    assert {"prostate", "bladder", "rectum"} <= {n.lower() for n in card.roi_names}
    assert (folder / "weights.pt").stat().st_size < 20 * 1024 * 1024
    assert card.evaluation["realistic"]["n"] > 100  # measured on phantom cases of a seed it never saw
    assert card.training_data["cases"] == 640
    DicePredictor.from_model_folder(folder, device="cpu")


def test_assess_uses_the_default_model(phantom):
    study = phantom / "case001"
    result = run_cli("assess", study / "image", study / "candidates" / "auto03.dcm", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"]["name"] == read_card(default_model_dir()).name
    assert all(0 <= roi["predicted_dice"] <= 1 for roi in report["rois"])


def test_every_constructed_failure_is_flagged(phantom):
    # in process, one model load for all eight (the command line itself is tested in test_cli)
    predictor, config = DicePredictor.from_model_folder(default_model_dir(), device="cpu"), AssessConfig(mc_samples=0)
    for case in ("case000", "case001"):
        for candidate in ("failure_empty.dcm", "failure_all_ones.dcm", "failure_noise_seg.dcm", "failure_shifted.dcm"):
            rois = assess_files(phantom / case / "image", phantom / case / "candidates" / candidate, config,
                                predictor=predictor).rois
            assert all(roi.verdict.value in ("review", "reject") for roi in rois), (case, candidate)
            for roi in rois:  # a low number, or none because the odd input lies outside the model's domain
                assert (roi.prediction.dice < 0.5 if roi.prediction is not None
                        else roi.domain is not None and roi.domain.inside is False), (case, candidate, roi.name)


def test_reference_contours_are_predicted_good(phantom):
    study = phantom / "case001"
    result = run_cli("assess", study / "image", study / "reference.dcm", "--json", "--mc-samples", "0")
    predicted = [roi["predicted_dice"] for roi in json.loads(result.stdout)["rois"]]
    assert min(predicted) > 0.75, predicted


def test_no_model_gives_screens_only(phantom):
    study = phantom / "case001"
    result = run_cli("assess", study / "image", study / "reference.dcm", "--json", "--no-model")
    report = json.loads(result.stdout)
    assert report["model"] is None and all(roi["predicted_dice"] is None for roi in report["rois"])


def test_the_interval_depends_on_the_input_only(phantom):
    # MC dropout is seeded from each ROI's own input: the same ROI gets the same interval in another run
    # and whether or not the other ROIs are assessed with it
    study = phantom / "case001"
    predictor = DicePredictor.from_model_folder(default_model_dir())
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
