"""zlib attack (Carlini et al. 2021): log-perplexity over zlib entropy (compressed size in bits). Peers divide
the perplexity itself (LLM-PBE); the paper divides the log-perplexity, as here."""
import zlib as _zlib

import numpy as np

from .registry import register


def zlib_bits(text: str) -> int:
    return 8 * len(_zlib.compress(text.encode("utf-8")))


@register("zlib", help="minus mean token loss / zlib entropy of the text")
def score(stats, **_):
    return -np.array([s.loss / max(1, zlib_bits(t)) for s, t in zip(stats.target, stats.texts)])
