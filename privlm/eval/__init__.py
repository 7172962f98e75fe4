"""Evaluation: greedy matching (greedy), token loss and perplexity (loss), forward batching (batching), PII
extraction (pii), utility through lm-eval-harness (utility)."""
