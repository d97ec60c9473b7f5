"""`contourqa candidates`: auto-contour errors made from a site's own reference contours, with a manifest.

A model's figures on phantoms say little about a site's scanners. A site that has images with expert
contours can write, from each reference ROI, the same realistic errors the synth phantom makes (good,
dilated, eroded, warped, missed end slices, leaking, shifted) and the constructed failures, as
structure sets on its own series, then measure any model on them with `contourqa evaluate`. The
reference file stays the site's own; the true Dice values are computed later, by `evaluate`, between
the DICOM objects as contourqa rasterises them.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from contourqa.qa_models.assessment import AssessConfig, load_inputs, structure_masks
from contourqa.qa_models.atomic import atomic_path
from contourqa.qa_models.errors import InputError

from .phantom_dicom import StudyIdentity, rtstruct_dataset, save, seg_dataset
from .synth_style import REALISTIC_KINDS, perturb, trace

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["case_id", "image", "reference", "candidate", "roi", "kind"]


def site_identity(image: Dataset) -> StudyIdentity:
    """The patient, study and frame of reference of a real image, for structure sets written on its series."""
    age = str(image.get("PatientAge", ""))
    return StudyIdentity(str(image.get("PatientName", "")), str(image.get("PatientID", "")),
                         str(image.StudyInstanceUID), str(image.FrameOfReferenceUID), str(image.get("StudyDate", "")),
                         int(age[:3]) if age[:3].isdigit() and age.endswith("Y") else None,
                         str(image.get("PatientSex", "")), str(image.get("StudyID", ""))[:16])


def write_site_candidates(image_dir: str | Path, structure_file: str | Path, out_dir: str | Path,
                          roi_names: list[str] | None = None, count: int = 6, seed: int = 0,
                          case_id: str | None = None) -> Path:
    """``count`` candidate structure sets (one realistic error per ROI in each) and four failures under
    ``out_dir``, on the series of ``image_dir``; returns the manifest, whose rows name the site's own
    images and reference file by absolute path (case ID: the Study Instance UID unless given)."""
    if count < 1:
        raise InputError("--count must be at least 1")
    image_dir, structure_file, out_dir = Path(image_dir).resolve(), Path(structure_file).resolve(), Path(out_dir)
    series, structure = load_inputs(image_dir, structure_file)
    if any(frame is not None for frame in series.slice_frames):
        raise InputError(f"{image_dir}: a multi-frame series; candidates are written on single-frame series only")
    masks = {m.name: m.mask for m, _ in structure_masks(structure, series, AssessConfig(), roi_names)}
    masks = {name: mask for name, mask in masks.items() if mask.any()}
    if not masks:
        raise InputError(f"{structure_file}: no ROI with a contour on this series")
    case_id = case_id or series.study_instance_uid
    rng = np.random.default_rng(seed)
    grid, images, identity = series.grid, series.datasets, site_identity(series.first_dataset)
    rows: list[dict] = []

    def write(name: str, dataset: Dataset, kinds: dict[str, str]) -> None:
        save(dataset, out_dir / "candidates" / name)
        rows.extend({"case_id": case_id, "image": str(image_dir), "reference": str(structure_file),
                     "candidate": f"candidates/{name}", "roi": roi, "kind": kind} for roi, kind in kinds.items())

    for number in range(1, count + 1):
        kinds = {name: str(rng.choice(REALISTIC_KINDS)) for name in masks}
        drawn = {name: perturb(mask, kinds[name], grid, [m for n, m in masks.items() if n != name], rng)
                 for name, mask in masks.items()}
        write(f"auto{number:02d}.dcm",
              rtstruct_dataset(images, identity, {n: trace(m, grid) for n, m in drawn.items()}, f"Candidate {number}"),
              kinds)
    write("failure_empty.dcm", rtstruct_dataset(images, identity, {n: [] for n in masks}, "Failure empty"),
          {n: "failure_empty" for n in masks})
    everything = trace(np.ones(grid.shape, dtype=bool), grid)
    write("failure_all_ones.dcm", rtstruct_dataset(images, identity, {n: everything for n in masks}, "Failure all ones"),
          {n: "failure_all_ones" for n in masks})
    noise = seg_dataset(images, {n: rng.random(grid.shape) < 0.5 for n in masks}, False, "Failure noise")
    noise.StudyID = identity.study_id  # highdicom copies the images' own, which may be too long for SH
    write("failure_noise_seg.dcm", noise, {n: "failure_noise" for n in masks})
    rows_, columns = grid.shape[1:]
    fraction, angle = rng.uniform(0.3, 0.5), rng.uniform(0, 2 * np.pi)
    offset = (0, fraction * rows_ * np.sin(angle), fraction * columns * np.cos(angle))
    shifted = {n: trace(ndimage.shift(m.astype(np.uint8), offset, order=0) > 0, grid) for n, m in masks.items()}
    write("failure_shifted.dcm", rtstruct_dataset(images, identity, shifted, "Failure shifted"),
          {n: "failure_shifted" for n in masks})

    manifest = out_dir / "manifest.csv"
    with atomic_path(manifest) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    log.info("case %s: %d candidates of %d ROIs written", case_id, count + 4, len(masks))
    return manifest
