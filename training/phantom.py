"""`contourqa phantom`: synthetic pelvis MR studies with a reference structure set, auto-contour
candidates spread over the whole Dice range, and the four failure modes, plus a training manifest.

Everything is drawn from one seed, so a study set is reproducible from its command line.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from contourqa.qa_models.atomic import atomic_path
from contourqa.qa_models.geometry import Grid
from contourqa.qa_models.polygon_fill import fill_polygons

from .progress import progress
from .phantom_anatomy import INTENSITY, ROI_NAMES, Body, Organ, pelvis
from .phantom_dicom import StudyIdentity, mr_series_datasets, rtstruct_dataset, save, seg_dataset

MANIFEST_COLUMNS = ["case_id", "image", "reference", "candidate", "roi", "kind", "age", "psa", "prostate_volume_ml"]
REALISTIC_KINDS = ("good", "dilate", "erode", "warp", "missed_slices", "leak", "shift")
REALISTIC_CANDIDATES_PER_CASE = 6


@dataclass(frozen=True)
class PhantomSpec:
    rows: int = 320
    columns: int = 320
    slices: int = 28
    field_of_view_mm: float = 240.0
    slice_spacing_mm: float = 3.0


STYLES = ("classic", "synth", "mrsim", "fse")
CLASSIC_DESCRIPTION = "T2 TSE axial (phantom)"


def generate_phantom_studies(out_dir: str | Path, cases: int, seed: int, spec: PhantomSpec = PhantomSpec(),
                             style: str = "classic", workers: int = 1) -> Path:
    """Write ``cases`` studies under ``out_dir`` and return the path of their manifest.csv.

    ``classic``: the fixed-contrast T2-like phantom of this module; ``synth``: the randomised style of
    ``synth_style`` (images from label maps with a random appearance per study; ``spec`` gives the
    matrix and the fewest slices, the spacings are drawn); ``mrsim``: the classic anatomy imaged by the
    simulated MR acquisition of ``mrsim_style`` (relaxation times, coils, cut k-space, ghosts); ``fse``: a
    fourth anatomy of its own imaged as a turbo spin echo and contoured as an expert draws (``fse_style``;
    ``spec`` gives the matrix and the fewest slices). Study n is
    drawn from the seed (seed, n) alone, so ``workers`` processes write the same studies as one (but for
    their random UIDs)."""
    if style not in STYLES:
        raise ValueError(f"unknown phantom style '{style}' (choose from {', '.join(STYLES)})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write = partial(_write_study, out_dir, seed, spec, style)
    description = f"phantom studies ({style})"
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            studies = list(progress(pool.map(write, range(cases)), description, total=cases))
    else:
        studies = list(progress(map(write, range(cases)), description, total=cases))
    manifest = out_dir / "manifest.csv"
    with atomic_path(manifest) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(row for rows in studies for row in rows)
    return manifest


def _write_study(out_dir: Path, seed: int, spec: PhantomSpec, style: str, case: int) -> list[dict]:
    """Study number ``case``: its files under ``out_dir`` and its manifest rows."""
    rng = np.random.default_rng([seed, case])
    case_id = f"case{case:03d}"
    if style == "synth":
        from .synth_style import generate_case

        return generate_case(out_dir, case_id, rng, spec.rows, spec.columns, spec.slices)
    if style == "fse":
        from .fse_style import generate_case as generate_fse_case

        return generate_fse_case(out_dir, case_id, rng, spec.rows, spec.columns, spec.slices)
    if style == "mrsim":
        from . import mrsim_style

        return _generate_case(out_dir, case_id, rng, spec, mrsim_style.synthesise_image, mrsim_style.DESCRIPTION)
    return _generate_case(out_dir, case_id, rng, spec)


def _case_grid(rng: np.random.Generator, spec: PhantomSpec) -> Grid:
    """Varied geometry: pixel size, table offset, and an oblique tilt in about a third of the cases."""
    pixel = spec.field_of_view_mm / max(spec.rows, spec.columns) * rng.uniform(0.9, 1.1)
    spacing = np.array([pixel, pixel, spec.slice_spacing_mm * rng.uniform(0.9, 1.15)])
    if rng.random() < 1 / 3:
        direction = Rotation.from_euler("xyz", rng.uniform(-15, 15, 3), degrees=True).as_matrix()
    else:
        direction = np.eye(3)
    centre = rng.uniform(-20, 20, 3)
    half_extent = (np.array([spec.columns, spec.rows, spec.slices]) - 1) / 2 * spacing
    origin = centre - direction @ half_extent
    return Grid(origin=origin, spacing=spacing, direction=direction, shape=(spec.slices, spec.rows, spec.columns))


def _frame_coordinates(grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v) mm of every pixel centre of a slice and w mm of every slice, from the centre of the field of view."""
    depth, rows, columns = grid.shape
    u = (np.arange(columns) - (columns - 1) / 2) * grid.spacing[0]
    v = (np.arange(rows) - (rows - 1) / 2) * grid.spacing[1]
    w = (np.arange(depth) - (depth - 1) / 2) * grid.spacing[2]
    uu, vv = np.meshgrid(u, v)
    return uu, vv, w


def _to_patient(grid: Grid, loop_uv: np.ndarray, w: float) -> np.ndarray:
    depth, rows, columns = grid.shape
    centre_index = (np.array([columns, rows, depth]) - 1) / 2
    index = np.column_stack([loop_uv[:, 0] / grid.spacing[0], loop_uv[:, 1] / grid.spacing[1],
                             np.full(len(loop_uv), w / grid.spacing[2])]) + centre_index
    return np.round(grid.to_patient(index), 3)  # as written to ContourData


def tissue_plane(u: np.ndarray, v: np.ndarray, height: float, slice_index: int, organs: dict[str, Organ], body: Body,
                 values: dict[str, float]) -> np.ndarray:
    """One slice at ``height`` mm, each tissue of ``INTENSITY`` painted with its value in ``values`` (a
    grey value, or a style's own signal), organs over the body and the prostate's zones last."""
    in_body, in_muscle = body.tissue(u, v)
    plane = np.where(in_body, values["fat"], values["air"]).astype(np.float32)
    plane[in_muscle] = values["muscle"]
    for name in ("FemoralHead_L", "FemoralHead_R"):
        plane[organs[name].inside(u, v, height, slice_index)] = values["femoral_head"]
    plane[organs["Bladder"].inside(u, v, height, slice_index)] = values["bladder"]
    rectum = organs["Rectum"]
    plane[rectum.inside(u, v, height, slice_index)] = values["rectum_wall"]
    plane[replace(rectum, lumen=0.0, scale=rectum.lumen).inside(u, v, height, slice_index)] = values["rectum_lumen"]
    prostate = organs["Prostate"]
    in_prostate = prostate.inside(u, v, height, slice_index)
    peripheral = v > prostate.centre[1] + 0.25 * prostate.semi_axes[1]
    plane[in_prostate] = values["prostate_tz"]
    plane[in_prostate & peripheral] = values["prostate_pz"]
    return plane


def _synthesise_image(grid: Grid, organs: dict[str, Organ], body: Body, rng: np.random.Generator) -> np.ndarray:
    """A T2-weighted-like volume: tissue classes, partial volume blur, bias field and Rician noise."""
    uu, vv, w = _frame_coordinates(grid)
    volume = np.stack([tissue_plane(uu, vv, height, k, organs, body, INTENSITY) for k, height in enumerate(w)])
    volume = ndimage.gaussian_filter(volume, sigma=(0.3, 0.8, 0.8))
    a, b = body.semi_axes
    bias = 1 + rng.uniform(-0.15, 0.15) * uu / a + rng.uniform(-0.15, 0.15) * vv / b
    volume *= bias[np.newaxis].astype(np.float32)
    sigma = rng.uniform(10, 25)
    noisy = np.hypot(volume + rng.normal(0, sigma, volume.shape), rng.normal(0, sigma, volume.shape))
    return np.clip(noisy, 0, 65535).astype(np.uint16)


def _perturb(organ: Organ, kind: str, rng: np.random.Generator, organs: dict[str, Organ], depth: int) -> Organ:
    """An auto-contour of ``organ`` with one realistic kind of error."""
    if kind == "good":
        return replace(organ, scale=float(rng.uniform(0.97, 1.03)),
                       harmonics=organ.harmonics + ((int(rng.integers(3, 6)), float(rng.uniform(0, 0.03)), 0.0),))
    if kind == "dilate":
        return replace(organ, scale=float(rng.uniform(1.08, 1.5)))
    if kind == "erode":
        return replace(organ, scale=float(rng.uniform(0.55, 0.92)))
    if kind == "warp":
        extra = tuple((order, float(rng.uniform(0.05, 0.18)), float(rng.uniform(0, 2 * np.pi))) for order in (2, 3, 4))
        return replace(organ, harmonics=organ.harmonics + extra)
    if kind == "missed_slices":
        drawn = [k for k in range(depth) if abs((k - (depth - 1) / 2) * 3.0 - organ.centre[2]) < organ.semi_axes[2]]
        count = int(rng.integers(1, 4))
        dropped = drawn[:count] if rng.random() < 0.5 else drawn[-count:]
        return replace(organ, dropped_slices=frozenset(dropped))
    if kind == "leak":
        neighbour = min((o for n, o in organs.items() if n != organ.name),
                        key=lambda o: np.hypot(o.centre[0] - organ.centre[0], o.centre[1] - organ.centre[1]))
        angle = float(np.arctan2(neighbour.centre[1] - organ.centre[1], neighbour.centre[0] - organ.centre[0]))
        return replace(organ, leak=(angle, float(rng.uniform(6, 16)), float(rng.uniform(0.3, 0.7))))
    if kind == "shift":
        magnitude, angle = rng.uniform(3, 10), rng.uniform(0, 2 * np.pi)
        return organ.shifted(magnitude * np.cos(angle), magnitude * np.sin(angle))
    raise ValueError(f"unknown perturbation {kind}")


def _contours(grid: Grid, organs: dict[str, Organ]) -> dict[str, list[tuple[int, list[np.ndarray]]]]:
    """Per ROI, the (slice, polygons in patient mm) of every slice the organ is drawn on."""
    _, _, w = _frame_coordinates(grid)
    result = {}
    for name, organ in organs.items():
        slices = []
        for k, height in enumerate(w):
            loops = [_to_patient(grid, loop, height) for loop in organ.loops(height, k)]
            if loops:
                slices.append((k, loops))
        result[name] = slices
    return result


def _masks(grid: Grid, contours: dict[str, list[tuple[int, list[np.ndarray]]]]) -> dict[str, np.ndarray]:
    masks = {}
    for name, slices in contours.items():
        mask = np.zeros(grid.shape, dtype=bool)
        for k, loops in slices:
            mask[k] = fill_polygons([grid.to_index(loop)[:, :2] for loop in loops], grid.shape[1], grid.shape[2])
        masks[name] = mask
    return masks


def _field_of_view_box(grid: Grid) -> dict[str, list[tuple[int, list[np.ndarray]]]]:
    """The all-ones failure: a rectangle just outside the field of view on every slice, for every ROI."""
    depth, rows, columns = grid.shape
    corners = np.array([[-0.5, -0.5], [columns - 0.5, -0.5], [columns - 0.5, rows - 0.5], [-0.5, rows - 0.5]])
    box = [(k, [np.round(grid.to_patient(np.column_stack([corners, np.full(4, k)])), 3)]) for k in range(depth)]
    return {name: box for name in ROI_NAMES}


def _generate_case(out_dir: Path, case_id: str, rng: np.random.Generator, spec: PhantomSpec,
                   synthesise: Callable[[Grid, dict[str, Organ], Body, np.random.Generator], np.ndarray] = _synthesise_image,
                   description: str = CLASSIC_DESCRIPTION) -> list[dict]:
    grid = _case_grid(rng, spec)
    organs = pelvis(rng)
    body = Body((rng.uniform(0.40, 0.45) * spec.field_of_view_mm, rng.uniform(0.28, 0.32) * spec.field_of_view_mm),
                float(rng.uniform(10, 18)))
    identity = StudyIdentity.new(case_id, rng)
    case_dir = out_dir / case_id
    images = mr_series_datasets(synthesise(grid, organs, body, rng), grid, identity, description)
    if rng.random() < 0.5:  # descending InstanceNumber, as some scanners number feet-first stacks
        for ds, number in zip(images, range(len(images), 0, -1)):
            ds.InstanceNumber = number
    for ds in images:  # file names say nothing about slice order
        save(ds, case_dir / "image" / f"{rng.integers(16**8):08x}.dcm")

    reference = _contours(grid, organs)
    save(rtstruct_dataset(images, identity, reference, "Reference"), case_dir / "reference.dcm")
    psa = round(float(rng.lognormal(np.log(7), 0.5)), 1)
    prostate_ml = float(_masks(grid, {"Prostate": reference["Prostate"]})["Prostate"].sum()) * grid.voxel_volume_ml
    rows: list[dict] = []

    def add(candidate: str, kinds: dict[str, str]) -> None:
        for roi, kind in kinds.items():
            rows.append({"case_id": case_id, "image": f"{case_id}/image", "reference": f"{case_id}/reference.dcm",
                         "candidate": f"{case_id}/candidates/{candidate}", "roi": roi, "kind": kind,
                         "age": identity.patient_age, "psa": psa, "prostate_volume_ml": round(prostate_ml, 2)})

    candidate_dir = case_dir / "candidates"
    for number in range(1, REALISTIC_CANDIDATES_PER_CASE + 1):
        kinds = {name: str(rng.choice(REALISTIC_KINDS)) for name in ROI_NAMES}
        perturbed = {name: _perturb(organs[name], kinds[name], rng, organs, spec.slices) for name in ROI_NAMES}
        contours = _contours(grid, perturbed)
        name = f"auto{number:02d}.dcm"
        save(rtstruct_dataset(images, identity, contours, f"AutoSeg {number}"), candidate_dir / name)
        add(name, kinds)
        if number <= 2:  # the same candidate as SEG: binary for the first, fractional for the second
            fractional = number == 2
            masks = _masks(grid, contours)
            if fractional:
                masks = {n: np.clip(ndimage.gaussian_filter(m.astype(np.float32), (0, 1.0, 1.0)) * 1.6 - 0.3, 0, 1)
                         for n, m in masks.items()}
            seg_name = f"auto{number:02d}_{'fractional' if fractional else 'binary'}_seg.dcm"
            save(seg_dataset(images, masks, fractional, f"AutoSeg {number} SEG"), candidate_dir / seg_name)
            add(seg_name, kinds)

    failures = {name: "failure_empty" for name in ROI_NAMES}
    save(rtstruct_dataset(images, identity, {n: [] for n in ROI_NAMES}, "Failure empty"),
         candidate_dir / "failure_empty.dcm")
    add("failure_empty.dcm", failures)
    save(rtstruct_dataset(images, identity, _field_of_view_box(grid), "Failure all ones"),
         candidate_dir / "failure_all_ones.dcm")
    add("failure_all_ones.dcm", {n: "failure_all_ones" for n in ROI_NAMES})
    noise = {n: rng.random(grid.shape) < 0.5 for n in ROI_NAMES}
    save(seg_dataset(images, noise, False, "Failure noise"), candidate_dir / "failure_noise_seg.dcm")
    add("failure_noise_seg.dcm", {n: "failure_noise" for n in ROI_NAMES})
    fraction, angle = rng.uniform(0.3, 0.5), rng.uniform(0, 2 * np.pi)
    du, dv = fraction * spec.field_of_view_mm * np.cos(angle), fraction * spec.field_of_view_mm * np.sin(angle)
    shifted = _contours(grid, {n: o.shifted(du, dv) for n, o in organs.items()})
    save(rtstruct_dataset(images, identity, shifted, "Failure shifted"), candidate_dir / "failure_shifted.dcm")
    add("failure_shifted.dcm", {n: "failure_shifted" for n in ROI_NAMES})
    return rows
