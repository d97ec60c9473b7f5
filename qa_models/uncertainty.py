"""Uncertainty of a FRACTIONAL segmentation: the voxel-wise binary entropy of its probabilities, as a
map (the optional third network channel, the uncertainty-mask pair of the white-matter-lesion study)
and as its voxel-wise sum VS (an aggregate uncertainty score reported beside the predicted Dice).
"""

from __future__ import annotations

import numpy as np


def entropy_map(probabilities: np.ndarray) -> np.ndarray:
    """Binary entropy in bits of every voxel's probability (0 where the segment is certain: 0 or 1)."""
    p = np.clip(probabilities.astype(np.float32), 1e-6, 1 - 1e-6)
    entropy = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return np.where((probabilities > 0) & (probabilities < 1), entropy, 0).astype(np.float32)


def voxelwise_entropy_sum(probabilities: np.ndarray) -> float:
    """VS: the sum over voxels of the binary entropy (bits) of a FRACTIONAL segment's probabilities."""
    p = np.clip(probabilities[(probabilities > 0) & (probabilities < 1)].astype(np.float64), 1e-12, 1 - 1e-12)
    return float(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)).sum())
