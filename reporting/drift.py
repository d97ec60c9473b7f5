"""Drift statistics: does a recent window of results differ from a reference window?

Pure functions over numbers, no database: the audits (``daemon/audits.py``) feed them, and the seeded
simulation of the tests measures their false-alarm rate over many seeds. Each test returns a
``Finding`` with a p-value where the test has one; an audit raises drift when a p-value falls below its
family-wise level divided by the number of tests it ran (Bonferroni), or a CUSUM crosses its limit.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

# scipy.stats is imported where it is used: it costs every node and CLI process about a second
# at start, and most of them never compute a statistic

MIN_RECENT, MIN_REFERENCE = 5, 20
PSI_BINS = 10
CUSUM_K, CUSUM_H = 0.5, 10.0  # slack and limit in standard deviations of the reference's daily means


@dataclass
class Finding:
    """One test of one metric for one group (a ROI, a source or both)."""

    group: str
    metric: str
    test: str
    statistic: float
    p_value: float | None
    recent_n: int
    reference_n: int
    summary: str
    drift: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def psi(reference: np.ndarray, recent: np.ndarray) -> tuple[float, float]:
    """Population stability index over quantile bins of the reference, and its p-value: for multinomial
    samples PSI / (1/n_ref + 1/n_recent) is about chi-square with bins - 1 degrees of freedom under no
    change, so a small recent window is not read as drift (the usual fixed 0.25 cut would be, at n = 40).
    About twenty recent values per bin (at most ten bins) and half a count added to each keep that true
    where a bin would be empty."""
    from scipy import stats
    bins = int(np.clip(len(recent) // 20, 2, PSI_BINS))
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))

    def shares(values: np.ndarray) -> np.ndarray:
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1) + 0.5
        return counts / counts.sum()

    ref_share, new_share = shares(reference), shares(recent)
    value = float(np.sum((new_share - ref_share) * np.log(new_share / ref_share)))
    p = float(stats.chi2.sf(value / (1 / len(reference) + 1 / len(recent)), len(edges)))
    return value, p


def compare_distributions(group: str, metric: str, reference: np.ndarray, recent: np.ndarray,
                          with_psi: bool = False, only_larger: bool = False) -> list[Finding]:
    """Two-sample Kolmogorov-Smirnov of a numeric metric, and ``with_psi`` its PSI; ``only_larger``: the KS
    test asks only whether the recent values are larger (an error that shrinks is no alarm)."""
    from scipy import stats
    if len(recent) < MIN_RECENT or len(reference) < MIN_REFERENCE:
        return []
    # scipy's "greater": the reference's distribution function lies above the recent one's somewhere
    ks = stats.ks_2samp(reference, recent, alternative="greater" if only_larger else "two-sided")
    shift = f"median {np.median(reference):.3g} -> {np.median(recent):.3g}"
    findings = [Finding(group, metric, "Kolmogorov-Smirnov", float(ks.statistic), float(ks.pvalue), len(recent),
                        len(reference), f"D = {ks.statistic:.2f}; {shift}")]
    if with_psi:
        index, p_psi = psi(reference, recent)
        findings.append(Finding(group, metric, "population stability index", index, p_psi, len(recent),
                                len(reference), f"PSI = {index:.2f}; {shift}"))
    return findings


def compare_rate(group: str, metric: str, reference_hits: int, reference_n: int, recent_hits: int,
                 recent_n: int) -> list[Finding]:
    """Is the recent rate above the reference's? Fisher's exact test, the exact test for two binomial
    samples: testing against the reference's rate as if it were known mistakes its sampling error for drift
    (1 of 271 before, 4 of 56 now, at a true 2 %). A falling rate is no alarm."""
    from scipy import stats
    if recent_n < MIN_RECENT or reference_n < MIN_REFERENCE:
        return []
    table = [[recent_hits, recent_n - recent_hits], [reference_hits, reference_n - reference_hits]]
    p = float(stats.fisher_exact(table, alternative="greater").pvalue)
    return [Finding(group, metric, "Fisher's exact (two binomial samples)", recent_hits / recent_n, p, recent_n,
                    reference_n, f"{recent_hits}/{recent_n} recent against {reference_hits}/{reference_n} before")]


def compare_categories(group: str, metric: str, reference: list[str], recent: list[str]) -> list[Finding]:
    """Chi-square test of homogeneity of a categorical metric (a scanner never seen before is a new column)."""
    from scipy import stats
    if len(recent) < MIN_RECENT or len(reference) < MIN_REFERENCE:
        return []
    categories = sorted(set(reference) | set(recent))
    if len(categories) < 2:
        return [Finding(group, metric, "chi-square", 0.0, 1.0, len(recent), len(reference), f"all {categories[0]!r}")]
    old, new = Counter(reference), Counter(recent)
    table = np.array([[old[c] for c in categories], [new[c] for c in categories]])
    statistic, p, _, _ = stats.chi2_contingency(table)
    unseen = [c for c in new if c not in old]
    summary = (f"new: {', '.join(repr(c) for c in unseen)}" if unseen
               else f"most common {new.most_common(1)[0][0]!r} ({new.most_common(1)[0][1]}/{len(recent)})")
    return [Finding(group, metric, "chi-square", float(statistic), float(p), len(recent), len(reference), summary)]


def cusum(group: str, metric: str, reference_days: list[np.ndarray], recent_days: list[np.ndarray]) -> tuple[list[Finding], dict]:
    """Two-sided tabular CUSUM of the recent daily means (k = 0.5, h = 10), each standardised by what the
    reference says a day of that many values varies by: the between-day variance (random effects) plus the
    values' variance over the day's count. A plain standard deviation of a few weeks' daily means is often
    too small and reads ordinary days as drift. Returns the finding and the chart's centre and limits."""
    if len(recent_days) < 2 or len(reference_days) < MIN_RECENT:
        return [], {}
    values = np.concatenate(reference_days)
    centre, within = float(values.mean()), float(values.var(ddof=1))
    means = np.array([d.mean() for d in reference_days])
    between = max(0.0, float(means.var(ddof=1)) - float(np.mean([within / len(d) for d in reference_days])))
    low = high = peak = 0.0
    for day in recent_days:
        z = (day.mean() - centre) / np.sqrt(between + within / len(day) + 1e-12)
        low, high = max(0.0, low - z - CUSUM_K), max(0.0, high + z - CUSUM_K)
        peak = max(peak, low, high)
    typical = float(np.sqrt(between + within / np.mean([len(d) for d in reference_days])))
    finding = Finding(group, metric, "CUSUM of the daily mean", peak, None, len(recent_days), len(reference_days),
                      f"largest cumulative sum {peak:.1f} (limit {CUSUM_H:g}); reference daily mean {centre:.3f} "
                      f"+- {typical:.3f}", drift=bool(peak > CUSUM_H))
    return [finding], {"centre": centre, "low": centre - 3 * typical, "high": centre + 3 * typical}


def decide(findings: list[Finding], family_alpha: float) -> bool:
    """Mark the findings that show drift (Bonferroni over the p-values; CUSUM by its limit); any drift?"""
    tested = [f for f in findings if f.p_value is not None]
    level = family_alpha / max(len(tested), 1)
    for finding in tested:
        finding.drift = finding.p_value < level
    return any(f.drift for f in findings)
