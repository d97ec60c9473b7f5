import numpy as np

from contourqa.qa_models.polygon_fill import fill_polygons


def square(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def test_centres_on_edges_follow_half_open_rule():
    # Vertices on pixel centres 2..5: left/top edges in, right/bottom out -> columns 2,3,4 and rows 2,3,4.
    mask = fill_polygons([square(2, 2, 5, 5)], 8, 8)
    expected = np.zeros((8, 8), dtype=bool)
    expected[2:5, 2:5] = True
    assert np.array_equal(mask, expected)


def test_adjacent_polygons_sharing_an_edge_tile_without_overlap_or_gap():
    left = fill_polygons([square(1, 1, 4, 6)], 8, 8)
    right = fill_polygons([square(4, 1, 7, 6)], 8, 8)
    union = fill_polygons([square(1, 1, 7, 6)], 8, 8)
    assert not (left & right).any()
    assert np.array_equal(left | right, union)


def test_uses_continuous_coordinates_not_rounded_vertices():
    # A square from 1.4 to 3.6 covers centres 2 and 3 only; rounding vertices would give 1..3 or 1..4.
    mask = fill_polygons([square(1.4, 1.4, 3.6, 3.6)], 6, 6)
    assert np.flatnonzero(mask.any(axis=0)).tolist() == [2, 3]
    assert mask.sum() == 4


def test_hole_is_removed_by_even_odd():
    outer, inner = square(0.5, 0.5, 9.5, 9.5), square(3.5, 3.5, 6.5, 6.5)[::-1]
    mask = fill_polygons([outer, inner], 10, 10)
    assert mask.sum() == 81 - 9
    assert not mask[4:7, 4:7].any()


def test_keyhole_contour_fills_like_a_ring():
    # One loop that walks the outer square, cuts in along a zero-width channel and walks the hole backwards.
    keyhole = np.array([[0.5, 0.5], [9.5, 0.5], [9.5, 9.5], [0.5, 9.5], [0.5, 5.0], [3.5, 5.0],
                        [3.5, 6.5], [6.5, 6.5], [6.5, 3.5], [3.5, 3.5], [3.5, 5.0], [0.5, 5.0]])
    ring = fill_polygons([square(0.5, 0.5, 9.5, 9.5), square(3.5, 3.5, 6.5, 6.5)], 10, 10)
    assert np.array_equal(fill_polygons([keyhole], 10, 10), ring)


def _ray_cast(polygon, x, y):
    """Textbook crossing-number test, pixel by pixel: the independent oracle."""
    inside = False
    for (x0, y0), (x1, y1) in zip(polygon, np.roll(polygon, -1, axis=0)):
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            inside = not inside
    return inside


def test_concave_polygon_matches_ray_casting_away_from_ties():
    angles = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    star = np.column_stack([10.13 + np.tile([8.3, 3.1], 10) * np.cos(angles),
                            10.27 + np.tile([8.3, 3.1], 10) * np.sin(angles)])
    mask = fill_polygons([star], 21, 21)
    expected = np.array([[_ray_cast(star, x, y) for x in range(21)] for y in range(21)])
    assert np.array_equal(mask, expected)
    assert 0 < mask.sum() < 21 * 21


def test_polygon_beyond_the_grid_is_clipped():
    mask = fill_polygons([square(-5, -5, 2.5, 2.5)], 4, 4)
    assert mask.sum() == 9 and mask[:3, :3].all()


def test_degenerate_loops_give_an_empty_mask():
    assert not fill_polygons([np.array([[1.0, 1.0], [2.0, 2.0]])], 4, 4).any()
    assert not fill_polygons([], 4, 4).any()
