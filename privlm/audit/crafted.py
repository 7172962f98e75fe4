"""Crafted black-box canaries (after Panda et al., ICLR 2025, "Privacy auditing of large language models"): token
sequences the base model has no prior on, so that training on one moves its loss far more than the model's prior
varies from canary to canary. The audit then scores each canary by its loss ratio to the base model (the `ratio`
attack), which calibrates every canary against its own prior.

Pool (`--crafted_tokens`): `rare`, the tokens the base model finds least likely on average over a few neutral
contexts (the bottom RARE_FRACTION of the vocabulary); `uniform`, every usable token. A usable token is not special
and decodes to text that encodes back to itself; a canary is redrawn (up to TRIES times) until its text encodes
back to the drawn sequence, so what is planted and scored are the rare tokens drawn.
"""
from __future__ import annotations

import numpy as np

RARE_FRACTION = 0.05
TRIES = 100  # draws per canary before one that re-tokenizes differently is kept
CONTEXTS = ("", "The", "\n", "Hello, my name is")


def token_prior(model_path: str, tok, dtype: str = "auto") -> np.ndarray:
    """Mean next-token log-probability of every token over CONTEXTS (one short forward pass each)."""
    import torch

    from .. import models

    model = models.load_model(model_path, dtype=dtype, device=models.device())
    rows = []
    with torch.no_grad():
        for text in CONTEXTS:
            ids = tok(text, add_special_tokens=True)["input_ids"] or [tok.bos_token_id or tok.eos_token_id]
            logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0, -1].float()
            rows.append(torch.log_softmax(logits, -1).cpu().numpy())
    del model
    return np.mean(rows, axis=0)


def usable_tokens(tok) -> list[int]:
    special = set(tok.all_special_ids)
    out = []
    for i in range(len(tok)):
        if i in special:
            continue
        text = tok.decode([i])
        if text.strip() and text.isprintable() and tok(text, add_special_tokens=False)["input_ids"] == [i]:
            out.append(i)
    return out


def crafted_texts(model_path: str, tok, m: int, length: int, pool: str, rng: np.random.Generator,
                  dtype: str = "auto") -> list[str]:
    from ..errors import UserError

    ids = usable_tokens(tok)
    if pool == "rare":
        prior = token_prior(model_path, tok, dtype)
        ids = [i for i in ids if i < len(prior)]
        ids = sorted(ids, key=lambda i: prior[i])[:max(length * 4, int(RARE_FRACTION * len(ids)))]
    if len(ids) < 2:
        raise UserError(f"--canary_kind crafted: the tokenizer of {model_path} has no usable tokens")
    ids = np.array(ids)
    out = []
    for _ in range(m):
        for _ in range(TRIES):  # redraw until the text encodes back to the drawn tokens (BPE may merge neighbours)
            drawn = ids[rng.integers(0, len(ids), length)].tolist()
            text = tok.decode(drawn)
            if tok(text, add_special_tokens=False)["input_ids"] == drawn:
                break
        out.append(text)
    return out
