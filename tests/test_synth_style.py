"""The randomised phantom style: reproducible, varied in appearance, and exact where it must be."""

import csv

import numpy as np
import pytest
from scipy import ndimage

from conftest import run_cli
from contourqa.qa_models.assessment import AssessConfig, load_structure, structure_masks
from contourqa.qa_models.series import load_series
from contourqa.reporting.overlap import dice
from contourqa.training.cache import load_cases
from contourqa.training.manifest import read_manifest
from contourqa.training.phantom import PhantomSpec, generate_phantom_studies
from contourqa.training.synth_anatomy import LABEL, LABELS, RECTAL_WALL_SHARE, ROI_LABELS, pelvis_labels, roi_labels
from contourqa.training.synth_style import (VISIBLE_SHARE, _acquisition, _fine_coordinates, boundary_visibility,
                                            label_intensities, trace, visible_intensities)

SPEC = PhantomSpec(rows=96, columns=96, slices=16)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    result = run_cli("phantom", out, "--style", "synth", "--cases", "3", "--seed", "3", "--size", "96", "96", "16")
    assert result.returncode == 0, result.stderr
    return out


def _labels(seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0])
    grid, sub = _acquisition(rng, 96, 96, 16)
    return pelvis_labels(_fine_coordinates(grid, sub, rng), rng)


def test_label_maps_are_reproducible_from_the_seed_and_differ_between_seeds():
    first, again, other = _labels(3), _labels(3), _labels(4)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    present = set(np.unique(first))
    for tissues in ROI_LABELS.values():  # every ROI is in the map
        assert present & {LABEL[t] for t in tissues}
    assert len(present) >= 12  # many tissue classes, not five organs on a background


def test_contrast_and_resolution_differ_between_studies(synth):
    # (reproducible from the seed: test_studies_written_by_several_processes_equal_those_of_one)
    # the same tissue looks different from study to study: the mean grey value inside each organ, as a
    # fraction of the image's 99th percentile, is not one fixed number as in the classic style
    fractions = {name: [] for name in ROI_LABELS}
    for case in ("case000", "case001", "case002"):
        series = load_series(synth / case / "image")
        scale = np.percentile(series.array, 99)
        for mask, _ in structure_masks(load_structure(synth / case / "reference.dcm"), series, AssessConfig()):
            fractions[mask.name].append(series.array[mask.mask].mean() / scale)
    spread = [np.ptp(values) for values in fractions.values()]
    assert np.median(spread) > 0.1, fractions
    spacings = {tuple(np.round(load_series(synth / c / "image").grid.spacing, 2)) for c in ("case000", "case001", "case002")}
    assert len(spacings) == 3  # resolution drawn per study


def test_studies_written_by_several_processes_equal_those_of_one(synth, tmp_path):
    """`phantom --workers N`: study n comes from the seed (seed, n) alone, whichever process writes it, so
    a second run reproduces the first's images."""
    manifest = generate_phantom_studies(tmp_path, 2, 3, SPEC, style="synth", workers=2)
    for case in ("case000", "case001"):
        a, b = load_series(synth / case / "image"), load_series(tmp_path / case / "image")
        assert np.array_equal(a.array, b.array) and np.allclose(a.grid.spacing, b.grid.spacing)
    rows = list(csv.DictReader(open(manifest)))
    assert [r["case_id"] for r in rows] == sorted(r["case_id"] for r in rows)  # in study order
    assert [r["kind"] for r in rows] == [r["kind"] for r in csv.DictReader(open(synth / "manifest.csv"))
                                         if r["case_id"] in ("case000", "case001")]


def test_boundary_visibility_measures_the_contrast_across_each_roi_surface():
    labels = np.full((12, 12, 12), LABEL["visceral_fat"])
    labels[4:8, 4:8, 4:8] = LABEL["prostate_tz"]
    means, spreads = np.full(len(LABELS), 0.5), np.full(len(LABELS), 0.01)
    assert boundary_visibility(labels, means, spreads)["Prostate"] == 0  # the same grey as around it
    means[LABEL["prostate_tz"]] = 0.8
    assert boundary_visibility(labels, means, spreads)["Prostate"] == 1
    spreads[LABEL["prostate_tz"]] = 0.2  # a texture that drowns the step
    assert boundary_visibility(labels, means, spreads)["Prostate"] == 0


def test_a_rectum_contoured_as_its_wall_must_show_the_lumen_too():
    labels = np.full((12, 12, 12), LABEL["visceral_fat"])
    labels[2:10, 2:10, 2:10] = LABEL["rectal_wall"]
    labels[4:8, 4:8, 4:8] = LABEL["rectal_lumen"]
    means, spreads = np.full(len(LABELS), 0.5), np.full(len(LABELS), 0.01)
    means[LABEL["rectal_wall"]] = means[LABEL["rectal_lumen"]] = 0.8  # wall and lumen alike, fat darker
    assert boundary_visibility(labels, means, spreads)["Rectum"] == 1
    wall = boundary_visibility(labels, means, spreads, {"Rectum": ("rectal_wall",)})["Rectum"]
    assert 0.7 < wall < 0.9  # the lumen's surface, a fifth of the ring's, is not visible


def test_some_studies_are_nearly_flat_inside_their_organs_and_some_textured():
    # a network trained only on textured organs scored good contours of flat ones low (docs/model.md): the
    # texture's study-wide scale reaches nearly none. Per label alone (0.005-0.06) the largest of the 23
    # labels' spreads never fell below 0.045
    largest = np.array([label_intensities("t2", np.random.default_rng(seed))[1].max() for seed in range(200)])
    assert (largest < 0.015).mean() > 0.3 and (largest > 0.03).mean() > 0.15


def test_every_structure_is_visible_in_the_drawn_contrast():
    """Random contrast draws must not hide an organ (its Dice target would follow from nothing in the
    image), and T2-like contrast shows every organ, femoral heads included, at the first draw."""
    labels = _labels(5)
    for seed in range(3):
        shares = boundary_visibility(labels, *visible_intensities("random", labels, np.random.default_rng(seed)))
        assert min(shares.values()) >= VISIBLE_SHARE, shares
    shares = boundary_visibility(labels, *label_intensities("t2", np.random.default_rng(0)))
    assert min(shares.values()) >= VISIBLE_SHARE, shares


def test_reference_rtstruct_rasterises_back_to_its_label_map():
    rng = np.random.default_rng([11, 0])
    grid, sub = _acquisition(rng, 96, 96, 16)
    labels = pelvis_labels(_fine_coordinates(grid, sub, rng), rng)[sub // 2::sub][:grid.shape[0]]
    from contourqa.qa_models.polygon_fill import fill_polygons

    for name, tissues in [*ROI_LABELS.items(), ("Rectum (wall)", ("rectal_wall",))]:
        mask = np.isin(labels, [LABEL[t] for t in tissues])
        filled = np.zeros_like(mask)
        for k, loops in trace(mask, grid):
            filled[k] = fill_polygons([grid.to_index(loop)[:, :2] for loop in loops], grid.shape[1], grid.shape[2])
        assert dice(filled, mask) >= 0.98, name


def test_training_targets_are_dice_between_the_dicom_objects_as_rasterised(synth):
    rows = read_manifest(synth / "manifest.csv")
    case = load_cases([r for r in rows if r.case_id == "case000"])[0]
    series = load_series(synth / "case000" / "image")
    for candidate in case.candidates[:6]:
        reference = {m.name: m.mask for m, _ in structure_masks(load_structure(candidate.row.reference), series,
                                                                 AssessConfig(), [candidate.row.roi])}
        drawn = {m.name: m.mask for m, _ in structure_masks(load_structure(candidate.row.candidate), series,
                                                            AssessConfig(), [candidate.row.roi])}
        assert candidate.dice == pytest.approx(dice(drawn[candidate.row.roi], reference[candidate.row.roi]))
    kinds = {row["kind"] for row in csv.DictReader(open(synth / "manifest.csv"))}
    assert {"failure_empty", "failure_all_ones", "failure_noise", "failure_shifted"} <= kinds
    realistic = [c.dice for c in case.candidates if not c.row.kind.startswith("failure")]
    assert min(realistic) < 0.85 < max(realistic)  # candidates spread over the Dice range


def test_quick_training_on_the_synth_style_finishes(synth, tmp_path):
    result = run_cli("train", "--manifest", synth / "manifest.csv", "--out", tmp_path / "model", "--quick",
                     "--folds", "1", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "model" / "weights.pt").exists()


def test_an_unknown_style_a_tiny_size_or_no_workers_is_refused(tmp_path):
    result = run_cli("phantom", tmp_path, "--style", "cartoon")
    assert result.returncode == 2 and "invalid choice" in result.stderr
    result = run_cli("phantom", tmp_path, "--size", "8", "8", "2")
    assert result.returncode == 2 and result.stderr.startswith("contourqa: error: --size") and "Traceback" not in result.stderr
    result = run_cli("phantom", tmp_path, "--workers", "0")
    assert result.returncode == 2 and result.stderr.startswith("contourqa: error: --workers") and "Traceback" not in result.stderr


def test_the_rectum_is_the_whole_organ_in_some_studies_and_its_wall_alone_in_others(synth):
    # the classic style contours the rectal wall, a ring round the lumen, as some sites do
    walls = [roi_labels(np.random.default_rng(seed))["Rectum"] == ("rectal_wall",) for seed in range(400)]
    assert abs(np.mean(walls) - RECTAL_WALL_SHARE) < 0.07
    hollow = []
    for case in ("case000", "case001", "case002"):
        series = load_series(synth / case / "image")
        rectum = next(m.mask for m, _ in structure_masks(load_structure(synth / case / "reference.dcm"), series,
                                                         AssessConfig()) if m.name == "Rectum")
        filled = np.stack([ndimage.binary_fill_holes(plane) for plane in rectum])
        hollow.append(bool((filled & ~rectum).sum() > 0.05 * rectum.sum()))  # the lumen left out
    assert hollow.count(True) >= 1 and hollow.count(False) >= 1, hollow
