"""ROC metrics with members as the positive class (MIMIR once swapped it): AUC and TPR at low FPR."""
from __future__ import annotations

import numpy as np

FPR_POINTS = (0.001, 0.01, 0.1)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The best TPR reachable with FPR <= target (a threshold the attacker could pick)."""
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def roc(member_scores, nonmember_scores) -> dict:
    from sklearn.metrics import roc_auc_score, roc_curve

    m = np.asarray(member_scores, dtype=float)
    n = np.asarray(nonmember_scores, dtype=float)
    y = np.r_[np.ones(len(m)), np.zeros(len(n))]
    s = np.r_[m, n]
    fpr, tpr, _ = roc_curve(y, s)
    out = {"auc": float(roc_auc_score(y, s)), "n_members": len(m), "n_nonmembers": len(n)}
    for p in FPR_POINTS:
        out[f"tpr@{p:g}fpr"] = tpr_at_fpr(fpr, tpr, p)
    out["_curve"] = (fpr, tpr)
    return out


def public(result: dict) -> dict:
    """The JSON-able part of a roc() result."""
    return {k: v for k, v in result.items() if not k.startswith("_")}
