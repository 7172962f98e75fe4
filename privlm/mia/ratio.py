"""Reference-model ratio attack (Carlini et al. 2021; the Mosaic paper's main attack): target perplexity over
reference perplexity. We score the log of that ratio, which orders samples identically."""
import numpy as np

from .registry import register


@register("ratio", needs=("target", "reference"), help="minus log(ppl_target / ppl_reference)")
def score(stats, **_):
    return -np.array([t.loss - r.loss for t, r in zip(stats.target, stats.reference)])
