"""The Mosaic paper's rho: how many exact duplicates a set of fuzzy duplicates is worth.

phi_nu is the MIA AUC of canaries repeated nu times exactly (nu = 1..n_max). The curve is smoothed by a
width-3 moving average (endpoints kept raw); a fuzzy-duplicate AUC is inverted by piecewise-linear
interpolation, clamped to nu = 1 below phi_1, and extrapolated above phi_n_max with the mean slope of the last
three steps; rho = (nu_eq - 1) / (copies - 1), with copies the number of fuzzy copies of each canary in the variant's
group (the original plus its variations: 10 in the paper, whose exact sweep also ends at 10). Earlier versions divided
by n_max, the largest exact repetition count, which is right only when the sweep ends at exactly the number of
copies: with exact AUCs {1: .6, 2: .7, 3: .8, 4: .85, 5: .9} and "original + 9 variations" at AUC 0.9 that gave
rho = 1.0, the definition gives (5 - 1) / 9 = 0.444.

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


def parse_variant(label: str, value, copies: int | None = None) -> tuple[float, int]:
    """(auc, copies) of one variant: {"auc": A, "copies": K} as the mia step writes it, or a bare AUC with `copies`
    given for all."""
    if isinstance(value, dict):
        auc, copies = value.get("auc"), value.get("copies", copies)
    else:
        auc = value
    try:
        auc = float(auc)
    except (TypeError, ValueError):
        raise UserError(f"variant AUCs: {label!r} is not a number") from None
    if not math.isfinite(auc) or not 0 <= auc <= 1:
        raise UserError(f"variant AUCs: {label!r} must be an AUC in [0, 1]")
    if copies is None:
        raise UserError(f"variant AUCs: {label!r} has no number of fuzzy copies (rho divides by it); give "
                        '{"auc": A, "copies": K} (the mia step writes it from the injection file) or --copies K')
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 2:
        raise UserError(f"variant AUCs: {label!r}: copies must be an integer >= 2 (the original and a variation)")
    return auc, copies


def rho_table(exact: dict, variants: dict, copies: int | None = None) -> dict:
    """Each variant's {"auc", "copies", "nu_eq", "rho", "method", "extrapolated"}; `copies` is the fuzzy copies per
    canary for variants given as bare AUCs."""
    counts, aucs = parse_exact(exact)
    curve = np.maximum.accumulate(smooth(aucs))
    out = {}
    for label, value in variants.items():
        auc, k = parse_variant(label, value, copies)
        nu, how = nu_equivalent(auc, counts, curve)
        out[label] = {"auc": auc, "copies": k, "nu_eq": nu, "rho": None if nu is None else (nu - 1) / (k - 1),
                      "method": how, "extrapolated": how not in ("interpolated", "clamped")}
    return out


def smoothed_curve(exact: dict) -> dict:
    counts, aucs = parse_exact(exact)
    return {str(int(c)): float(v) for c, v in zip(counts, np.maximum.accumulate(smooth(aucs)))}


def bootstrap_aucs(members: dict[str, np.ndarray], nonmembers: np.ndarray, resamples: int = 1000,
                   seed: int = 0) -> dict[str, list[float]]:
    """AUC of every group in `resamples` bootstrap replicates over canaries: each group's members resampled on their
    own, the shared non-members resampled once per replicate (every group of a replicate sees the same ones)."""
    from ..stats import auc

    rng = np.random.default_rng(seed)
    n = np.asarray(nonmembers, dtype=float)
    nb = n[rng.integers(0, len(n), (resamples, len(n)))]
    out = {}
    for label, m in members.items():
        m = np.asarray(m, dtype=float)
        mb = m[rng.integers(0, len(m), (resamples, len(m)))]
        out[label] = auc(mb, nb).tolist()
    return out


def rho_ci(exact_boot: dict[str, list[float]], variant_boot: dict[str, list[float]], copies: dict[str, int],
           confidence: float = 0.95) -> dict[str, list[float] | None]:
    """Percentile interval of each variant's rho over the bootstrap replicates (the whole curve and the variant's AUC
    redrawn together); None where fewer than half the replicates give a finite rho."""
    b = len(next(iter(exact_boot.values())))
    per: dict[str, list[float]] = {label: [] for label in variant_boot}
    for i in range(b):
        table = rho_table({k: v[i] for k, v in exact_boot.items()},
                          {k: {"auc": v[i], "copies": copies[k]} for k, v in variant_boot.items()})
        for label, r in table.items():
            if r["rho"] is not None:
                per[label].append(r["rho"])
    return {label: _percentile_interval(v, confidence) if len(v) >= b / 2 else None for label, v in per.items()}


def add_intervals(table: dict, boot: dict, confidence: float = 0.95) -> dict:
    """Each variant of a rho_table gets `rho_ci` and `auc_ci` from the mia step's bootstrap replicates
    ({"exact": {count: [auc, ...]}, "variants": {label: [auc, ...]}})."""
    cis = rho_ci(boot["exact"], {k: v for k, v in boot["variants"].items() if k in table},
                 {k: r["copies"] for k, r in table.items()}, confidence)
    for label, r in table.items():
        reps = boot["variants"].get(label)
        r["rho_ci"] = cis.get(label)
        r["auc_ci"] = _percentile_interval(reps, confidence) if reps else None
    return table


def _percentile_interval(values, confidence: float) -> list[float]:
    a = (1 - confidence) / 2
    return [float(np.quantile(values, a)), float(np.quantile(values, 1 - a))]
