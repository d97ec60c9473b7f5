"""Rasterised training data, computed once per case and kept on disk, so epochs never re-read DICOM.

A case holds its image, the reference mask of every ROI in the manifest, and every candidate mask
with its true Dice, computed by contourqa's own rasteriser at the image's resolution (and, for a
FRACTIONAL SEG candidate, its probabilities, kept to 1/255).
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contourqa.qa_models.atomic import atomic_path
from contourqa.qa_models.assessment import AssessConfig, load_structure, structure_masks
from contourqa.qa_models.geometry import Grid
from contourqa.qa_models.rtstruct import RoiMask
from contourqa.qa_models.series import load_series
from contourqa.reporting.overlap import dice

from .manifest import ManifestRow, read_manifest, refuse_shared_series
from .progress import progress

log = logging.getLogger(__name__)


CACHE_FORMAT = 3  # part of every cache key: a new format never reads an old file


def _unpack(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A boolean mask from np.packbits output."""
    return np.unpackbits(packed, count=int(np.prod(shape))).view(bool).reshape(shape)


class Candidate:
    """One manifest candidate and its true Dice.

    Training holds every case in memory and a case has dozens of candidates, so the mask is kept
    bit-packed and a FRACTIONAL candidate's probabilities as bytes (to 1/255, as the cache stores
    them), and both are expanded when read: 320 studies at 192x192x28 then take ~7 GB, not ~29 GB.
    """

    def __init__(self, row: ManifestRow, mask: np.ndarray | None, dice: float,
                 probabilities: np.ndarray | None = None):
        self.row, self.dice = row, dice
        self._shape = None if mask is None else mask.shape
        self.packed_mask = None if mask is None else np.packbits(mask)
        self.probability_bytes = None if probabilities is None else np.round(probabilities * 255).astype(np.uint8)

    @classmethod
    def from_stored(cls, row: ManifestRow, packed_mask: np.ndarray, shape: tuple[int, ...], dice: float,
                    probability_bytes: np.ndarray | None = None) -> Candidate:
        candidate = cls(row, None, dice)
        candidate._shape, candidate.packed_mask, candidate.probability_bytes = shape, packed_mask, probability_bytes
        return candidate

    @property
    def mask(self) -> np.ndarray | None:
        if self.packed_mask is None:
            return None
        return _unpack(self.packed_mask, self._shape)

    @property
    def probabilities(self) -> np.ndarray | None:
        """FRACTIONAL SEG candidates only."""
        return None if self.probability_bytes is None else self.probability_bytes.astype(np.float32) / 255


@dataclass
class CachedCase:
    case_id: str
    image: np.ndarray
    grid: Grid
    modality: str
    references: dict[str, np.ndarray]
    candidates: list[Candidate]
    body_part: str | None = None  # Body Part Examined, upper case: the domain guard reads it


def _masks_by_roi(path: Path, series, rois: set[str]) -> dict[str, RoiMask]:
    structure = load_structure(path)
    return {m.name.lower(): m for m, _ in structure_masks(structure, series, AssessConfig(), sorted(rois))}


def _key(rows: list[ManifestRow]) -> str:
    text = f"{CACHE_FORMAT}|" + "|".join(
        f"{r.image}:{r.reference}:{r.candidate}:{r.roi}:{r.candidate.stat().st_mtime_ns}" for r in rows)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cache_file(rows: list[ManifestRow], cache_dir: Path) -> Path:
    return cache_dir / f"{rows[0].case_id}-{_key(rows)}.npz"


def load_case(rows: list[ManifestRow], cache_dir: Path | None = None, keep: bool = True) -> CachedCase | None:
    """One case (all manifest rows of one case_id), from the cache when it is there and current. With
    ``keep`` False the case is only written to the cache (a pool's worker returns nothing to pickle)."""
    case_id = rows[0].case_id
    cache_file = _cache_file(rows, cache_dir) if cache_dir else None
    if cache_file is not None and cache_file.exists():
        return _read(cache_file, rows) if keep else None
    series = load_series(rows[0].image)
    rois = {r.roi for r in rows}
    references = {name: roi.mask for name, roi in _masks_by_roi(rows[0].reference, series, rois).items()}
    by_file: dict[Path, dict[str, RoiMask]] = {}
    candidates = []
    for row in rows:
        if row.candidate not in by_file:
            by_file[row.candidate] = _masks_by_roi(row.candidate, series, {r.roi for r in rows if r.candidate == row.candidate})
        roi = by_file[row.candidate][row.roi.lower()]
        candidates.append(Candidate(row, roi.mask, dice(roi.mask, references[row.roi.lower()]), roi.probabilities))
    case = CachedCase(case_id, series.array, series.grid, series.modality, references, candidates, series.body_part)
    if cache_file is not None:
        _write(cache_file, case)
    return case if keep else None


def _write(path: Path, case: CachedCase) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"image": case.image, "origin": case.grid.origin, "spacing": case.grid.spacing,
              "direction": case.grid.direction, "modality": np.array(case.modality),
              "body_part": np.array(case.body_part or ""),
              "dice": np.array([c.dice for c in case.candidates])}
    arrays.update({f"reference/{name}": np.packbits(mask) for name, mask in case.references.items()})
    arrays.update({f"candidate/{n}": c.packed_mask for n, c in enumerate(case.candidates)})
    arrays.update({f"probabilities/{n}": c.probability_bytes
                   for n, c in enumerate(case.candidates) if c.probability_bytes is not None})
    with atomic_path(path) as temporary:
        np.savez(temporary, **arrays)


def _read(path: Path, rows: list[ManifestRow]) -> CachedCase:
    with np.load(path) as data:
        image = data["image"]
        grid = Grid(data["origin"], data["spacing"], data["direction"], image.shape)
        references = {k.split("/", 1)[1]: _unpack(data[k], image.shape)
                      for k in data.files if k.startswith("reference/")}
        candidates = [Candidate.from_stored(row, data[f"candidate/{n}"], image.shape, float(data["dice"][n]),
                                            data.get(f"probabilities/{n}"))
                      for n, row in enumerate(rows)]
        return CachedCase(rows[0].case_id, image, grid, str(data["modality"]), references, candidates,
                          str(data["body_part"]) or None)


def load_cases(rows: list[ManifestRow], cache_dir: Path | None = None, workers: int = 1) -> list[CachedCase]:
    """Every case of a manifest, in order of first appearance. With ``workers`` > 1 and a ``cache_dir``,
    that many processes rasterise the cases the cache lacks first; then every case is read from it."""
    by_case: dict[str, list[ManifestRow]] = {}
    for row in rows:
        by_case.setdefault(row.case_id, []).append(row)
    if workers > 1 and cache_dir is not None:
        missing = [case_rows for case_rows in by_case.values() if not _cache_file(case_rows, cache_dir).exists()]
        with ProcessPoolExecutor(workers) as pool:
            for _ in progress(pool.map(load_case, missing, [cache_dir] * len(missing), [False] * len(missing)),
                              "cases rasterised", total=len(missing)):
                pass
    cases = []
    for case_rows in progress(by_case.values(), "cases rasterised or read from the cache"):
        cases.append(load_case(case_rows, cache_dir))
    return cases


Studies = list[tuple[Path, list[CachedCase]]]  # (manifest, its cases) per manifest


def load_apart(trained: list[Path], held_out: list[Path], cache_dir: Path | None, why: str) -> tuple[Studies, Studies]:
    """The cases of every manifest, each manifest loaded on its own (phantom manifests repeat case IDs:
    case000 ...), once all were read and held-out manifests sharing an image series with a trained one
    were refused (``why`` says what needs them apart)."""
    trained_rows, held_rows = [read_manifest(m) for m in trained], [read_manifest(m) for m in held_out]
    refuse_shared_series([r for rows in trained_rows for r in rows], [r for rows in held_rows for r in rows], why)
    return ([(m, load_cases(rows, cache_dir)) for m, rows in zip(trained, trained_rows)],
            [(m, load_cases(rows, cache_dir)) for m, rows in zip(held_out, held_rows)])
