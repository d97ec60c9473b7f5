"""The training-set diagnosis: an organ that stands out has a high CNR, and a contour on its edge fits."""

import numpy as np

from contourqa.training.diagnose import (boundary_error, boundary_evidence, boundary_offsets, contrast_to_noise,
                                        edge_fit, interior_edge_ratio)
from scipy import ndimage

SPACING = np.array([2.0, 1.0, 1.0])


def _organ():
    rng = np.random.default_rng(0)
    mask = np.zeros((20, 40, 40), dtype=bool)
    mask[6:14, 12:28, 12:28] = True
    image = np.where(mask, 300.0, 100.0) + rng.normal(0, 10, mask.shape)
    return image, mask


def test_a_visible_organ_has_a_high_contrast_to_noise_and_a_hidden_one_none():
    image, mask = _organ()
    assert contrast_to_noise(image, mask, SPACING) > 10
    flat = np.random.default_rng(1).normal(100, 10, mask.shape)
    assert contrast_to_noise(flat, mask, SPACING) < 1


def test_a_contour_on_the_edges_fits_better_than_a_shifted_one():
    image, mask = _organ()
    gradient = np.sqrt(sum(g ** 2 for g in np.gradient(ndimage.gaussian_filter(image, 0.7), *SPACING)))
    shifted = np.roll(mask, 5, axis=2)
    assert edge_fit(gradient, mask, SPACING) > 1.5 * edge_fit(gradient, shifted, SPACING)


def test_the_boundary_error_measures_how_far_the_edge_lies_whatever_the_contrast():
    image, mask = _organ()
    for contrast in (1.0, -1.0):  # a dark organ on a bright background reads the same
        gradient = np.sqrt(sum(g ** 2 for g in np.gradient(ndimage.gaussian_filter(contrast * image, 0.7),
                                                           *SPACING)))
        on_edge = boundary_error(gradient, mask, SPACING)
        # distances run voxel centre to voxel centre: the edge lies between a surface voxel (-1 mm in-plane, -2 mm
        # through slices) and its outside neighbour (+1, +2), so a contour on the edge reads about one voxel
        assert on_edge <= 1.5
        grown = ndimage.binary_dilation(mask, iterations=3)  # 3 voxels = 3 mm in-plane, 6 mm through slices
        offsets = boundary_offsets(gradient, grown, SPACING)
        assert np.median(offsets) < -2  # the edge lies inside the grown surface
        assert boundary_error(gradient, grown, SPACING) > on_edge + 2
        shifted = np.roll(mask, 2, axis=2)
        assert on_edge < boundary_error(gradient, shifted, SPACING) < boundary_error(gradient, grown, SPACING) + 1


def test_the_interior_edge_ratio_tells_a_flat_organ_from_a_textured_one():
    image, mask = _organ()  # flat inside but for noise a twentieth of its contrast

    def ratio(volume):
        gradient = np.sqrt(sum(g ** 2 for g in np.gradient(ndimage.gaussian_filter(volume, 0.7), *SPACING)))
        return interior_edge_ratio(gradient, mask, SPACING)
    texture = ndimage.gaussian_filter(np.random.default_rng(2).normal(0, 1, mask.shape), 1.0)
    textured = image + mask * 150 * texture / texture.std()
    assert ratio(image) < 0.25 < 0.6 < ratio(textured)
    thin = np.zeros_like(mask)
    thin[10, 20, 10:30] = True  # no voxel 3 mm inside
    assert np.isnan(interior_edge_ratio(np.ones(mask.shape), thin, SPACING))


def test_boundary_evidence_is_found_along_a_visible_organ_and_not_on_a_flat_image():
    image, mask = _organ()

    def evidence(volume, candidate):
        gradient = np.sqrt(sum(g ** 2 for g in np.gradient(ndimage.gaussian_filter(volume, 0.7), *SPACING)))
        return boundary_evidence(volume, gradient, candidate, SPACING)
    assert evidence(image, mask) and evidence(-image, mask)  # a dark organ shows its boundary as well
    assert evidence(image, ndimage.binary_dilation(mask, iterations=2))  # a poor contour of it still has evidence
    flat = np.random.default_rng(3).normal(100, 10, mask.shape)
    assert not evidence(flat, mask)
