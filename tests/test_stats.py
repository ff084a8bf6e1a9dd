"""Paired statistics of the study: intervals and p-values as scipy computes them, Holm's correction, verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bingo.experiments.stats import holm, paired_comparison

BETTER = {"0": 70.0, "1": 72.5, "2": 71.0, "3": 73.0, "4": 70.5}
WORSE = {"0": 68.0, "1": 71.0, "2": 70.5, "3": 70.0, "4": 69.5}


def test_a_paired_comparison_is_scipys_paired_t_test():
    comparison = paired_comparison(BETTER, WORSE)
    seeds = sorted(BETTER)
    test = stats.ttest_rel([BETTER[s] for s in seeds], [WORSE[s] for s in seeds])
    interval = test.confidence_interval(0.95)
    assert comparison.pairs == 5 and comparison.difference == pytest.approx(1.6)
    assert comparison.p == pytest.approx(test.pvalue)
    assert (comparison.low, comparison.high) == pytest.approx((interval.low, interval.high))
    # unpaired, the same numbers would not separate: the pairing is what the design buys
    assert stats.ttest_ind(list(BETTER.values()), list(WORSE.values())).pvalue > 3 * comparison.p


def test_only_seeds_on_both_sides_are_paired_and_a_reference_is_exact():
    assert paired_comparison(BETTER, {"0": 68.0, "1": 71.0, "9": 0.0}).pairs == 2
    exact = paired_comparison(BETTER, dict.fromkeys(BETTER, 70.0))
    test = stats.ttest_1samp(list(BETTER.values()), 70.0)
    assert exact.p == pytest.approx(test.pvalue) and exact.difference == pytest.approx(1.4)


def test_the_detectable_effect_shrinks_with_more_seeds():
    few, many = ({str(s): (-1.0) ** s for s in range(n)} for n in (3, 12))  # differences of about the same spread
    zero = dict.fromkeys(map(str, range(12)), 0.0)
    assert paired_comparison(few, zero).detectable > 2 * paired_comparison(many, zero).detectable


def test_non_inferiority_tests_the_margin_one_sided():
    tied = {"0": 70.0, "1": 70.4, "2": 69.8, "3": 70.1, "4": 70.2}
    base = dict.fromkeys(tied, 70.1)
    within = paired_comparison(tied, base, margin=1.0)
    differences = np.array([tied[s] - base[s] for s in tied])
    one_sided = stats.ttest_1samp(differences, -1.0, alternative="greater").pvalue
    assert within.p == pytest.approx(one_sided) and within.verdict(within.p) == "holds"
    assert paired_comparison(tied, base).verdict(1.0) == "inconclusive"  # no superiority
    worse = paired_comparison({k: v - 3 for k, v in tied.items()}, base, margin=1.0)
    assert worse.verdict(worse.p) == "reversed"  # its whole interval lies below -margin


@pytest.mark.parametrize("p, adjusted", [
    ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02]),  # Holm (1979): (m - rank) p, kept monotone
    ([0.5, math.nan, 0.01], [0.5, math.nan, 0.02]),  # untested rows do not count
])
def test_holm(p, adjusted):
    assert holm(p) == pytest.approx(adjusted, nan_ok=True)


def test_verdicts_follow_the_corrected_p_value():
    up = paired_comparison(BETTER, WORSE)
    down = paired_comparison(WORSE, BETTER)
    assert (up.verdict(0.01), down.verdict(0.01), up.verdict(0.2)) == ("holds", "reversed", "inconclusive")
    assert paired_comparison({"0": 1.0}, {"0": 0.0}).verdict(0.0).startswith("no verdict")
