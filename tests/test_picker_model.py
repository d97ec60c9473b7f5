"""The edge picker as the product's predictor: `assess`, the SR and a node's worker take a picker model
folder as they take a network's, and it withholds its number where it does not see one edge."""

import json
import shutil
import subprocess

import pytest

from conftest import THIGH, draw_round_one_voxel, one_case_manifest, require_tool, run_cli, set_image_tags
from contourqa.daemon.case_runner import load_predictor as worker_predictor
from contourqa.qa_models.picker_predictor import PickerPredictor
from contourqa.qa_models.sr_report import INSIDE_DOMAIN


def sr_dump_and_errors(sr) -> tuple[str, list[str]]:
    dump = subprocess.run([require_tool("dsrdump"), str(sr)], capture_output=True, text=True).stdout
    check = subprocess.run([require_tool("dciodvfy"), str(sr)], capture_output=True, text=True)
    return dump, [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]


def test_assess_gives_the_pickers_number_interval_and_spread_and_an_sr_with_them(picker_model, phantom, tmp_path):
    study = phantom / "case001"  # the study its limit was set on; its contours were never trained on
    result = run_cli("assess", study / "image", study / "reference.dcm", "--model", picker_model, "--json",
                     "--sr", tmp_path / "sr.dcm")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"]["architecture"] == "edge_picker" and len(report["model"]["sha256"]) == 64
    given = [roi for roi in report["rois"] if roi["predicted_dice"] is not None]
    assert len(given) >= 4  # the reference contours of five organs that stand out
    for roi in given:
        low, high = roi["predicted_dice_interval"]
        assert roi["predicted_dice"] > 0.85 and low < roi["predicted_dice"] <= high
        assert roi["domain"]["measure"] == "edge spread" and roi["domain"]["inside"]
        assert roi["domain"]["score"] <= roi["domain"]["threshold"]
        # `contourqa picker` also fits the feature guard; its distance stands beside the spread
        assert roi["domain"]["feature_distance"] <= roi["domain"]["feature_threshold"]
    dump, errors = sr_dump_and_errors(tmp_path / "sr.dcm")
    assert errors == [] and dump.count("Dice Similarity Coefficient") == len(given)
    assert dump.count("Feature distance from the model's training contours") == len(report["rois"])
    assert "edge_picker" in dump  # the algorithm's parameters name it


def test_a_picker_withholds_its_number_on_an_image_where_it_sees_no_one_edge(picker_model, case_copy, tmp_path):
    """Its spread is its guard: the same contours on pure noise get no number, a warning and review."""
    import numpy as np
    import pydicom

    rng = np.random.default_rng(0)
    for path in (case_copy / "image").iterdir():
        dataset = pydicom.dcmread(path)
        dataset.PixelData = rng.integers(0, 1000, dataset.pixel_array.shape, dtype=np.uint16).tobytes()
        dataset.save_as(path)
    result = run_cli("assess", case_copy / "image", case_copy / "reference.dcm", "--model", picker_model, "--json",
                     "--sr", tmp_path / "sr.dcm")
    assert result.returncode == 0, result.stderr
    for roi in json.loads(result.stdout)["rois"]:
        assert roi["predicted_dice"] is None and roi["domain"]["inside"] is False
        assert roi["domain"]["score"] > roi["domain"]["threshold"]
        assert any(w.startswith("image outside the model's training domain (edge spread ")
                   and "retrain on this site's data (contourqa picker --manifest" in w for w in roi["warnings"])
        assert roi["verdict"] in ("review", "reject")
    dump, errors = sr_dump_and_errors(tmp_path / "sr.dcm")
    assert errors == [] and "Dice Similarity Coefficient" not in dump
    assert f'"{INSIDE_DOMAIN.meaning}")=(373067005,SCT,"No")' in dump


def test_real_mr_of_other_anatomy_gets_no_number_from_the_picker(picker_model, thigh_named_prostate):
    result = run_cli("assess", THIGH / "image", thigh_named_prostate, "--model", picker_model, "--json")
    assert result.returncode == 0, result.stderr
    roi = json.loads(result.stdout)["rois"][0]
    assert roi["predicted_dice"] is None and roi["verdict"] in ("review", "reject")
    # its header names the thigh: the body part alone withholds it, whatever the spread says
    assert roi["domain"]["body_part"] == "EXTREMITY" and roi["domain"]["body_part_known"] is False


def test_an_image_naming_no_body_part_is_judged_by_the_spread_alone(picker_model, case_copy):
    set_image_tags(case_copy / "image", BodyPartExamined=None)
    report = json.loads(run_cli("assess", case_copy / "image", case_copy / "reference.dcm", "--model", picker_model,
                                "--json").stdout)
    assert any(roi["predicted_dice"] is not None for roi in report["rois"])
    assert all("body_part" not in roi["domain"] for roi in report["rois"])


def test_a_nodes_worker_loads_a_picker_folder_as_it_loads_a_network(picker_model):
    loaded = worker_predictor(str(picker_model), "cpu")
    assert isinstance(loaded, PickerPredictor) and loaded.card.architecture == "edge_picker"


@pytest.mark.parametrize("command", ["train", "calibrate"])
def test_commands_that_train_a_network_refuse_a_picker_folder_in_one_line(picker_model, phantom, tmp_path, command):
    manifest = phantom / "manifest.csv"
    arguments = {"train": ["--manifest", manifest, "--out", tmp_path / "m", "--init-from", picker_model, "--quick"],
                 "calibrate": ["--manifest", manifest, "--model", picker_model]}[command]
    result = run_cli(command, *arguments)
    assert result.returncode == 2 and "an edge_picker model, not a network" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_default_picker_gives_no_number_on_real_ct_even_under_pelvic_roi_names(realdata, tmp_path):
    """Its spread alone would let some CT through (the spinal cord's canal wall is one clear edge, only not
    the cord's: docs/model.md); the card's modality keeps a pelvis-MR model off CT."""
    import pydicom

    source = realdata / "Dicom_RT_and_Images_to_Mask" / "AnonDICOM"
    images = tmp_path / "ct"
    images.mkdir()
    for path in source.glob("CT_*.dcm"):
        (images / path.name).write_bytes(path.read_bytes())
    structure = pydicom.dcmread(source / "RS_Body_SpinalCord.dcm")
    for roi in structure.StructureSetROISequence:
        roi.ROIName = {"BODY": "Bladder", "SpinalCord": "Rectum"}[roi.ROIName]
    structure.save_as(tmp_path / "rs.dcm")
    result = run_cli("assess", images, tmp_path / "rs.dcm", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"]["architecture"] == "edge_picker" and report["image_series"]["modality"] == "CT"
    for roi in report["rois"]:
        assert roi["predicted_dice"] is None and any("covers" in w and "on MR" in w for w in roi["warnings"])


def test_a_roi_drawn_round_one_voxel_gets_no_number_and_the_others_still_do(case_copy, tmp_path):
    """A contour so small that it covers one voxel has no surface to read (the mesh of a lone voxel is
    empty): its number is withheld, not a traceback, with the contour named as the cause (not the image),
    and the rest of the structure set is assessed."""
    draw_round_one_voxel(case_copy, "Prostate")
    result = run_cli("assess", case_copy / "image", case_copy / "reference.dcm", "--json", "--sr", tmp_path / "sr.dcm")
    assert result.returncode == 0, result.stderr
    rois = {r["name"]: r for r in json.loads(result.stdout)["rois"]}
    lone = rois["Prostate"]
    assert lone["voxels"] == 1
    assert lone["predicted_dice"] is None and lone["verdict"] in ("review", "reject")
    # the contour is what the model cannot read: said so, and the image is not called outside the domain
    assert "lone voxels" in lone["unreadable_contour"] and "domain" not in lone
    assert "unreadable_contour" in [r["rule"] for r in lone["verdict_reasons"]]
    assert any("check the contour" in w for w in lone["warnings"])
    assert not any("training domain" in w for w in lone["warnings"])
    assert all(r["predicted_dice"] is not None for name, r in rois.items() if name != "Prostate")
    dump, errors = sr_dump_and_errors(tmp_path / "sr.dcm")
    assert errors == [] and "Model read no organ surface in the contour" in dump


def test_contourqa_guard_gives_a_picker_without_one_the_feature_guard_contourqa_picker_fits(picker_model, phantom,
                                                                                          tmp_path):
    """A picker trained before the feature guard (as the shipped picker 3 was) gets it from `contourqa guard`,
    fitted as `contourqa picker` fits it: the same threshold from the same studies, and a new identity."""
    from contourqa.qa_models.predictor import read_card, write_card

    older = tmp_path / "older"
    shutil.copytree(picker_model, older)
    fitted = read_card(picker_model)
    (older / "domain.npz").unlink()
    write_card(fitted.model_copy(update={"feature_guard": None}), older)
    without = read_card(older).sha256
    result = run_cli("guard", "--fit", one_case_manifest(phantom, "case000", tmp_path), "--threshold",
                     one_case_manifest(phantom, "case001", tmp_path), "--model", older, "--cache", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    card = read_card(older)
    assert card.feature_guard.threshold == pytest.approx(fitted.feature_guard.threshold, rel=1e-3)
    assert card.domain == fitted.domain and (older / "domain.npz").exists()
    assert card.sha256 != without  # the guard is part of what the model is
