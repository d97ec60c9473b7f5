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
    return bars(errors, -0.5, 0.5, bins, "{:+.1f}", "{:+.2f}")


def bars(values: np.ndarray, low: float, high: float, bins: int = 20, tick_format: str = "{:.1f}",
         edge_format: str = "{:.2f}") -> dict:
    """Histogram bars of ``values`` over [low, high] (values outside are clipped to the ends)."""
    counts, edges = np.histogram(np.clip(values, low, high), bins=bins, range=(low, high))
    span, tallest = SIZE - 2 * PAD, max(int(counts.max()), 1)
    width = span / bins
    shapes = [{"x": PAD + n * width, "width": width - 1, "height": c / tallest * span,
               "y": SIZE - PAD - c / tallest * span,
               "title": f"{edge_format.format(edges[n])} to {edge_format.format(edges[n + 1])}: {c}"}
              for n, c in enumerate(counts)]
    ticks = [{"value": tick_format.format(v), "at": PAD + (v - low) / (high - low) * span}
             for v in np.linspace(low, high, 5)]
    y_ticks = [{"value": str(v), "at": SIZE - PAD - v / tallest * span} for v in sorted({0, tallest // 2, tallest})]
    return {"size": SIZE, "pad": PAD, "bars": shapes, "ticks": ticks, "y_ticks": y_ticks, "tallest": tallest}


def control_chart(labels: list[str], means: list[float | None], centre: float, low: float, high: float,
                  width: int = 640, height: int = 220) -> dict:
    """A daily-mean trend on [0, 1] with its centre line and control limits; days without data are gaps,
    days outside the limits are marked."""
    span_x, span_y = width - 2 * PAD, height - 2 * PAD
    step = span_x / max(len(labels) - 1, 1)

    def y(value: float) -> float:
        return height - PAD - float(np.clip(value, 0, 1)) * span_y

    points = [{"x": PAD + n * step, "y": y(m), "outside": not low <= m <= high, "title": f"{labels[n]}: {m:.3f}"}
              for n, m in enumerate(means) if m is not None]
    lines = {name: y(value) for name, value in (("centre", centre), ("low", low), ("high", high))}
    ticks = [{"value": labels[n], "at": PAD + n * step} for n in range(0, len(labels), max(1, len(labels) // 6))]
    y_ticks = [{"value": f"{v:.1f}", "at": y(v)} for v in (0, 0.5, 1)]
    return {"width": width, "height": height, "pad": PAD, "points": points, "lines": lines, "ticks": ticks,
            "y_ticks": y_ticks, "path": " ".join(f"{p['x']:.1f},{p['y']:.1f}" for p in points)}
