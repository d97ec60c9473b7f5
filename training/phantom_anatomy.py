"""Synthetic pelvis anatomy: organs as star-shaped cross-sections, so that every contour is an exact
polygon and every perturbation of an auto-contour (scaling, warps, leaks, shifts) stays a polygon.

Coordinates are millimetres in the image frame (u along rows, v down columns, w along the slice normal),
measured from the centre of the field of view.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

VERTICES_PER_CONTOUR = 72


@dataclass(frozen=True)
class Organ:
    """An ellipsoid (or, with ``tube``, an elliptic cylinder) with a wavy outline and an optional lumen."""

    name: str
    centre: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    harmonics: tuple[tuple[int, float, float], ...] = ()  # (order, relative amplitude, phase)
    tube: bool = False
    lumen: float = 0.0  # inner radius as a fraction of the outer; 0 = no hole
    scale: float = 1.0
    leak: tuple[float, float, float] | None = None  # (direction angle, amplitude mm, angular width)
    dropped_slices: frozenset[int] = field(default_factory=frozenset)

    def profile(self, w: float) -> float:
        """Relative cross-section size at height w (0 outside the organ)."""
        z = (w - self.centre[2]) / self.semi_axes[2]
        if self.tube:
            return 1.0 if abs(z) <= 1 else 0.0
        return float(np.sqrt(max(0.0, 1.0 - z * z)))

    def radius(self, theta: np.ndarray, w: float) -> np.ndarray:
        a, b = self.semi_axes[0] * self.profile(w), self.semi_axes[1] * self.profile(w)
        if a == 0 or b == 0:
            return np.zeros_like(theta)
        r = a * b / np.sqrt((b * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2)
        for order, amplitude, phase in self.harmonics:
            r = r * (1 + amplitude * np.cos(order * theta + phase + 0.02 * w))
        r = r * self.scale
        if self.leak is not None:
            angle, amplitude, width = self.leak
            difference = np.angle(np.exp(1j * (theta - angle)))
            r = r + amplitude * self.profile(w) * np.exp(-0.5 * (difference / width) ** 2)
        return r

    def loops(self, w: float, slice_index: int) -> list[np.ndarray]:
        """Closed polygons (outer, and lumen when hollow) at height w, as (N, 2) arrays of (u, v) mm."""
        if slice_index in self.dropped_slices:
            return []
        theta = np.linspace(0, 2 * np.pi, VERTICES_PER_CONTOUR, endpoint=False)
        r = self.radius(theta, w)
        if r.min() < 1.0:  # too small to draw: the tip of an ellipsoid
            return []
        outer = np.column_stack([self.centre[0] + r * np.cos(theta), self.centre[1] + r * np.sin(theta)])
        if not self.lumen:
            return [outer]
        inner_r = r * self.lumen
        inner = np.column_stack([self.centre[0] + inner_r * np.cos(theta), self.centre[1] + inner_r * np.sin(theta)])
        return [outer, inner[::-1]]

    def inside(self, u: np.ndarray, v: np.ndarray, w: float, slice_index: int) -> np.ndarray:
        """Analytic membership of points (u, v) at height w; independent of the polygon rasteriser."""
        if slice_index in self.dropped_slices:
            return np.zeros(u.shape, dtype=bool)
        du, dv = u - self.centre[0], v - self.centre[1]
        rho, theta = np.hypot(du, dv), np.arctan2(dv, du)
        r = self.radius(theta, w)
        if r.max() < 1.0:
            return np.zeros(u.shape, dtype=bool)
        return (rho < r) & (rho >= r * self.lumen)

    def shifted(self, du: float, dv: float, dw: float = 0.0) -> "Organ":
        c = self.centre
        return replace(self, centre=(c[0] + du, c[1] + dv, c[2] + dw))


# Tissue intensities of a T2-weighted-like image (arbitrary units).
INTENSITY = {
    "air": 0.0, "fat": 720.0, "muscle": 280.0, "prostate_tz": 380.0, "prostate_pz": 640.0,
    "bladder": 1050.0, "rectum_wall": 240.0, "rectum_lumen": 60.0, "femoral_head": 520.0,
}

ROI_NAMES = ("Prostate", "Bladder", "Rectum", "FemoralHead_L", "FemoralHead_R")


def pelvis(rng: np.random.Generator) -> dict[str, Organ]:
    """Reference organs of one synthetic patient (LPS: +u left, +v posterior, +w superior)."""
    def wave(count: int, amplitude: float) -> tuple[tuple[int, float, float], ...]:
        return tuple((order, float(rng.uniform(0, amplitude)), float(rng.uniform(0, 2 * np.pi)))
                     for order in range(2, 2 + count))

    jitter = lambda scale: float(rng.normal(0, scale))  # noqa: E731 - a one-line helper
    prostate_axes = (rng.uniform(18, 26), rng.uniform(14, 20), rng.uniform(16, 22))
    head_radius = rng.uniform(21, 25)
    head_offset = rng.uniform(62, 72)
    return {
        "Prostate": Organ("Prostate", (jitter(2), 8 + jitter(2), jitter(3)), prostate_axes, wave(3, 0.06)),
        "Bladder": Organ("Bladder", (jitter(3), -12 + jitter(3), 20 + jitter(2)),
                         (rng.uniform(30, 40), rng.uniform(22, 28), rng.uniform(13, 17)), wave(3, 0.08)),
        "Rectum": Organ("Rectum", (jitter(2), 38 + jitter(2), -6.0), (rng.uniform(14, 18), rng.uniform(12, 15), 26.0),
                        wave(2, 0.05), tube=True, lumen=float(rng.uniform(0.35, 0.55))),
        "FemoralHead_L": Organ("FemoralHead_L", (head_offset, 5 + jitter(2), 10 + jitter(2)), (head_radius,) * 3),
        "FemoralHead_R": Organ("FemoralHead_R", (-head_offset, 5 + jitter(2), 10 + jitter(2)), (head_radius,) * 3),
    }


@dataclass(frozen=True)
class Body:
    """Elliptic body outline with a fat layer of ``fat_mm`` around muscle."""

    semi_axes: tuple[float, float]
    fat_mm: float

    def tissue(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(inside the body, inside the muscle) for points (u, v)."""
        a, b = self.semi_axes
        body = (u / a) ** 2 + (v / b) ** 2 < 1
        muscle = (u / (a - self.fat_mm)) ** 2 + (v / (b - self.fat_mm)) ** 2 < 1
        return body, muscle
