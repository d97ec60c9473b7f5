"""The edge-profile Dice estimate (nothing fitted) on spheres whose true Dice is known."""

import math

import numpy as np
import pytest

from contourqa.reporting.overlap import dice
from contourqa.training.edge_profile import INCOHERENCE_LIMIT_MM, edge_profile

SPACING = np.array([3.0, 1.0, 1.0])  # slices of 3 mm, pixels of 1 mm


def _radius_mm(shape: tuple[int, int, int], centre: tuple[float, float, float]) -> np.ndarray:
    k, j, i = np.indices(shape)
    return np.sqrt(((k - centre[0]) * SPACING[0]) ** 2 + ((j - centre[1]) * SPACING[1]) ** 2
                   + ((i - centre[2]) * SPACING[2]) ** 2)


@pytest.fixture(scope="module")
def organ():
    """A bright 20 mm sphere in noise, and its reference mask."""
    radius = _radius_mm((30, 100, 100), (15, 50, 50))
    image = 100.0 * (radius < 20) + np.random.default_rng(0).normal(0, 5, radius.shape)
    return image, radius < 20, radius


def estimate_dice(image: np.ndarray, mask: np.ndarray, spacing: np.ndarray) -> float:
    return edge_profile(image, mask, spacing).dice


def test_it_estimates_the_dice_of_eroded_dilated_and_shifted_contours(organ):
    image, reference, radius = organ
    shifted = _radius_mm(reference.shape, (15, 53, 50)) < 20
    candidates = {f"radius {r} mm": radius < r for r in (14, 17, 20, 23, 26)} | {"shifted 3 mm": shifted}
    true = {name: dice(mask, reference) for name, mask in candidates.items()}
    estimate = {name: estimate_dice(image, mask, SPACING) for name, mask in candidates.items()}
    assert true["radius 20 mm"] == 1.0 and estimate["radius 20 mm"] > 0.97
    for name in candidates:
        assert estimate[name] == pytest.approx(true[name], abs=0.04), name
    # the estimates rank the contours as their true Dice does
    assert sorted(candidates, key=true.get) == sorted(candidates, key=estimate.get)


def test_it_reads_neither_the_grey_values_nor_the_sign_of_the_contrast(organ):
    image, _, radius = organ
    inverted = 5000.0 - 7.0 * image  # a dark organ on a bright background, on another scale
    for r in (17, 20, 23):
        assert estimate_dice(inverted, radius < r, SPACING) == pytest.approx(estimate_dice(image, radius < r, SPACING),
                                                                               abs=1e-6)


def test_a_contour_cut_by_the_images_last_slice_is_not_taken_for_an_error(organ):
    """The image ends inside the organ: a reference drawn on it ends there too, and no edge can show there."""
    image, reference, radius = organ
    cut = slice(0, 16)  # the sphere's centre is on slice 15: the last slice of this image halves it
    assert reference[cut][-1].any()
    assert estimate_dice(image[cut], reference[cut], SPACING) > 0.97
    assert estimate_dice(image[cut], (radius < 23)[cut], SPACING) == pytest.approx(
        dice((radius < 23)[cut], reference[cut]), abs=0.04)


def test_an_empty_mask_has_no_estimate(organ):
    image, reference, _ = organ
    assert math.isnan(estimate_dice(image, np.zeros_like(reference), SPACING))


def test_its_edges_cohere_where_the_image_shows_the_boundary_and_not_where_it_does_not(organ):
    image, _, radius = organ
    noise_only = np.random.default_rng(1).normal(0, 5, image.shape)  # the same contours, no organ to see
    for r in (17, 20, 23):  # wherever the contour lies, the image's one boundary is found at one depth
        shown, hidden = edge_profile(image, radius < r, SPACING), edge_profile(noise_only, radius < r, SPACING)
        assert shown.coherent and shown.incoherence_mm < 0.5 * INCOHERENCE_LIMIT_MM, r
        assert not hidden.coherent, r
