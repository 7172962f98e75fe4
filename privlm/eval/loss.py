"""Token loss: held-out loss over the labelled tokens of encoded examples (perplexity of a text: privlm.eval.heldout)."""
from __future__ import annotations


import torch

from .. import data


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
