"""Poisson sampling for DP-SGD with fixed-shape micro-batches.

Each logical step includes every example independently with probability q (what the accountant assumes). All
ranks draw the same inclusion mask from the run's NoiseSource (secret by default) and the step; rank r takes every world-th selected example, and splits its
share into micro-batches of a fixed size, the last one padded with empty rows (index None) that carry no loss.
So the logical batch size varies as the analysis requires, while every tensor shape stays fixed for DeepSpeed.
"""
from __future__ import annotations

import math
import warnings

import torch


def steps_per_epoch(sample_rate: float) -> int:
    """Logical steps in an epoch of Poisson sampling at rate q: round(1/q), so an epoch sees N examples on average."""
    return max(1, round(1 / sample_rate))


class PoissonBatches:
    def __init__(self, n: int, sample_rate: float, source, rank: int = 0, world: int = 1,
                 micro_batch_size: int = 8, shuffle_fixed: bool = False):
        """`source`: a privlm.dp.randomness.NoiseSource (or an int seed: reproducible, for tests)."""
        from .randomness import NoiseSource

        if isinstance(source, int):
            source = NoiseSource(True, source)
        self.n, self.q, self.source, self.rank, self.world = n, sample_rate, source, rank, world
        self.micro = micro_batch_size
        self.shuffle_fixed = shuffle_fixed
        if shuffle_fixed:
            warnings.warn("shuffled fixed-size batches: the accountant's guarantee assumes Poisson sampling, so the "
                          "reported epsilon does not strictly hold for this run", stacklevel=2)

    @property
    def expected_batch_size(self) -> float:
        return self.q * self.n

    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.q)

    def selected(self, step: int) -> list[int]:
        """Indices of the whole logical batch of `step` (the same on every rank)."""
        g = self.source.generator("poisson", step)
        if self.shuffle_fixed:
            per_epoch = self.steps_per_epoch()
            epoch, k = divmod(step, per_epoch)
            perm = torch.randperm(self.n, generator=self.source.generator("shuffle", epoch))
            size = math.ceil(self.n / per_epoch)
            return perm[k * size:(k + 1) * size].tolist()
        return torch.nonzero(torch.rand(self.n, generator=g) < self.q).flatten().tolist()

    def micro_batches(self, step: int) -> list[list[int | None]]:
        mine = self.selected(step)[self.rank::self.world]
        if not mine:
            return [[None] * self.micro]  # a rank with nothing still joins the collective step
        out = [mine[i:i + self.micro] for i in range(0, len(mine), self.micro)]
        out[-1] = out[-1] + [None] * (self.micro - len(out[-1]))
        return out
