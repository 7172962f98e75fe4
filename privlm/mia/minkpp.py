"""Min-k%++ (Zhang et al. 2024): token log-probs standardised by the mean and standard deviation of the
log-probability under the model's own next-token distribution, then the mean of the lowest k%."""
import math

import numpy as np

from .mink import lowest_mean
from .registry import register


@register("min_kpp", help="min-k%% over (log p(x_t) - mu_t) / sigma_t (default 20%%)")
def score(stats, k_pct: float = 0.2, **_):
    out = []
    for s in stats.target:
        z = (s.logp - s.mu) / np.maximum(s.sigma, 1e-6)
        out.append(lowest_mean(z, math.ceil(k_pct * len(z))))
    return np.array(out)
