import numpy as np
import pytest
import torch

from contourqa.qa_models.crop import BOUNDARY_LAYOUT, EDGE_LAYOUT, InputSpec, bounding_box, crop_input, mask_input, normalise
from contourqa.qa_models.uncertainty import entropy_map, voxelwise_entropy_sum
from contourqa.qa_models.geometry import Grid

GRID = Grid(np.zeros(3), np.array([1.0, 1.0, 2.0]), np.eye(3), (30, 80, 80))


def block(k0, k1, j0, j1, i0, i1):
    mask = np.zeros(GRID.shape, bool)
    mask[k0:k1, j0:j1, i0:i1] = True
    return mask


def test_box_is_centred_on_the_mask_with_margin():
    spec = InputSpec()
    box = bounding_box(block(10, 20, 30, 50, 20, 40), GRID, spec)
    assert np.allclose(box.centre, [29.5, 39.5, 14.5])
    # 20 mm in-plane -> 20 * 1.5 + 16 = 46 mm; slices 10 x 2 mm -> 20 * 1.5 + 16 = 46 mm.
    assert np.allclose(box.extent_mm, [46, 46, 46])


def test_empty_mask_looks_at_the_centre_of_the_field_of_view():
    box = bounding_box(np.zeros(GRID.shape, bool), GRID, InputSpec())
    assert np.allclose(box.centre, [39.5, 39.5, 14.5])
    assert np.allclose(box.extent_mm, [80, 80, 60])


def test_crop_keeps_the_mask_in_the_middle_and_its_share_of_the_box():
    spec = InputSpec(shape=(16, 32, 32))
    mask = block(10, 20, 30, 50, 20, 40)
    image = torch.rand(GRID.shape)
    x = crop_input(image, [torch.from_numpy(mask.astype(np.float32))], bounding_box(mask, GRID, spec), GRID, spec)
    assert x.shape == (2, 16, 32, 32)
    inside = x[1] > 0.5
    assert inside[8, 16, 16] and not inside[0, 0, 0]
    expected_share = (20 * 20 * 20) / (46 ** 3)
    assert abs(float(inside.float().mean()) - expected_share) < 0.03


def test_normalisation_maps_percentiles_to_unit_range():
    image = torch.linspace(100, 1100, 1001)
    out = normalise(image)
    assert float(out.min()) == 0.0
    assert abs(float(torch.quantile(out, 0.99)) - 1.0) < 1e-3


def test_entropy_channel_is_the_voxelwise_entropy_of_a_fractional_segment():
    spec = InputSpec(shape=(16, 32, 32), channels=("image", "mask", "entropy"))
    mask = block(10, 20, 30, 50, 20, 40)
    soft = mask.astype(np.float32)
    soft[10:20, 30:50, 20] = 0.5  # one uncertain column of voxels: 1 bit each
    image = np.random.default_rng(0).random(GRID.shape).astype(np.float32)
    fractional = mask_input(image, mask, GRID, spec, probabilities=soft)
    binary = mask_input(image, mask, GRID, spec)
    assert fractional.shape == binary.shape == (3, 16, 32, 32)
    assert float(binary[2].abs().max()) == 0.0  # a binary mask is certain everywhere
    assert 0.2 < float(fractional[2].max()) <= 1.0 and float(fractional[2, :, :, 20:].max()) == 0.0
    assert torch.equal(fractional[:2], binary[:2])


def test_entropy_values_and_sum():
    p = np.array([0.0, 1.0, 0.5, 0.5, 0.25])
    expected = [0, 0, 1, 1, -(0.25 * np.log2(0.25) + 0.75 * np.log2(0.75))]
    assert np.allclose(entropy_map(p), expected, atol=1e-4)
    assert voxelwise_entropy_sum(p) == pytest.approx(sum(expected), abs=1e-6)


def test_unknown_channel_layout_is_refused():
    with pytest.raises(ValueError, match="channels must be one of image\\+mask, image\\+mask\\+entropy"):
        InputSpec(channels=("mask", "entropy"))


def test_boundary_channels_are_the_masks_signed_distance_and_the_images_edges():
    spec = InputSpec(shape=(16, 32, 32), channels=("image", "mask", "distance", "edge"))
    mask = block(10, 20, 30, 50, 20, 40)  # a 20 mm cube; crop voxels 46/32 mm in-plane, 46/16 mm across slices
    image = np.where(mask, 300.0, 100.0).astype(np.float32)
    x = mask_input(image, mask, GRID, spec)
    assert x.shape == (4, 16, 32, 32)
    distance, edge = x[2].numpy(), x[3].numpy()
    inside = x[1].numpy() >= 0.5
    assert (distance[inside] <= 0).all() and (distance[~inside] > 0).all()
    assert distance[8, 16, 16] < -0.8                   # the centre lies about 9 mm deep (2.9 mm crop voxels)
    assert distance[8, 16, 1] == pytest.approx(1.0)    # 12 mm and more outside: clipped
    assert -0.3 < distance[8, 16, 9] < 0.3             # next to the faces: near zero
    # the edges are the cube's faces: strongest next to the mask's boundary, nothing deep inside or far out
    near = np.abs(distance) < 0.2
    assert edge[near].mean() > 5 * edge[np.abs(distance) > 0.6].mean()
    # the edge channel does not depend on the image's contrast: inverted and rescaled, the same
    inverted = mask_input((1000 - 3 * image).astype(np.float32), mask, GRID, spec)
    assert np.allclose(inverted[3].numpy(), edge, atol=0.05)
    assert torch.equal(inverted[2], x[2])


def test_the_distance_channel_of_an_empty_mask_is_far_outside_everywhere():
    spec = InputSpec(shape=(16, 32, 32), channels=("image", "mask", "distance", "edge"))
    image = np.random.default_rng(0).random(GRID.shape).astype(np.float32)
    assert torch.all(mask_input(image, np.zeros(GRID.shape, bool), GRID, spec)[2] == 1.0)


def test_the_edge_layout_holds_no_grey_values():
    # edge, mask, distance: the same channels as the boundary layout, without the image itself, so an image
    # and its inverted, rescaled copy give the same input
    mask = block(10, 20, 30, 50, 20, 40)
    image = np.where(mask, 300.0, 100.0).astype(np.float32)
    image += np.random.default_rng(1).normal(0, 5, image.shape).astype(np.float32)
    boundary = mask_input(image, mask, GRID, InputSpec(shape=(16, 32, 32), channels=BOUNDARY_LAYOUT))
    edge_only = mask_input(image, mask, GRID, InputSpec(shape=(16, 32, 32), channels=EDGE_LAYOUT))
    assert edge_only.shape == (3, 16, 32, 32)
    assert torch.equal(edge_only, boundary[[3, 1, 2]])
    inverted = mask_input((1000 - 3 * image).astype(np.float32), mask, GRID,
                          InputSpec(shape=(16, 32, 32), channels=EDGE_LAYOUT))
    assert np.allclose(inverted.numpy(), edge_only.numpy(), atol=0.05)
