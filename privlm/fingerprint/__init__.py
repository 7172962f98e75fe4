"""Fingerprints: the file format (keys), generation strategies, and verification (retention per template set)."""
from .keys import load, load_keys, responses
from .strategies import ALIASES, STRATEGIES, WORDS_FILE, GenContext, generate

__all__ = ["ALIASES", "STRATEGIES", "WORDS_FILE", "GenContext", "generate", "load", "load_keys", "responses"]
