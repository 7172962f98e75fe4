"""Where DP randomness comes from: the OS's secure source by default, a config seed only on request.

The noise and the Poisson batches are the privacy guarantee: anyone who can recompute them can subtract the noise.
So by default every run draws a 63-bit root from `secrets` (the OS's CSPRNG) that exists in memory only (never in a
file, a log or a checkpoint); ranks share rank 0's root through a collective. Per step, each use gets its own
generator, seeded by SHA-256 of (root, purpose, step, ...). A resumed secure run draws a new root: fresh noise and
fresh batches, the ledger's step count carries on. `reproducible_noise` roots everything in the config seed instead
(tests, debugging); metrics.json says which (`noise_source`).
"""
from __future__ import annotations

import hashlib
import secrets

import torch


class NoiseSource:
    def __init__(self, reproducible: bool, seed: int, device=None):
        self.kind = "seeded" if reproducible else "secure"
        self._root = int(seed) if reproducible else shared_secret(device)

    def seed(self, *key) -> int:
        """A 63-bit seed for one use, e.g. seed("noise", step, rank)."""
        digest = hashlib.sha256(repr((self._root, *key)).encode()).digest()
        return int.from_bytes(digest[:8], "little") & 0x7FFFFFFFFFFFFFFF

    def generator(self, *key, device="cpu") -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed(*key))

    def __repr__(self) -> str:  # never show the root
        return f"NoiseSource({self.kind})"

    def __reduce__(self):
        raise TypeError("a NoiseSource holds a secret and cannot be pickled or saved")


def shared_secret(device=None) -> int:
    """rank 0's secure root, broadcast to every rank (all ranks must draw the same Poisson batches)."""
    import torch.distributed as dist

    root = secrets.randbits(63)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([root], dtype=torch.int64, device=device or "cpu")
        dist.broadcast(t, src=0)
        root = int(t.item())
    return root
