"""The ``fse`` phantom style: its own anatomy, a turbo spin echo's image, and a reference drawn as an
expert draws it."""

import csv
import json

import numpy as np
import pytest

from conftest import run_cli
from contourqa.qa_models.polygon_fill import fill_polygons
from contourqa.qa_models.series import load_series
from contourqa.reporting.overlap import dice
from contourqa.training.fse_anatomy import ROI_TISSUES, TISSUES, Space, blob, pelvis
from contourqa.training.fse_style import SUB_PLANES, _acquisition, _fine_space, drawn_outline, tissue_signal
from contourqa.training.phantom import PhantomSpec, generate_phantom_studies

TINY = PhantomSpec(rows=64, columns=64, slices=8)


def _anatomy(seed: int, size: int = 128):
    rng = np.random.default_rng([seed, 0])
    grid, _ = _acquisition(rng, size, size, 12)
    space = _fine_space(grid)
    labels, masks = pelvis(space, rng)
    return grid, space, labels, masks


def test_studies_are_reproducible_from_the_seed_and_their_appearance_differs(tmp_path):
    def volumes(folder):
        return [load_series(case / "image").array for case in sorted(folder.glob("case*"))]

    first = volumes(generate_phantom_studies(tmp_path / "a", 3, seed=4, spec=TINY, style="fse").parent)
    again = volumes(generate_phantom_studies(tmp_path / "b", 3, seed=4, spec=TINY, style="fse").parent)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert len({tuple(np.percentile(v, [50, 90, 99]).round(3)) for v in first}) == 3


def test_an_organ_blob_has_the_volume_drawn_even_where_the_field_of_view_cuts_it():
    space = Space(np.arange(-60, 60, 1.0), np.arange(-60, 60, 1.0), np.arange(-60, 60, 1.0))
    whole = blob(space, np.zeros(3), np.array([25.0, 20, 22]), 40.0, 4, np.random.default_rng(1))
    assert whole.sum() * space.voxel_ml == pytest.approx(40.0, rel=0.05)
    half = Space(space.x, space.y, np.arange(0, 60, 1.0))  # the same organ, its lower half outside the image
    cut = blob(half, np.zeros(3), np.array([25.0, 20, 22]), 40.0, 4, np.random.default_rng(1))
    assert np.array_equal(cut, whole[60:])


def test_the_organs_have_adult_sizes_and_do_not_overlap():
    for seed in (1, 2):
        _, space, labels, masks = _anatomy(seed)
        volumes = {name: mask.sum() * space.voxel_ml for name, mask in masks.items()}
        assert 15 <= volumes["Prostate"] <= 110, volumes
        assert 20 <= volumes["Bladder"] and 20 <= volumes["Rectum"], volumes
        assert volumes["FemoralHead_L"] > 10 and volumes["FemoralHead_R"] > 10, volumes
        total = sum(mask.astype(int) for mask in masks.values())
        assert total.max() == 1
        # the label map paints each ROI with its own tissues: what the image shows is what is contoured
        for name in ("Prostate", "Bladder", "Rectum"):
            assert np.array_equal(np.isin(labels, [TISSUES.index(t) for t in ROI_TISSUES[name]]), masks[name]), name
        heads = labels == TISSUES.index("femoral_head")
        assert np.array_equal(heads, masks["FemoralHead_L"] | masks["FemoralHead_R"])


def test_the_reference_is_drawn_as_a_smooth_polygon_that_fills_back_to_the_organ():
    grid, _, _, fine_masks = _anatomy(3, size=192)
    for name, fine in fine_masks.items():
        mask = fine[SUB_PLANES // 2::SUB_PLANES]
        drawn = drawn_outline(mask, grid, np.random.default_rng(0))
        filled = np.zeros_like(mask)
        vertices = 0
        for k, loops in drawn:
            filled[k] = fill_polygons([grid.to_index(loop)[:, :2] for loop in loops], grid.shape[1], grid.shape[2])
            vertices += sum(len(loop) for loop in loops)
        voxel_edges = int((mask[:, :, 1:] != mask[:, :, :-1]).sum() + (mask[:, 1:] != mask[:, :-1]).sum())
        # close to the organ, as an expert's outline is, but neither its voxels nor a trace of them
        assert 0.94 <= dice(filled, mask) < 1.0, name
        assert vertices < 0.5 * voxel_edges, name


def test_each_sequence_shows_urine_and_fat_as_that_weighting_does():
    labels = np.array([[[TISSUES.index(t) for t in ("urine", "fat", "muscle")]]], dtype=np.uint8)
    space = Space(np.arange(3.0), np.arange(1.0), np.arange(1.0))

    def signal(sequence: str) -> dict[str, float]:
        water, fat = tissue_signal(np.repeat(labels, 4, axis=0), Space(space.x, space.y, np.arange(4.0)), sequence,
                                   np.random.default_rng(0))
        total = (water + fat).mean(axis=(0, 1))
        return dict(zip(("urine", "fat", "muscle"), total))

    t2, fatsat, t1 = signal("t2"), signal("t2_fatsat"), signal("t1")
    assert t2["urine"] > t2["fat"] > t2["muscle"] and t1["fat"] > t1["muscle"] > t1["urine"]
    assert fatsat["fat"] < fatsat["muscle"] < fatsat["urine"]


def test_the_style_is_chosen_on_the_command_line_and_writes_every_kind_of_candidate(tmp_path):
    result = run_cli("phantom", tmp_path / "fse", "--style", "fse", "--cases", "1", "--size", "64", "64", "8")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(tmp_path / "fse" / "manifest.csv")))
    kinds = {row["kind"] for row in rows}
    assert {"failure_empty", "failure_all_ones", "failure_noise", "failure_shifted"} <= kinds
    assert {row["roi"] for row in rows} == {"Prostate", "Bladder", "Rectum", "FemoralHead_L", "FemoralHead_R"}
    image = load_series(tmp_path / "fse" / "case000" / "image")
    first = image.datasets[0]
    assert first.SeriesDescription.endswith("tse axial (fse phantom)")
    assert float(first.SliceThickness) <= float(first.SpacingBetweenSlices)  # a gap between slices, or none


def test_evaluate_breaks_the_figures_down_by_series_description(tmp_path):
    """A site's studies mix protocols; the fse T2 reads worse than its T1, so evaluate says so per series."""
    for style in ("classic", "fse"):
        result = run_cli("phantom", tmp_path / style, "--style", style, "--cases", "1", "--size", "64", "64", "8")
        assert result.returncode == 0, result.stderr
    rows = [{**row, **{key: f"{style}/{row[key]}" for key in ("image", "reference", "candidate")},
             "case_id": f"{style}-{row['case_id']}"}
            for style in ("classic", "fse") for row in csv.DictReader(open(tmp_path / style / "manifest.csv"))]
    with open(tmp_path / "both.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    common = ("--manifest", tmp_path / "both.csv", "--baseline-trials", "1", "--cache", tmp_path / "cache")
    result = run_cli("evaluate", *common, "--json", "--html", tmp_path / "report.html")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    descriptions = {style: load_series(tmp_path / style / "case000" / "image").datasets[0].SeriesDescription
                    for style in ("classic", "fse")}
    by_series = report["realistic_by_series"]
    assert set(by_series) == set(descriptions.values())
    for style, description in descriptions.items():
        realistic = [r for r in rows if r["case_id"].startswith(style) and not r["kind"].startswith("failure")]
        assert by_series[description]["n"] == len(realistic)
    total = report["realistic"]["n"]
    assert sum(g["mae"] * g["n"] for g in by_series.values()) / total == pytest.approx(report["realistic"]["mae"])
    given = report["realistic_given"].get("n", 0) / total
    assert sum(g["given"] * g["n"] for g in by_series.values()) / total == pytest.approx(given)
    table = (tmp_path / "report.html").read_text().split("By series description", 1)[1].split("</table>", 1)[0]
    assert all(f"<td>{description}</td>" in table for description in descriptions.values())
    text = run_cli("evaluate", *common)
    assert text.returncode == 0 and f"series '{descriptions['fse']}': n=" in text.stdout, text.stderr
