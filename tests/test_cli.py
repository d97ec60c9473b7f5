import json
import subprocess

import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import require_tool, run_cli


def assert_one_line_error(result, fragment):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("contourqa: error:"), result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in lines[0]


def test_assess_json_reports_every_roi(phantom, tmp_path):
    study = phantom / "case001"
    result = run_cli("assess", study / "image", study / "candidates" / "auto01.dcm", "--json", "--sr", tmp_path / "sr.dcm")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    structure = pydicom.dcmread(study / "candidates" / "auto01.dcm")
    assert report["structure"]["sop_instance_uid"] == structure.SOPInstanceUID
    assert report["structure"]["sop_class"] == "RT Structure Set"
    assert report["image_series"]["instances"] == 28
    assert [r["name"] for r in report["rois"]] == ["Prostate", "Bladder", "Rectum", "FemoralHead_L", "FemoralHead_R"]
    for roi in report["rois"]:
        assert roi["verdict"] in {"accept", "review", "reject"}
        assert roi["volume_ml"] > 0
        assert {s["name"] for s in roi["screens"]} >= {"empty", "fragmentation", "volume_range"}
        assert all(set(s) >= {"name", "passed", "detail"} for s in roi["screens"])
    assert (tmp_path / "sr.dcm").is_file()


def test_the_installed_command_in_a_fresh_process_answers_as_the_tests_forked_ones(phantom, tmp_path):
    """The suite forks its commands from a process that has imported the libraries (tests/cli_runner.py);
    the console script a user runs, started cold, must give the same answer and the same one-line errors."""
    command = require_tool("contourqa")
    study = phantom / "case001"
    args = ["assess", str(study / "image"), str(study / "candidates" / "auto01.dcm"), "--json"]
    fresh = subprocess.run([command, *args], capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(fresh.stdout)["rois"] == json.loads(run_cli(*args).stdout)["rois"]
    missing = subprocess.run([command, "assess", str(study / "image"), str(tmp_path / "none.dcm")],
                             capture_output=True, text=True, timeout=300)
    assert_one_line_error(missing, "none.dcm")


@pytest.mark.parametrize("candidate", ["failure_empty.dcm", "failure_all_ones.dcm", "failure_noise_seg.dcm"])
def test_failure_modes_are_rejected(phantom, candidate):
    study = phantom / "case001"
    result = run_cli("assess", study / "image", study / "candidates" / candidate, "--json")
    assert result.returncode == 0, result.stderr
    assert {r["verdict"] for r in json.loads(result.stdout)["rois"]} == {"reject"}


def test_shifted_failure_is_rejected_where_it_leaves_the_body(phantom):
    # A shift that keeps a ROI inside the body is left to the Dice regressor; the screens catch the rest.
    study = phantom / "case001"
    result = run_cli("assess", study / "image", study / "candidates" / "failure_shifted.dcm", "--json", "--no-model")
    rois = json.loads(result.stdout)["rois"]
    for roi in rois:
        outside = next(s for s in roi["screens"] if s["name"] == "outside_body")
        assert (roi["verdict"] == "reject") == (not outside["passed"] or roi["voxels"] == 0)
    assert sum(r["verdict"] == "reject" for r in rois) >= 4


def _failed(roi: dict, severity: str | None = None) -> list[str]:
    return [s["name"] for s in roi["screens"] if not s["passed"] and severity in (None, s["severity"])]


@pytest.mark.parametrize("model", ["edge-picker", "phantom-v15"])
def test_a_contour_a_screen_finds_off_its_organ_gets_no_dice_and_says_which_screen(phantom, model):
    # a prostate moved off its organ once read 0.59 against the edges it landed on; the screen's verdict stands alone
    study = phantom / "case001"
    for candidate in ("failure_shifted.dcm", "failure_all_ones.dcm"):
        result = run_cli("assess", study / "image", study / "candidates" / candidate, "--json", "--model", model)
        rois = json.loads(result.stdout)["rois"]
        off = {r["name"]: [n for n in _failed(r) if n == "position" or n in _failed(r, "reject")] for r in rois}
        assert any(off.values()), candidate
        for roi in rois:
            if off[roi["name"]]:
                assert roi["predicted_dice"] is None and roi["verdict"] != "accept", roi
                assert f"no Dice predicted: the contour failed the {', '.join(off[roi['name']])} screen" in \
                    " ".join(roi["warnings"]), roi["warnings"]
            else:  # the others keep their number, or the domain guard's reason for none
                assert roi["predicted_dice"] is not None or roi["domain"]["inside"] is False, roi
        # moved inside the body, out of its place: the position screen alone withholds the number, for review
        in_body = [r for r in rois if off[r["name"]] == ["position"]]
        assert all(r["verdict"] == "review" for r in in_body) and (in_body or candidate != "failure_shifted.dcm")


def test_reference_contours_are_not_rejected(phantom):
    study = phantom / "case001"
    result = run_cli("assess", study / "image", study / "reference.dcm", "--json")
    verdicts = [r["verdict"] for r in json.loads(result.stdout)["rois"]]
    assert "reject" not in verdicts and verdicts[0] == "accept"


def test_not_dicom(phantom, tmp_path):
    bogus = tmp_path / "struct.dcm"
    bogus.write_text("hello")
    assert_one_line_error(run_cli("assess", phantom / "case001" / "image", bogus), "not a DICOM file")


def test_unsupported_sop_class(phantom, tmp_path):
    image = next((phantom / "case001" / "image").iterdir())
    result = run_cli("assess", phantom / "case001" / "image", image, "--sr", tmp_path / "sr.dcm")
    assert_one_line_error(result, "unsupported SOP class 1.2.840.10008.5.1.4.1.1.4")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a partial SR


def test_frame_of_reference_differs(phantom, tmp_path):
    ds = pydicom.dcmread(phantom / "case001" / "reference.dcm")
    other = generate_uid()
    ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = other
    for roi in ds.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = other
    ds.save_as(tmp_path / "rs.dcm")
    result = run_cli("assess", phantom / "case001" / "image", tmp_path / "rs.dcm", "--sr", tmp_path / "sr.dcm")
    assert_one_line_error(result, "frame of reference")
    assert not (tmp_path / "sr.dcm").exists()


@pytest.mark.parametrize("structure, fragment", [
    ("rt.dcm", "differs from the series"),  # rt-utils: frame of reference does not match the CT
    ("invalid_reference_rt.dcm", "referenced images missing"),  # MIM: 3 of its 5 CT slices are absent
])
def test_real_structure_sets_with_bad_references(realdata, tmp_path, structure, fragment):
    base = realdata / "rt-utils" / "tests" / "mock_data"
    result = run_cli("assess", base, base / structure, "--sr", tmp_path / "sr.dcm")
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "sr.dcm").exists()


def test_referenced_images_missing(case_copy, tmp_path):
    series_files = sorted((case_copy / "image").iterdir(),
                          key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    # Remove the top slices, where the bladder is drawn: the series stays regular but shorter.
    for path in series_files[-8:]:
        path.unlink()
    result = run_cli("assess", case_copy / "image", case_copy / "reference.dcm", "--sr", tmp_path / "sr.dcm")
    assert_one_line_error(result, "referenced images missing")
    assert not (tmp_path / "sr.dcm").exists()


def test_roi_name_not_found(phantom):
    result = run_cli("assess", phantom / "case001" / "image", phantom / "case001" / "reference.dcm", "--roi", "Liver")
    assert_one_line_error(result, "ROI 'Liver' not found; the structure set has: Prostate, Bladder")


def test_unwritable_sr_path_is_refused_before_the_work(phantom, tmp_path):
    target = tmp_path / "missing" / "sr.dcm"
    result = run_cli("assess", phantom / "case001" / "image", phantom / "case001" / "reference.dcm", "--sr", target)
    assert_one_line_error(result, f"{target}: its folder {target.parent} does not exist")
    # checked before loading anything: a bad structure file is not even read
    result = run_cli("assess", phantom / "case001" / "image", tmp_path / "nothing.dcm", "--sr", target)
    assert_one_line_error(result, "does not exist")


def test_missing_image_folder(phantom, tmp_path):
    assert_one_line_error(run_cli("assess", tmp_path / "nowhere", phantom / "case001" / "reference.dcm"),
                          "no such folder")


def test_a_bad_input_is_refused_before_the_model_is_loaded(phantom, tmp_path):
    # the inputs are read before torch and the weights load, so the error names the input, and comes fast
    result = run_cli("assess", phantom / "case001" / "image", tmp_path / "nothing.dcm", "--model", tmp_path / "no-model")
    assert_one_line_error(result, f"{tmp_path / 'nothing.dcm'}: no such file")


def test_swapped_arguments_say_which_is_which(phantom):
    study = phantom / "case001"
    result = run_cli("assess", study / "reference.dcm", study / "image")
    assert_one_line_error(result, f"{study / 'image'}: a folder, not a structure set file (the image folder comes first")


def test_phantom_objects_validate_with_dciodvfy(phantom):
    dciodvfy = require_tool("dciodvfy")
    study = phantom / "case000"
    paths = [next((study / "image").iterdir()), study / "reference.dcm", study / "candidates" / "auto01_binary_seg.dcm",
             study / "candidates" / "auto02_fractional_seg.dcm", study / "candidates" / "failure_empty.dcm"]
    for path in paths:
        result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], path.name


def test_phantom_manifest_and_reproducibility(tmp_path):
    first = run_cli("phantom", tmp_path / "a", "--cases", "1", "--seed", "7", "--size", "64", "64", "28")
    second = run_cli("phantom", tmp_path / "b", "--cases", "1", "--seed", "7", "--size", "64", "64", "28")
    assert first.returncode == 0 and second.returncode == 0, first.stderr
    header = (tmp_path / "a" / "manifest.csv").read_text().splitlines()[0]
    assert header.startswith("case_id,image,reference,candidate,roi")
    rows = (tmp_path / "a" / "manifest.csv").read_text().splitlines()[1:]
    assert len(rows) == 5 * (6 + 2 + 4)
    kinds_a = [r.split(",")[5] for r in rows]
    kinds_b = [r.split(",")[5] for r in (tmp_path / "b" / "manifest.csv").read_text().splitlines()[1:]]
    assert kinds_a == kinds_b
    for row in rows:
        case_id, image, reference, candidate = row.split(",")[:4]
        assert (tmp_path / "a" / image).is_dir() and (tmp_path / "a" / candidate).is_file()
    pixels = lambda root: sorted(pydicom.dcmread(p).PixelData for p in (root / "case000" / "image").iterdir())  # noqa: E731
    assert pixels(tmp_path / "a") == pixels(tmp_path / "b")


def test_phantom_refuses_zero_cases(tmp_path):
    assert_one_line_error(run_cli("phantom", tmp_path, "--cases", "0"), "--cases must be at least 1")


def _reason_codes_in_sr(path) -> list[str]:
    def items(dataset):
        for item in dataset.get("ContentSequence", []):
            yield item
            yield from items(item)
    return [item.ConceptCodeSequence[0].CodeValue for item in items(pydicom.dcmread(path))
            if item.ConceptNameCodeSequence[0].CodeValue == "VERDICT-WHY"]


def test_every_verdict_below_accept_names_its_reasons_in_json_table_and_sr(phantom, tmp_path):
    study = phantom / "case001"
    arguments = (study / "image", study / "candidates" / "failure_shifted.dcm")
    result = run_cli("assess", *arguments, "--json", "--sr", tmp_path / "sr.dcm")
    rois = json.loads(result.stdout)["rois"]
    table = run_cli("assess", *arguments).stdout
    for roi in rois:
        rules = [r["rule"] for r in roi["verdict_reasons"]]
        assert (roi["verdict"] == "accept") == (rules == [])
        assert {s["name"] for s in roi["screens"] if not s["passed"]} <= set(rules)
        dice = roi["predicted_dice"]
        if dice is not None and dice < 0.75:
            assert {"rule": "dice_reject", "detail": f"predicted Dice {dice:.3f} < 0.75"} in roi["verdict_reasons"]
        for reason in roi["verdict_reasons"]:
            assert reason["detail"] in table
    assert any(r["verdict_reasons"] for r in rois)
    assert len(_reason_codes_in_sr(tmp_path / "sr.dcm")) == sum(len(r["verdict_reasons"]) for r in rois)


def test_long_commands_report_progress_on_stderr_without_a_terminal(tmp_path):
    result = run_cli("phantom", tmp_path / "p", "--cases", "2", "--size", "64", "64", "8")
    assert result.returncode == 0
    assert result.stderr.splitlines() == ["phantom studies (classic): 1/2", "phantom studies (classic): 2/2"]
