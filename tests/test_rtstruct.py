import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import require_tool, run_cli
from contourqa.qa_models.rtstruct import rasterise_roi, read_rois
from contourqa.qa_models.series import load_series


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def masks_by_name(image_dir, structure_path):
    series = load_series(image_dir)
    rois = read_rois(pydicom.dcmread(structure_path))
    return series, {roi.name: rasterise_roi(roi, series) for roi in rois}


def test_ibsi_mr_matches_published_reference_mask_by_geometry(realdata):
    # Its ContourImageSequence names instances that are absent: contours must be placed by geometry.
    case = realdata / "ibsi_sts_008"
    series, masks = masks_by_name(case / "MR_T1" / "image", case / "MR_T1" / "mask" / "RS.dcm")
    reference = sitk.ReadImage(str(case / "MR_T1_mask.nii.gz"))
    assert np.allclose(reference.GetOrigin(), series.grid.origin, atol=1e-3)
    expected = sitk.GetArrayFromImage(reference) > 0
    (mask,) = masks.values()
    assert dice(mask.mask, expected) >= 0.99
    assert mask.mask.sum() == expected.sum() == 8862


def test_eclipse_structure_set_agrees_with_independent_label_map(realdata, tmp_path):
    source = realdata / "Dicom_RT_and_Images_to_Mask" / "AnonDICOM"
    for path in source.glob("CT_*.dcm"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    _, masks = masks_by_name(tmp_path, source / "RS_Body_SpinalCord.dcm")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(source / "Mask.nii.gz")))
    # DicomRTTool's label map is more boundary-inclusive (PROVENANCE.md): agreement, not identity.
    assert dice(masks["SpinalCord"].mask, labels == 1) > 0.9
    assert dice(masks["BODY"].mask, labels > 0) > 0.99


@pytest.mark.parametrize("case", ["case000", "case001"], ids=["oblique", "axial"])
def test_agrees_with_plastimatch_on_phantom(phantom, tmp_path, case):
    plastimatch = require_tool("plastimatch")
    study = phantom / case
    subprocess.run([plastimatch, "convert", "--input", study / "reference.dcm", "--referenced-ct", study / "image",
                    "--output-prefix", tmp_path / "plastimatch", "--prefix-format", "nii.gz", "--xor-contours"],
                   check=True, capture_output=True)
    result = run_cli("rasterise", study / "image", study / "reference.dcm", "--out", tmp_path / "ours")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "ours").glob("*.nii.gz"))
    assert names == ["Bladder.nii.gz", "FemoralHead_L.nii.gz", "FemoralHead_R.nii.gz", "Prostate.nii.gz", "Rectum.nii.gz"]
    for name in names:
        ours = sitk.ReadImage(str(tmp_path / "ours" / name))
        theirs = sitk.ReadImage(str(tmp_path / "plastimatch" / name))
        assert np.allclose(ours.GetOrigin(), theirs.GetOrigin(), atol=1e-3)
        assert np.allclose(ours.GetDirection(), theirs.GetDirection(), atol=1e-4)
        a, b = sitk.GetArrayFromImage(ours) > 0, sitk.GetArrayFromImage(theirs) > 0
        assert a.sum() > 100
        assert dice(a, b) >= 0.99, name


def test_rectum_lumen_is_a_hole(phantom):
    _, masks = masks_by_name(phantom / "case001" / "image", phantom / "case001" / "reference.dcm")
    rectum = masks["Rectum"].mask
    k = int(np.argmax(rectum.sum(axis=(1, 2))))
    rows, columns = np.nonzero(rectum[k])
    centre = int(round(rows.mean())), int(round(columns.mean()))
    assert not rectum[k][centre]  # the centre of the ring is the lumen
    assert rectum[k, centre[0], columns.min():centre[1]].any()


def _edit_first_contour(path, out, **changes):
    ds = pydicom.dcmread(path)
    contour = ds.ROIContourSequence[0].ContourSequence[0]
    for keyword, value in changes.items():
        setattr(contour, keyword, value)
    ds.save_as(out)
    return ds


def test_point_and_open_contours_are_ignored_with_a_warning(phantom, tmp_path):
    study = phantom / "case001"
    edited = tmp_path / "rs.dcm"
    _edit_first_contour(study / "reference.dcm", edited, ContourGeometricType="OPEN_PLANAR")
    series, masks = masks_by_name(study / "image", edited)
    _, original = masks_by_name(study / "image", study / "reference.dcm")
    prostate = masks["Prostate"]
    assert any("OPEN_PLANAR contour(s) ignored" in w for w in prostate.warnings)
    assert prostate.mask.sum() < original["Prostate"].mask.sum()


def _move_first_prostate_contour(study, out, slices):
    ds = pydicom.dcmread(study / "reference.dcm")
    contour = ds.ROIContourSequence[0].ContourSequence[0]
    points = np.array(contour.ContourData, dtype=float).reshape(-1, 3)
    series = load_series(study / "image")
    points += series.grid.direction[:, 2] * series.grid.spacing[2] * slices
    contour.ContourData = [f"{v:.4f}" for v in points.ravel()]
    ds.save_as(out)
    return series, {roi.name: rasterise_roi(roi, series) for roi in read_rois(pydicom.dcmread(out))}


@pytest.mark.parametrize("slices", [0.4, -0.3, 40.0], ids=["between-planes", "between-planes-below", "beyond-volume"])
def test_contour_on_no_image_plane_is_reported_not_snapped(phantom, tmp_path, slices):
    _, masks = _move_first_prostate_contour(phantom / "case001", tmp_path / "rs.dcm", slices)
    assert any("1 contour(s) lie on no image plane" in w for w in masks["Prostate"].warnings)


def test_contour_slightly_off_its_plane_is_placed_on_it(phantom, tmp_path):
    _, original = masks_by_name(phantom / "case001" / "image", phantom / "case001" / "reference.dcm")
    _, masks = _move_first_prostate_contour(phantom / "case001", tmp_path / "rs.dcm", 0.1)
    assert not masks["Prostate"].warnings
    assert np.array_equal(masks["Prostate"].mask, original["Prostate"].mask)


def test_roi_without_contours_is_an_empty_mask(phantom):
    study = phantom / "case001"
    series, masks = masks_by_name(study / "image", study / "candidates" / "failure_empty.dcm")
    assert set(masks) == {"Prostate", "Bladder", "Rectum", "FemoralHead_L", "FemoralHead_R"}
    assert all(m.mask.shape == series.grid.shape and not m.mask.any() for m in masks.values())


def test_rasterise_writes_masks_with_the_image_geometry(phantom, tmp_path):
    study = phantom / "case000"
    result = run_cli("rasterise", study / "image", study / "reference.dcm", "--out", tmp_path, "--roi", "prostate")
    assert result.returncode == 0, result.stderr
    image = sitk.ReadImage(str(tmp_path / "Prostate.nii.gz"))
    series = load_series(study / "image")
    assert np.allclose(image.GetOrigin(), series.grid.origin, atol=1e-4)
    assert np.allclose(np.array(image.GetDirection()).reshape(3, 3), series.grid.direction, atol=1e-5)
    assert image.GetSize() == tuple(reversed(series.grid.shape))
    assert list(tmp_path.iterdir()) == [tmp_path / "Prostate.nii.gz"]
