"""`contourqa candidates`: realistic errors of a site's own reference contours, on real vendor data."""

import csv
import json
import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from conftest import THIGH, require_tool, run_cli
from contourqa.qa_models.predictor import default_model_dir, load_predictor
from contourqa.qa_models.series import load_series
from contourqa.training.cache import load_cases
from contourqa.training.diagnose import report as diagnose_report
from contourqa.training.manifest import read_manifest
from contourqa.training.phantom_dicom import rtstruct_dataset, save
from contourqa.training.site_candidates import site_identity


def _one_line_error(result, fragment: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and fragment in lines[0], result.stderr


@pytest.fixture(scope="module")
def thigh_candidates(realdata, tmp_path_factory):
    """Eight candidates of the MIM GTV on the real Philips T1 MR, written twice from one seed."""
    reference = next((THIGH / "mask").glob("*.dcm"))
    folders = [tmp_path_factory.mktemp("candidates") for _ in range(2)]
    for folder in folders:
        result = run_cli("candidates", THIGH / "image", reference, "--out", folder, "--count", "8", "--seed", "4",
                         "--case-id", "thigh")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(folder / "manifest.csv")
    return reference, folders


def test_candidates_of_a_real_expert_contour_score_as_their_kind_of_error(thigh_candidates):
    reference, (folder, _) = thigh_candidates
    rows = read_manifest(folder / "manifest.csv")
    assert [r.kind for r in rows].count("failure_empty") == 1 and len(rows) == 8 + 4
    assert {r.roi for r in rows} == {"GTV_Mass_MR_T1"} and {r.reference for r in rows} == {reference.resolve()}
    assert {r.image for r in rows} == {(THIGH / "image").resolve()}
    (case,) = load_cases(rows)  # true Dice between the DICOM objects as contourqa rasterises them
    dice = {c.row.candidate.name: (c.row.kind, c.dice) for c in case.candidates}
    realistic = [d for kind, d in dice.values() if not kind.startswith("failure")]
    assert all(0.3 < d < 1.0 for d in realistic), dice
    assert all(d >= 0.8 for kind, d in dice.values() if kind == "good"), dice
    assert len({round(d, 3) for d in realistic}) > 4  # spread over the range, not one error repeated
    gtv = case.references["gtv_mass_mr_t1"]
    assert dice["failure_empty.dcm"][1] == 0
    assert dice["failure_all_ones.dcm"][1] == pytest.approx(2 * gtv.sum() / (gtv.sum() + gtv.size), abs=1e-6)
    assert dice["failure_shifted.dcm"][1] < 0.2


def test_candidates_are_reproducible_from_the_seed(thigh_candidates):
    _, (first, second) = thigh_candidates
    kinds = [[r["kind"] for r in csv.DictReader((f / "manifest.csv").open())] for f in (first, second)]
    assert kinds[0] == kinds[1]
    a, b = (load_cases(read_manifest(f / "manifest.csv"))[0] for f in (first, second))
    assert [c.dice for c in a.candidates] == pytest.approx([c.dice for c in b.candidates], abs=1e-9)


def test_candidates_belong_to_the_real_study_and_validate(thigh_candidates):
    _, (folder, _) = thigh_candidates
    image = pydicom.dcmread(next((THIGH / "image").iterdir()), stop_before_pixels=True)
    dciodvfy = require_tool("dciodvfy")
    for name in ("auto01.dcm", "failure_noise_seg.dcm"):
        ds = pydicom.dcmread(folder / "thigh" / name)
        assert (ds.PatientID, ds.StudyInstanceUID, ds.FrameOfReferenceUID) == (
            image.PatientID, image.StudyInstanceUID, image.FrameOfReferenceUID)
        assert len(ds.StudyID) <= 16 < len(image.StudyID)  # the input's own is too long for SH
        result = subprocess.run([dciodvfy, str(folder / "thigh" / name)], capture_output=True, text=True)
        assert [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")] == [], name


def test_one_folder_gathers_a_sites_cases_and_a_case_written_again_replaces_its_rows(realdata, tmp_path):
    reference = next((THIGH / "mask").glob("*.dcm"))

    def case_rows() -> list[str]:
        return [row["case_id"] for row in csv.DictReader((tmp_path / "manifest.csv").open())]

    for case, count in (("first", "2"), ("second", "3"), ("first", "1")):
        result = run_cli("candidates", THIGH / "image", reference, "--out", tmp_path, "--count", count, "--case-id", case)
        assert result.returncode == 0, result.stderr
    assert case_rows() == ["second"] * (3 + 4) + ["first"] * (1 + 4)
    assert {r.candidate.parent.name for r in read_manifest(tmp_path / "manifest.csv")} == {"first", "second"}
    # without --case-id the case is the reference's own SOP Instance UID
    assert run_cli("candidates", THIGH / "image", reference, "--out", tmp_path, "--count", "1").returncode == 0
    assert case_rows()[-1] == pydicom.dcmread(reference).SOPInstanceUID


def test_a_seg_reference_on_a_series_without_a_character_set(realdata, tmp_path):
    # dcmqi's liver SEG on three GE CT slices whose SpecificCharacterSet is empty (highdicom refuses that as is)
    folder = realdata / "dcmqi" / "data" / "segmentations"
    assert not pydicom.dcmread(folder / "ct-3slice" / "01.dcm", stop_before_pixels=True).get("SpecificCharacterSet")
    result = run_cli("candidates", folder / "ct-3slice", folder / "liver.dcm", "--out", tmp_path, "--count", "3",
                     "--case-id", "liver", "--seed", "2")
    assert result.returncode == 0, result.stderr
    (case,) = load_cases(read_manifest(tmp_path / "manifest.csv"))
    dice = {c.row.kind: c.dice for c in case.candidates}
    assert dice["failure_empty"] == 0 and dice["failure_noise"] < 0.9
    assert all(0.3 < d < 1.0 for kind, d in dice.items() if not kind.startswith("failure")), dice
    check = subprocess.run([require_tool("dciodvfy"), str(tmp_path / "liver" / "failure_noise_seg.dcm")],
                           capture_output=True, text=True)
    assert not [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]


def test_evaluate_on_a_sites_candidates_withholds_where_the_model_does_not_know_the_image(
        thigh_named_prostate, tmp_path):
    # the workflow a site runs before trusting the model: its own expert contour, the shipped model
    made = run_cli("candidates", THIGH / "image", thigh_named_prostate, "--out", tmp_path, "--count", "6")
    assert made.returncode == 0, made.stderr
    result = run_cli("evaluate", "--manifest", tmp_path / "manifest.csv", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["realistic"]["n"] == 6 and report["domain"]["inside_realistic"] == 0.0
    # and says why: the header names a body part the model was not fitted on
    assert report["domain"]["body_part_unknown_realistic"] == 1.0 and report["domain"]["unknown_body_parts"] == ["EXTREMITY"]
    text = run_cli("evaluate", "--manifest", tmp_path / "manifest.csv").stdout
    assert ("domain guard: 0.0% of realistic candidates inside (given a number); 100.0% on images naming a body "
            "part the model was not fitted on (EXTREMITY)") in text
    # the site's expert contour itself gets no number either
    assert report["references"]["n"] == 1 and report["references"]["given"] == 0
    assert "reference contours: n=1 given=0\n" in text
    edge = report["baselines"]["edge profile (nothing fitted)"]
    assert (f"baseline edge profile (nothing fitted): n=6 MAE={edge['mae']:.4f} Spearman=" in text
            and f"global accuracy={edge['global_accuracy']:.1%}" in text)
    assert all(f["flagged"] == f["n"] == 1 for f in report["failures"].values()) and len(report["failures"]) == 4
    # on this T1 MR the tumour does not stand out from the muscle round it: no candidate has boundary
    # evidence, and the diagnosis pairs the model's error with it the way evaluate measured it
    diagnosis = diagnose_report(tmp_path / "manifest.csv", None, load_predictor(default_model_dir()))
    assert "evidence (own rim CNR >= 0.35 or edge fit >= 1.1): 0% of candidates" in diagnosis
    assert f"with evidence - (n 0), without {report['realistic']['mae']:.3f} (n 6)" in diagnosis


def test_bad_input_is_one_line_error(tmp_path):
    reference = next((THIGH / "mask").glob("*.dcm"))
    _one_line_error(run_cli("candidates", THIGH / "image", reference, "--out", tmp_path, "--roi", "Liver"),
                    "ROI 'Liver' not found; the structure set has: GTV_Mass_MR_T1")
    _one_line_error(run_cli("candidates", THIGH / "image", reference, "--out", tmp_path, "--count", "0"),
                    "--count must be at least 1")
    _one_line_error(run_cli("candidates", reference, THIGH / "image", "--out", tmp_path),
                    "a folder, not a structure set file")
    _one_line_error(run_cli("candidates", THIGH / "image", reference, "--out", tmp_path, "--case-id", "../up"),
                    "--case-id '../up' cannot name a folder")
    assert not (tmp_path / "manifest.csv").exists() and not list(tmp_path.iterdir())
    (tmp_path / "manifest.csv").write_text("case_id,image,reference,candidate,roi,kind,age\n")
    _one_line_error(run_cli("candidates", THIGH / "image", reference, "--out", tmp_path),
                    "exists and is not a manifest of `contourqa candidates`")
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.csv"]  # refused before anything was written


def test_a_reference_without_contours_on_the_series_is_refused(realdata, tmp_path):
    structure = pydicom.dcmread(next((THIGH / "mask").glob("*.dcm")))
    del structure.ROIContourSequence[0].ContourSequence
    structure.save_as(tmp_path / "empty.dcm")
    _one_line_error(run_cli("candidates", THIGH / "image", tmp_path / "empty.dcm", "--out", tmp_path / "out"),
                    "no ROI with a contour on this series")


def test_a_multi_frame_series_is_refused_naming_it(realdata, tmp_path):
    images = tmp_path / "enhanced"
    images.mkdir()
    shutil.copy(realdata / "dcm_qa_enh" / "In" / "Siemens" / "XA10" / "6_1.dcm", images)
    series = load_series(images)
    square = series.grid.to_patient(np.array([[10.0, 10, 2], [20, 10, 2], [20, 20, 2], [10, 20, 2]]))
    image = series.first_dataset
    save(rtstruct_dataset([image] * series.grid.shape[0], site_identity(image), {"Prostate": [(2, [square])]},
                          "on enhanced MR"), tmp_path / "rs.dcm")
    _one_line_error(run_cli("candidates", images, tmp_path / "rs.dcm", "--out", tmp_path / "out"),
                    "a multi-frame series; candidates are written on single-frame series only")
