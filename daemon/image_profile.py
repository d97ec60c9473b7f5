"""What a case's images look like, in a few numbers: the inputs the drift audits watch for a scanner or
protocol change (a new scanner model, another field strength, a thicker slice, a shifted intensity
scale) before the model's predictions show it."""

from __future__ import annotations

import numpy as np
from skimage.filters import threshold_otsu

from contourqa.qa_models.series import ImageSeries

# how the audits compare them: a field strength is one of a few values, like a scanner model
CATEGORICAL = ("scanner", "field_strength_t")
NUMERIC = ("pixel_spacing_mm", "slice_thickness_mm", "intensity_p5", "intensity_p50", "intensity_p95")


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def image_profile(series: ImageSeries) -> dict:
    """Scanner (manufacturer and model), field strength, in-plane pixel and slice thickness in mm, and the
    5th/50th/95th intensity percentiles inside the body (voxels above the Otsu threshold: air is not tissue)."""
    header = series.first_dataset
    scanner = " ".join(str(header.get(k, "") or "").strip() for k in ("Manufacturer", "ManufacturerModelName")).strip()
    sample = series.array[::2, ::2, ::2].astype(np.float32)  # the percentiles do not need every voxel
    body = sample[sample > threshold_otsu(sample)] if np.ptp(sample) > 0 else sample.ravel()
    p5, p50, p95 = (float(v) for v in np.percentile(body, (5, 50, 95)))
    return {"scanner": scanner or "unknown", "field_strength_t": _number(header.get("MagneticFieldStrength")),
            "pixel_spacing_mm": round(float(series.grid.spacing[0]), 4),
            "slice_thickness_mm": round(_number(header.get("SliceThickness")) or float(series.grid.spacing[2]), 4),
            "intensity_p5": p5, "intensity_p50": p50, "intensity_p95": p95}
