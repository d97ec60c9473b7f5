"""Training pairs (network input, true Dice) with the published augmentation, so a few dozen reference
masks give virtually unlimited pairs:

- a sample's contour is swapped for another training contour of the same ROI, scaled about its
  centroid by a log-uniform factor in [0.55, 1.8], and its Dice recomputed against the case's reference;
- the reference itself is given the small errors auto-contours make (a few per cent too large or small,
  shifted by millimetres, smoothly warped, end slices missed), so the Dice 0.8-1 range, where most
  clinical contours lie and where review decisions are made, is sampled densely, not only the extremes;
- the four failure modes (empty, uniform binary noise, all ones, shifted by up to 50 %) are mixed in,
  so the network covers Dice 0 to 1 (the published network never saw them);
- for a model with an entropy channel, a binary sample is given the soft edge of a FRACTIONAL
  segment half of the time (FRACTIONAL candidates in the manifest keep their own probabilities);
- image and mask are flipped left-right, rotated in-plane within +-15 degrees, translated within
  +-10 %, zoomed within +-10 % and elastically deformed, together, so the Dice target is unchanged;
- for a network that draws the reference (``efficientdet3d-seg``), each sample also carries the case's
  reference cropped and augmented exactly as its input.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from contourqa.qa_models.crop import InputSpec, bounding_box, crop_input, extra_channels, sampling_grid

from .cache import CachedCase, dice

SCALE_RANGE = (0.55, 1.8)
# Share of samples drawn from each source.
SOURCES = {"candidate": 0.25, "perturbed": 0.35, "swap": 0.10, "scaled": 0.08, "reference": 0.05, "failure": 0.17}
FAILURES = ("empty", "noise", "all_ones", "shifted")


def source_shares(candidate_share: float | None = None) -> dict[str, float]:
    """SOURCES, or with the manifest's own candidates given ``candidate_share`` and the other sources
    scaled to fill the rest in their default proportions."""
    if candidate_share is None:
        return dict(SOURCES)
    rest = 1 - SOURCES["candidate"]
    return {name: candidate_share if name == "candidate" else share * (1 - candidate_share) / rest
            for name, share in SOURCES.items()}


def _centroid(mask: np.ndarray) -> np.ndarray:
    k, j, i = np.nonzero(mask)
    return np.array([i.mean(), j.mean(), k.mean()])


def _resample_block(source: np.ndarray, target_shape: tuple[int, int, int], low_index: np.ndarray,
                    high_index: np.ndarray, source_index_of) -> np.ndarray:
    """A mask of ``target_shape``: ``source`` sampled (nearest) in the block from ``low_index`` to
    ``high_index`` (continuous i, j, k, widened to whole voxels, clipped to the grid), empty elsewhere.

    ``source_index_of`` maps the block's voxel indices (D, H, W, 3: i, j, k) to continuous source
    indices. Only the block is sampled: a few thousand points, not the whole grid.
    """
    size = np.array(target_shape[::-1])
    low = np.clip(np.floor(low_index), 0, size - 1).astype(int)
    high = np.clip(np.ceil(high_index) + 1, 1, size).astype(int)
    result = np.zeros(target_shape, dtype=bool)
    if np.any(high <= low):
        return result
    kk, jj, ii = torch.meshgrid(*(torch.arange(low[a], high[a]) for a in (2, 1, 0)), indexing="ij")
    source_index = source_index_of(torch.stack([ii, jj, kk], dim=-1).float())
    source_size = torch.tensor(source.shape[::-1], dtype=torch.float32)
    coordinates = (2 * source_index / torch.clamp(source_size - 1, min=1) - 1).unsqueeze(0)
    volume = torch.from_numpy(source.astype(np.float32))[None, None]
    sampled = F.grid_sample(volume, coordinates, mode="nearest", padding_mode="zeros", align_corners=True)
    result[low[2]:high[2], low[1]:high[1], low[0]:high[0]] = sampled[0, 0].numpy() > 0.5
    return result


def _tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def transplant(source: np.ndarray, source_spacing: np.ndarray, target_shape: tuple[int, int, int],
               target_spacing: np.ndarray, target_centre: np.ndarray, scale: float) -> np.ndarray:
    """``source`` mask scaled by ``scale`` about its centroid and placed with its centroid at ``target_centre``
    (continuous i, j, k) on a grid of ``target_shape`` and ``target_spacing``."""
    k, j, i = np.nonzero(source)
    centroid = np.array([i.mean(), j.mean(), k.mean()])
    reach_mm = np.maximum(np.abs(np.array([i.min(), j.min(), k.min()]) - centroid),
                          np.abs(np.array([i.max(), j.max(), k.max()]) - centroid)) * source_spacing * scale
    reach = reach_mm / target_spacing

    def source_index_of(target: torch.Tensor) -> torch.Tensor:
        offset_mm = (target - _tensor(target_centre)) * _tensor(target_spacing)
        return _tensor(centroid) + offset_mm / (scale * _tensor(source_spacing))

    return _resample_block(source, target_shape, target_centre - reach - 1, target_centre + reach + 1, source_index_of)


def perturb(reference: np.ndarray, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``reference`` ([k, j, i], voxel ``spacing`` along i, j, k) with a random mix of the small errors of
    auto-contours: scaled by a few per cent about its centroid, shifted by millimetres in-plane,
    smoothly warped by up to a few millimetres, and 1-3 end slices missed."""
    scale = float(np.exp(rng.uniform(np.log(0.82), np.log(1.2)))) if rng.random() < 0.6 else 1.0
    shift_mm = rng.normal(0, 2.5, 3) * [1, 1, 0.3] if rng.random() < 0.4 else np.zeros(3)
    warp_mm = rng.uniform(0.5, 3.0) if rng.random() < 0.5 else 0.0
    coarse = torch.from_numpy(rng.normal(0, warp_mm, (1, 3, 3, 4, 4)).astype(np.float32)) if warp_mm else None
    k, j, i = np.nonzero(reference)
    centroid = np.array([i.mean(), j.mean(), k.mean()])
    first, last = np.array([i.min(), j.min(), k.min()]), np.array([i.max(), j.max(), k.max()])
    reach = (last - first) * 0.25 + 2 + (np.abs(shift_mm) + 3 * warp_mm) / spacing

    def source_index_of(target: torch.Tensor) -> torch.Tensor:
        source_mm = ((target - _tensor(centroid)) * _tensor(spacing) - _tensor(shift_mm)) / scale
        if coarse is not None:
            source_mm = source_mm + F.interpolate(coarse, size=tuple(target.shape[:3]), mode="trilinear",
                                                  align_corners=True)[0].permute(1, 2, 3, 0)
        return _tensor(centroid) + source_mm / _tensor(spacing)

    result = _resample_block(reference, reference.shape, first - reach, last + reach, source_index_of)
    if rng.random() < 0.2:  # missed end slices
        drawn = np.flatnonzero(result.any(axis=(1, 2)))
        count = min(int(rng.integers(1, 4)), len(drawn) - 1)
        if count > 0:
            result[drawn[:count] if rng.random() < 0.5 else drawn[-count:]] = False
    return result


def failure_mask(kind: str, reference: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "empty":
        return np.zeros_like(reference)
    if kind == "noise":
        return rng.random(reference.shape) < 0.5
    if kind == "all_ones":
        return np.ones_like(reference)
    if kind == "shifted":
        shift = [0] + [int(round(rng.uniform(-0.5, 0.5) * n)) for n in reference.shape[1:]]
        shifted = np.roll(reference, shift, axis=(0, 1, 2))
        for axis, step in zip((1, 2), shift[1:]):  # what rolled out of the field of view is gone, not wrapped
            index = [slice(None)] * 3
            index[axis] = slice(0, step) if step > 0 else slice(reference.shape[axis] + step, None)
            shifted[tuple(index)] = False
        return shifted
    raise ValueError(kind)


def soft_edge(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Probabilities a FRACTIONAL segmentation of ``mask`` might carry: certain inside and outside, soft
    over one to three voxels at the edge in-plane."""
    sigma = rng.uniform(0.5, 1.5)
    return np.clip(ndimage.gaussian_filter(mask.astype(np.float32), (0, sigma, sigma)), 0, 1)


def augmentation(rng: np.random.Generator, spec: InputSpec, extent_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """(transform on mm offsets, translation in mm, elastic displacement (3, D, H, W) in mm)."""
    angle = np.radians(rng.uniform(-15, 15))
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    zoom = rng.uniform(0.9, 1.1)
    flip = np.diag([-1.0 if rng.random() < 0.5 else 1.0, 1.0, 1.0])
    translation = rng.uniform(-0.1, 0.1, 3) * extent_mm
    coarse = torch.from_numpy(rng.normal(0, 2.0, (1, 3, 3, 4, 4)).astype(np.float32))  # ~2 mm smooth warps
    displacement = F.interpolate(coarse, size=spec.shape, mode="trilinear", align_corners=True)[0]
    return rotation @ flip * zoom, translation, displacement


class SampleGenerator:
    """Draws (input, target) pairs from cached cases; deterministic for a given ``rng``."""

    def __init__(self, cases: list[CachedCase], spec: InputSpec, rng: np.random.Generator, augment: bool = True,
                 candidate_share: float | None = None, with_reference: bool = False):
        self.cases, self.spec, self.rng, self.augment = cases, spec, rng, augment
        self.with_reference = with_reference
        self.sources = source_shares(candidate_share)
        self.by_roi: dict[str, list[tuple[CachedCase, np.ndarray]]] = {}
        for case in cases:
            for roi, mask in case.references.items():
                if mask.any():
                    self.by_roi.setdefault(roi, []).append((case, mask))

    def candidate_mask(self, case: CachedCase, roi: str) -> tuple[np.ndarray, np.ndarray | None, str]:
        """(mask, FRACTIONAL probabilities or None, source) of one training candidate for ``roi``."""
        reference = case.references[roi]
        source = self.rng.choice(list(self.sources), p=list(self.sources.values()))
        own = [c for c in case.candidates if c.row.roi.lower() == roi]
        if source == "candidate" and own:
            candidate = own[int(self.rng.integers(len(own)))]
            return candidate.mask, candidate.probabilities, "candidate"
        if source == "failure" or not reference.any():
            kind = FAILURES[int(self.rng.integers(len(FAILURES)))]
            return failure_mask(kind, reference, self.rng), None, f"failure_{kind}"
        if source == "reference":
            return reference, None, "reference"
        if source == "perturbed":
            return perturb(reference, case.grid.spacing, self.rng), None, "perturbed"
        donor_case, donor = (case, reference) if source == "scaled" else \
            self.by_roi[roi][int(self.rng.integers(len(self.by_roi[roi])))]
        scale = float(np.exp(self.rng.uniform(*np.log(SCALE_RANGE))))
        centre = _centroid(reference) + self.rng.normal(0, 1.0, 3)
        mask = transplant(donor, donor_case.grid.spacing, reference.shape, case.grid.spacing, centre, scale)
        return mask, None, source

    def sample(self) -> tuple[torch.Tensor, float, str, torch.Tensor | None]:
        """(input, true Dice, source, the reference cropped as the input or None)."""
        case = self.cases[int(self.rng.integers(len(self.cases)))]
        roi = sorted(case.references)[int(self.rng.integers(len(case.references)))]
        mask, probabilities, source = self.candidate_mask(case, roi)
        if self.spec.uses_entropy and probabilities is None and mask.any() and self.rng.random() < 0.5:
            probabilities = soft_edge(mask, self.rng)
        reference = case.references[roi]
        x, reference_crop = self.input_for(case, mask, probabilities, reference if self.with_reference else None)
        return x, dice(mask, reference), source, reference_crop

    def input_for(self, case: CachedCase, mask: np.ndarray, probabilities: np.ndarray | None = None,
                  reference: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(network input, ``reference`` cropped and augmented as the input (1, D, H, W), or None)."""
        box = bounding_box(mask, case.grid, self.spec)
        transform = displacement = None
        if self.augment:
            transform, translation, displacement = augmentation(self.rng, self.spec, box.extent_mm)
            box = type(box)(box.centre + translation / case.grid.spacing, box.extent_mm)
        x = crop_input(torch.from_numpy(case.image.astype(np.float32, copy=False)),
                       extra_channels(mask, self.spec, probabilities), box, case.grid, self.spec,
                       transform, displacement)
        if reference is None:
            return x, None
        coordinates = sampling_grid(box, case.grid, self.spec.shape, transform, displacement)
        volume = torch.from_numpy(reference.astype(np.float32))[None, None]
        return x, F.grid_sample(volume, coordinates, mode="bilinear", padding_mode="zeros", align_corners=True)[0]

    def batch(self, size: int) -> tuple[torch.Tensor, ...]:
        """(inputs, true Dice) of ``size`` samples, and their reference crops when ``with_reference``."""
        inputs, targets, _, references = zip(*(self.sample() for _ in range(size)))
        batch = (torch.stack(inputs), torch.tensor(targets, dtype=torch.float32))
        return (*batch, torch.stack(references)) if self.with_reference else batch
