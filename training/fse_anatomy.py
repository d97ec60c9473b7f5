"""Label maps of a male pelvis for the ``fse`` phantom style, written apart from both other anatomies
(``phantom_anatomy``'s star-shaped cross-sections and ``synth_anatomy``'s deformed superellipsoids).

Organs are blobs: the level set of a sum of several Gaussian kernels scattered about the organ's
place, the level chosen so the organ has a volume drawn from adult anatomy. So a prostate can be
lobulated, a bladder lopsided or indented, and no organ is an ellipsoid. The rectum is a tube of varying
radius along a curved centre line; a femoral head carries its neck, as radiotherapy atlases contour it;
bone, muscles, fat and vessels surround them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

TISSUES = ("air", "skin", "fat", "muscle", "bone", "marrow", "femoral_head", "bladder_wall", "urine", "rectal_wall",
           "rectal_content", "gas", "prostate_central", "prostate_peripheral", "nodule", "vesicle", "vessel")
TISSUE = {name: value for value, name in enumerate(TISSUES)}
# Each ROI of the structure set, as the tissues it is made of (the femoral heads are told apart by side).
ROI_TISSUES = {
    "Prostate": ("prostate_central", "prostate_peripheral", "nodule"),
    "Bladder": ("bladder_wall", "urine"),
    "Rectum": ("rectal_wall", "rectal_content", "gas"),
    "FemoralHead_L": ("femoral_head",),
    "FemoralHead_R": ("femoral_head",),
}


@dataclass(frozen=True)
class Space:
    """mm coordinates of every voxel centre of a volume [k, j, i]: x to the patient's left, y posterior,
    z cranial (DICOM patient axes), each 1-D along its own axis; the prostate lies near (0, 0, 0)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.z), len(self.y), len(self.x)

    @property
    def step(self) -> np.ndarray:
        """The voxel's size (mm) along k, j, i."""
        return np.array([a[1] - a[0] if len(a) > 1 else 1.0 for a in (self.z, self.y, self.x)])

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.step)) / 1000

    def box(self, low: np.ndarray, high: np.ndarray) -> tuple[slice, slice, slice]:
        """The (k, j, i) slices of the voxels within [low, high] (x, y, z mm); each axis ascends."""
        return tuple(slice(int(np.searchsorted(a, lo)), int(np.searchsorted(a, hi, side="right")))
                     for a, lo, hi in ((self.z, low[2], high[2]), (self.y, low[1], high[1]), (self.x, low[0], high[0])))

    def grids(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (z, y, x) arrays."""
        return self.z[:, None, None], self.y[None, :, None], self.x[None, None, :]


def _kernel_sum(space: Space, centres: np.ndarray, widths: np.ndarray) -> np.ndarray:
    z, y, x = space.grids()
    field = np.zeros(space.shape, dtype=np.float32)
    for c, w in zip(centres, widths):
        field += np.exp(-0.5 * (((x - c[0]) / w[0]) ** 2 + ((y - c[1]) / w[1]) ** 2
                                + ((z - c[2]) / w[2]) ** 2)).astype(np.float32)
    return field


def blob(space: Space, centre: np.ndarray, extent: np.ndarray, volume_ml: float, kernels: int,
         rng: np.random.Generator) -> np.ndarray:
    """An organ of ``volume_ml``: the highest values of a sum of ``kernels`` Gaussians, each centred within
    ``extent`` (semi-axes, mm) of ``centre`` and as wide as the extent by a random factor. Its level is
    found on a 1.5 mm grid round the whole organ, so an organ the field of view cuts keeps its volume."""
    centres = centre + rng.uniform(-0.45, 0.45, (kernels, 3)) * extent
    widths = extent * rng.uniform(0.4, 0.8, (kernels, 3))
    low, high = centre - 2.6 * extent, centre + 2.6 * extent
    whole = Space(*(np.arange(a, b, 1.5) for a, b in zip(low, high)))
    field = _kernel_sum(whole, centres, widths).ravel()
    count = min(field.size - 1, int(round(volume_ml / whole.voxel_ml)))
    level = np.partition(field, field.size - count)[field.size - count]
    mask = np.zeros(space.shape, dtype=bool)
    box = space.box(low, high)
    if all(s.stop > s.start for s in box):
        part = Space(space.x[box[2]], space.y[box[1]], space.z[box[0]])
        mask[box] = _kernel_sum(part, centres, widths) >= level
    return mask


def tube(space: Space, points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Distance field (mm) of a tube: per slice the distance to the centre line, minus the radius there;
    ``points`` (z-sorted rows of x, y, z) and ``radii`` are interpolated at every slice's z."""
    z, y, x = space.grids()
    cx = np.interp(space.z, points[:, 2], points[:, 0])[:, None, None]
    cy = np.interp(space.z, points[:, 2], points[:, 1])[:, None, None]
    r = np.interp(space.z, points[:, 2], radii)[:, None, None]
    inside_span = ((space.z >= points[0, 2]) & (space.z <= points[-1, 2]))[:, None, None]
    return np.where(inside_span, np.hypot(x - cx, y - cy) - r, np.inf)


def _within(space: Space, centre, radius: float) -> np.ndarray:
    z, y, x = space.grids()
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius ** 2


def _capsule(space: Space, start: np.ndarray, end: np.ndarray, radius: float) -> np.ndarray:
    """A cylinder with rounded ends between ``start`` and ``end``."""
    z, y, x = space.grids()
    axis = end - start
    t = np.clip(((x - start[0]) * axis[0] + (y - start[1]) * axis[1] + (z - start[2]) * axis[2]) / (axis @ axis), 0, 1)
    return ((x - start[0] - t * axis[0]) ** 2 + (y - start[1] - t * axis[1]) ** 2
            + (z - start[2] - t * axis[2]) ** 2) <= radius ** 2


def pelvis(space: Space, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A label map (uint8, ``TISSUES``) of one pelvis and each ROI's mask."""
    z, y, x = space.grids()
    labels = np.full(space.shape, TISSUE["air"], dtype=np.uint8)
    # the body: the same outline on every slice, skin, then a layer of fat
    half_width, half_depth = rng.uniform(160, 195), rng.uniform(110, 135)
    centre_y = rng.uniform(15, 30)
    power = rng.uniform(2.2, 3.2)  # between an oval and a rounded box
    body = (np.abs(x[0] / half_width) ** power + np.abs((y[0] - centre_y) / half_depth) ** power) < 1
    body_depth = np.broadcast_to(ndimage.distance_transform_edt(body, sampling=space.step[1:]), space.shape)
    labels[body_depth > 0] = TISSUE["skin"]
    labels[body_depth > rng.uniform(1.5, 2.5)] = TISSUE["fat"]
    deep = body_depth > rng.uniform(15, 45)

    # muscles on a fat background: buttocks, the pelvic side walls, the pelvic floor
    for side in (-1, 1):
        labels[deep & blob(space, np.array([side * 80, 75, 0]), np.array([50, 35, 120]), rng.uniform(700, 1200),
                           5, rng)] = TISSUE["muscle"]
        labels[blob(space, np.array([side * 52, 5, 0]), np.array([8, 28, 35]), rng.uniform(60, 110), 3, rng)] \
            = TISSUE["muscle"]
        labels[deep & blob(space, np.array([side * 80, -45, 30]), np.array([18, 15, 70]), rng.uniform(150, 250), 3,
                           rng)] = TISSUE["muscle"]
    sling = blob(space, np.array([0, 25, -35]), np.array([40, 30, 8]), rng.uniform(40, 70), 4, rng)
    labels[sling] = TISSUE["muscle"]

    # bones: the pubic bones in front, the acetabula round the femoral heads, the sacrum behind
    labels[blob(space, np.array([0, -rng.uniform(45, 60), -10]), np.array([35, 10, 25]), rng.uniform(50, 90), 4,
                rng)] = TISSUE["bone"]
    labels[blob(space, np.array([0, rng.uniform(85, 105), 60]), np.array([45, 15, 40]), rng.uniform(120, 200), 4,
                rng)] = TISSUE["bone"]
    masks: dict[str, np.ndarray] = {}
    head_radius, head_z = rng.uniform(21, 27), rng.uniform(-8, 12)
    for side, name in ((1, "FemoralHead_L"), (-1, "FemoralHead_R")):  # the patient's left is +x
        head = np.array([side * rng.uniform(80, 92), rng.uniform(0, 15), head_z + rng.uniform(-3, 3)])
        labels[_within(space, head + [side * -4, 0, 4], head_radius + rng.uniform(6, 10))] = TISSUE["bone"]
        labels[_within(space, head + [side * -4, 0, 4], head_radius + rng.uniform(2, 4))] = TISSUE["marrow"]
        neck_end = head + [side * rng.uniform(15, 25), rng.uniform(-5, 5), -rng.uniform(15, 25)]
        femur = _within(space, head, head_radius) | _capsule(space, head, neck_end, head_radius * rng.uniform(0.6, 0.72))
        labels[femur | _within(space, head, head_radius + 2)] = TISSUE["bone"]  # the cortex round the joint
        labels[femur] = TISSUE["femoral_head"]
        masks[name] = femur
    for side in (-1, 1):  # external iliac artery and vein
        vessel = tube(space, np.array([[side * rng.uniform(50, 65), -rng.uniform(30, 45), 5],
                                       [side * rng.uniform(60, 75), -rng.uniform(30, 50), 120]]),
                      np.array([rng.uniform(3.5, 6), rng.uniform(3.5, 6)]))
        labels[deep & (vessel < 0)] = TISSUE["vessel"]

    # the rectum: a tube behind the prostate bending back as it rises, gas or stool inside
    heights = np.linspace(-rng.uniform(45, 60), rng.uniform(50, 80), 6)
    gap = rng.uniform(3, 8)
    radii = rng.uniform(9, 21, 6)
    centre_line = np.column_stack([rng.uniform(-6, 6, 6), 0 * heights, heights])
    centre_line[:, 1] = rng.uniform(18, 22) + gap + radii + 0.002 * np.clip(heights, 0, None) ** 2
    distance = tube(space, centre_line, radii)
    bones = masks["FemoralHead_L"] | masks["FemoralHead_R"]
    rectum = (distance < 0) & ~bones
    labels[rectum] = TISSUE["rectal_wall"]
    lumen = rectum & (distance < -rng.uniform(2.5, 5))
    labels[lumen] = TISSUE["rectal_content"]
    if rng.random() < 0.5:  # a bubble of gas, anterior in a supine patient
        cy = np.interp(space.z, centre_line[:, 2], centre_line[:, 1])[:, None, None]
        labels[lumen & (y < cy - rng.uniform(-2, 6))] = TISSUE["gas"]
    masks["Rectum"] = rectum

    # the bladder: empty to full above the prostate, its wall thicker when empty
    bladder_ml = float(np.exp(rng.uniform(np.log(40), np.log(450))))
    size = (bladder_ml * 3 / (4 * np.pi)) ** (1 / 3) * 10
    bladder = blob(space, np.array([rng.uniform(-8, 8), -rng.uniform(8, 18), 22 + 0.8 * size]),
                   np.array([1.3, 0.9, 0.8]) * size, bladder_ml, int(rng.integers(3, 7)), rng) & ~rectum & ~bones
    labels[bladder] = TISSUE["bladder_wall"]
    wall_mm = rng.uniform(2, 3) if bladder_ml > 150 else rng.uniform(3, 5.5)
    urine = ndimage.distance_transform_edt(bladder, sampling=space.step) > wall_mm
    labels[urine] = TISSUE["urine"]
    masks["Bladder"] = bladder

    # seminal vesicles between bladder and rectum
    for side in (-1, 1):
        vesicle = blob(space, np.array([side * 16, rng.uniform(12, 18), rng.uniform(22, 30)]),
                       np.array([14, 5, 8]), rng.uniform(4, 10), 3, rng)
        labels[vesicle & ~rectum & ~bladder] = TISSUE["vesicle"]

    # the prostate: 18-100 ml, lobulated; a peripheral zone behind, hyperplastic nodules in the centre
    prostate_ml = float(np.exp(rng.uniform(np.log(18), np.log(100))))
    radius = (prostate_ml * 3 / (4 * np.pi)) ** (1 / 3) * 10
    prostate = blob(space, np.zeros(3), np.array([1.25, 0.9, 1.0]) * radius, prostate_ml,
                    int(rng.integers(3, 7)), rng) & ~rectum & ~bladder & ~bones
    labels[prostate] = TISSUE["prostate_peripheral"]
    central = blob(space, np.array([0, -0.25 * radius, 0.1 * radius]), np.array([0.9, 0.6, 0.8]) * radius,
                   prostate_ml * rng.uniform(0.35, 0.7), 3, rng) & prostate
    labels[central] = TISSUE["prostate_central"]
    for _ in range(int(rng.integers(0, 7))):
        centre = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.1), rng.uniform(-0.5, 0.5)]) * radius
        labels[central & _within(space, centre, rng.uniform(2.5, 0.3 * radius))] = TISSUE["nodule"]
    masks["Prostate"] = prostate
    return labels, masks
