"""Paired statistics for the study's claims: seeds paired by their initial weights, Holm-corrected.

Every method of a table starts from the same student weights for a given seed, so a claim "A beats B"
is judged on the per-seed differences A - B (a paired t-test), not on two unpaired means. A side
given as one reference value (the teacher's row) is taken as exact: it repeats at every seed. A
non-inferiority claim ("A is at least as good as B") states a margin m and tests A - B > -m. The
p-values of all the claims of a report are corrected together by Holm's step-down method (Holm 1979),
which controls the chance of any false "holds" or "reversed" at 5%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA, POWER = 0.05, 0.8


@dataclass(frozen=True)
class Comparison:
    """One claim on one metric: the paired differences better - worse and what they support."""

    pairs: int  # seeds present on both sides (or values against an exact reference)
    difference: float  # mean paired difference (accuracy points)
    low: float  # 95% confidence interval of the mean difference
    high: float
    p: float  # the test's p-value before correction: two-sided (superiority) or one-sided (non-inferiority)
    detectable: float  # the smallest true difference this design detects with 80% power at alpha 5%
    margin: float | None = None  # non-inferiority margin; None: a superiority claim

    def verdict(self, p_corrected: float) -> str:
        """'holds', 'reversed' or 'inconclusive' at the corrected p-value ('no verdict' under two pairs)."""
        if self.pairs < 2 or math.isnan(self.p):
            return "no verdict: fewer than two seeds"
        if p_corrected < ALPHA:
            return "holds" if self.margin is not None or self.difference > 0 else "reversed"
        if self.margin is not None and self.high < -self.margin:  # clearly worse by more than the margin
            return "reversed"
        return "inconclusive"


def paired_comparison(better: dict[str, float], worse: dict[str, float], margin: float | None = None) -> Comparison:
    """The paired comparison of two runs' per-seed values (seed -> value; a reference repeats its value)."""
    seeds = sorted(better.keys() & worse.keys())
    differences = np.array([better[s] - worse[s] for s in seeds], dtype=float)
    n, mean = len(differences), float(np.mean(differences)) if len(differences) else math.nan
    if n < 2:
        return Comparison(n, mean, math.nan, math.nan, math.nan, math.nan, margin)
    error = float(np.std(differences, ddof=1)) / math.sqrt(n)
    quantile = stats.t.ppf(1 - ALPHA / 2, n - 1)
    detectable = float((quantile + stats.t.ppf(POWER, n - 1)) * error)
    shifted = mean + (margin or 0.0)  # superiority: H0 difference 0; non-inferiority: H0 difference -margin
    statistic = shifted / error if error > 0 else math.copysign(math.inf, shifted) if shifted else 0.0
    p = float(stats.t.sf(statistic, n - 1)) if margin is not None else float(2 * stats.t.sf(abs(statistic), n - 1))
    return Comparison(n, mean, mean - quantile * error, mean + quantile * error, p, detectable, margin)


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values, in the given order (NaN stays NaN and does not count as a test)."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted, running = [math.nan] * len(p_values), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted
