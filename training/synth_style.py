"""The randomised ("synth") phantom style: images drawn from label maps with a random appearance per
study, after SynthSeg (Billot et al., Medical Image Analysis 2023), so a network cannot learn any one
contrast, texture, resolution or noise and has to learn the contour's fit to the anatomy instead.

Per study: a label map of ~20 tissues (``synth_anatomy``) under a smooth random deformation; per label
a mean and a spread from a contrast family (T2-like, T1-like, CT-like, fully random, or random and
inverted), redrawn until each structure's boundary is visible; within-tissue texture from a smooth
random field, at a study-wide scale from nearly flat to fully textured; partial-volume blur; a random
resolution (a 200-240 mm field of view, in-plane blur up to 1.5 pixels, slices 1-6 mm, thick slices
simulated by blurring a finer stack before sampling); a bias field; Rician or Gaussian noise from nearly
none to strong; a gamma. The reference structure set is traced from the label
map at the acquired slices (marching squares), and the candidates are the label-derived masks under
the same kinds of error as the classic style, traced the same way. The rectum is the whole organ in most
studies and its wall alone (a ring) in some, as sites contour it either way. Everything follows from the
seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage
from skimage import measure

from contourqa.qa_models.geometry import Grid

from .phantom_dicom import StudyIdentity, mr_series_datasets, rtstruct_dataset, save, seg_dataset
from .synth_anatomy import LABEL, LABELS, ROI_LABELS, Coordinates, pelvis_labels, roi_labels, smooth_displacement

ROI_NAMES = tuple(ROI_LABELS)
REALISTIC_KINDS = ("good", "dilate", "erode", "warp", "missed_slices", "leak", "shift")
CANDIDATES_PER_CASE = 6
MIN_SLAB_MM, MAX_SLICES = 80.0, 64

# Mean (low, high) per tissue for the contrast families, on a 0-1 scale; tissues not named take "soft".
_T2 = {"air": (0, 0.03), "skin": (0.3, 0.5), "subcutaneous_fat": (0.6, 0.85), "visceral_fat": (0.55, 0.8),
       "soft": (0.15, 0.3), "bone_cortex": (0, 0.05), "bone_marrow": (0.45, 0.7), "femoral_head_l": (0.45, 0.7),
       "femoral_head_r": (0.45, 0.7), "bladder_wall": (0.1, 0.25), "urine": (0.85, 1.0), "rectal_wall": (0.18, 0.32),
       "rectal_lumen": (0.3, 0.6), "gas": (0, 0.05), "stool": (0.2, 0.5), "prostate_tz": (0.3, 0.5),
       "prostate_pz": (0.55, 0.8), "prostate_capsule": (0.08, 0.2), "seminal_vesicle": (0.7, 0.95), "vessel": (0, 0.1)}
_T1 = {"air": (0, 0.03), "skin": (0.4, 0.6), "subcutaneous_fat": (0.8, 1.0), "visceral_fat": (0.75, 0.95),
       "soft": (0.3, 0.45), "bone_cortex": (0, 0.05), "bone_marrow": (0.7, 0.9), "femoral_head_l": (0.7, 0.9),
       "femoral_head_r": (0.7, 0.9), "bladder_wall": (0.3, 0.45), "urine": (0.05, 0.15), "rectal_wall": (0.3, 0.45),
       "rectal_lumen": (0.2, 0.4), "gas": (0, 0.05), "stool": (0.3, 0.6), "prostate_tz": (0.3, 0.42),
       "prostate_pz": (0.3, 0.42), "prostate_capsule": (0.25, 0.35), "seminal_vesicle": (0.3, 0.45),
       "vessel": (0.1, 0.5)}
_CT = {"air": (0, 0.02), "skin": (0.48, 0.52), "subcutaneous_fat": (0.38, 0.42), "visceral_fat": (0.38, 0.42),
       "soft": (0.5, 0.54), "bone_cortex": (0.9, 1.0), "bone_marrow": (0.55, 0.65), "femoral_head_l": (0.58, 0.7),
       "femoral_head_r": (0.58, 0.7), "bladder_wall": (0.5, 0.54), "urine": (0.49, 0.51), "rectal_wall": (0.5, 0.54),
       "rectal_lumen": (0.45, 0.52), "gas": (0, 0.05), "stool": (0.4, 0.56), "prostate_tz": (0.51, 0.54),
       "prostate_pz": (0.51, 0.54), "prostate_capsule": (0.5, 0.53), "seminal_vesicle": (0.5, 0.53),
       "vessel": (0.52, 0.58)}
CONTRASTS = ("t2", "t1", "ct", "random", "inverted")
VISIBLE_SHARE, DRAWS = 0.5, 30
NOISE_FLOOR = 0.03  # the typical noise the acquisition adds, on the same 0-1 scale
NOISE_RANGE = (0.002, 0.06)  # the noise drawn per study, on that scale
TEXTURE_SCALE_MIN = 0.05  # the smallest study-wide scale of the within-tissue texture


def boundary_visibility(labels: np.ndarray, means: np.ndarray, spreads: np.ndarray,
                        definitions: dict[str, tuple[str, ...]] = ROI_LABELS) -> dict[str, float]:
    """Per ROI, the share of its surface (voxel faces between a label of the ROI and one outside it)
    where the two tissues differ by more than their texture and noise: |mean difference| above the
    root sum of squares of both textures (3 x spread, as ``synthesise_image`` draws them) and the noise floor.

    A contoured organ must be visible for its contour's fit to be: in an early randomised set 30 % of the
    ROIs had no boundary contrast, their Dice targets followed from nothing in the image, and a network
    trained on them learned to predict each ROI's mean (docs/model.md, "Why the synth model did not learn").
    """
    texture = 3 * spreads
    shares = {}
    for roi, tissues in definitions.items():
        members = np.zeros(len(LABELS), dtype=bool)
        members[[LABEL[t] for t in tissues]] = True
        visible = total = 0
        for axis in range(3):
            a = np.moveaxis(labels, axis, 0)[:-1].ravel()
            b = np.moveaxis(labels, axis, 0)[1:].ravel()
            faces = members[a] != members[b]
            a, b = a[faces], b[faces]
            contrast = np.abs(means[a] - means[b]) / np.sqrt(texture[a] ** 2 + texture[b] ** 2 + NOISE_FLOOR ** 2)
            visible += int((contrast >= 1).sum())
            total += len(a)
        shares[roi] = visible / total if total else 1.0
    return shares


def visible_intensities(contrast: str, labels: np.ndarray, rng: np.random.Generator,
                        definitions: dict[str, tuple[str, ...]] = ROI_LABELS) -> tuple[np.ndarray, np.ndarray]:
    """``label_intensities`` drawn until every ROI is visible along at least ``VISIBLE_SHARE`` of its surface;
    after ``DRAWS`` tries (CT-like contrast rarely shows the prostate), the draw that comes closest."""
    best, best_score = None, -1.0
    for _ in range(DRAWS):
        means, spreads = label_intensities(contrast, rng)
        score = float(np.mean([min(share, VISIBLE_SHARE)
                               for share in boundary_visibility(labels, means, spreads, definitions).values()]))
        if score >= VISIBLE_SHARE:
            return means, spreads
        if score > best_score:
            best, best_score = (means, spreads), score
    return best


def label_intensities(contrast: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mean and within-tissue spread of every label for one study of the contrast family ``contrast``."""
    if contrast in ("random", "inverted"):
        means = rng.uniform(0, 1, len(LABELS))
        means[LABEL["air"]] = rng.uniform(0, 0.05) if contrast == "random" else rng.uniform(0, 1)
        if contrast == "inverted":
            means = 1 - means
    else:
        table = {"t2": _T2, "t1": _T1, "ct": _CT}[contrast]
        means = np.array([rng.uniform(*table.get(name, table["soft"])) for name in LABELS])
    # a study-wide texture scale, log-uniform down to a twentieth: some studies' organs are nearly flat
    # inside, as in a smooth acquisition, where without it nearly every organ was textured and a network
    # trained on them scored good contours of flat organs low (docs/model.md, "Without grey values")
    spreads = rng.uniform(0.005, 0.06, len(LABELS)) * np.exp(rng.uniform(np.log(TEXTURE_SCALE_MIN), 0))
    return means, spreads


def _acquisition(rng: np.random.Generator, rows: int, columns: int, min_slices: int) -> tuple[Grid, int]:
    """The acquired grid (axial, a 200-240 mm field of view on the given matrix, a random slice spacing,
    centred near the prostate) and the number of finer sub-slices each thick slice is simulated from.
    The pixel follows from the matrix (192: 1.0-1.25 mm, 384: 0.5-0.6 mm); a lower acquired resolution
    is simulated by the in-plane blur of ``synthesise_image``."""
    pixel = rng.uniform(200, 240) / max(rows, columns)
    spacing_z = rng.uniform(1.0, 6.0)
    slices = int(min(MAX_SLICES, max(min_slices, np.ceil(MIN_SLAB_MM / spacing_z))))
    spacing = np.array([pixel * rng.uniform(0.95, 1.05), pixel, spacing_z])
    centre = rng.uniform(-10, 10, 3) + [0, 0, rng.uniform(0, 15)]
    half = (np.array([columns, rows, slices]) - 1) / 2 * spacing
    grid = Grid(origin=centre - half, spacing=spacing, direction=np.eye(3), shape=(slices, rows, columns))
    return grid, max(1, int(spacing_z // 1.5))


def _fine_coordinates(grid: Grid, sub: int, rng: np.random.Generator) -> Coordinates:
    """Deformed mm coordinates of a stack ``sub`` times finer along z than ``grid``."""
    slices, rows, columns = grid.shape
    z = grid.origin[2] + (np.arange(slices * sub) - (sub - 1) / 2) * grid.spacing[2] / sub
    y = grid.origin[1] + np.arange(rows) * grid.spacing[1]
    x = grid.origin[0] + np.arange(columns) * grid.spacing[0]
    zz, yy, xx = np.meshgrid(z.astype(np.float32), y.astype(np.float32), x.astype(np.float32), indexing="ij")
    coarse_shape = (max(2, len(z) // 4), max(2, rows // 8), max(2, columns // 8))
    coarse_spacing = np.array([grid.spacing[2] / sub * 4, grid.spacing[1] * 8, grid.spacing[0] * 8])
    field = smooth_displacement(coarse_shape, coarse_spacing, rng.uniform(2, 6), rng.uniform(20, 40), rng)
    zoom = np.array(xx.shape) / np.array(coarse_shape)
    dz, dy, dx = (ndimage.zoom(f, zoom, order=1).astype(np.float32)[:len(z), :rows, :columns] for f in field)
    # rotate the anatomy a little in-plane as patients lie
    angle = np.deg2rad(rng.uniform(-8, 8))
    xr, yr = np.cos(angle) * xx - np.sin(angle) * yy, np.sin(angle) * xx + np.cos(angle) * yy
    return Coordinates(xr + dx, yr + dy, zz + dz)


def synthesise_image(labels_fine: np.ndarray, grid: Grid, sub: int, rng: np.random.Generator,
                     definitions: dict[str, tuple[str, ...]] = ROI_LABELS) -> tuple[np.ndarray, str]:
    """The acquired volume (uint16) from the fine label map, and the contrast family drawn; every ROI of
    ``definitions`` visible."""
    contrast = str(rng.choice(CONTRASTS))
    means, spreads = visible_intensities(contrast, labels_fine, rng, definitions)
    fine_spacing = np.array([grid.spacing[2] / sub, grid.spacing[1], grid.spacing[0]])
    texture = ndimage.gaussian_filter(rng.normal(size=labels_fine.shape).astype(np.float32),
                                      rng.uniform(0.7, 3.0) / fine_spacing)
    texture /= texture.std() + 1e-6
    volume = means[labels_fine].astype(np.float32) + spreads[labels_fine].astype(np.float32) * texture * 3
    volume = ndimage.gaussian_filter(volume, [0, *(rng.uniform(0.3, 1.5, 2))])  # partial volume, acquired resolution
    thickness_sigma = sub / 2.355 if sub > 1 else 0.3  # a thick slice averages the tissue across it
    volume = ndimage.gaussian_filter1d(volume, thickness_sigma, axis=0)[sub // 2::sub][:grid.shape[0]]
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in volume.shape), indexing="ij")
    coefficients = rng.normal(0, 0.15, 6)
    bias = np.exp(coefficients[0] * i + coefficients[1] * j + coefficients[2] * k + coefficients[3] * i * j
                  + coefficients[4] * i ** 2 + coefficients[5] * j ** 2)
    volume = volume * bias
    volume = np.clip(volume, 0, None) / max(float(np.percentile(volume, 99.5)), 1e-6)
    sigma = np.exp(rng.uniform(*np.log(NOISE_RANGE)))  # log-uniform: nearly noiseless studies as often as noisy ones
    if contrast != "ct" and rng.random() < 0.7:  # magnitude images: Rician
        volume = np.hypot(volume + rng.normal(0, sigma, volume.shape), rng.normal(0, sigma, volume.shape))
    else:
        volume = volume + rng.normal(0, sigma, volume.shape)
    volume = np.clip(volume, 0, None) ** rng.uniform(0.7, 1.4)
    return np.clip(volume * rng.uniform(800, 3000), 0, 65535).astype(np.uint16), contrast


def trace(mask: np.ndarray, grid: Grid) -> list[tuple[int, list[np.ndarray]]]:
    """(slice, polygons in patient mm) of a mask: marching squares at level 0.5 on each slice, so the
    polygons run between voxel centres and filling them by voxel centre gives the mask back."""
    slices = []
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        padded = np.pad(mask[k].astype(np.float32), 1)
        loops = []
        for contour in measure.find_contours(padded, 0.5):
            if len(contour) < 4:
                continue
            rows, columns = contour[:, 0] - 1, contour[:, 1] - 1
            index = np.column_stack([columns, rows, np.full(len(rows), float(k))])
            loops.append(np.round(grid.to_patient(index[:-1]), 3))  # find_contours repeats the first point
        if loops:
            slices.append((int(k), loops))
    return slices


def _warped(mask: np.ndarray, grid: Grid, amplitude_mm: float, scale_mm: float, rng: np.random.Generator) -> np.ndarray:
    spacing = np.array([grid.spacing[2], grid.spacing[1], grid.spacing[0]])
    field = smooth_displacement(mask.shape, spacing, amplitude_mm, scale_mm, rng) / spacing[:, None, None, None]
    coordinates = np.indices(mask.shape, dtype=np.float32) + field.astype(np.float32)
    return ndimage.map_coordinates(mask.astype(np.float32), coordinates, order=1, mode="constant") >= 0.5


def perturb(mask: np.ndarray, kind: str, grid: Grid, others: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """An auto-contour of ``mask`` with one realistic kind of error (masks [k, j, i] on ``grid``)."""
    spacing = (grid.spacing[2], grid.spacing[1], grid.spacing[0])
    if kind == "good":
        return _warped(mask, grid, rng.uniform(0.3, 0.9), 10, rng)
    if kind in ("dilate", "erode"):
        inside = ndimage.distance_transform_edt(mask, sampling=spacing)
        outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
        if kind == "dilate":
            return outside <= rng.uniform(1.5, 6)
        eroded = inside > rng.uniform(1, 5)
        return eroded if eroded.any() else mask
    if kind == "warp":
        return _warped(mask, grid, rng.uniform(2, 5), rng.uniform(10, 20), rng)
    if kind == "missed_slices":
        drawn = np.flatnonzero(mask.any(axis=(1, 2)))
        count = min(int(rng.integers(1, 4)), max(1, len(drawn) - 1))
        result = mask.copy()
        result[drawn[:count] if rng.random() < 0.5 else drawn[-count:]] = False
        return result
    if kind == "leak":
        centre = np.array(ndimage.center_of_mass(mask))
        neighbours = [o for o in others if o.any()]
        target = min((np.array(ndimage.center_of_mass(o)) for o in neighbours),
                     key=lambda c: np.linalg.norm((c - centre) * spacing)) if neighbours else centre + [0, 10, 0]
        direction = (target - centre) * spacing
        direction /= np.linalg.norm(direction) + 1e-9
        radius = rng.uniform(6, 16)
        inside = ndimage.distance_transform_edt(mask, sampling=spacing)
        edge = centre + direction / spacing * (inside.max() + radius * 0.5)
        blob = np.sum(((np.indices(mask.shape).T - edge) * spacing).T ** 2, axis=0) <= radius ** 2
        return mask | blob
    if kind == "shift":
        magnitude, angle = rng.uniform(3, 10), rng.uniform(0, 2 * np.pi)
        offset = (0, magnitude * np.sin(angle) / spacing[1], magnitude * np.cos(angle) / spacing[2])
        return ndimage.shift(mask.astype(np.uint8), offset, order=0) > 0
    raise ValueError(f"unknown perturbation {kind}")


def generate_case(out_dir: Path, case_id: str, rng: np.random.Generator, rows: int, columns: int,
                  min_slices: int) -> list[dict]:
    """One study: image, reference, candidates and failures under ``out_dir/case_id``; its manifest rows."""
    # drawn from a child of the study's seed: the rectum's definition changes no other draw of a study
    definitions = roi_labels(np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0]))
    grid, sub = _acquisition(rng, rows, columns, min_slices)
    labels_fine = pelvis_labels(_fine_coordinates(grid, sub, rng), rng)
    volume, contrast = synthesise_image(labels_fine, grid, sub, rng, definitions)
    labels = labels_fine[sub // 2::sub][:grid.shape[0]]  # the label at each acquired slice's centre
    identity = StudyIdentity.new(case_id, rng)
    images = mr_series_datasets(volume, grid, identity, description=f"synthetic pelvis ({contrast} contrast)")
    case_dir = out_dir / case_id
    for ds in images:
        save(ds, case_dir / "image" / f"{rng.integers(16**8):08x}.dcm")
    masks = {name: np.isin(labels, [LABEL[t] for t in tissues]) for name, tissues in definitions.items()}
    save(rtstruct_dataset(images, identity, {n: trace(m, grid) for n, m in masks.items()}, "Reference"),
         case_dir / "reference.dcm")
    return write_candidates(case_dir, case_id, images, identity, masks, grid, rng)


def write_candidates(case_dir: Path, case_id: str, images: list[Dataset], identity: StudyIdentity,
                     masks: dict[str, np.ndarray], grid: Grid, rng: np.random.Generator) -> list[dict]:
    """A study's candidates beside its image and reference.dcm: ``CANDIDATES_PER_CASE`` structure sets
    of realistic errors of ``masks`` (the first also as a SEG) and the constructed failures; its
    manifest rows."""
    prostate_ml = float(masks["Prostate"].sum()) * grid.voxel_volume_ml
    clinical = {"age": identity.patient_age, "psa": round(float(rng.lognormal(np.log(7), 0.5)), 1),
                "prostate_volume_ml": round(prostate_ml, 2)}
    rows_out: list[dict] = []

    def add(candidate: str, kinds: dict[str, str]) -> None:
        for roi, kind in kinds.items():
            rows_out.append({"case_id": case_id, "image": f"{case_id}/image", "reference": f"{case_id}/reference.dcm",
                             "candidate": f"{case_id}/candidates/{candidate}", "roi": roi, "kind": kind, **clinical})

    candidates = case_dir / "candidates"
    for number in range(1, CANDIDATES_PER_CASE + 1):
        kinds, drawn = realistic_errors(masks, grid, rng)
        name = f"auto{number:02d}.dcm"
        contours = {n: trace(m, grid) for n, m in drawn.items()}
        save(rtstruct_dataset(images, identity, contours, f"AutoSeg {number}"), candidates / name)
        add(name, kinds)
        if number == 1:  # the same candidate as a binary SEG
            save(seg_dataset(images, drawn, False, "AutoSeg 1 SEG"), candidates / "auto01_binary_seg.dcm")
            add("auto01_binary_seg.dcm", kinds)
    for name, dataset, kinds in constructed_failures(masks, grid, images, identity, rng):
        save(dataset, candidates / name)
        add(name, kinds)
    return rows_out


def realistic_errors(masks: dict[str, np.ndarray], grid: Grid,
                     rng: np.random.Generator) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """One auto-contour of every ROI, each with a realistic kind of error drawn at random: (kinds, masks)."""
    kinds = {name: str(rng.choice(REALISTIC_KINDS)) for name in masks}
    drawn = {name: perturb(mask, kinds[name], grid, [m for n, m in masks.items() if n != name], rng)
             for name, mask in masks.items()}
    return kinds, drawn


def constructed_failures(masks: dict[str, np.ndarray], grid: Grid, images: list[Dataset], identity: StudyIdentity,
                         rng: np.random.Generator) -> list[tuple[str, Dataset, dict[str, str]]]:
    """The four failure modes of every ROI as (file name, structure set, kind per ROI): empty, all ones,
    noise (a SEG) and the reference shifted by 30-50 % of the field of view."""
    everything = trace(np.ones(grid.shape, dtype=bool), grid)
    noise = seg_dataset(images, {n: rng.random(grid.shape) < 0.5 for n in masks}, False, "Failure noise")
    noise.StudyID = identity.study_id  # highdicom copies the images' own, which may be too long for SH
    fraction, angle = rng.uniform(0.3, 0.5), rng.uniform(0, 2 * np.pi)
    rows, columns = grid.shape[1:]
    offset = (0, fraction * rows * np.sin(angle), fraction * columns * np.cos(angle))
    shifted = {n: trace(ndimage.shift(m.astype(np.uint8), offset, order=0) > 0, grid) for n, m in masks.items()}
    objects = [("failure_empty.dcm", rtstruct_dataset(images, identity, {n: [] for n in masks}, "Failure empty")),
               ("failure_all_ones.dcm", rtstruct_dataset(images, identity, {n: everything for n in masks},
                                                         "Failure all ones")),
               ("failure_noise_seg.dcm", noise),
               ("failure_shifted.dcm", rtstruct_dataset(images, identity, shifted, "Failure shifted"))]
    return [(name, dataset, {n: name.removesuffix(".dcm").removesuffix("_seg") for n in masks})
            for name, dataset in objects]
