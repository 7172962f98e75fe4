"""Mosaic memory (seed 003): canaries, fuzzy duplicates, injection, rho, near-duplicate scans."""
