"""Plot geometry for the evaluation report: coordinates only, the template draws them as SVG."""

from __future__ import annotations

import numpy as np

SIZE, PAD = 360, 40


def scatter(true: np.ndarray, predicted: np.ndarray) -> dict:
    """Predicted vs true Dice on the unit square; y grows upwards."""
    span = SIZE - 2 * PAD
    points = [{"x": PAD + t * span, "y": SIZE - PAD - p * span, "title": f"true {t:.3f}, predicted {p:.3f}"}
              for t, p in zip(np.clip(true, 0, 1), np.clip(predicted, 0, 1))]
    ticks = [{"value": f"{v:.1f}", "at": PAD + v * span, "at_y": SIZE - PAD - v * span} for v in np.linspace(0, 1, 6)]
    return {"size": SIZE, "pad": PAD, "points": points, "ticks": ticks}


def histogram(errors: np.ndarray, bins: int = 20) -> dict:
    """Bars of the signed error (predicted - true) over [-0.5, 0.5]."""
    counts, edges = np.histogram(np.clip(errors, -0.5, 0.5), bins=bins, range=(-0.5, 0.5))
    span, tallest = SIZE - 2 * PAD, max(int(counts.max()), 1)
    width = span / bins
    bars = [{"x": PAD + n * width, "width": width - 1, "height": c / tallest * span, "y": SIZE - PAD - c / tallest * span,
             "title": f"{edges[n]:+.2f} to {edges[n + 1]:+.2f}: {c}"} for n, c in enumerate(counts)]
    ticks = [{"value": f"{v:+.1f}", "at": PAD + (v + 0.5) * span} for v in np.linspace(-0.5, 0.5, 5)]
    y_ticks = [{"value": str(v), "at": SIZE - PAD - v / tallest * span} for v in sorted({0, tallest // 2, tallest})]
    return {"size": SIZE, "pad": PAD, "bars": bars, "ticks": ticks, "y_ticks": y_ticks, "tallest": tallest}
