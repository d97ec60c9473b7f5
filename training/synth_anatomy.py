"""Label maps of a male pelvis for the randomised ("synth") phantom style, written independently of
``phantom_anatomy`` (which draws star-shaped cross-sections with one grey value per tissue).

Every structure is an implicit solid (a superellipsoid, a tube along a curved centre line, a shell)
evaluated at coordinates pushed through one smooth random deformation per study, so cross-sections
are not star-shaped and no two studies share a shape. Sizes follow adult anatomy: prostate 15-120 ml,
bladder empty to full (30-500 ml), rectum collapsed or distended with gas and stool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Label values. Each ROI of the structure set is a union of labels (ROI_LABELS).
LABELS = ("air", "skin", "subcutaneous_fat", "visceral_fat", "gluteus", "obturator", "levator", "iliopsoas",
          "bone_cortex", "bone_marrow", "femoral_head_l", "femoral_head_r", "bladder_wall", "urine",
          "rectal_wall", "rectal_lumen", "gas", "stool", "prostate_tz", "prostate_pz", "prostate_capsule",
          "seminal_vesicle", "vessel")
LABEL = {name: value for value, name in enumerate(LABELS)}
ROI_LABELS = {
    "Prostate": ("prostate_tz", "prostate_pz", "prostate_capsule"),
    "Bladder": ("bladder_wall", "urine"),
    "Rectum": ("rectal_wall", "rectal_lumen", "gas", "stool"),
    "FemoralHead_L": ("femoral_head_l",),
    "FemoralHead_R": ("femoral_head_r",),
}
# Sites differ in what they contour as the rectum: the whole organ, or its wall alone (a ring round the
# lumen, for dose to the wall), as the classic style draws it; a share of studies define it as the wall. (It
# did not lower the classic rectum's cross-style bias in a CPU trial; docs/model.md.)
RECTAL_WALL_SHARE = 0.3


def roi_labels(rng: np.random.Generator) -> dict[str, tuple[str, ...]]:
    """The labels each ROI of one study's structure set is made of."""
    if rng.random() < RECTAL_WALL_SHARE:
        return {**ROI_LABELS, "Rectum": ("rectal_wall",)}
    return dict(ROI_LABELS)


@dataclass(frozen=True)
class Coordinates:
    """mm coordinates (x left-right, y anterior-posterior, z cranio-caudal) of every voxel, about the prostate."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray


def smooth_displacement(shape: tuple[int, ...], spacing_mm: np.ndarray, amplitude_mm: float, scale_mm: float,
                        rng: np.random.Generator) -> np.ndarray:
    """A smooth random displacement field (3, *shape) in mm: white noise blurred at ``scale_mm`` and scaled
    to an RMS of ``amplitude_mm`` per component."""
    sigma = scale_mm / np.asarray(spacing_mm)
    fields = []
    for _ in range(3):
        field = ndimage.gaussian_filter(rng.normal(size=shape), sigma, mode="reflect")
        fields.append(field / (field.std() + 1e-9) * amplitude_mm)
    return np.stack(fields)


def _superellipsoid(c: Coordinates, centre, axes, exponent: float = 2.0) -> np.ndarray:
    """Inside-outside function of a superellipsoid: < 1 inside."""
    return (np.abs((c.x - centre[0]) / axes[0]) ** exponent + np.abs((c.y - centre[1]) / axes[1]) ** exponent
            + np.abs((c.z - centre[2]) / axes[2]) ** exponent)


def _axes_for_volume(volume_ml: float, ratios: tuple[float, float, float]) -> np.ndarray:
    """Semi-axes (mm) of an ellipsoid of ``volume_ml`` with the given axis ratios."""
    unit = 4 / 3 * np.pi * np.prod(ratios)
    scale = (volume_ml * 1000 / unit) ** (1 / 3)
    return np.array(ratios) * scale


def pelvis_labels(c: Coordinates, rng: np.random.Generator) -> np.ndarray:
    """A label map (uint8) of one pelvis at the coordinates ``c`` (already deformed)."""
    labels = np.full(c.x.shape, LABEL["air"], dtype=np.uint8)
    body_axes = np.array([rng.uniform(150, 200), rng.uniform(105, 140)])
    body_centre_y = rng.uniform(5, 25)  # the prostate sits anterior of the body's centre
    body = (c.x / body_axes[0]) ** 2 + ((c.y - body_centre_y) / body_axes[1]) ** 2
    skin_mm, fat_mm = rng.uniform(1.5, 3), rng.uniform(8, 40)
    labels[body < 1] = LABEL["skin"]
    labels[body < (1 - skin_mm / body_axes.min()) ** 2] = LABEL["subcutaneous_fat"]
    inner = body < (1 - (skin_mm + fat_mm) / body_axes.min()) ** 2
    labels[inner] = LABEL["visceral_fat"]

    # muscles: gluteal masses posterior-lateral, obturators lateral to the prostate, iliopsoas anterior-lateral
    for side in (-1, 1):
        gluteus = _superellipsoid(c, (side * rng.uniform(70, 95), rng.uniform(55, 75), 0),
                                  (rng.uniform(45, 65), rng.uniform(35, 50), 200), rng.uniform(2, 3))
        labels[inner & (gluteus < 1)] = LABEL["gluteus"]
        psoas = _superellipsoid(c, (side * rng.uniform(75, 95), rng.uniform(-45, -25), 0),
                                (rng.uniform(18, 28), rng.uniform(15, 25), 200), 2)
        labels[inner & (psoas < 1)] = LABEL["iliopsoas"]
        obturator = _superellipsoid(c, (side * rng.uniform(38, 48), rng.uniform(-5, 10), rng.uniform(-5, 10)),
                                    (rng.uniform(8, 13), rng.uniform(22, 32), rng.uniform(30, 45)), 2)
        labels[obturator < 1] = LABEL["obturator"]
    levator = _superellipsoid(c, (0, rng.uniform(15, 25), rng.uniform(-35, -25)),
                              (rng.uniform(35, 45), rng.uniform(25, 35), rng.uniform(6, 10)), 2)
    labels[inner & (levator < 1)] = LABEL["levator"]

    # femoral heads in the acetabulum: marrow in a cortical shell, on both sides of a bony pelvis; the
    # head has its own 2.5 mm cortex (joint surface), without which it would merge into the acetabulum's marrow
    head_radius = rng.uniform(21, 26)
    head_z = rng.uniform(-5, 15)
    for side, name in ((1, "femoral_head_l"), (-1, "femoral_head_r")):  # patient left is +x
        centre = (side * rng.uniform(78, 92), rng.uniform(-10, 5), head_z + rng.uniform(-3, 3))
        acetabulum = _superellipsoid(c, centre, (head_radius + 9, head_radius + 9, head_radius + 12), 2)
        labels[acetabulum < 1] = LABEL["bone_cortex"]
        labels[acetabulum < 0.8] = LABEL["bone_marrow"]
        head = _superellipsoid(c, centre, (head_radius,) * 3, 2)
        labels[head < (1 + 2.5 / head_radius) ** 2] = LABEL["bone_cortex"]
        labels[head < 1] = LABEL[name]
    for side in (-1, 1):  # external iliac vessels
        vessel = (c.x - side * rng.uniform(55, 70)) ** 2 + (c.y + rng.uniform(30, 45)) ** 2
        labels[inner & (vessel < rng.uniform(4, 7) ** 2) & (c.z > 0)] = LABEL["vessel"]

    # rectum: a tube along a curved centre line behind the prostate, wall round a lumen with gas or stool
    rectum_y = rng.uniform(28, 38)
    bend = rng.uniform(-0.004, 0.004)
    centre_y = rectum_y + bend * c.z ** 2
    radius = rng.uniform(10, 22)
    squash = rng.uniform(0.55, 0.95)  # collapsed rectums are flat
    tube = (c.x / radius) ** 2 + ((c.y - centre_y) / (radius * squash)) ** 2
    rectum = (tube < 1) & (np.abs(c.z) < rng.uniform(45, 70))
    labels[rectum] = LABEL["rectal_wall"]
    wall = rng.uniform(2.5, 5) / radius
    lumen = rectum & (tube < (1 - wall) ** 2)
    labels[lumen] = LABEL["rectal_lumen"]
    content = rng.random()
    if content < 0.35:
        labels[lumen & (c.y < centre_y)] = LABEL["gas"]  # gas rises anteriorly in a supine patient
    elif content < 0.6:
        labels[lumen & (tube < (0.6 * (1 - wall)) ** 2)] = LABEL["stool"]

    # bladder: empty to full, anterior and cranial of the prostate, wall thicker when empty
    bladder_ml = float(np.exp(rng.uniform(np.log(30), np.log(500))))
    b_axes = _axes_for_volume(bladder_ml, (rng.uniform(1.1, 1.4), rng.uniform(0.8, 1.0), rng.uniform(0.7, 1.0)))
    b_centre = (rng.uniform(-6, 6), -rng.uniform(5, 15) - 0.3 * b_axes[1], rng.uniform(18, 25) + 0.8 * b_axes[2])
    bladder = _superellipsoid(c, b_centre, b_axes, rng.uniform(1.8, 2.6))
    labels[bladder < 1] = LABEL["bladder_wall"]
    thickness = rng.uniform(2, 3) if bladder_ml > 150 else rng.uniform(3, 6)
    labels[bladder < (1 - thickness / b_axes.min()) ** 2] = LABEL["urine"]

    # seminal vesicles: flat lobes cranial-posterior of the prostate, between bladder and rectum
    for side in (-1, 1):
        vesicle = _superellipsoid(c, (side * rng.uniform(12, 20), rng.uniform(12, 20), rng.uniform(22, 30)),
                                  (rng.uniform(12, 18), rng.uniform(4, 7), rng.uniform(6, 10)), 2)
        labels[(vesicle < 1) & (labels != LABEL["rectal_wall"])] = LABEL["seminal_vesicle"]

    # prostate: 15-120 ml, transition zone anterior-central, peripheral zone posterior, a thin capsule
    prostate_ml = float(np.exp(rng.uniform(np.log(15), np.log(120))))
    p_axes = _axes_for_volume(prostate_ml, (rng.uniform(1.15, 1.45), rng.uniform(0.8, 1.0), rng.uniform(0.85, 1.15)))
    prostate = _superellipsoid(c, (0, 0, 0), p_axes, rng.uniform(1.8, 2.5))
    labels[prostate < 1] = LABEL["prostate_capsule"]
    gland = prostate < (1 - rng.uniform(1, 2) / p_axes.min()) ** 2
    labels[gland] = LABEL["prostate_pz"]
    tz_share = rng.uniform(0.35, 0.75)  # larger glands are mostly transition zone (hyperplasia)
    tz = _superellipsoid(c, (0, -p_axes[1] * (1 - tz_share) * 0.5, p_axes[2] * 0.1), p_axes * [0.7, tz_share, 0.8], 2)
    labels[gland & (tz < 1)] = LABEL["prostate_tz"]
    return labels
