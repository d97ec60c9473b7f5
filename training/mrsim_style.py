"""The ``mrsim`` phantom style: the classic phantom's anatomy imaged by a simulated MR acquisition.

Written apart from both other styles' image models (the classic style's fixed grey values, the synth
style's random mixtures and texture fields): each tissue has a proton density and T1 and T2 relaxation
times of the order measured at 3 T, and a spin-echo signal for a sequence drawn per study (T1-, T2- or
proton-density-weighted, with its repetition and echo times). The image is then acquired as a scanner
does: at twice the resolution and through three sub-slices (partial volume), seen by several receive
coils of smooth sensitivity, its k-space cut to the acquired matrix (Gibbs ringing), some phase-encode
lines perturbed (motion and N/2 ghosts), complex noise per coil, and the coils combined by root sum of
squares (the noise is non-central chi). Reproducible from the study's seed.
"""

from __future__ import annotations

import numpy as np

from contourqa.qa_models.geometry import Grid

from .phantom import tissue_plane
from .phantom_anatomy import Body, Organ

# proton density (relative to water) and T1 and T2 (ms) per tissue of the classic phantom, of the order
# reported at 3 T (gas in the rectum gives almost no signal)
RELAXATION = {
    "air": (0.0, 1000.0, 10.0), "fat": (0.9, 380.0, 130.0), "muscle": (0.75, 1420.0, 45.0),
    "prostate_tz": (0.85, 1600.0, 75.0), "prostate_pz": (0.9, 1700.0, 120.0), "bladder": (1.0, 3500.0, 800.0),
    "rectum_wall": (0.8, 1300.0, 55.0), "rectum_lumen": (0.1, 1000.0, 40.0), "femoral_head": (0.85, 550.0, 60.0),
}
# repetition and echo time ranges (ms) of each weighting
SEQUENCES = {"t1": ((400.0, 700.0), (8.0, 15.0)), "t2": ((3000.0, 6000.0), (80.0, 120.0)),
             "pd": ((2500.0, 4000.0), (15.0, 30.0))}
SUBSLICES = 3  # each slice is the mean of this many planes through its thickness
DESCRIPTION = "simulated MR acquisition axial (mrsim phantom)"


def spin_echo_signal(sequence: str, rng: np.random.Generator) -> dict[str, float]:
    """Each tissue's signal for one study: S = PD (1 - exp(-TR/T1)) exp(-TE/T2), TR and TE drawn within
    the sequence's ranges and each tissue's T1 and T2 varied by about 10 % (one patient's tissue)."""
    (tr_low, tr_high), (te_low, te_high) = SEQUENCES[sequence]
    tr, te = rng.uniform(tr_low, tr_high), rng.uniform(te_low, te_high)
    signal = {}
    for tissue, (density, t1, t2) in RELAXATION.items():
        t1, t2 = t1 * rng.lognormal(0, 0.1), t2 * rng.lognormal(0, 0.1)
        signal[tissue] = float(density * (1 - np.exp(-tr / t1)) * np.exp(-te / t2))
    return signal


def coil_sensitivities(u: np.ndarray, v: np.ndarray, body: Body, rng: np.random.Generator) -> np.ndarray:
    """4-8 receive coils round the body: smooth Gaussian magnitude and a slow phase each (coils x plane)."""
    count = int(rng.integers(4, 9))
    angles = rng.uniform(0, 2 * np.pi) + np.arange(count) * 2 * np.pi / count
    a, b = body.semi_axes
    width = rng.uniform(0.8, 1.4) * max(a, b)
    maps = []
    for angle in angles:
        du, dv = u - 1.1 * a * np.cos(angle), v - 1.1 * b * np.sin(angle)
        phase = rng.uniform(-1, 1) * u / a + rng.uniform(-1, 1) * v / b
        maps.append(np.exp(-(du ** 2 + dv ** 2) / (2 * width ** 2)) * np.exp(1j * phase))
    return np.array(maps)


class Acquisition:
    """What one study's scanner does to every slice: the k-space kept (resolution), the phase-encode lines
    disturbed, the noise, the coils."""

    def __init__(self, shape: tuple[int, int], coils: np.ndarray, rng: np.random.Generator, signal_max: float):
        rows, columns = shape
        self.coils, self.rng = coils, rng
        kept_rows, kept_columns = int(rows * rng.uniform(0.6, 1.0)), int(columns * rng.uniform(0.75, 1.0))
        keep = np.zeros(shape, dtype=bool)
        keep[(rows - kept_rows) // 2:(rows + kept_rows) // 2, (columns - kept_columns) // 2:(columns + kept_columns) // 2] = True
        self.keep = keep
        self.line_phase = np.zeros(rows)  # the phase error of each phase-encode line (rows)
        if rng.random() < 0.5:  # motion: some lines acquired with the anatomy elsewhere
            moved = rng.random(rows) < rng.uniform(0.05, 0.15)
            self.line_phase[moved] = rng.uniform(-0.6, 0.6, int(moved.sum()))
        if rng.random() < 0.3:  # an N/2 ghost: odd and even lines out of phase
            self.line_phase[1::2] += rng.uniform(0.05, 0.2)
        self.noise = rng.uniform(0.005, 0.03) * signal_max

    def __call__(self, plane_fine: np.ndarray) -> np.ndarray:
        """The magnitude image of a plane drawn at twice the acquired resolution."""
        rows, columns = self.keep.shape
        combined = np.zeros((rows, columns))
        for coil in self.coils:
            spectrum = np.fft.fftshift(np.fft.fft2(plane_fine * coil))
            top, left = (spectrum.shape[0] - rows) // 2, (spectrum.shape[1] - columns) // 2
            spectrum = spectrum[top:top + rows, left:left + columns] * self.keep
            spectrum *= np.exp(1j * self.line_phase)[:, None]
            # the fine plane has four times the samples: scale back to its own grey values
            image = np.fft.ifft2(np.fft.ifftshift(spectrum)) / 4
            image += self.noise * (self.rng.standard_normal(image.shape) + 1j * self.rng.standard_normal(image.shape))
            combined += np.abs(image) ** 2
        return np.sqrt(combined)


def synthesise_image(grid: Grid, organs: dict[str, Organ], body: Body, rng: np.random.Generator) -> np.ndarray:
    """The volume (uint16, [k, j, i]) of one study on ``grid``."""
    depth, rows, columns = grid.shape
    signal = spin_echo_signal(str(rng.choice(list(SEQUENCES))), rng)
    u = (np.arange(2 * columns) - (2 * columns - 1) / 2) * grid.spacing[0] / 2
    v = (np.arange(2 * rows) - (2 * rows - 1) / 2) * grid.spacing[1] / 2
    uu, vv = np.meshgrid(u, v)
    heights = (np.arange(depth) - (depth - 1) / 2) * grid.spacing[2]
    through = (np.arange(SUBSLICES) - (SUBSLICES - 1) / 2) / SUBSLICES * grid.spacing[2]
    acquire = Acquisition((rows, columns), coil_sensitivities(uu, vv, body, rng), rng, max(signal.values()))
    volume = np.stack([acquire(np.mean([tissue_plane(uu, vv, height + dz, k, organs, body, signal) for dz in through],
                                       axis=0))
                       for k, height in enumerate(heights)])
    scale = rng.uniform(800, 3000) / max(float(np.percentile(volume, 99.5)), 1e-9)
    return np.clip(volume * scale, 0, 65535).astype(np.uint16)
