"""Lowercase attack (Carlini et al. 2021): how much worse the model finds the lowercased text. Needs its own
forward pass over the lowercased samples."""
import numpy as np

from .registry import register


@register("lowercase", needs=("target", "lowercase"), help="log(ppl(lowercased) / ppl(original))")
def score(stats, **_):
    return np.array([low.loss - s.loss for s, low in zip(stats.target, stats.lowercase)])
