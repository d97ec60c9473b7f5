"""`contourqa candidates`: auto-contour errors made from a site's own reference contours, with a manifest.

A model's figures on phantoms say little about a site's scanners. A site that has images with expert
contours can write, from each reference ROI, the same realistic errors the synth phantom makes (good,
dilated, eroded, warped, missed end slices, leaking, shifted) and the constructed failures, as
structure sets on its own series, then measure any model on them with `contourqa evaluate`. The
reference file stays the site's own; the true Dice values are computed later, by `evaluate`, between
the DICOM objects as contourqa rasterises them.
"""

from __future__ import annotations

import copy
import csv
import logging
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from contourqa.qa_models.assessment import AssessConfig, load_inputs, structure_masks
from contourqa.qa_models.atomic import atomic_path
from contourqa.qa_models.errors import InputError

from .phantom_dicom import StudyIdentity, rtstruct_dataset, save
from .synth_style import constructed_failures, realistic_errors, trace

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
    """``count`` candidate structure sets (one realistic error per ROI in each) and four failures on the
    series of ``image_dir``, under ``out_dir/CASE_ID``; returns ``out_dir/manifest.csv``, where this
    case's rows replace any it had and other cases' rows stay, so one folder can gather a site's
    studies. Rows name the site's own images and reference file by absolute path. The case ID is the
    reference's SOP Instance UID unless given."""
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
    case_id = case_id or str(structure.SOPInstanceUID)
    if not case_id or "/" in case_id or case_id.startswith("."):
        raise InputError(f"--case-id '{case_id}' cannot name a folder")
    manifest = out_dir / "manifest.csv"
    kept = _other_cases(manifest, case_id)  # refused before anything is written
    rng = np.random.default_rng(seed)
    grid, identity = series.grid, site_identity(series.first_dataset)
    images = [_with_character_set(image) for image in series.datasets]
    objects = []
    for number in range(1, count + 1):
        kinds, drawn = realistic_errors(masks, grid, rng)
        contours = {n: trace(m, grid) for n, m in drawn.items()}
        objects.append((f"auto{number:02d}.dcm", rtstruct_dataset(images, identity, contours, f"Candidate {number}"),
                        kinds))
    try:
        objects += constructed_failures(masks, grid, images, identity, rng)
    except (ValueError, AttributeError, TypeError) as error:  # highdicom refusing the series' headers for a SEG
        raise InputError(f"{image_dir}: cannot write the noise failure's SEG on this series ({error})") from None
    rows = []
    for name, dataset, kinds in objects:
        save(dataset, out_dir / case_id / name)
        rows.extend({"case_id": case_id, "image": str(image_dir), "reference": str(structure_file),
                     "candidate": f"{case_id}/{name}", "roi": roi, "kind": kind} for roi, kind in kinds.items())
    log.info("case %s: %d candidate structure sets of %d ROIs written", case_id, len(objects), len(masks))
    with atomic_path(manifest) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(kept + rows)
    return manifest


def _with_character_set(image: Dataset) -> Dataset:
    """A copy of an image header that names its character set: highdicom refuses an empty one, which
    DICOM reads as the default repertoire (ASCII), of which Latin-1 is a superset."""
    if str(image.get("SpecificCharacterSet", "") or ""):
        return image
    image = copy.copy(image)
    image.SpecificCharacterSet = "ISO_IR 100"
    return image


def _other_cases(manifest: Path, case_id: str) -> list[dict]:
    """The rows of every other case in an existing manifest of this command (none when there is none)."""
    if not manifest.exists():
        return []
    with manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != MANIFEST_COLUMNS:
            raise InputError(f"{manifest}: exists and is not a manifest of `contourqa candidates`")
        return [row for row in reader if row["case_id"] != case_id]
