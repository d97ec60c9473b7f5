import jinja2
import numpy as np
import pytest

from contourqa.reporting.agreement import case_bootstrap_intervals, metrics_by_group, regression_metrics
from contourqa.reporting.html import render_page
from contourqa.reporting.overlap import dice, surface_distances


def test_global_accuracy_and_flagging_follow_the_published_rules():
    true = np.array([0.90, 0.85, 0.70, 0.60, 0.95, 0.50])
    predicted = np.array([0.70, 0.86, 0.85, 0.60, 0.94, 0.78])
    m = regression_metrics(true, predicted)
    # Wrong by the rule: 0.70 predicted for 0.90 true (pred < .75, true > .8); 0.85 for 0.70 (pred > .8, true < .75).
    assert m["global_accuracy"] == pytest.approx(4 / 6)
    # Flagged (pred < 0.75): items 0 and 3; truly bad (true < 0.75): items 2, 3, 5.
    assert m["flag_precision"] == pytest.approx(1 / 2)
    assert m["flag_recall"] == pytest.approx(1 / 3)
    assert m["mae"] == pytest.approx(np.mean([0.2, 0.01, 0.15, 0.0, 0.01, 0.28]))
    assert m["max_error"] == pytest.approx(0.28)
    assert m["mean_dice_before_filter"] == pytest.approx(true.mean())
    assert m["mean_dice_after_filter"] == pytest.approx(np.mean([0.85, 0.70, 0.95, 0.50]))
    assert m["mae_by_band"]["0.90-1.00"]["n"] == 2


def test_perfect_ranking_has_unit_spearman():
    true = np.linspace(0.1, 0.95, 10)
    m = regression_metrics(true, true ** 2)
    assert m["spearman"] == pytest.approx(1.0)
    assert m["pearson"] < 1.0


def test_bootstrap_resamples_whole_cases():
    # One case of three carries all the error: a resample holds it zero to three times, so the MAE
    # interval runs from 0 to 0.1. Resampling single candidates would give a narrow band around 0.033.
    true = np.full(60, 0.9)
    predicted = true.copy()
    predicted[:20] -= 0.1
    cases = ["a"] * 20 + ["b"] * 20 + ["c"] * 20
    intervals = case_bootstrap_intervals(true, predicted, cases, resamples=4000)
    assert intervals["mae"] == pytest.approx([0.0, 0.1])
    assert intervals["global_accuracy"] == pytest.approx([1.0, 1.0])
    assert case_bootstrap_intervals(true, predicted, ["a"] * 60) == {}


def test_metrics_by_group_give_each_groups_error_and_its_sign():
    groups = metrics_by_group([1.0, 1.0, 0.5], [0.9, 1.0, 0.7], ["Rectum", "Rectum", "Bladder"])
    assert list(groups) == ["Bladder", "Rectum"]
    assert groups["Rectum"] == pytest.approx({"n": 2, "mae": 0.05, "bias": -0.05})
    assert groups["Bladder"] == pytest.approx({"n": 1, "mae": 0.2, "bias": 0.2})


def test_dice_of_half_overlapping_boxes_and_of_two_empty_masks():
    a, b = np.zeros((4, 10, 10), bool), np.zeros((4, 10, 10), bool)
    a[:, :, :4], b[:, :, 2:6] = True, True  # 16 voxels each per slice, 8 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_surface_distances_of_a_shifted_box_follow_the_spacing():
    a = np.zeros((10, 30, 30), bool)
    a[2:8, 5:15, 5:15] = True
    b = np.roll(a, 3, axis=2)  # 3 columns of 0.5 mm: every x-facing surface moves 1.5 mm
    distances = surface_distances(a, b, spacing=(3.0, 0.5, 0.5))
    assert distances["hd95_mm"] == pytest.approx(1.5)
    assert 0 < distances["mean_surface_mm"] < 1.5
    assert surface_distances(a, a, (1, 1, 1)) == {"mean_surface_mm": 0.0, "hd95_mm": 0.0}
    assert surface_distances(a, np.zeros_like(a), (1, 1, 1)) is None


def test_a_page_that_fails_to_render_leaves_the_previous_one_and_no_partial_file(tmp_path):
    page = tmp_path / "evaluation.html"
    page.write_text("previous")
    with pytest.raises(jinja2.UndefinedError):  # the template needs a whole report
        render_page("evaluation.html.j2", page, report={})
    assert page.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["evaluation.html"]
