"""White-box canaries for the one-run audit (Steinke, Nasr and Jagielski 2023, Section 6: gradient canaries).

Each canary is a direction u_i in the trainable weights' gradient space (Dirac: one coordinate; random: a unit
Gaussian vector on a fixed random support), each an example of the training set by a secret fair coin. At every
DP-SGD step a member canary is Poisson sampled with the run's q, like every example, and contributes C u_i (its
gradient, already of norm C, so clipping leaves it) to the clipped sum before the noise. The auditor sees what
DP-SGD releases, the noised sum g_t, and reads y_ti = <g_t, u_i> / C: under the null y ~ N(0, sigma^2) (plus the
data's own small drift), a member adds 1 with probability q. Two scores per canary, accumulated step by step (and
carried in checkpoints):
  llr: sum_t log(1 - q + q exp((y_ti - 1/2) / sigma^2)), the per-step Neyman-Pearson statistic of the subsampled
       Gaussian (what the accountant's worst case is made of);
  sum: sum_t y_ti (the linear projection of the whole update, the paper's simplest variant; the only one at sigma 0).
"""
from __future__ import annotations

import math

import numpy as np
import torch

KINDS = ("dirac", "random")
SCORES = ("llr", "sum")
RANDOM_SUPPORT = 65536  # coordinates a random direction lives on: cross-talk between canaries ~ 1/sqrt(support)


class GradientCanaries:
    def __init__(self, members, kind: str = "dirac", seed: int = 0):
        """`members`: the secret coins (bool per canary); `seed`: where the directions come from (the auditor's
        secret, kept in canaries.jsonl with the coins)."""
        self.members = torch.as_tensor(np.asarray(members, dtype=bool))
        self.m, self.kind, self.seed = len(self.members), kind, int(seed)
        self.scores = {k: torch.zeros(self.m, dtype=torch.float64) for k in SCORES}
        self.steps = 0
        self.layout = None

    def bind(self, params: list[torch.Tensor], sample_rate: float, clip: float, sigma: float):
        """Fix the directions on these trainable weights (one order on every rank) and the step's q, C, sigma."""
        from ..errors import UserError

        self.q, self.clip, self.sigma = float(sample_rate), float(clip), float(sigma)
        sizes = np.array([p.numel() for p in params], dtype=np.int64)
        total = int(sizes.sum())
        g = np.random.default_rng(self.seed)
        need = self.m if self.kind == "dirac" else min(total, RANDOM_SUPPORT)
        if total < need or total < self.m:
            raise UserError(f"--num_canaries {self.m}: more white-box canaries than the {total} trainable weights")
        flat = np.sort(g.choice(total, size=need, replace=False))
        starts = np.concatenate([[0], np.cumsum(sizes)])
        which = np.searchsorted(starts, flat, side="right") - 1
        # per parameter: (its index, the positions in `flat` it holds, their multi-indices inside it)
        self.layout = []
        for i in np.unique(which):
            pos = np.nonzero(which == i)[0]
            idx = np.unravel_index(flat[pos] - starts[i], tuple(params[i].shape))
            self.layout.append((int(i), torch.as_tensor(pos), tuple(torch.as_tensor(a) for a in idx)))
        if self.kind == "dirac":  # canary i is coordinate flat[perm[i]]: a random assignment
            self.assign = torch.as_tensor(g.permutation(self.m))
        else:
            u = torch.as_tensor(g.standard_normal((self.m, need)), dtype=torch.float32)
            self.directions = u / u.norm(dim=1, keepdim=True)
        return self

    def _vector(self, sums) -> torch.Tensor:
        out = torch.zeros(len(self.assign) if self.kind == "dirac" else self.directions.shape[1])
        for i, pos, idx in self.layout:
            t = sums[i]
            out[pos] = t[tuple(a.to(t.device) for a in idx)].float().cpu()
        return out

    def add_(self, sums: list[torch.Tensor], source, step: int):
        """Add C u_i for every member canary Poisson-sampled at `step` (call on one rank: they are examples of the
        logical batch, counted once)."""
        drawn = torch.rand(self.m, generator=source.generator("whitebox", step)) < self.q
        picked = (drawn & self.members).to(torch.float32) * self.clip
        if self.kind == "dirac":
            vec = torch.zeros(self.m)
            vec[self.assign] = picked
        else:
            vec = picked @ self.directions
        for i, pos, idx in self.layout:
            t = sums[i]
            t.index_put_(tuple(a.to(t.device) for a in idx), vec[pos].to(t.device, t.dtype), accumulate=True)

    def observe(self, sums: list[torch.Tensor], world: int):
        """Accumulate both scores from this step's released (noised) sum; every rank calls it (it all-reduces
        the ranks' shares of the sum along the canary directions)."""
        vec = self._vector(sums)
        y = vec[self.assign] if self.kind == "dirac" else self.directions @ vec
        if world > 1:
            import torch.distributed as dist

            dev = sums[0].device
            y = y.to(dev)
            dist.all_reduce(y)
            y = y.cpu()
        y = y.double() / self.clip
        self.scores["sum"] += y
        if self.sigma > 0:
            s2 = self.sigma ** 2
            # log(1 - q + q e^z) = logaddexp(log(1 - q), log q + z), stable for large z
            z = (y - 0.5) / s2
            self.scores["llr"] += torch.logaddexp(torch.full_like(z, math.log1p(-self.q) if self.q < 1 else -math.inf),
                                                  math.log(self.q) + z)
        else:
            self.scores["llr"] += y
        self.steps += 1

    def state(self) -> dict:
        return {"steps": self.steps, **{k: v.tolist() for k, v in self.scores.items()}}

    def load_state(self, state: dict):
        if state:
            self.steps = int(state["steps"])
            self.scores = {k: torch.tensor(state[k], dtype=torch.float64) for k in SCORES}
