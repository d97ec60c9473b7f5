"""How well predicted Dice tracks true Dice, in the terms of Isaksson et al. 2022 and the Reg-net study."""

from __future__ import annotations

import numpy as np

# scipy.stats is imported where it is used: it costs every node and CLI process about a second
# at start, and most of them never compute a statistic

DICE_BANDS = ((0.0, 0.5), (0.5, 0.75), (0.75, 0.8), (0.8, 0.9), (0.9, 1.0001))


def _misjudged(true: np.ndarray, predicted: np.ndarray, flag_below: float, accept_above: float) -> np.ndarray:
    """Where a prediction fails the study's global accuracy rule."""
    return ((predicted < flag_below) & (true > accept_above)) | ((predicted > accept_above) & (true < flag_below))


def regression_metrics(true: np.ndarray, predicted: np.ndarray, flag_below: float = 0.75,
                       accept_above: float = 0.8) -> dict:
    """MAE, max error, correlations, MAE per band, the study's global accuracy rule, and QC flagging.

    A prediction fails the global rule when it is below ``flag_below`` while the truth is above
    ``accept_above``, or above ``accept_above`` while the truth is below ``flag_below``.
    """
    from scipy import stats
    true, predicted = np.asarray(true, float), np.asarray(predicted, float)
    error = np.abs(predicted - true)
    wrong = _misjudged(true, predicted, flag_below, accept_above)
    flagged, bad = predicted < flag_below, true < flag_below
    kept = true[~flagged]
    varied = len(true) > 2 and np.ptp(true) > 0 and np.ptp(predicted) > 0
    return {
        "n": int(len(true)),
        "mae": float(error.mean()),
        "max_error": float(error.max()),
        "spearman": float(stats.spearmanr(true, predicted).statistic) if varied else None,
        "pearson": float(stats.pearsonr(true, predicted).statistic) if varied else None,
        "mae_by_band": {f"{low:.2f}-{min(high, 1):.2f}": {"n": int(m.sum()), "mae": float(error[m].mean())}
                        for low, high in DICE_BANDS if (m := (true >= low) & (true < high)).any()},
        "global_accuracy": float(1 - wrong.mean()),
        "flag_precision": float((flagged & bad).sum() / flagged.sum()) if flagged.any() else None,
        "flag_recall": float((flagged & bad).sum() / bad.sum()) if bad.any() else None,
        "mean_dice_before_filter": float(true.mean()),
        "mean_dice_after_filter": float(kept.mean()) if kept.size else None,
    }


def metrics_by_group(true: np.ndarray, predicted: np.ndarray, groups: list[str]) -> dict:
    """Count, MAE and bias (mean predicted - true) per group, e.g. per ROI: where a model is weak, and
    whether it over- or under-predicts there (a site learns which organ needs more training contours)."""
    true, predicted, groups = np.asarray(true, float), np.asarray(predicted, float), np.asarray(groups)
    return {str(g): {"n": int(m.sum()), "mae": float(np.abs(predicted[m] - true[m]).mean()),
                     "bias": float((predicted[m] - true[m]).mean())}
            for g in sorted(set(groups.tolist())) for m in [groups == g]}


def case_bootstrap_intervals(true: np.ndarray, predicted: np.ndarray, cases: list[str], resamples: int = 2000,
                             seed: int = 0, flag_below: float = 0.75, accept_above: float = 0.8) -> dict:
    """95 % intervals of MAE, Spearman and global accuracy, resampling whole cases with replacement.

    Candidates of one case share its image and anatomy (and a SEG may repeat an RTSTRUCT's contour),
    so they are not independent draws; resampling cases keeps that, where resampling candidates would
    give intervals too narrow. With fewer than two cases there is nothing to resample: empty.
    """
    from scipy import stats
    true, predicted = np.asarray(true, float), np.asarray(predicted, float)
    names, case_index = np.unique(np.asarray(cases), return_inverse=True)
    if len(names) < 2:
        return {}
    members = [np.flatnonzero(case_index == n) for n in range(len(names))]
    rng = np.random.default_rng(seed)
    draws = {"mae": [], "spearman": [], "global_accuracy": []}
    for _ in range(resamples):
        chosen = np.concatenate([members[n] for n in rng.integers(len(names), size=len(names))])
        t, p = true[chosen], predicted[chosen]
        wrong = _misjudged(t, p, flag_below, accept_above)
        draws["mae"].append(np.abs(p - t).mean())
        draws["global_accuracy"].append(1 - wrong.mean())
        if np.ptp(t) > 0 and np.ptp(p) > 0:
            draws["spearman"].append(stats.spearmanr(t, p).statistic)
    return {name: [float(v) for v in np.percentile(values, [2.5, 97.5])] for name, values in draws.items() if values}


def site_calibration(real: list[float], predicted: list[float], flag_below: float, accept_above: float,
                     label: str) -> dict | None:
    """Predicted against real Dice on a site's own approved contours: MAE, the share of verdicts the real
    Dice would have changed (the global accuracy rule), and the scatter chart; None without pairs."""
    from .charts import scatter
    if not real:
        return None
    metrics = regression_metrics(np.array(real), np.array(predicted), flag_below, accept_above)
    wrong = 1 - metrics["global_accuracy"]
    return {"n": metrics["n"], "mae": metrics["mae"], "wrong_share": wrong,
            "chart": scatter(np.array(real), np.array(predicted)),
            "text": f"predicted against real Dice of {metrics['n']} {label}: MAE {metrics['mae']:.3f}, "
                    f"{wrong:.0%} of verdicts wrong"}
