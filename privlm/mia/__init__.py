"""Membership inference: an attack registry (one module per attack) over token-level scores.

Every attack maps per-sample token statistics to a score where higher means "more likely a member". The
statistics come from one forward pass per model (target, reference) plus one over lowercased text for the
lowercase attack; see scoring.score_texts.
"""
from .registry import ATTACKS, Attack, needs_of, register  # noqa: F401
from . import loss, lowercase, mink, minkpp, ratio, zlib  # noqa: F401,E402  (registers the attacks)
