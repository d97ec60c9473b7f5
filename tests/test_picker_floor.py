"""The edge picker's floor: the Dice the product counts from the true offsets, against the true Dice."""

import numpy as np
import pytest

from contourqa.qa_models.edge_surface import contour_surface
from contourqa.reporting.overlap import dice
from contourqa.training.edge_picker import signed_distance
from contourqa.training.picker_floor import FloorRow, floor_dice, main, report
from test_edge_picker import SPACING, _radius_mm  # the picker's own test spheres


def _floor(reference: np.ndarray, candidate: np.ndarray) -> float:
    image = 100.0 * reference  # the floor reads no image; the surface needs one
    return floor_dice(contour_surface(image, candidate, SPACING), signed_distance(reference, SPACING))


@pytest.mark.parametrize("candidate", ["radius 21", "radius 14", "shifted 4 mm"])
def test_a_sphere_grown_shrunk_or_moved_within_the_band_is_counted_back_to_its_true_dice(candidate):
    reference = _radius_mm((12, 40, 40)) < 18
    mask = {"radius 21": _radius_mm((12, 40, 40)) < 21, "radius 14": _radius_mm((12, 40, 40)) < 14,
            "shifted 4 mm": _radius_mm((12, 44, 40)) < 18}[candidate]
    true = dice(mask, reference)
    assert true < 0.9  # far enough off for a count that ignored the offsets (1.0) to fail
    # within what the staircase of 3 mm slices costs a sphere this small: that is the floor (0.044 at most)
    assert _floor(reference, mask) == pytest.approx(true, abs=0.05)


def test_the_report_gives_each_rois_mean_error_over_all_and_over_plausible_contours():
    rows = [FloorRow("Rectum", 0.9, 0.85, 0.8), FloorRow("Rectum", 0.3, 0.5, 0.6),
            FloorRow("Bladder", 0.95, 0.95, 0.93)]
    lines = report("m.csv", rows).splitlines()
    # (0.05 + 0.2) / 2 and (0.1 + 0.3) / 2; then the one rectum at or above 0.5
    assert "  Rectum: n 2, floor 0.1250, picker 0.2000; true >= 0.5: n 1, floor 0.0500, picker 0.1000" in lines
    assert "  all: n 3, floor 0.0833, picker 0.1400; true >= 0.5: n 2, floor 0.0250, picker 0.0600" in lines
    assert "picker" not in report("m.csv", [r._replace(picked=float("nan")) for r in rows])


def test_the_command_reports_a_phantom_manifest_and_refuses_a_folder_that_is_no_picker(
        phantom, phantom_cache, picker_model, tmp_path, capsys):
    assert main([str(phantom / "manifest.csv"), "--cache", str(phantom_cache), "--model", str(picker_model)]) == 0
    lines = capsys.readouterr().out.splitlines()
    every = next(line for line in lines if line.startswith("  all: ")).split(";")[0]
    floor, picker = (float(part.split()[-1]) for part in every.split(", ")[1:])
    assert 0 <= floor < 0.1 and 0 <= picker <= 1
    (tmp_path / "model.json").write_text("{}")
    assert main([str(phantom / "manifest.csv"), "--model", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and len(error.strip().splitlines()) == 1
