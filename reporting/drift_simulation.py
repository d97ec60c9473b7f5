"""A seeded simulated site for the drift audits: 120 days of results from three auto-contouring sources.

Source "AutoSeg A" degrades from ``change_day`` (mean Dice of every ROI down 0.05); the scanner behind
"AutoSeg B" changes on ``change_day`` (another manufacturer and model, 1.5 T instead of 3 T, thicker slices,
another intensity scale); "AutoSeg C" stays as it was. The tests feed it through the ledger and measure the
audits' false-alarm rate over many seeds; `bench/bench_drift.py` prints the figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

SOURCES = ("AutoSeg A", "AutoSeg B", "AutoSeg C")
ROIS = {"Prostate": (0.86, 0.045, 40.0), "Bladder": (0.92, 0.03, 180.0), "Rectum": (0.84, 0.05, 60.0)}
CASES_PER_DAY = 6
SCANNERS = {"before": ("Siemens Prisma", 3.0, 0.6, 3.0, 1.0), "after": ("Philips Ingenia", 1.5, 0.8, 4.0, 0.6)}


@dataclass
class SimulatedRoi:
    finished_at: datetime
    case_id: str
    source: str
    roi: str
    dice: float
    verdict: str
    inside: bool
    volume_ml: float
    profile: dict


def _verdict(dice: float) -> str:
    return "reject" if dice < 0.75 else "review" if dice < 0.80 else "accept"


def simulate(seed: int, start: datetime, days: int = 120, change_day: int = 90) -> list[SimulatedRoi]:
    """Every ROI result of the simulated site, day 0 starting at ``start``."""
    rng = np.random.default_rng(seed)
    results = []
    for day in range(days):
        for source in SOURCES:
            for n in range(rng.poisson(CASES_PER_DAY)):
                moment = start + timedelta(days=day, seconds=float(rng.uniform(0, 86_400)))
                changed = day >= change_day
                scanner, tesla, pixel, thickness, scale = SCANNERS[
                    "after" if changed and source == "AutoSeg B" else "before"]
                profile = {"scanner": scanner, "field_strength_t": tesla, "pixel_spacing_mm": pixel,
                           "slice_thickness_mm": thickness, "intensity_p5": 80 * scale * rng.uniform(0.9, 1.1),
                           "intensity_p50": 400 * scale * rng.uniform(0.9, 1.1),
                           "intensity_p95": 900 * scale * rng.uniform(0.9, 1.1)}
                case_id = f"s{seed}-d{day}-{source[-1]}{n}"
                for roi, (mean, spread, volume) in ROIS.items():
                    mean -= 0.05 if changed and source == "AutoSeg A" else 0.0
                    dice = float(np.clip(rng.normal(mean, spread), 0, 1))
                    results.append(SimulatedRoi(moment, case_id, source, roi, dice, _verdict(dice),
                                                bool(rng.random() > 0.02), float(volume * rng.lognormal(0, 0.2)),
                                                profile))
    return results
