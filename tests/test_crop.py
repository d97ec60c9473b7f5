import numpy as np
import torch

from contourqa.qa_models.crop import InputSpec, bounding_box, crop_input, normalise
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
