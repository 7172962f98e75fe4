"""Token-level statistics for membership inference, from one forward pass per model.

For every sample we keep the log-probability of each actual token and, for min-k%++, the mean and standard
deviation of log p(z) under the model's own next-token distribution at each position. Those moments are
shift-invariant in the logits, so they come from two weighted sums over the vocabulary (no extra pass).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


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


def start_token_id(tokenizer) -> int:
    """The "empty prompt" a sample is conditioned on: BOS for base models. Chat models (SmolLM2, Qwen) use BOS as
    a role marker, so for them the document separator `<|endoftext|>` is the natural start, as in pretraining."""
    vocab = tokenizer.get_vocab()
    template = getattr(tokenizer, "chat_template", None) or ""
    if tokenizer.bos_token_id is not None and not (tokenizer.bos_token and tokenizer.bos_token in template):
        return tokenizer.bos_token_id
    for name in ("<|endoftext|>", "</s>", "<s>"):
        if name in vocab:
            return vocab[name]
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_texts(tokenizer, texts: list[str], max_length: int | None = None) -> list[list[int]]:
    start = [start_token_id(tokenizer)]
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [start + (ids[:max_length] if max_length else ids) for ids in enc]


def per_position(logits: torch.Tensor, targets: torch.Tensor, moments: bool):
    """logits (T, V) predicting targets (T,) -> (log p of targets, mu, sigma), all fp32."""
    logits = logits.float()
    lse = torch.logsumexp(logits, -1)
    logp = logits.gather(-1, targets[:, None])[:, 0] - lse
    if not moments:
        return logp, None, None
    p = torch.exp(logits - lse[:, None])
    m1 = torch.einsum("tv,tv->t", p, logits)  # E_p[logit]; mu = m1 - lse
    m2 = torch.einsum("tv,tv->t", p * logits, logits)
    return logp, m1 - lse, torch.sqrt(torch.clamp(m2 - m1 * m1, min=0))


@torch.no_grad()
def forward_batches(model, tokenizer, ids: list[list[int]], batch_size: int, desc: str | None = None):
    """Right-padded batches of `ids`, sorted by length (little padding), through the model: yields
    (indices into ids, batch input_ids, logits)."""
    from tqdm.auto import tqdm

    from ..data import right_padded

    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in tqdm(batches, desc=desc, disable=desc is None, leave=False):
        batch = right_padded([ids[i] for i in idx], pad, dev)
        yield idx, batch["input_ids"], model(**batch).logits


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
