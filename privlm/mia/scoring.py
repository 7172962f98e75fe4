"""Token-level statistics for membership inference, from one forward pass per model.

For every sample we keep the log-probability of each actual token and, for min-k%++, the mean and standard
deviation of log p(z) under the model's own next-token distribution at each position. Those moments are
shift-invariant in the logits, so they come from two weighted sums over the vocabulary (no extra pass).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..eval.batching import encode_texts, forward_batches


@dataclass
class TokenStats:
    logp: np.ndarray  # log p(x_t | x_<t) for each scored token
    mu: np.ndarray | None = None  # E_{z~p}[log p(z)] at each position
    sigma: np.ndarray | None = None  # std_{z~p}[log p(z)] at each position

    @property
    def loss(self) -> float:
        return float(-self.logp.mean())


@dataclass
class Stats:
    texts: list[str]
    target: list[TokenStats]
    reference: list[TokenStats] | None = None
    lowercase: list[TokenStats] | None = None
    extra: dict = field(default_factory=dict)


CHUNK = 64  # positions per block: a block of 64 x 49,152 fp32 logits (12.6 MB) and its temporaries stay in cache


def per_position(logits: torch.Tensor, targets: torch.Tensor, moments: bool):
    """logits (T, V) predicting targets (T,) -> (log p of targets, mu, sigma), all fp32.

    Block by block of CHUNK positions, so the vocabulary-sized temporaries are a few cache-sized buffers reused
    across blocks, not fresh (T, V) tensors: every statistic is read off the logits in about one pass. The moments
    use y = logit - max (shift-invariant, and no cancellation against large logits): with p proportional to
    exp(y) and s = sum exp(y), lse = max + log s, mu = E_p[y] - log s, sigma^2 = E_p[y^2] - E_p[y]^2."""
    T, V = logits.shape
    logp = torch.empty(T, dtype=torch.float32, device=logits.device)
    mu = torch.empty_like(logp) if moments else None
    sd = torch.empty_like(logp) if moments else None
    y = e = None
    for a in range(0, T, CHUNK):
        x = logits[a:a + CHUNK].float()
        t = targets[a:a + CHUNK]
        if not moments:
            logp[a:a + len(t)] = x.gather(-1, t[:, None])[:, 0] - torch.logsumexp(x, -1)
            continue
        if y is None or y.shape[0] != len(t):
            y, e = torch.empty_like(x), torch.empty_like(x)
        m = x.amax(-1, keepdim=True)
        torch.sub(x, m, out=y)
        torch.exp(y, out=e)
        s = e.sum(-1)
        e1 = torch.bmm(e[:, None, :], y[:, :, None])[:, 0, 0] / s  # E_p[y]
        e.mul_(y)
        e2 = torch.bmm(e[:, None, :], y[:, :, None])[:, 0, 0] / s  # E_p[y^2]
        log_s = s.log()
        logp[a:a + len(t)] = y.gather(-1, t[:, None])[:, 0] - log_s
        mu[a:a + len(t)] = e1 - log_s
        sd[a:a + len(t)] = torch.clamp(e2 - e1 * e1, min=0).sqrt()
    return logp, mu, sd


@torch.no_grad()
def token_stats(model, tokenizer, texts: list[str], batch_size: int = 16, max_length: int | None = None,
                moments: bool = True, desc: str | None = None) -> list[TokenStats]:
    """One forward pass over `texts` (sorted by length into padded batches) -> TokenStats per text, in order."""
    ids = encode_texts(tokenizer, texts, max_length)
    out: list[TokenStats | None] = [None] * len(ids)
    for idx, inp, logits in forward_batches(model, tokenizer, ids, batch_size, desc):
        for r, i in enumerate(idx):
            n = len(ids[i]) - 1
            lp, mu, sd = per_position(logits[r, :n], inp[r, 1:n + 1], moments)
            out[i] = TokenStats(lp.cpu().numpy(), None if mu is None else mu.cpu().numpy(),
                                None if sd is None else sd.cpu().numpy())
    return out  # type: ignore[return-value]


def score_texts(model, tokenizer, texts: list[str], attacks: list[str], *, reference: str | None = None,
                dtype: str = "auto", batch_size: int = 16, **params) -> dict[str, np.ndarray]:
    """Every named attack's scores (higher = member) for `texts` against a loaded target model: one forward pass
    over the texts, one over their lowercased forms when an attack needs it, and one through the reference model
    (a path, loaded here and released) when one does. `params` go to the attacks (k, k_pct)."""
    from .. import models
    from ..errors import UserError
    from .registry import ATTACKS, needs_of

    needs = needs_of(attacks)
    stats = Stats(texts, token_stats(model, tokenizer, texts, batch_size, moments="min_kpp" in attacks,
                                     desc="target"))
    if "lowercase" in needs:
        stats.lowercase = token_stats(model, tokenizer, [t.lower() for t in texts], batch_size, moments=False,
                                      desc="lowercase")
    if "reference" in needs:
        if not reference:
            raise UserError(f"attack(s) {', '.join(a for a in attacks if 'reference' in ATTACKS[a].needs)} need a "
                            "reference model")
        ref_tok = models.load_tokenizer(reference)
        ref = models.load_model(reference, dtype=dtype, device=models.device())
        stats.reference = token_stats(ref, ref_tok, texts, batch_size, moments=False, desc="reference")
        del ref
    return {name: np.asarray(ATTACKS[name].score(stats, **params), dtype=float) for name in attacks}
