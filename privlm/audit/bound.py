"""The one-run audit's epsilon lower bound (Steinke, Nasr and Jagielski, NeurIPS 2023, "Privacy auditing with one (1)
training run", Theorem 3.1 / Proposition 5.7 and their Algorithm 2 for delta > 0).

m canaries, each in the training set by an independent fair coin; the auditor guesses r of them ("in" / "out") and
v guesses are right. Under (eps, delta)-DP, P[V >= v] <= P[Binomial(r, q) >= v] + 2 m delta alpha, with
q = e^eps / (1 + e^eps) and alpha = max_{i=1..v} P[v - i <= Binomial(r, q) < v] / i. The bound is the largest eps
this p-value rejects at confidence c: p-value(eps) < 1 - c. With delta = 0 it is the binomial-tail inversion.

The f-DP bound (Mahloujifar, Melis and Chaudhuri 2024, "Auditing f-differential privacy in one run", Theorem 9 /
their Algorithm with abstentions) reads the same (m, r, v) against a whole trade-off curve f instead of one
(eps, delta) pair: going down from i = v, h_i = max(h_{i+1}, f(1 - r_{i+1})) and
r_i = r_{i+1} + i / (r - i) (h_i - h_{i+1}), started at r_v = tau (r / m) v / r and h_v = tau (r / m) (r - v) / r with
tau = 1 - c; f is rejected when r_0 + h_0 > r / m. For the Gaussian family G_mu (what DP-SGD is, to a CLT
approximation) the largest rejected mu is the bound, reported as the eps of mu-GDP at the delta asked for: a bound
on the Gaussian trade-off the run claims, as strong as (usually stronger than) eps_delta where the run is
Gaussian-like, and not a bound against an arbitrary (eps, delta) mechanism. Both come side by side in `bounds`.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import UserError

REFERENCE_DELTA = 1e-5  # the delta the literature reports at, beside the run's own


def validate(m: int, r: int, v: int, delta: float, confidence: float):
    """One UserError naming every bad argument."""
    problems = []
    if m < 2:
        problems.append(f"num_canaries: {m} must be >= 2")
    if r < 0 or r > m:
        problems.append(f"num_guesses: {r} must be in [0, num_canaries={m}]")
    if v < 0 or v > r:
        problems.append(f"num_correct: {v} must be in [0, num_guesses={r}]")
    if not 0 <= delta < 1:
        problems.append(f"delta: {delta} must be in [0, 1)")
    if not 0 < confidence < 1:
        problems.append(f"confidence: {confidence} must be in (0, 1)")
    if problems:
        raise UserError("invalid audit bound: " + "; ".join(problems))


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """An upper bound on P[>= v correct of r guesses] for any (eps, delta)-DP training run."""
    from scipy.stats import binom

    if v <= 0:
        return 1.0
    q = 1.0 / (1.0 + math.exp(-eps))
    tail = float(binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0:
        return min(1.0, tail)
    below = binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[B = v-1], P[B = v-2], ..., P[B = 0]
    alpha = float((np.cumsum(below) / np.arange(1, v + 1)).max())  # max_i P[v-i <= B < v] / i
    return min(1.0, tail + 2 * m * delta * alpha)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float = 0.0, confidence: float = 0.95) -> float:
    """The largest eps rejected at `confidence` (0 when nothing is): bisection on the monotone p-value."""
    validate(m, r, v, delta, confidence)
    level = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) >= level:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < level:
        lo, hi = hi, hi * 2
        if hi > 1e3:  # v = r = m guesses all right with delta = 0 and a huge m: no finite eps is accepted
            return math.inf
    for _ in range(60):
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) < level:
            lo = mid
        else:
            hi = mid
    return lo


def guess_grid(m: int) -> list[int]:
    """Guess counts fixed before any score is seen (each side guesses k/2: top "in", bottom "out"): a small grid,
    paid for by a union bound (each point is tested at confidence 1 - (1 - c) / len(grid))."""
    return sorted({k for k in (20, 50, 100, 200, 500, 1000) if k <= m} or {m - m % 2})


def audit(scores, members, delta: float, confidence: float = 0.95) -> dict:
    """Guess from MIA scores (higher = more likely in): for each k on the grid, the k/2 top-scoring canaries "in"
    and the k/2 bottom-scoring "out"; the best bound over the grid, each at the union-bound confidence."""
    scores, members = np.asarray(scores, dtype=float), np.asarray(members, dtype=bool)
    m = len(scores)
    order = np.argsort(-scores, kind="stable")
    grid = guess_grid(m)
    per = 1.0 - (1.0 - confidence) / len(grid)
    rows = []
    for k in grid:
        top, bottom = order[:k // 2], order[m - k // 2:] if k // 2 else order[:0]
        r = len(top) + len(bottom)
        v = int(members[top].sum() + (~members[bottom]).sum())
        rows.append({"num_guesses": r, "num_correct": v, "epsilon_lower_bound": epsilon_lower_bound(m, r, v, delta,
                                                                                                     per)})
    best = max(rows, key=lambda x: x["epsilon_lower_bound"])
    return {**best, "grid": rows, "confidence_per_grid_point": per}


def gaussian_tradeoff(mu: float):
    """G_mu(a) = Phi(Phi^-1(1 - a) - mu): the type II error of the best test at type I error a, for mu-GDP."""
    from scipy.special import ndtr, ndtri

    return lambda a: float(ndtr(ndtri(1.0 - a) - mu))


def pure_dp_tradeoff(eps: float):
    """f(a) = max(0, 1 - e^eps a, e^-eps (1 - a)): the trade-off curve of (eps, 0)-DP."""
    return lambda a: max(0.0, 1.0 - math.exp(eps) * a, math.exp(-eps) * (1.0 - a))


def fdp_rejects(m: int, r: int, v: int, f, confidence: float) -> bool:
    """Whether v correct of r guesses (of m canaries) is too many for a mechanism with trade-off curve f, at
    `confidence` (the recursion in the module docstring)."""
    if v == 0 or r == 0:
        return False
    tau = (1.0 - confidence) * r / m
    rr, h = tau * v / r, tau * (r - v) / r
    for i in range(v - 1, -1, -1):
        h_next = max(h, f(1.0 - rr))
        rr, h = rr + i / (r - i) * (h_next - h), h_next
        if rr + h > r / m:  # both only grow as i falls: rejected already (and f stays on [0, 1])
            return True
    return False


def gdp_delta(mu: float, eps: float) -> float:
    """delta(eps) of mu-GDP: Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2), in log space for large eps."""
    from scipy.special import log_ndtr, ndtr

    if mu <= 0:
        return 0.0
    return float(ndtr(-eps / mu + mu / 2) - math.exp(eps + log_ndtr(-eps / mu - mu / 2)))


def gdp_epsilon(mu: float, delta: float) -> float:
    """The eps at which mu-GDP is (eps, delta)-DP (0 when delta(0) <= delta already)."""
    from scipy.optimize import brentq

    if mu <= 0 or gdp_delta(mu, 0.0) <= delta:
        return 0.0
    hi = 1.0
    while gdp_delta(mu, hi) > delta:
        hi *= 2
    return float(brentq(lambda e: gdp_delta(mu, e) - delta, 0.0, hi, xtol=1e-10))


def fdp_mu_lower_bound(m: int, r: int, v: int, confidence: float = 0.95, mu_max: float = 50.0) -> float:
    """The largest mu for which mu-GDP is rejected (bisection: a larger mu is never easier to reject)."""
    validate(m, r, v, 0.0, confidence)
    if not fdp_rejects(m, r, v, gaussian_tradeoff(1e-9), confidence):
        return 0.0
    lo, hi = 0.0, mu_max
    if fdp_rejects(m, r, v, gaussian_tradeoff(hi), confidence):
        return hi
    for _ in range(50):
        mid = (lo + hi) / 2
        if fdp_rejects(m, r, v, gaussian_tradeoff(mid), confidence):
            lo = mid
        else:
            hi = mid
    return lo


def bounds(scores, members, deltas, confidence: float = 0.95) -> list[dict]:
    """Both bounds at each delta in `deltas`, each the best over the guess grid at the union-bound confidence:
    [{method, delta, confidence, epsilon_lower_bound, num_guesses, num_correct, (mu_lower_bound)}]. The guesses are
    `audit`'s; mu does not depend on delta, so it is found once."""
    audits = [audit(scores, members, d, confidence) for d in deltas]
    m, per = len(scores), audits[0]["confidence_per_grid_point"]
    guesses = [(g["num_guesses"], g["num_correct"]) for g in audits[0]["grid"]]
    mus = [fdp_mu_lower_bound(m, r, v, per) for r, v in guesses]
    j = int(np.argmax(mus))
    out = []
    for delta, res in zip(deltas, audits):
        out.append({"method": "eps_delta", "delta": delta, "confidence": confidence,
                    "epsilon_lower_bound": res["epsilon_lower_bound"], "num_guesses": res["num_guesses"],
                    "num_correct": res["num_correct"]})
        out.append({"method": "fdp", "delta": delta, "confidence": confidence,
                    "epsilon_lower_bound": gdp_epsilon(mus[j], delta), "mu_lower_bound": mus[j],
                    "num_guesses": guesses[j][0], "num_correct": guesses[j][1]})
    return out


def verdict(epsilon_lb: float, epsilon: float | None) -> str:
    """undefended (no accountant), violated (the audit proves more leakage than the accountant allows), else
    consistent."""
    if epsilon is None:
        return "undefended"
    return "violated" if epsilon_lb > epsilon else "consistent"
