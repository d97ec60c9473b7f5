"""The assessment's settings (screen thresholds, verdict rules), apart from the code that applies them,
so the node's configuration validates them without importing the imaging libraries."""

from __future__ import annotations

from pydantic import BaseModel, Field

from .roi_names import ORGANS


class VolumeRange(BaseModel):
    """Plausible volume of a ROI in ml; ``pattern`` is a regular expression matched against the normalised name."""

    pattern: str
    min_ml: float = Field(ge=0)
    max_ml: float = Field(gt=0)


DEFAULT_VOLUME_RANGES = [VolumeRange(pattern=o.pattern, min_ml=o.min_ml, max_ml=o.max_ml) for o in ORGANS]


class ScreenConfig(BaseModel):
    """Thresholds of the screens; every default is documented in the README."""

    max_fov_fraction: float = Field(0.3, gt=0, le=1, description="largest share of the field of view a ROI may fill")
    max_outside_body_fraction: float = Field(0.1, ge=0, le=1, description="largest share of a ROI outside the body")
    max_components: int = Field(2, ge=1, description="most connected components (26-connected) before review")
    noise_surface_fraction: float = Field(0.6, gt=0, le=1,
                                          description="share of surface voxels above which a mask is noise")
    noise_min_voxels: int = Field(100, ge=1, description="smallest mask the noise rule judges")
    noise_min_hole_fraction: float = Field(0.1, ge=0, description="one-voxel holes (in plane), as a share of the "
                                           "mask's size, above which an all-surface mask is noise and not a thin organ")
    max_slice_gaps: int = Field(0, ge=0, description="empty slices allowed between contoured ones")
    volume_ranges: list[VolumeRange] = Field(default_factory=lambda: list(DEFAULT_VOLUME_RANGES))
    max_midline_offset: float = Field(0.3, gt=0, le=1,
                                      description="largest distance of a midline organ's centre (prostate, bladder, "
                                                  "rectum) from the body's left-right midline, in body half-widths")
    min_lateral_offset: float = Field(0.35, ge=0, lt=1,
                                      description="smallest distance of a lateral organ's centre (a femoral head) "
                                                  "from the midline, on its named side, in body half-widths")
    max_depth_offset: float = Field(0.8, gt=0, le=1,
                                    description="largest distance of an organ's centre from the body's "
                                                "anterior-posterior middle, in body half-depths")
    large_roi_types: list[str] = Field(default_factory=lambda: ["EXTERNAL", "BODY"],
                                       description="RTROIInterpretedType values exempt from the size screens")


class AssessConfig(BaseModel):
    """Everything that decides a verdict; read once at the edge and passed down."""

    screens: ScreenConfig = Field(default_factory=ScreenConfig)
    reject_below: float = Field(0.75, ge=0, le=1, description="predicted Dice below this rejects")
    review_below: float = Field(0.8, ge=0, le=1, description="predicted Dice below this needs review")
    mc_samples: int = Field(10, ge=0, description="Monte Carlo dropout passes for the Dice interval")
    # Stricter than half a spacing: a contour midway between two planes is reported, not assigned to either.
    plane_tolerance: float = Field(0.25, gt=0, le=0.5,
                                   description="largest contour distance from its image plane, in slice spacings")
    extra_body_parts: list[str] = Field(default_factory=list,
                                        description="this site's Body Part Examined terms for the anatomy the model "
                                                    "was fitted on (e.g. BECKEN), accepted beside its card's")
