"""Token loss and perplexity: held-out loss over labelled tokens, perplexity of a text in windows."""
from __future__ import annotations

import math

import torch

from .. import data
from ..errors import UserError


@torch.no_grad()
def token_loss(model, tok, encoded: list[data.Encoded], batch_size: int = 16) -> float:
    """Token-weighted mean next-token loss over the labelled tokens of held-out examples."""
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    for s in range(0, len(encoded), batch_size):
        b = data.collate(encoded[s:s + batch_size], tok.pad_token_id)
        logits = model(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev)).logits
        labels = b["labels"][:, 1:].to(dev)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                 labels.reshape(-1), ignore_index=data.IGNORE_INDEX, reduction="sum")
        total += loss.item()
        count += int((labels != data.IGNORE_INDEX).sum())
    return total / max(1, count)


@torch.no_grad()
def perplexity(model, tokenizer, text: str, window: int = 256) -> float:
    """Perplexity over non-overlapping windows of `text` (token-weighted mean negative log-likelihood)."""
    dev = next(model.parameters()).device
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise UserError("held-out text is too short to measure perplexity")
    nll, count = 0.0, 0
    model.eval()
    for s in range(0, len(ids) - 1, window):
        chunk = torch.tensor([ids[s:s + window + 1]], device=dev)
        if chunk.shape[1] < 2:
            break
        logits = model(input_ids=chunk[:, :-1]).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum")
        nll += loss.item()
        count += chunk.shape[1] - 1
    return math.exp(nll / count)
