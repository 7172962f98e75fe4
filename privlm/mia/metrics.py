"""ROC metrics with members as the positive class (MIMIR once swapped it): AUC and TPR at low FPR."""
from __future__ import annotations

import numpy as np

FPR_POINTS = (0.001, 0.01, 0.1)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The best TPR reachable with FPR <= target (a threshold the attacker could pick)."""
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def _labelled(member_scores, nonmember_scores) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(member_scores, dtype=float)
    n = np.asarray(nonmember_scores, dtype=float)
    return np.r_[np.ones(len(m)), np.zeros(len(n))], np.r_[m, n]


def roc_curve(member_scores, nonmember_scores) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) points of the ROC curve, for figures."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    fpr, tpr, _ = sk_roc_curve(*_labelled(member_scores, nonmember_scores))
    return fpr, tpr


def roc(member_scores, nonmember_scores) -> dict:
    """JSON-able: auc with its 95% bootstrap interval `auc_ci`, n_members, n_nonmembers, tpr@<p>fpr for p in
    FPR_POINTS, and `tpr_at_fpr`: [{fpr, tpr, ci}] at 0.01 and 0.1 (privlm.stats)."""
    from sklearn.metrics import roc_auc_score

    from .. import stats

    y, s = _labelled(member_scores, nonmember_scores)
    fpr, tpr = roc_curve(member_scores, nonmember_scores)
    out = {"auc": float(roc_auc_score(y, s)), "auc_ci": stats.auc_ci(member_scores, nonmember_scores),
           "n_members": int(y.sum()), "n_nonmembers": int(len(y) - y.sum())}
    for p in FPR_POINTS:
        out[f"tpr@{p:g}fpr"] = tpr_at_fpr(fpr, tpr, p)
    out["tpr_at_fpr"] = stats.tpr_points(member_scores, nonmember_scores)
    return out
