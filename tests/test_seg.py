import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from contourqa.qa_models.errors import ReferenceMismatchError
from contourqa.qa_models.geometry import to_sitk
from contourqa.qa_models.rtstruct import rasterise_roi, read_rois
from contourqa.qa_models.seg import decode_segments
from contourqa.qa_models.series import load_series

DCMQI = "dcmqi/data/segmentations"


def _on_grid(reference_path, mask, grid):
    """A labelled reference image (nrrd) resampled by nearest neighbour onto our mask's grid."""
    reference = sitk.ReadImage(str(reference_path))
    target = to_sitk(mask.astype(np.uint8), grid)
    return sitk.GetArrayFromImage(sitk.Resample(reference, target, sitk.Transform(), sitk.sitkNearestNeighbor, 0))


@pytest.mark.parametrize("folder", ["23x38x3", "24x38x3"])
def test_dcmqi_seg_matches_its_label_map(realdata, folder):
    base = realdata / DCMQI / folder
    series = load_series(base / "image")
    (segment,) = decode_segments(pydicom.dcmread(base / "seg" / "label.seg"), series)
    labels = _on_grid(base / "nrrd" / "label.nrrd", segment.mask, series.grid)
    assert segment.mask.sum() > 100
    assert np.array_equal(segment.mask, labels > 0)


def test_dcmqi_liver_seg_matches_nrrd(realdata):
    base = realdata / DCMQI
    series = load_series(base / "ct-3slice")
    (liver,) = decode_segments(pydicom.dcmread(base / "liver.dcm"), series)
    assert liver.name == "Liver"
    labels = _on_grid(base / "liver_seg.nrrd", liver.mask, series.grid)
    assert np.array_equal(liver.mask, labels > 0)


def test_overlapping_segments_are_kept_apart(realdata):
    # dcmqi's label files: -1 holds segments 1, 4 and 5 (labelled by number), -2 segment 2, -3 segment 3.
    base = realdata / DCMQI
    series = load_series(base / "ct-3slice")
    segments = decode_segments(pydicom.dcmread(base / "partial_overlaps.dcm"), series)
    assert [s.segment_number for s in segments] == [1, 2, 3, 4, 5]
    label_file = {1: 1, 2: 2, 3: 3, 4: 1, 5: 1}
    for segment in segments:
        number = segment.segment_number
        labels = _on_grid(base / f"partial_overlaps-{label_file[number]}.nrrd", segment.mask, series.grid)
        assert np.array_equal(segment.mask, labels == number), number
    assert any((a.mask & b.mask).any() for a in segments for b in segments if a is not b)


def test_phantom_binary_seg_equals_the_rtstruct_it_was_made_from(phantom):
    study = phantom / "case000"
    series = load_series(study / "image")
    rois = {r.name: rasterise_roi(r, series).mask for r in read_rois(pydicom.dcmread(study / "candidates" / "auto01.dcm"))}
    segments = decode_segments(pydicom.dcmread(study / "candidates" / "auto01_binary_seg.dcm"), series)
    assert {s.name for s in segments} == set(rois)
    for segment in segments:
        assert segment.probabilities is None
        assert np.array_equal(segment.mask, rois[segment.name])


def test_fractional_seg_keeps_probabilities(phantom):
    study = phantom / "case000"
    series = load_series(study / "image")
    segments = decode_segments(pydicom.dcmread(study / "candidates" / "auto02_fractional_seg.dcm"), series)
    prostate = next(s for s in segments if s.name == "Prostate")
    p = prostate.probabilities
    assert p is not None and p.min() >= 0 and p.max() <= 1
    assert ((p > 0.05) & (p < 0.95)).any()  # true fractions survive, not binarised
    assert np.array_equal(prostate.mask, p >= 0.5)


def test_seg_frames_in_reverse_order_decode_the_same(phantom, tmp_path):
    # Frames are placed by plane position, never by their order in the file.
    study = phantom / "case000"
    series = load_series(study / "image")
    ds = pydicom.dcmread(study / "candidates" / "auto01_binary_seg.dcm")
    expected = [s.mask for s in decode_segments(ds, series)]
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    ds.PerFrameFunctionalGroupsSequence = list(reversed(ds.PerFrameFunctionalGroupsSequence))
    ds.PixelData = pydicom.pixels.pack_bits(frames[::-1].ravel())
    ds.save_as(tmp_path / "reversed.dcm")
    again = [s.mask for s in decode_segments(pydicom.dcmread(tmp_path / "reversed.dcm"), series)]
    for a, b in zip(expected, again):
        assert np.array_equal(a, b)


def test_seg_of_another_frame_of_reference_is_refused(phantom):
    series = load_series(phantom / "case000" / "image")
    other = pydicom.dcmread(phantom / "case001" / "candidates" / "auto01_binary_seg.dcm")
    with pytest.raises(ReferenceMismatchError, match="frame of reference"):
        decode_segments(other, series)


def test_a_seg_whose_spacing_between_slices_is_wrong_is_placed_by_its_frame_positions(phantom):
    """Scanners write SpacingBetweenSlices 1 for slices 1.25 mm apart and SEG writers copy it; the frames'
    positions decide, with a warning, and the masks are those of the same SEG without the wrong value."""
    study = phantom / "case001"
    series = load_series(study / "image")
    seg = pydicom.dcmread(study / "candidates" / "auto01_binary_seg.dcm")
    expected = {s.name: s.mask for s in decode_segments(seg, series)}
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    measures.SpacingBetweenSlices = "1"
    decoded = decode_segments(seg, series)
    assert measures.SpacingBetweenSlices == "1"  # the caller's data set is left as it came
    for segment in decoded:
        assert np.array_equal(segment.mask, expected[segment.name]) and segment.mask.any()
        assert any("SpacingBetweenSlices (1 mm) disagrees" in w for w in segment.warnings)
