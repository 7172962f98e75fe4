"""The one-run audit's epsilon lower bound (Steinke, Nasr and Jagielski, NeurIPS 2023, "Privacy auditing with one (1)
training run", Theorem 3.1 / Proposition 5.7 and their Algorithm 2 for delta > 0).

m canaries, each in the training set by an independent fair coin; the auditor guesses r of them ("in" / "out") and
v guesses are right. Under (eps, delta)-DP, P[V >= v] <= P[Binomial(r, q) >= v] + 2 m delta alpha, with
q = e^eps / (1 + e^eps) and alpha = max_{i=1..v} P[v - i <= Binomial(r, q) < v] / i. The bound is the largest eps
this p-value rejects at confidence c: p-value(eps) < 1 - c. With delta = 0 it is the binomial-tail inversion.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import UserError


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
