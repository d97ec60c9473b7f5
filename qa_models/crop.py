"""The network's view of one ROI: a box around the mask's bounding box (with margin), resampled to a
fixed shape, image intensities mapped from their 0th/99th percentiles to [0, 1] (the published
[0, 255] scaled by 1/255). Training and inference both go through ``crop_input`` so they cannot drift.

A model may also take two boundary channels made from the crop (issue 15): the mask's signed distance
in mm and the image's edge strength. Whether a contour fits is mostly where the image's edges lie
relative to it; given both as inputs, that is a local computation the network can learn whatever the
image's contrast, instead of having to find it from grey values. A model may also leave the grey values
out (``EDGE_LAYOUT``: the edge strength in the image's place), so it has no contrast of one style to learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, field_validator
from scipy import ndimage

from .geometry import Grid
from .uncertainty import entropy_map

ENTROPY_LAYOUT = ("image", "mask", "entropy")
BOUNDARY_LAYOUT = ("image", "mask", "distance", "edge")
EDGE_LAYOUT = ("edge", "mask", "distance")  # the mask stays second: the reference head scores channel 1
CHANNEL_LAYOUTS = (("image", "mask"), ENTROPY_LAYOUT, BOUNDARY_LAYOUT, EDGE_LAYOUT)
DISTANCE_CLIP_MM = 10.0  # the distance channel saturates here: beyond it, no edge decides the contour's fit
EDGE_SIGMA_VOXELS = 1.0  # Gaussian derivative scale: the edge channel sees organ boundaries, not single-voxel noise


class InputSpec(BaseModel):
    """How a model's input is made; stored in its model card."""

    shape: tuple[int, int, int] = (24, 48, 48)  # slices, rows, columns
    margin_fraction: float = Field(0.25, description="added to each side of the bounding box, as a share of its size")
    margin_mm: float = Field(8.0, description="added to each side of the bounding box")
    min_extent_mm: float = Field(40.0, description="smallest box edge")
    empty_extent_mm: float = Field(120.0, description="box edge, centred in the field of view, for an empty mask")
    normalisation: str = "percentile 0 -> 0, percentile 99 -> 1 (published 0..255 / 255), per crop"
    channels: tuple[str, ...] = Field(("image", "mask"), description="image, mask[, entropy of a FRACTIONAL "
                                                                     "segment | distance, edge]; or edge, mask, distance")

    @field_validator("shape")
    @classmethod
    def _large_enough(cls, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(shape) < 8:
            raise ValueError("each input dimension must be at least 8 voxels")
        return shape

    @field_validator("channels")
    @classmethod
    def _known_layout(cls, channels: tuple[str, ...]) -> tuple[str, ...]:
        if tuple(channels) not in CHANNEL_LAYOUTS:
            raise ValueError(f"channels must be one of {', '.join('+'.join(c) for c in CHANNEL_LAYOUTS)}")
        return tuple(channels)

    @property
    def uses_entropy(self) -> bool:
        return "entropy" in self.channels

    @property
    def uses_boundary(self) -> bool:
        return "distance" in self.channels


@dataclass(frozen=True)
class Box:
    """A box in the volume: centre in continuous (i, j, k) index, edge lengths in mm along i, j, k."""

    centre: np.ndarray
    extent_mm: np.ndarray


def bounding_box(mask: np.ndarray, grid: Grid, spec: InputSpec) -> Box:
    """The box the network looks at for ``mask`` ([k, j, i] on ``grid``)."""
    depth, rows, columns = grid.shape
    if not mask.any():
        centre = (np.array([columns, rows, depth], dtype=float) - 1) / 2
        extent = np.minimum(spec.empty_extent_mm, np.array([columns, rows, depth]) * grid.spacing)
        return Box(centre, np.maximum(extent, grid.spacing))
    k, j, i = (np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    low, high = np.array([i[0], j[0], k[0]], float), np.array([i[-1], j[-1], k[-1]], float)
    size_mm = (high - low + 1) * grid.spacing
    extent = size_mm * (1 + 2 * spec.margin_fraction) + 2 * spec.margin_mm
    extent[:2] = extent[:2].max()  # square in-plane, so shapes are not distorted
    return Box((low + high) / 2, np.maximum(extent, spec.min_extent_mm))


def sampling_grid(box: Box, grid: Grid, shape: tuple[int, int, int], transform: np.ndarray | None = None,
                  displacement_mm: torch.Tensor | None = None) -> torch.Tensor:
    """grid_sample coordinates (1, D, H, W, 3) of the box, optionally under an augmentation.

    ``transform`` (3x3, acting on mm offsets from the box centre) carries flips, rotation and zoom;
    ``displacement_mm`` (3, D, H, W) an elastic deformation.
    """
    d, h, w = shape
    axes = [torch.linspace(-0.5, 0.5, n) * (1 - 1 / n) for n in (w, h, d)]  # voxel centres of the output box
    oz, oy, ox = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    offsets = torch.stack([ox, oy, oz], dim=-1) * torch.tensor(box.extent_mm, dtype=torch.float32)  # mm along i, j, k
    if transform is not None:
        offsets = offsets @ torch.tensor(transform, dtype=torch.float32).T
    if displacement_mm is not None:
        offsets = offsets + displacement_mm.permute(1, 2, 3, 0)
    index = torch.tensor(box.centre, dtype=torch.float32) + offsets / torch.tensor(grid.spacing, dtype=torch.float32)
    size = torch.tensor([grid.shape[2], grid.shape[1], grid.shape[0]], dtype=torch.float32)
    normalised = 2 * index / torch.clamp(size - 1, min=1) - 1  # align_corners=True convention
    return normalised.unsqueeze(0)


def normalise(image: torch.Tensor) -> torch.Tensor:
    """Map the crop's 0th and 99th intensity percentiles to 0 and 1."""
    flat = image.flatten()
    low = flat.min()
    high = torch.quantile(flat[:: max(1, flat.numel() // 50000)], 0.99)
    return (image - low) / torch.clamp(high - low, min=1e-6)


def crop_input(image: torch.Tensor, channels: list[torch.Tensor], box: Box, grid: Grid, spec: InputSpec,
               transform: np.ndarray | None = None, displacement_mm: torch.Tensor | None = None) -> torch.Tensor:
    """Network input (C, D, H, W): the normalised image crop followed by each extra channel's crop.

    ``image`` and ``channels`` are float tensors [k, j, i] on ``grid`` (mask, optionally entropy).
    """
    coordinates = sampling_grid(box, grid, spec.shape, transform, displacement_mm)
    volumes = torch.stack([image, *channels]).unsqueeze(0)  # (1, C, K, J, I)
    sampled = F.grid_sample(volumes, coordinates, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    sampled[0] = normalise(sampled[0])
    if spec.uses_boundary:
        voxel_mm = np.asarray(box.extent_mm, float)[::-1] / np.asarray(spec.shape, float)  # along k, j, i
        distance, edge = boundary_channels(sampled[0].numpy(), sampled[1].numpy(), voxel_mm)
        if spec.channels == EDGE_LAYOUT:
            return torch.stack([edge, sampled[1], distance])
        sampled = torch.cat([sampled, distance[None], edge[None]])
    return sampled


def boundary_channels(image: np.ndarray, mask: np.ndarray, voxel_mm: np.ndarray) -> torch.Tensor:
    """(2, D, H, W): the mask's signed distance (mm, negative inside, clipped to +-10 mm and scaled to
    [-1, 1]) and the image's Gaussian gradient magnitude per mm scaled by its crop's 99th percentile
    (so the edge channel does not depend on the image's contrast or its sign)."""
    inside = mask >= 0.5
    if inside.all() or not inside.any():
        distance = np.full(mask.shape, -1.0 if inside.all() else 1.0, np.float32)
    else:
        outside_mm = ndimage.distance_transform_edt(~inside, sampling=voxel_mm)
        inside_mm = ndimage.distance_transform_edt(inside, sampling=voxel_mm)
        distance = np.clip((outside_mm - inside_mm) / DISTANCE_CLIP_MM, -1, 1).astype(np.float32)
    gradient = [ndimage.gaussian_filter(image, EDGE_SIGMA_VOXELS, order=order) / step
                for order, step in zip(np.eye(3, dtype=int), voxel_mm)]
    edge = np.sqrt(sum(g * g for g in gradient))
    scale = np.quantile(edge, 0.99)
    edge = np.clip(edge / scale, 0, 2) if scale > 0 else np.zeros_like(edge)
    return torch.from_numpy(np.stack([distance, edge.astype(np.float32)]))


def extra_channels(mask: np.ndarray, spec: InputSpec, probabilities: np.ndarray | None = None) -> list[torch.Tensor]:
    """The channels after the image: the mask, and for a model with an entropy channel the voxel-wise
    entropy of ``probabilities`` (a binary mask is certain everywhere: zeros)."""
    channels = [torch.from_numpy(mask.astype(np.float32))]
    if spec.uses_entropy:
        channels.append(torch.from_numpy(entropy_map(probabilities)) if probabilities is not None
                        else torch.zeros(mask.shape, dtype=torch.float32))
    return channels


def mask_input(image: np.ndarray, mask: np.ndarray, grid: Grid, spec: InputSpec,
               probabilities: np.ndarray | None = None) -> torch.Tensor:
    """Network input for ``mask`` (and a FRACTIONAL segment's ``probabilities``) without augmentation:
    what inference and validation see."""
    return crop_input(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                      extra_channels(mask, spec, probabilities), bounding_box(mask, grid, spec), grid, spec)
