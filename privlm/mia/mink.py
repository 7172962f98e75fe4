"""Min-k attacks (Shi et al. 2024): the mean of the lowest token log-probabilities. `min_k` takes the k lowest
tokens (the Mosaic repo's minkprob, k=20); `min_k_pct` takes the lowest fraction (MIMIR's min-k%, 20%)."""
import math

import numpy as np

from .registry import register


def lowest_mean(values: np.ndarray, k: int) -> float:
    k = max(1, min(k, len(values)))
    return float(np.partition(values, k - 1)[:k].mean())


@register("min_k", help="mean of the k lowest token log-probs (k tokens, default 20)")
def score_k(stats, k: int = 20, **_):
    return np.array([lowest_mean(s.logp, k) for s in stats.target])


@register("min_k_pct", help="mean of the lowest k%% token log-probs (default 20%%)")
def score_pct(stats, k_pct: float = 0.2, **_):
    return np.array([lowest_mean(s.logp, math.ceil(k_pct * len(s.logp))) for s in stats.target])
