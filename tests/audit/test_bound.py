"""The one-run audit's epsilon lower bounds: eps_delta against an independent root-finding inversion of the binomial
tail (delta = 0), the closed form when every guess is right, the paper's algorithm for delta > 0; the f-DP bound
against eps_delta through the pure-DP trade-off (two different derivations of the same test), against simulated
mu-GDP guessing games (valid and not vacuous), and the GDP conversion's textbook figure; the CLI's bad input."""
import json
import math
import subprocess
import sys

import pytest
from scipy.optimize import brentq
from scipy.stats import binom

from conftest import ROOT, assert_user_error, child_env
import numpy as np

from privlm.audit.bound import (audit, bounds, epsilon_lower_bound, fdp_mu_lower_bound, fdp_rejects, gdp_delta,
                                gdp_epsilon, p_value, pure_dp_tradeoff, verdict)


def inverted(r, v, c):
    """The largest eps with P[Binomial(r, e^eps / (1 + e^eps)) >= v] <= 1 - c, by Brent's method."""
    f = lambda eps: binom.sf(v - 1, r, 1 / (1 + math.exp(-eps))) - (1 - c)  # noqa: E731
    return 0.0 if f(0.0) >= 0 else brentq(f, 0.0, 50.0, xtol=1e-12)


@pytest.mark.parametrize("m,r,v", [(1000, 100, 90), (1000, 100, 60), (1000, 1000, 700), (200, 20, 13),
                                   (1000, 500, 500)])
def test_delta_zero_is_the_binomial_tail_inversion(m, r, v):
    assert epsilon_lower_bound(m, r, v, 0.0, 0.95) == pytest.approx(inverted(r, v, 0.95), abs=1e-7)


@pytest.mark.parametrize("r", [10, 100, 1000])
def test_all_guesses_right_has_a_closed_form(r):
    q = 0.05 ** (1 / r)  # q^r = 1 - c
    assert epsilon_lower_bound(1000, r, r, 0.0, 0.95) == pytest.approx(math.log(q / (1 - q)), abs=1e-7)


def paper_p_value(m, r, v, eps, delta):
    """The p-value of the paper's Algorithm (Theorem 5.2 with delta > 0), transcribed loop by loop from its text:
    beta = P[B >= v] and alpha = max over i = 1..v of P[v > B >= v - i] / i, B ~ Binomial(r, e^eps / (1 + e^eps));
    p = beta + alpha * delta * 2m."""
    q = 1 / (1 + math.exp(-eps))
    beta = binom.sf(v - 1, r, q)
    alpha, total = 0.0, 0.0
    for i in range(1, v + 1):
        total += binom.pmf(v - i, r, q)
        alpha = max(alpha, total / i)
    return min(1.0, beta + alpha * delta * 2 * m)


def paper_bound(m, r, v, delta, c):
    """The largest eps whose paper p-value is below 1 - c (Brent's method on the monotone p-value)."""
    f = lambda eps: paper_p_value(m, r, v, eps, delta) - (1 - c)  # noqa: E731
    return 0.0 if f(0.0) >= 0 else brentq(f, 0.0, 50.0, xtol=1e-12)


@pytest.mark.parametrize("m,r,v,delta", [(1000, 100, 90, 1e-5), (1000, 100, 90, 1e-3), (1000, 200, 150, 1e-5),
                                         (10000, 1000, 800, 1e-5), (1000, 1000, 1000, 1e-5), (500, 50, 45, 1e-2)])
def test_positive_delta_matches_the_papers_algorithm(m, r, v, delta):
    assert p_value(m, r, v, 1.0, delta) == pytest.approx(paper_p_value(m, r, v, 1.0, delta), rel=1e-9)
    assert epsilon_lower_bound(m, r, v, delta, 0.95) == pytest.approx(paper_bound(m, r, v, delta, 0.95), abs=1e-6)


def test_delta_and_confidence_only_lower_the_bound():
    base = epsilon_lower_bound(1000, 100, 90, 0.0, 0.95)
    assert 1.5 < base < 1.8  # (m=1000, r=100, v=90): 1.631
    assert epsilon_lower_bound(1000, 100, 90, 1e-5, 0.95) < base
    assert epsilon_lower_bound(1000, 100, 90, 1e-2, 0.95) < epsilon_lower_bound(1000, 100, 90, 1e-5, 0.95)
    assert epsilon_lower_bound(1000, 100, 90, 0.0, 0.99) < base
    assert epsilon_lower_bound(1000, 100, 50, 0.0, 0.95) == 0.0  # chance level proves nothing
    assert p_value(1000, 100, 90, base, 0.0) == pytest.approx(0.05, abs=1e-6)


def test_guesses_come_from_the_grid_fixed_in_advance():
    scores = list(range(1000))  # a perfect attack: the 500 highest are the members
    members = [i >= 500 for i in range(1000)]
    res = audit(scores, members, delta=0.0)
    assert [g["num_guesses"] for g in res["grid"]] == [20, 50, 100, 200, 500, 1000]
    assert all(g["num_correct"] == g["num_guesses"] for g in res["grid"])
    per = 1 - 0.05 / 6  # union bound over the six grid points
    assert res["epsilon_lower_bound"] == pytest.approx(epsilon_lower_bound(1000, 1000, 1000, 0.0, per))


def _bound(*args):
    return subprocess.run([sys.executable, "-m", "privlm.audit", "bound", *args], capture_output=True, text=True,
                          cwd=ROOT, env=child_env(), timeout=120)


def test_bound_command_prints_json_and_refuses_bad_input_in_one_line():
    p = _bound("--num_canaries", "1000", "--num_guesses", "100", "--num_correct", "90", "--delta", "0")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["epsilon_lower_bound"] == pytest.approx(inverted(100, 90, 0.95), abs=1e-7)
    for args, needle in ((["1", "1", "1"], "num_canaries"), (["10", "11", "1"], "num_guesses"),
                         (["10", "5", "6"], "num_correct")):
        p = _bound("--num_canaries", args[0], "--num_guesses", args[1], "--num_correct", args[2])
        assert_user_error(p, needle)
        assert p.returncode == 2
    assert_user_error(_bound("--num_canaries", "10", "--num_guesses", "5", "--num_correct", "3", "--delta", "1"),
                      "delta")
    assert_user_error(_bound("--num_canaries", "10", "--num_guesses", "5", "--num_correct", "3", "--confidence",
                             "1.5"), "confidence")


def pure_fdp_bound(m, r, v, c):
    """The f-DP recursion run on the (eps, 0)-DP trade-off curve, bisected on eps."""
    if not fdp_rejects(m, r, v, pure_dp_tradeoff(0.0), c):
        return 0.0
    lo, hi = 0.0, 30.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fdp_rejects(m, r, v, pure_dp_tradeoff(mid), c) else (lo, mid)
    return lo


@pytest.mark.parametrize("m,r,v", [(1000, 100, 90), (1000, 1000, 700), (1000, 20, 20), (1000, 200, 150),
                                   (1000, 1000, 1000), (1000, 1000, 990), (200, 20, 13)])
def test_fdp_on_the_pure_dp_curve_agrees_with_eps_delta(m, r, v):
    """Mahloujifar et al.'s recursion and Steinke et al.'s binomial tail test the same pure-DP hypothesis: they
    agree to a few percent (all right of 1000: both are the closed form 5.809)."""
    fdp, tail = pure_fdp_bound(m, r, v, 0.95), epsilon_lower_bound(m, r, v, 0.0, 0.95)
    assert fdp == pytest.approx(tail, rel=0.03, abs=1e-6)
    assert fdp <= tail * 1.005 + 1e-9


def test_fdp_bound_is_valid_and_tight_on_simulated_gaussian_games():
    """m = 1000 canaries whose scores are N(mu * member, 1): a mu-GDP mechanism exactly. At 95% confidence the
    bound may exceed mu in 5% of games at most; over 20 games none may here (p < 0.36 by chance), and it must reach
    a fair part of mu (not a vacuous bound)."""
    rng = np.random.default_rng(7)
    for mu, part in ((0.5, 0.25), (1.5, 0.45)):
        found = []
        for _ in range(10):
            member = rng.integers(0, 2, 1000).astype(bool)
            rows = bounds(rng.normal(mu * member, 1.0), member, [1e-5])
            found.append(next(b for b in rows if b["method"] == "fdp")["mu_lower_bound"])
        assert max(found) <= mu and np.mean(found) > part * mu, (mu, found)


def test_gdp_conversion_matches_the_textbook_figure():
    assert gdp_delta(1.0, 1.0) == pytest.approx(0.1269, abs=1e-4)  # Dong, Roth and Su: 1-GDP is (1, 0.127)-DP
    assert gdp_epsilon(1.0, gdp_delta(1.0, 1.0)) == pytest.approx(1.0, abs=1e-6)
    assert gdp_epsilon(2.0, 1e-5) > gdp_epsilon(1.0, 1e-5) > gdp_epsilon(1.0, 1e-3) > 0
    assert fdp_mu_lower_bound(1000, 100, 50) == 0.0  # chance level proves nothing


def test_bounds_report_both_methods_at_every_delta_and_a_verdict():
    member = np.arange(1000) >= 500
    rows = bounds(np.arange(1000.0), member, [1e-3, 1e-5])
    assert [(b["method"], b["delta"]) for b in rows] == [("eps_delta", 1e-3), ("fdp", 1e-3), ("eps_delta", 1e-5),
                                                         ("fdp", 1e-5)]
    assert all(b["confidence"] == 0.95 and b["num_correct"] == b["num_guesses"] for b in rows)
    per = 1 - 0.05 / 6
    assert rows[2]["epsilon_lower_bound"] == pytest.approx(epsilon_lower_bound(1000, 1000, 1000, 1e-5, per))
    assert rows[1]["epsilon_lower_bound"] < rows[3]["epsilon_lower_bound"]  # a smaller delta, a larger eps
    assert (verdict(2.0, 1.0), verdict(0.5, 1.0), verdict(3.0, None)) == ("violated", "consistent", "undefended")
