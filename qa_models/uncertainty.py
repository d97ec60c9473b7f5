"""Uncertainty of a FRACTIONAL segmentation: the voxel-wise binary entropy of its probabilities, as a
map (the optional third network channel, the uncertainty-mask pair of the white-matter-lesion study)
and as its voxel-wise sum VS (an aggregate uncertainty score reported beside the predicted Dice).
"""

from __future__ import annotations

import numpy as np


def _binary_entropy_bits(p: np.ndarray) -> np.ndarray:
    """Entropy of probabilities strictly between 0 and 1, clipped off the ends the dtype cannot tell from them."""
    tiny = 1e-6 if p.dtype == np.float32 else 1e-12
    p = np.clip(p, tiny, 1 - tiny)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def _uncertain(probabilities: np.ndarray) -> np.ndarray:
    return (probabilities > 0) & (probabilities < 1)


def entropy_map(probabilities: np.ndarray) -> np.ndarray:
    """Binary entropy in bits of every voxel's probability (0 where the segment is certain: 0 or 1)."""
    result = np.zeros(probabilities.shape, dtype=np.float32)
    uncertain = _uncertain(probabilities)
    result[uncertain] = _binary_entropy_bits(probabilities[uncertain].astype(np.float32))
    return result


def voxelwise_entropy_sum(probabilities: np.ndarray) -> float:
    """VS: the sum over voxels of the binary entropy (bits) of a FRACTIONAL segment's probabilities."""
    return float(_binary_entropy_bits(probabilities[_uncertain(probabilities)].astype(np.float64)).sum())
