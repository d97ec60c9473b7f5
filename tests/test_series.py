import shutil

import numpy as np
import pydicom
import pytest
from pydicom.uid import (DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless,
                         generate_uid)

from contourqa.qa_models.errors import GeometryError, InputError
from contourqa.qa_models.series import load_series


def _files(folder):
    return sorted(folder.glob("image/*.dcm"))


def _by_height(folder):
    """File paths sorted by position along the normal, computed here independently."""
    datasets = [(p, pydicom.dcmread(p)) for p in _files(folder)]
    orientation = np.array(datasets[0][1].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    return [p for p, ds in sorted(datasets, key=lambda item: np.dot(item[1].ImagePositionPatient, normal))]


def test_slices_are_ordered_by_position_not_by_name_or_instance_number(case_copy):
    ordered = _by_height(case_copy)
    series = load_series(case_copy / "image")
    assert series.grid.shape == (28, 128, 128)
    for k in (0, 13, 27):
        ds = pydicom.dcmread(ordered[k])
        assert series.slice_sop_instance_uids[k] == ds.SOPInstanceUID
        assert np.array_equal(series.array[k], ds.pixel_array.astype(np.float32))
        assert np.allclose(series.grid.to_patient([[0, 0, k]])[0], np.array(ds.ImagePositionPatient, float), atol=1e-3)


def test_oblique_series_geometry(phantom):
    series = load_series(phantom / "case000" / "image")
    direction = series.grid.direction
    assert not np.allclose(direction, np.eye(3), atol=1e-3)  # seed 1 makes case000 oblique
    assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-5)


def test_descending_positions_load_the_same_volume(case_copy, tmp_path):
    reference = load_series(case_copy / "image")
    # Rename files so that name order is the reverse of position order.
    reversed_dir = tmp_path / "reversed"
    reversed_dir.mkdir()
    for index, path in enumerate(reversed(_by_height(case_copy))):
        shutil.copy(path, reversed_dir / f"{index:03d}.dcm")
    again = load_series(reversed_dir)
    assert np.array_equal(reference.array, again.array)
    assert reference.slice_sop_instance_uids == again.slice_sop_instance_uids


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match="no DICOM image instances"):
        load_series(tmp_path)


def test_not_dicom(case_copy):
    (case_copy / "image" / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="notes.txt: not a DICOM file"):
        load_series(case_copy / "image")


def test_mixed_series(case_copy):
    path = _files(case_copy)[3]
    ds = pydicom.dcmread(path)
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(path)
    with pytest.raises(InputError, match="mixed series"):
        load_series(case_copy / "image")


def test_duplicate_position(case_copy):
    ordered = _by_height(case_copy)
    ds = pydicom.dcmread(ordered[5])
    ds.ImagePositionPatient = pydicom.dcmread(ordered[6]).ImagePositionPatient
    ds.save_as(ordered[5])
    with pytest.raises(GeometryError, match="duplicate slice position"):
        load_series(case_copy / "image")


def test_missing_slice(case_copy):
    _by_height(case_copy)[10].unlink()
    with pytest.raises(GeometryError, match="missing slice"):
        load_series(case_copy / "image")


def test_inconsistent_pixel_spacing(case_copy):
    path = _files(case_copy)[2]
    ds = pydicom.dcmread(path)
    ds.PixelSpacing = [1.0, 1.0]
    ds.save_as(path)
    with pytest.raises(GeometryError, match="inconsistent PixelSpacing"):
        load_series(case_copy / "image")


def test_inconsistent_orientation(case_copy):
    path = _files(case_copy)[2]
    ds = pydicom.dcmread(path)
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(path)
    with pytest.raises(GeometryError, match="inconsistent ImageOrientationPatient"):
        load_series(case_copy / "image")


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless, DeflatedExplicitVRLittleEndian],
                         ids=["rle", "jpeg2000", "jpegls", "deflate"])
def test_compressed_transfer_syntaxes_decode_losslessly(case_copy, syntax):
    reference = load_series(case_copy / "image")
    for path in _files(case_copy):
        ds = pydicom.dcmread(path)
        if syntax == DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax
        else:
            ds.compress(syntax)
        ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(_files(case_copy)[0]).file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(load_series(case_copy / "image").array, reference.array)


def test_jpeg_lossless_written_by_dcmtk_decodes(case_copy):
    # pydicom cannot encode JPEG Lossless; dcmtk's dcmcjpeg writes the real thing (process 14, SV1).
    import subprocess

    from conftest import require_tool
    dcmcjpeg = require_tool("dcmcjpeg")
    reference = load_series(case_copy / "image")
    for path in _files(case_copy):
        subprocess.run([dcmcjpeg, "+e1", str(path), str(path)], check=True, capture_output=True)
    assert pydicom.dcmread(_files(case_copy)[0]).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    assert np.array_equal(load_series(case_copy / "image").array, reference.array)


def test_enhanced_multiframe_mr_is_read_frame_by_frame(realdata, tmp_path):
    source = realdata / "dcm_qa_enh" / "In" / "Siemens" / "XA10" / "6_1.dcm"
    shutil.copy(source, tmp_path / "volume.dcm")
    series = load_series(tmp_path)
    ds = pydicom.dcmread(source)
    assert series.grid.shape == (int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    assert np.allclose(series.grid.spacing[:2], [3.375, 3.375], atol=1e-3)
    heights = [series.grid.to_patient([[0, 0, k]])[0] @ series.grid.direction[:, 2] for k in range(series.grid.shape[0])]
    assert np.all(np.diff(heights) > 0)


def test_several_enhanced_volumes_of_one_series_are_refused_naming_them(realdata):
    # Time points of the same six slices: positions repeat, which is not one volume.
    with pytest.raises(GeometryError, match=r"6 frames of ORIGINAL\\PRIMARY\\M\\NONE time 1; 6 frames of .* time 2"):
        load_series(realdata / "dcm_qa_enh" / "In" / "Siemens" / "XA10")


PHILIPS = "dcm_qa_enh/In/Philips"  # 64 frames: a magnitude and a field-map frame at each of 32 positions


def _frames_of_type(path, frame_type):
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {(str(ds.SOPInstanceUID), n) for n, group in enumerate(ds.PerFrameFunctionalGroupsSequence)
            if group.MRImageFrameTypeSequence[0].FrameType[3] == frame_type}


def test_frames_of_two_types_at_each_position_are_chosen_by_the_structure_sets_references(realdata):
    folder = realdata / PHILIPS
    with pytest.raises(GeometryError, match=r"32 frames of ORIGINAL\\PRIMARY\\T1\\M time 1; 32 frames of .*FIELD_MAP.* "
                                            "references none of their frames"):
        load_series(folder)
    path = next(folder.glob("*.dcm"))
    magnitude, field_map = _frames_of_type(path, "M"), _frames_of_type(path, "FIELD_MAP")
    series = load_series(folder, {sorted(magnitude)[3]})
    assert series.grid.shape[0] == 32 and {(u, f) for u, f in zip(series.slice_sop_instance_uids, series.slice_frames)} == magnitude
    pixels = pydicom.dcmread(path).pixel_array
    other = load_series(folder, {sorted(field_map)[0]})
    assert not np.array_equal(series.array, other.array)
    first = min(magnitude, key=lambda f: series.slice_of_instance(*f))
    assert np.allclose(series.array[0], pydicom.pixels.apply_rescale(pixels, pydicom.dcmread(path))[first[1]])
    with pytest.raises(GeometryError, match="references frames of several of them"):
        load_series(folder, {sorted(magnitude)[0], sorted(field_map)[0]})


def test_references_name_the_frames_of_multi_frame_images():
    from pydicom.dataset import Dataset

    from contourqa.qa_models.references import structure_references

    image = Dataset()
    image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4.1", "1.2.3"
    image.ReferencedFrameNumber = 5
    contour = Dataset()
    contour.ContourImageSequence = [image]
    roi = Dataset()
    roi.ContourSequence = [contour]
    rtstruct = Dataset()
    rtstruct.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    rtstruct.ROIContourSequence = [roi]
    references = structure_references(rtstruct)
    assert references.frames == {("1.2.3", 4)} and references.instance_uids == {"1.2.3"}
