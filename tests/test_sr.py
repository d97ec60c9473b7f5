import subprocess

import highdicom as hd
import pydicom
import pytest

from conftest import require_tool
from contourqa.qa_models.assessment import assess_files
from contourqa.qa_models.sr_report import PRIVATE_SCHEME, SrIdentity, write_sr

IDENTITY = SrIdentity(series_instance_uid="1.2.826.0.1.3680043.8.498.1", sop_instance_uid="1.2.826.0.1.3680043.8.498.2")


@pytest.fixture(scope="module", params=["auto01.dcm", "auto01_binary_seg.dcm"], ids=["rtstruct", "seg"])
def written(request, phantom, tmp_path_factory):
    study = phantom / "case000"
    assessment = assess_files(study / "image", study / "candidates" / request.param)
    path = write_sr(assessment, tmp_path_factory.mktemp("sr") / "report.dcm", IDENTITY)
    return assessment, path


def test_sr_validates_with_dciodvfy(written):
    _, path = written
    result = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


def test_sr_renders_with_dsrdump(written):
    assessment, path = written
    result = subprocess.run([require_tool("dsrdump"), str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Comprehensive 3D SR" in result.stdout
    for roi in assessment.rois:
        assert f"ROI {roi.number}: {roi.name}" in result.stdout


def test_sr_identity_comes_from_the_assessed_objects(written):
    assessment, path = written
    sr = pydicom.dcmread(path)
    structure = assessment.structure
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert (sr.SOPInstanceUID, sr.SeriesInstanceUID) == (IDENTITY.sop_instance_uid, IDENTITY.series_instance_uid)
    assert (sr.PatientID, sr.PatientName, sr.StudyInstanceUID) == (
        structure.PatientID, structure.PatientName, structure.StudyInstanceUID)
    (scheme,) = sr.CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == PRIVATE_SCHEME
    evidence = {item.ReferencedSOPInstanceUID
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for item in series.ReferencedSOPSequence}
    assert structure.SOPInstanceUID in evidence
    assert set(assessment.series.slice_sop_instance_uids) <= evidence


def test_sr_read_back_finds_every_value_written(written):
    assessment, path = written
    sr = hd.sr.srread(path)
    groups = sr.content.get_volumetric_roi_measurement_groups() + sr.content.get_image_measurement_groups()
    assert len(groups) == len(assessment.rois)
    by_identifier = {g.tracking_identifier: g for g in groups}
    for roi in assessment.rois:
        group = by_identifier[f"ROI {roi.number}: {roi.name}"]
        (volume,) = group.get_measurements()
        assert volume.name.value == "118565006" and volume.value == pytest.approx(roi.volume_ml, abs=1e-3)
        evaluations = {e.name.value: e.value.value for e in group.get_qualitative_evaluations()}
        assert evaluations.pop("VERDICT") == roi.verdict.value.upper()
        screens = {s.name: s.passed for s in roi.screens}
        assert len(evaluations) == len(screens)
        assert sorted(v == "373066001" for v in evaluations.values()) == sorted(screens.values())
        algorithm = [item.TextValue for item in group[0].ContentSequence
                     if item.ConceptNameCodeSequence[0].CodeValue == "111001"]  # DCM Algorithm Name
        assert algorithm == ["contourqa"]
        if roi.name.startswith("Prostate"):
            assert group.finding_sites[0].value.value == "41216001"
        if str(assessment.structure.SOPClassUID).endswith("66.4"):
            assert group.referenced_segment.referenced_sop_instance_uid == assessment.structure.SOPInstanceUID
            assert list(group.referenced_segment.referenced_segment_numbers) == [roi.segment_number]
