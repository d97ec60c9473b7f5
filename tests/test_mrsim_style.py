"""The ``mrsim`` phantom style: the classic anatomy through a simulated MR acquisition."""

from __future__ import annotations

import csv

import numpy as np
import pydicom

from conftest import run_cli
from contourqa.qa_models.series import load_series
from contourqa.training.mrsim_style import Acquisition, spin_echo_signal
from contourqa.training.phantom import PhantomSpec, generate_phantom_studies

TINY = PhantomSpec(rows=64, columns=64, slices=8)


def _volumes(folder) -> list[np.ndarray]:
    return [load_series(case / "image").array for case in sorted(folder.glob("case*"))]


def test_studies_are_reproducible_from_the_seed_and_their_contrast_differs(tmp_path):
    first = _volumes(generate_phantom_studies(tmp_path / "a", 3, seed=5, spec=TINY, style="mrsim").parent)
    again = _volumes(generate_phantom_studies(tmp_path / "b", 3, seed=5, spec=TINY, style="mrsim").parent)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    # each study draws its own sequence, timings and scanner: no two share their grey values
    assert len({tuple(np.percentile(v, [50, 90, 99]).round(3)) for v in first}) == 3


def test_the_contrast_follows_the_tissues_relaxation_times():
    rng = np.random.default_rng(0)

    def typical(sequence: str) -> dict[str, float]:  # over many studies: the timings and tissues vary
        draws = [spin_echo_signal(sequence, rng) for _ in range(50)]
        return {tissue: float(np.median([d[tissue] for d in draws])) for tissue in draws[0]}

    t1, t2 = typical("t1"), typical("t2")
    # urine (long T1 and T2) is dark on T1 weighting and bright on T2; fat bright on both; gas dark on both
    assert t1["bladder"] < t1["muscle"] < t1["fat"] and t2["bladder"] > t2["fat"] > t2["muscle"]
    assert max(t1["rectum_lumen"], t2["rectum_lumen"]) < 0.15 * min(t1["fat"], t2["fat"])


def _still_acquisition(rows: int = 64) -> Acquisition:
    """One coil of uniform sensitivity, every line kept, no motion and no noise: an ideal scanner."""
    acquisition = Acquisition((rows, rows), np.ones((1, 2 * rows, 2 * rows)), np.random.default_rng(0), 1.0)
    acquisition.keep[:] = True
    acquisition.line_phase[:] = 0
    acquisition.noise = 0.0
    return acquisition


def test_a_cut_k_space_rings_at_an_edge_and_disturbed_lines_ghost_into_the_air():
    plane = np.zeros((128, 128))
    plane[40:88, 40:88] = 1.0  # an object in air
    ideal = _still_acquisition()
    clean = ideal(plane)
    assert clean[:, :15].max() < 0.02 and abs(clean[32, 32] - 1) < 0.05  # air stays dark, the inside near 1
    cut = _still_acquisition()
    cut.keep[:] = False
    cut.keep[20:44] = True  # 24 of 64 phase-encode lines: a coarser resolution along the rows
    ideal_rows, cut_rows = clean[:, 32], cut(plane)[:, 32]

    def partway(profile: np.ndarray) -> int:  # pixels of the object's upper edge caught partway up it
        return int(np.sum((profile[10:32] > 0.1) & (profile[10:32] < 0.9)))

    assert partway(cut_rows) > partway(ideal_rows) and cut_rows.max() > 1.05  # blurrier, and Gibbs' overshoot
    ghosted = _still_acquisition()
    ghosted.line_phase[1::2] = 0.4  # an N/2 ghost
    assert ghosted(plane)[:12, 32].max() > 0.05  # the ghost shows above the object, in the air


def test_the_style_is_chosen_on_the_command_line_and_writes_the_classic_candidates(tmp_path):
    result = run_cli("phantom", tmp_path / "mrsim", "--style", "mrsim", "--cases", "1", "--size", "64", "64", "8")
    assert result.returncode == 0, result.stderr
    classic = run_cli("phantom", tmp_path / "classic", "--cases", "1", "--size", "64", "64", "8")
    assert classic.returncode == 0, classic.stderr

    def kinds(folder):
        with open(folder / "manifest.csv", newline="") as handle:
            return sorted((row["roi"], row["kind"] in ("failure_empty", "failure_all_ones", "failure_noise",
                                                        "failure_shifted")) for row in csv.DictReader(handle))

    assert kinds(tmp_path / "mrsim") == kinds(tmp_path / "classic")
    image = pydicom.dcmread(next((tmp_path / "mrsim" / "case000" / "image").iterdir()))
    assert "mrsim" in image.SeriesDescription and image.Modality == "MR"
