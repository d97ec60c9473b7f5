import numpy as np
import pytest

from contourqa.qa_models.assessment import Verdict, verdict_of
from contourqa.qa_models.geometry import Grid
from contourqa.qa_models.screens import (ScreenConfig, Severity, body_mask, run_screens, screen_empty, screen_fov_edge,
                                         screen_fov_fraction, screen_fragmentation, screen_outside_body,
                                         screen_position, screen_slice_gaps, screen_volume, says_off_organ)

SHAPE = (20, 64, 64)
GRID = Grid(np.zeros(3), np.array([1.0, 1.0, 3.0]), np.eye(3), SHAPE)  # 3 mm3 voxels
CONFIG = ScreenConfig()


def sphere(centre=(10, 32, 32), radius=(5, 12, 12)):
    k, j, i = np.indices(SHAPE)
    return (((k - centre[0]) / radius[0]) ** 2 + ((j - centre[1]) / radius[1]) ** 2
            + ((i - centre[2]) / radius[2]) ** 2) <= 1


def phantom_image():
    image = np.zeros(SHAPE, dtype=np.float32)
    image[:, 8:56, 8:56] = 500  # the body fills the middle of the field of view
    return image + np.random.default_rng(0).normal(0, 5, SHAPE).astype(np.float32)


BODY = body_mask(phantom_image())
GOOD = sphere()


def verdict(mask, name="Prostate"):
    return verdict_of(run_screens(mask, GRID, name, BODY, CONFIG))


def test_good_mask_passes_every_screen():
    results = run_screens(GOOD, GRID, "Prostate", BODY, CONFIG)
    assert [r.name for r in results] == ["empty", "fov_fraction", "outside_body", "fragmentation", "volume_range",
                                         "position", "slice_gaps", "fov_edge"]
    assert all(r.passed for r in results), [r.detail for r in results if not r.passed]
    assert verdict_of(results) is Verdict.ACCEPT


# The four failure modes of Isaksson et al. 2022.
def test_failure_empty():
    result = screen_empty(np.zeros(SHAPE, bool))
    assert not result.passed and result.detail == "mask is empty"
    assert screen_empty(GOOD).passed
    assert verdict(np.zeros(SHAPE, bool)) is Verdict.REJECT


def test_failure_uniform_binary_noise():
    noise = np.random.default_rng(1).random(SHAPE) < 0.5
    result = screen_fragmentation(noise, CONFIG)
    assert not result.passed and result.detail.startswith("noise-like")
    assert result.values["surface_fraction"] > 0.9
    assert screen_fragmentation(GOOD, CONFIG).passed
    assert verdict(noise) is Verdict.REJECT


def test_a_thin_organ_is_all_surface_but_not_noise():
    # a collapsed rectum on coarse pixels: a curved band one or two voxels thick, one piece, no holes
    k, j, i = np.indices(SHAPE)
    band = (np.abs(np.hypot(j - 32, i - 32) - 12) < 1.0) & (j > 28) & (k >= 5) & (k < 15)
    result = screen_fragmentation(band, CONFIG)
    assert result.values["surface_fraction"] > 0.9 and result.values["hole_fraction"] < 0.05
    assert result.passed and result.severity is Severity.REVIEW
    assert verdict(band, "Rectum") is not Verdict.REJECT


def test_failure_all_ones():
    ones = np.ones(SHAPE, bool)
    result = screen_fov_fraction(ones, CONFIG)
    assert not result.passed and result.values["fraction"] == 1.0
    assert screen_fov_fraction(GOOD, CONFIG).passed
    assert verdict(ones) is Verdict.REJECT


@pytest.mark.parametrize("shift", [0.35, 0.5])
def test_failure_shifted_by_a_large_share_of_the_field_of_view(shift):
    offset = int(shift * SHAPE[2])
    shifted = np.roll(GOOD, offset, axis=2)
    shifted[:, :, :offset] = False  # moved out of the field of view, not wrapped around
    result = screen_outside_body(shifted, BODY, CONFIG)
    assert not result.passed
    assert screen_outside_body(GOOD, BODY, CONFIG).passed
    assert verdict(shifted) is Verdict.REJECT


# patient +x is the patient's left, +y posterior: on GRID, along i and j; the body spans i and j 6-57
def test_a_midline_organ_moved_sideways_inside_the_body_is_out_of_place_and_its_dice_is_not_to_be_given():
    assert screen_position(GOOD, BODY, GRID, "Prostate", CONFIG).passed
    moved = sphere(centre=(10, 32, 48), radius=(5, 6, 6))  # 16 mm to the left of the midline: 0.6 of the half-width
    result = screen_position(moved, BODY, GRID, "Prostate", CONFIG)
    assert screen_outside_body(moved, BODY, CONFIG).passed and not result.passed
    assert result.detail.startswith("organ out of place: centre 6") and "left of its midline" in result.detail
    assert result.values["lateral"] == pytest.approx(16 / 25.5, abs=0.05)
    assert verdict(moved) is Verdict.REVIEW and says_off_organ(result)
    deep = sphere(centre=(10, 54, 32), radius=(3, 3, 3))  # near the back of the body
    assert not screen_position(deep, BODY, GRID, "Bladder", CONFIG).passed
    assert screen_position(moved, BODY, GRID, "Seminal vesicles", CONFIG).detail == "no position rule for 'Seminal vesicles'"


def test_a_femoral_head_must_lie_on_its_named_side():
    left = sphere(centre=(10, 32, 48), radius=(5, 6, 6))  # patient left
    assert screen_position(left, BODY, GRID, "FemoralHead_L", CONFIG).passed
    swapped = screen_position(left, BODY, GRID, "Femur (R)", CONFIG)
    assert not swapped.passed and "at least 35% to the right" in swapped.detail
    assert screen_position(left, BODY, GRID, "Femoral head", CONFIG).passed  # no side named: either side
    assert not screen_position(GOOD, BODY, GRID, "Femoral head", CONFIG).passed  # at the midline


def test_the_position_is_read_in_patient_coordinates_whatever_the_slice_orientation():
    # the same body and organ stored as sagittal slices: array axes (x, z, y) instead of (z, y, x)
    sagittal = Grid(np.zeros(3), np.array([1.0, 3.0, 1.0]), np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float),
                    (64, 20, 64))
    moved = sphere(centre=(10, 32, 48), radius=(5, 6, 6))
    axial = screen_position(moved, BODY, GRID, "Prostate", CONFIG)
    turned = screen_position(moved.transpose(2, 0, 1), BODY.transpose(2, 0, 1), sagittal, "Prostate", CONFIG)
    assert not turned.passed
    assert turned.values["lateral"] == pytest.approx(axial.values["lateral"], abs=0.05)
    assert turned.values["depth"] == pytest.approx(axial.values["depth"], abs=0.05)


def test_volume_range_by_roi_name():
    small = sphere(radius=(1, 2, 2))
    result = screen_volume(small, GRID, "PROSTATE_auto", CONFIG)
    assert not result.passed and "outside 8-200 ml" in result.detail
    assert screen_volume(GOOD, GRID, "Prostate", CONFIG).passed  # ~9 ml
    unknown = screen_volume(small, GRID, "Seminal vesicles", CONFIG)
    assert unknown.passed and "no range configured" in unknown.detail


def test_fragmented_mask_needs_review():
    two = sphere(centre=(10, 20, 20), radius=(4, 6, 6)) | sphere(centre=(10, 44, 44), radius=(4, 6, 6))
    three = two | sphere(centre=(10, 20, 44), radius=(4, 6, 6))
    assert screen_fragmentation(two, CONFIG).passed  # two components allowed by default
    result = screen_fragmentation(three, CONFIG)
    assert not result.passed and result.values["components"] == 3
    assert verdict(three, "Nodes") is Verdict.REVIEW


def test_gaps_between_contoured_slices():
    gapped = GOOD.copy()
    gapped[9] = gapped[10] = False
    result = screen_slice_gaps(gapped, CONFIG)
    assert not result.passed and result.values["gaps"] == 2 and "9, 10" in result.detail
    assert screen_slice_gaps(GOOD, CONFIG).passed


def test_mask_cut_off_by_the_field_of_view_edge():
    cut = sphere(centre=(0, 32, 32))
    result = screen_fov_edge(cut)
    assert not result.passed and "first slice" in result.detail
    assert screen_fov_edge(GOOD).passed


def test_body_sized_rois_skip_size_screens():
    names = [r.name for r in run_screens(BODY, GRID, "BODY", BODY, CONFIG, interpreted_type="EXTERNAL")]
    assert "fov_fraction" not in names and "outside_body" not in names


def test_body_mask_keeps_dark_tissue_inside_the_body():
    image = phantom_image()
    image[:, 28:36, 28:36] = 60  # a dark organ (fluid, tumour) inside the body
    body = body_mask(image)
    assert body[:, 30, 30].all() and not body[:, 2, 2].any()
