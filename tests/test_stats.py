"""privlm.stats: each interval against an independent computation, and the properties a reader relies on."""
import math

import numpy as np
import pytest
from scipy.stats import beta, norm

from privlm import stats
from privlm.mia import metrics


@pytest.mark.parametrize("k,n", [(0, 32), (5, 32), (32, 32), (91, 182)])
def test_wilson_matches_the_formula(k, n):
    z = norm.ppf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert stats.wilson(k, n) == pytest.approx([centre - half, centre + half], abs=1e-9)


@pytest.mark.parametrize("k,n", [(0, 182), (1, 182), (30, 100), (100, 100)])
def test_clopper_pearson_matches_beta_quantiles(k, n):
    lo = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
    hi = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
    assert stats.clopper_pearson(k, n) == pytest.approx([lo, hi], abs=1e-9)


def test_wilson_covers_the_true_proportion_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        k = rng.binomial(64, 0.9)
        lo, hi = stats.wilson(k, 64)
        hits += lo <= 0.9 <= hi
    assert 0.92 <= hits / 2000 <= 0.98


def test_auc_equals_sklearn_with_ties_and_its_interval_shrinks_with_n():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    m, n = rng.integers(0, 5, 40).astype(float) + 0.5, rng.integers(0, 5, 60).astype(float)  # many ties
    assert stats.auc(m, n) == pytest.approx(roc_auc_score(np.r_[np.ones(40), np.zeros(60)], np.r_[m, n]))
    widths = []
    for size in (30, 300):
        m, n = rng.normal(0.5, 1, size), rng.normal(0, 1, size)
        lo, hi = stats.auc_ci(m, n)
        assert lo <= stats.auc(m, n) <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_tpr_at_fpr_agrees_with_the_roc_curve_and_has_an_interval():
    rng = np.random.default_rng(2)
    m, n = rng.normal(2, 1, 500), rng.normal(0, 1, 1000)
    fpr, tpr = metrics.roc_curve(m, n)
    for f in (0.01, 0.1):
        assert stats.tpr_at_fpr(m, n, f) == pytest.approx(metrics.tpr_at_fpr(fpr, tpr, f), abs=2e-3)
        lo, hi = stats.tpr_at_fpr_ci(m, n, f)
        assert lo < stats.tpr_at_fpr(m, n, f) < hi
    r = metrics.roc(m, n)  # every MIA result carries the intervals
    assert r["auc_ci"][0] < r["auc"] < r["auc_ci"][1] and [p["fpr"] for p in r["tpr_at_fpr"]] == [0.01, 0.1]


def test_degenerate_inputs_give_no_interval_or_a_point():
    assert stats.wilson(0, 0) is None and stats.auc_ci([1.0], [0.0, 1.0]) is None
    assert stats.mean_ci([1.0, 1.0, 1.0]) == [1.0, 1.0]
    assert stats.fmt(0.5, [0.4, 0.6]) == "0.500 [0.400, 0.600]" and stats.fmt(None, None) == "-"


def test_t_interval_is_the_student_t_formula():
    from scipy.stats import t

    v = [0.61, 0.66, 0.58]
    half = t.ppf(0.975, 2) * np.std(v, ddof=1) / np.sqrt(3)
    assert stats.t_interval(v) == pytest.approx([np.mean(v) - half, np.mean(v) + half])
    assert stats.t_interval([0.7]) is None and stats.t_interval([0.7, 0.7]) == [0.7, 0.7]
