"""95% intervals for every estimate the toolkit prints, from scipy (no hand-written distributions).

* a proportion over independent trials (retention over fingerprints, accuracy over questions): Wilson;
* a rare-event rate where exact coverage matters (PII extraction): Clopper-Pearson;
* anything else (AUC, TPR at a fixed FPR, retention averaged over templates, rho): a percentile bootstrap over the
  independent units (fingerprints, canaries), members and non-members resampled separately.

Every interval is a [low, high] list of floats (JSON-able). Bootstraps are seeded (an interval is a summary of data
already public to whoever reads it, not a secret) so that a report is reproducible.
"""
from __future__ import annotations

import math

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000


def _pair(ci) -> list[float]:
    return [float(ci.low), float(ci.high)]


def wilson(successes: int, trials: int, confidence: float = CONFIDENCE) -> list[float] | None:
    from scipy.stats import binomtest

    if trials <= 0:
        return None
    return _pair(binomtest(int(successes), int(trials)).proportion_ci(confidence, method="wilson"))


def clopper_pearson(successes: int, trials: int, confidence: float = CONFIDENCE) -> list[float] | None:
    from scipy.stats import binomtest

    if trials <= 0:
        return None
    return _pair(binomtest(int(successes), int(trials)).proportion_ci(confidence, method="exact"))


def bootstrap(statistic, *samples, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
              seed: int = 0, paired: bool = False) -> list[float] | None:
    """Percentile bootstrap of `statistic(*samples)`; each sample is resampled on its own (unpaired), or the units
    together with `paired` (samples of equal length, e.g. a ratio of two sums over the same targets). `statistic`
    must accept an `axis` keyword (scipy's vectorised form). A sample with fewer than 2 units gives None."""
    from scipy.stats import bootstrap as sp_bootstrap

    samples = [np.asarray(s, dtype=float) for s in samples]
    if any(len(s) < 2 for s in samples):
        return None
    if all(np.all(s == s[0]) for s in samples):  # degenerate: every resample is the same
        v = float(statistic(*samples, axis=-1))
        return [v, v]
    res = sp_bootstrap(tuple(samples), statistic, confidence_level=confidence, n_resamples=resamples,
                       method="percentile", paired=paired, vectorized=True, random_state=np.random.default_rng(seed))
    return _pair(res.confidence_interval)


def t_interval(values, confidence: float = CONFIDENCE) -> list[float] | None:
    """Student-t interval of a mean over a few independent repeats (e.g. seeds of a sweep); None below 2."""
    from scipy.stats import sem, t

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return None
    if np.all(v == v[0]):
        return [float(v[0]), float(v[0])]
    low, high = t.interval(confidence, len(v) - 1, loc=v.mean(), scale=sem(v))
    return [float(low), float(high)]


def mean_ci(values, confidence: float = CONFIDENCE) -> list[float] | None:
    """Bootstrap interval of a mean over independent units (e.g. per-fingerprint retention over several templates)."""
    return bootstrap(np.mean, values, confidence=confidence)


def auc(members, nonmembers, axis: int = -1):
    """P(member score > non-member score) + 1/2 P(tie) (the ROC AUC), vectorised over leading axes."""
    from scipy.stats import rankdata

    m, n = _last(members, axis), _last(nonmembers, axis)
    both = np.concatenate([m, n], axis=-1)
    ranks = rankdata(both, axis=-1)[..., :m.shape[-1]]
    nm, nn = m.shape[-1], n.shape[-1]
    return (ranks.sum(-1) - nm * (nm + 1) / 2) / (nm * nn)


def _last(x, axis: int) -> np.ndarray:
    return np.moveaxis(np.asarray(x, dtype=float), axis, -1)


def auc_ci(members, nonmembers, confidence: float = CONFIDENCE) -> list[float] | None:
    return bootstrap(auc, members, nonmembers, confidence=confidence)


def tpr_at_fpr(members, nonmembers, fpr: float, axis: int = -1):
    """TPR at the threshold that lets at most `fpr` of the non-members through (members score higher)."""
    m, n = _last(members, axis), _last(nonmembers, axis)
    k = int(math.floor(fpr * n.shape[-1]))  # non-members allowed above the threshold
    thr = -np.sort(-n, axis=-1)[..., k] if k < n.shape[-1] else np.full(n.shape[:-1], -np.inf)
    return (m > np.asarray(thr)[..., None]).mean(-1)


def tpr_at_fpr_ci(members, nonmembers, fpr: float, confidence: float = CONFIDENCE) -> list[float] | None:
    return bootstrap(lambda a, b, axis=-1: tpr_at_fpr(a, b, fpr, axis), members, nonmembers, confidence=confidence)


def tpr_points(members, nonmembers, fprs=(0.01, 0.1), confidence: float = CONFIDENCE) -> list[dict]:
    """[{fpr, tpr, ci}]: TPR at each fixed FPR with its bootstrap interval."""
    return [{"fpr": f, "tpr": float(tpr_at_fpr(members, nonmembers, f)),
             "ci": tpr_at_fpr_ci(members, nonmembers, f, confidence)} for f in fprs]


def roc_with_ci(members, nonmembers, fprs=(0.01, 0.1), confidence: float = CONFIDENCE) -> dict:
    """JSON-able: auc with auc_ci, and tpr_at_fpr as [{fpr, tpr, ci}] (the figures every MIA result reports)."""
    return {"auc": float(auc(members, nonmembers)), "auc_ci": auc_ci(members, nonmembers, confidence),
            "tpr_at_fpr": tpr_points(members, nonmembers, fprs, confidence),
            "n_members": len(members), "n_nonmembers": len(nonmembers)}


def fmt(value, ci, digits: int = 3) -> str:
    """'0.812 [0.740, 0.870]' for tables; a dash for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if not ci:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
