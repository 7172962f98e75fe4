"""Forward batching: texts to token ids with a start token, then length-sorted right-padded batches through a
model. Shared by MIA scoring, mosaic candidates and the benchmarks, so that they all batch the same way."""
from __future__ import annotations

import torch

from ..data import right_padded


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


@torch.no_grad()
def forward_batches(model, tokenizer, ids: list[list[int]], batch_size: int, desc: str | None = None):
    """Right-padded batches of `ids`, sorted by length (little padding), through the model: yields
    (indices into ids, batch input_ids, logits)."""
    from tqdm.auto import tqdm

    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in tqdm(batches, desc=desc, disable=desc is None, leave=False):
        batch = right_padded([ids[i] for i in idx], pad, dev)
        yield idx, batch["input_ids"], model(**batch).logits
