"""The Mosaic paper's rho: how many exact duplicates a set of fuzzy duplicates is worth.

phi_nu is the MIA AUC of canaries repeated nu times exactly (nu = 1..n_max). The curve is smoothed by a
width-3 moving average (endpoints kept raw); a fuzzy-duplicate AUC is inverted by piecewise-linear
interpolation, clamped to nu = 1 below phi_1, and extrapolated above phi_n_max with the mean slope of the last
three steps; rho = (nu_eq - 1) / (n_max - 1).

Beyond the paper: repetition counts need not be consecutive (interpolation and slopes use the actual counts, which
reduces to the paper's formula for 1..n_max), and a non-monotone smoothed curve is made non-decreasing by a running
maximum before inversion, so every AUC maps to one nu_eq.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import UserError


def parse_exact(exact: dict) -> tuple[np.ndarray, np.ndarray]:
    try:
        pairs = sorted((int(k), float(v)) for k, v in exact.items())
    except (TypeError, ValueError):
        raise UserError("exact AUCs: keys must be repetition counts (integers) and values AUCs (numbers)") from None
    if len(pairs) < 2:
        raise UserError("exact AUCs: need at least two repetition counts")
    counts = np.array([p[0] for p in pairs], dtype=float)
    if counts[0] != 1:
        raise UserError(f"exact AUCs: the curve must start at 1 repetition (got {int(counts[0])})")
    aucs = np.array([p[1] for p in pairs])
    if not np.all(np.isfinite(aucs)) or aucs.min() < 0 or aucs.max() > 1:
        raise UserError("exact AUCs: every AUC must be a number in [0, 1]")
    return counts, aucs


def smooth(aucs: np.ndarray) -> np.ndarray:
    """Width-3 moving average with the two endpoints left raw (the paper's phi~)."""
    out = aucs.astype(float).copy()
    if len(aucs) >= 3:
        out[1:-1] = (aucs[:-2] + aucs[1:-1] + aucs[2:]) / 3
    return out


def nu_equivalent(auc: float, counts: np.ndarray, curve: np.ndarray) -> tuple[float | None, str]:
    """Invert the (smoothed, non-decreasing) exact curve at `auc`."""
    if auc <= curve[0]:
        return 1.0, "clamped"
    if auc <= curve[-1]:
        i = max(0, int(np.argmax(curve >= auc - 1e-12)) - 1)  # first segment whose right end reaches auc
        lo, hi = curve[i], curve[i + 1]
        frac = min(1.0, (auc - lo) / (hi - lo)) if hi > lo else 0.0
        return float(counts[i] + frac * (counts[i + 1] - counts[i])), "interpolated"
    k = min(3, len(counts) - 1)
    slope = float(np.mean(np.diff(curve[-k - 1:]) / np.diff(counts[-k - 1:])))
    if slope <= 1e-9:
        return None, "unbounded (flat exact curve at the top)"
    return float(counts[-1] + (auc - curve[-1]) / slope), "extrapolated"


def rho_table(exact: dict, variants: dict) -> dict:
    counts, aucs = parse_exact(exact)
    curve = np.maximum.accumulate(smooth(aucs))
    n_max = counts[-1]
    out = {}
    for label, auc in variants.items():
        try:
            auc = float(auc)
        except (TypeError, ValueError):
            raise UserError(f"variant AUCs: {label!r} is not a number") from None
        if not math.isfinite(auc) or not 0 <= auc <= 1:
            raise UserError(f"variant AUCs: {label!r} must be an AUC in [0, 1]")
        nu, how = nu_equivalent(auc, counts, curve)
        out[label] = {"auc": auc, "nu_eq": nu, "rho": None if nu is None else (nu - 1) / (n_max - 1),
                      "method": how}
    return out


def smoothed_curve(exact: dict) -> dict:
    counts, aucs = parse_exact(exact)
    return {str(int(c)): float(v) for c, v in zip(counts, np.maximum.accumulate(smooth(aucs)))}
