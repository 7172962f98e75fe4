"""LOSS attack (Yeom et al.): members have lower mean token loss."""
import numpy as np

from .registry import register


@register("loss", help="minus the mean token loss (log-perplexity)")
def score(stats, **_):
    return -np.array([s.loss for s in stats.target])
