"""The ``fse`` phantom style: a fourth, independent pelvis, imaged as a fast spin echo prostate scan and
contoured as an expert draws.

Written after the default model shipped, apart from the other styles, to measure models on anatomy and
images that none of them was trained on: the anatomy of ``fse_anatomy`` (blobs, a tube, femoral heads
with their necks), each tissue's signal relative to muscle for a T2-weighted, fat-saturated T2-weighted
or T1-weighted turbo spin echo, within-tissue structure (muscle fibres, fat septa, a speckled gland,
hyperplastic nodules), the fat signal displaced along the read-out (chemical shift), a slice profile over
sub-planes with a gap between slices, k-space cut and zero-filled (ringing), the echo train's decay
blurring along the phase encoding, two surface coils whose shading the scanner only partly normalises
(so the noise grows towards the body's centre), and Rician noise. The reference is drawn as a person
draws: a smooth outline per slice, simplified to a polygon, not the voxels of the label. The candidates
are the classic kinds of error applied to the label's masks (``synth_style.write_candidates``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import measure

from contourqa.qa_models.geometry import Grid

from .fse_anatomy import TISSUES, Space, pelvis
from .phantom_dicom import StudyIdentity, mr_series_datasets, rtstruct_dataset, save
from .synth_style import write_candidates

SUB_PLANES = 5  # each acquired slice is simulated from this many planes through its spacing
# each tissue's signal relative to muscle; tissues not named take muscle's
_T2 = {"air": 0.0, "skin": 1.3, "fat": 2.8, "bone": 0.05, "marrow": 2.2, "femoral_head": 2.0, "bladder_wall": 0.9,
       "urine": 4.5, "rectal_wall": 1.25, "rectal_content": 1.8, "gas": 0.05, "prostate_central": 1.5,
       "prostate_peripheral": 3.3, "nodule": 2.2, "vesicle": 3.8, "vessel": 0.25}
APPEARANCE = {
    "t2": _T2,
    "t2_fatsat": {**_T2, "skin": 1.0, "fat": 0.35, "marrow": 0.45, "femoral_head": 0.45},
    "t1": {"air": 0.0, "skin": 1.5, "fat": 3.2, "bone": 0.05, "marrow": 2.8, "femoral_head": 2.6, "urine": 0.35,
           "rectal_wall": 1.05, "rectal_content": 1.4, "gas": 0.05, "prostate_central": 1.1,
           "prostate_peripheral": 1.05, "nodule": 1.15, "vesicle": 1.1, "vessel": 1.6},
}
TIMING = {"t2": ("4500", "105"), "t2_fatsat": ("5000", "90"), "t1": ("600", "11")}  # TR and TE written, ms
FAT_FRACTION = {"fat": 0.95, "marrow": 0.6, "femoral_head": 0.6, "skin": 0.3}


def _acquisition(rng: np.random.Generator, rows: int, columns: int, min_slices: int) -> tuple[Grid, float]:
    """An axial grid: a 220-260 mm field of view on the given matrix, 3-4 mm slices with a gap of up to
    15 %, covering at least 85 mm round the prostate; and the slice thickness."""
    pixel = rng.uniform(220, 260) / max(rows, columns)
    thickness = rng.uniform(3.0, 4.0)
    spacing = np.array([pixel, pixel, thickness * rng.uniform(1.0, 1.15)])
    slices = int(min(40, max(min_slices, np.ceil(85 / spacing[2]))))
    centre = rng.uniform(-10, 10, 3) + [0, 0, rng.uniform(5, 20)]
    half = (np.array([columns, rows, slices]) - 1) / 2 * spacing
    return Grid(origin=centre - half, spacing=spacing, direction=np.eye(3), shape=(slices, rows, columns)), thickness


def _fine_space(grid: Grid) -> Space:
    slices, rows, columns = grid.shape
    step = grid.spacing[2] / SUB_PLANES
    z = grid.origin[2] + (np.arange(slices * SUB_PLANES) - (SUB_PLANES - 1) / 2) * step
    return Space(grid.origin[0] + np.arange(columns) * grid.spacing[0],
                 grid.origin[1] + np.arange(rows) * grid.spacing[1], z)


def _smooth_noise(shape: tuple[int, ...], sigma_mm: np.ndarray, step: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), np.asarray(sigma_mm) / step)
    return field / (field.std() + 1e-6)


def tissue_signal(labels: np.ndarray, space: Space, sequence: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The water and the fat signal of every fine voxel: the sequence's appearance, varied per study, with
    each tissue's own structure."""
    table = APPEARANCE[sequence]
    means = np.array([table.get(t, 1.0) for t in TISSUES]) * rng.lognormal(0, 0.12, len(TISSUES))
    means[TISSUES.index("nodule")] *= rng.lognormal(0, 0.25)
    fat_share = np.array([FAT_FRACTION.get(t, 0.0) for t in TISSUES])
    step = space.step
    fibres = _smooth_noise(labels.shape, [3.0, 0.5, 2.0], step, rng)  # elongated along x and z
    septa = np.exp(-(_smooth_noise(labels.shape, [2.5, 2.5, 2.5], step, rng) / 0.15) ** 2)
    speckle = _smooth_noise(labels.shape, [0.8, 0.7, 0.7], step, rng)
    structure = 1 + rng.uniform(0.02, 0.05) * speckle
    muscle = labels == TISSUES.index("muscle")
    structure[muscle] += rng.uniform(0.04, 0.12) * fibres[muscle]
    fat = labels == TISSUES.index("fat")
    structure[fat] -= rng.uniform(0.2, 0.5) * septa[fat]
    glandular = np.isin(labels, [TISSUES.index(t) for t in ("prostate_peripheral", "prostate_central", "vesicle",
                                                             "rectal_content")])
    structure[glandular] += rng.uniform(0.04, 0.12) * speckle[glandular]
    signal = means[labels].astype(np.float32) * np.clip(structure, 0.1, None)
    fat_signal = signal * fat_share[labels].astype(np.float32)
    return signal - fat_signal, fat_signal


def _slice_profile(planes: np.ndarray, thickness: float, spacing: float) -> np.ndarray:
    """Each acquired slice as the weighted mean of its sub-planes: a Gaussian profile as wide (FWHM) as
    the slice is thick, so the gap between slices is seen less."""
    offsets = (np.arange(SUB_PLANES) - (SUB_PLANES - 1) / 2) * spacing / SUB_PLANES
    weights = np.exp(-4 * np.log(2) * (offsets / thickness) ** 2)
    weights /= weights.sum()
    return np.tensordot(planes.reshape(-1, SUB_PLANES, *planes.shape[1:]), weights, axes=([1], [0]))


def acquire(volume: np.ndarray, space_y: np.ndarray, body_rows: tuple[float, float], sequence: str,
            rng: np.random.Generator) -> np.ndarray:
    """Each slice through k-space: cut to the acquired matrix and zero-filled, the echo train's decay
    along the phase encoding (rows), two surface coils (anterior and posterior), complex noise, the
    magnitude, and the scanner's partial normalisation of the coils' shading."""
    rows, columns = volume.shape[1:]
    ky = np.fft.fftshift(np.fft.fftfreq(rows))[:, None] * 2  # -1 .. 1
    kx = np.fft.fftshift(np.fft.fftfreq(columns))[None, :] * 2
    phase_share, read_share = rng.uniform(0.55, 0.85), rng.uniform(0.7, 1.0)
    decay = rng.uniform(0.3, 1.2) if sequence != "t1" else rng.uniform(0.0, 0.3)
    window = (np.abs(ky) <= phase_share) & (np.abs(kx) <= read_share)
    transfer = window * np.exp(-decay * np.abs(ky) / phase_share)
    front, back = body_rows
    reach = rng.uniform(60, 110)
    coils = (1 / (1 + ((space_y - front) / reach) ** 2) + 1 / (1 + ((space_y - back) / reach) ** 2))[:, None]
    coils = coils / coils.max()
    sigma = rng.uniform(0.01, 0.05) * float(np.percentile(volume, 99))
    normalised = rng.uniform(0.6, 1.0)
    out = np.empty(volume.shape, dtype=np.float32)
    for k, plane in enumerate(volume):
        spectrum = np.fft.fftshift(np.fft.fft2(plane * coils)) * transfer
        image = np.fft.ifft2(np.fft.ifftshift(spectrum))
        image += rng.normal(0, sigma, image.shape) + 1j * rng.normal(0, sigma, image.shape)
        out[k] = np.abs(image) / coils ** normalised
    return out


def synthesise_image(labels: np.ndarray, space: Space, grid: Grid, thickness: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """The acquired volume (uint16) from the fine label map, and the sequence drawn."""
    sequence = str(rng.choice(list(APPEARANCE)))
    water, fat = tissue_signal(labels, space, sequence, rng)
    shift_px = rng.uniform(-2.5, 2.5)  # fat resonates off water's frequency: it lands beside itself
    planes = water + ndimage.shift(fat, (0, 0, shift_px), order=1, mode="nearest")
    volume = _slice_profile(planes, thickness, grid.spacing[2])
    inside = np.flatnonzero(labels[len(labels) // 2].any(axis=1))
    volume = acquire(volume, space.y, (space.y[inside[0]], space.y[inside[-1]]), sequence, rng)
    volume = volume / max(float(np.percentile(volume, 99.5)), 1e-6) * rng.uniform(1500, 3500)
    return np.clip(volume, 0, 65535).astype(np.uint16), sequence


def drawn_outline(mask: np.ndarray, grid: Grid, rng: np.random.Generator) -> list[tuple[int, list[np.ndarray]]]:
    """(slice, polygons in patient mm) as an expert draws a mask: a smooth outline on each slice,
    simplified to a polygon of a few dozen points (tolerance 0.4-0.8 pixels)."""
    tolerance = rng.uniform(0.4, 0.8)
    slices = []
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        smooth = ndimage.gaussian_filter(np.pad(mask[k].astype(np.float32), 2), 0.8)
        loops = []
        for contour in measure.find_contours(smooth, 0.5):
            polygon = measure.approximate_polygon(contour, tolerance)[:-1] - 2
            if len(polygon) < 4:
                continue
            index = np.column_stack([polygon[:, 1], polygon[:, 0], np.full(len(polygon), float(k))])
            loops.append(np.round(grid.to_patient(index), 2))
        if loops:
            slices.append((int(k), loops))
    return slices


def generate_case(out_dir: Path, case_id: str, rng: np.random.Generator, rows: int, columns: int,
                  min_slices: int) -> list[dict]:
    """One study: image, reference, candidates and failures under ``out_dir/case_id``; its manifest rows."""
    grid, thickness = _acquisition(rng, rows, columns, min_slices)
    space = _fine_space(grid)
    labels, fine_masks = pelvis(space, rng)
    volume, sequence = synthesise_image(labels, space, grid, thickness, rng)
    identity = StudyIdentity.new(case_id, rng)
    images = mr_series_datasets(volume, grid, identity, description=f"{sequence} tse axial (fse phantom)")
    case_dir = out_dir / case_id
    for ds in images:
        ds.SliceThickness = f"{thickness:.2f}"
        ds.RepetitionTime, ds.EchoTime = TIMING[sequence]
        save(ds, case_dir / "image" / f"{rng.integers(16**8):08x}.dcm")
    centre = SUB_PLANES // 2
    masks = {name: fine[centre::SUB_PLANES] for name, fine in fine_masks.items()}  # each slice's centre plane
    reference = {name: drawn_outline(mask, grid, rng) for name, mask in masks.items()}
    save(rtstruct_dataset(images, identity, reference, "Reference"), case_dir / "reference.dcm")
    return write_candidates(case_dir, case_id, images, identity, masks, grid, rng)
