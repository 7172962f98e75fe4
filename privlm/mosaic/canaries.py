"""Reference canaries: text sampled from a model with an empty prompt, exactly L tokens of the target tokenizer.

A sample is rejected when it holds EOS before L tokens, is shorter than L target tokens, shares more than
`max_jaccard` of its token set with an accepted canary (this set or the `avoid` sets), or does not re-tokenize to
the same L tokens (so injecting the text injects exactly those tokens).
"""
from __future__ import annotations

import random

import torch

from ..errors import UserError
from ..eval.batching import start_token_id


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(1, len(a | b))


def clean_tokens(tokenizer, text: str, length: int) -> tuple[str, list[int]] | None:
    """The first `length` target tokens of `text` as text, if that text re-tokenizes to exactly those tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < length:
        return None
    ids = ids[:length]
    out = tokenizer.decode(ids)
    if out != out.strip() or tokenizer(out, add_special_tokens=False)["input_ids"] != ids:
        return None
    return out, ids


@torch.no_grad()
def sample(model, gen_tokenizer, target_tokenizer, n: int, length: int, temperature: float, seed: int,
           batch_size: int = 32, max_jaccard: float = 0.2, avoid: list[set] | None = None, extra_tokens: int = 25,
           max_batches: int | None = None, progress=None) -> tuple[list[dict], dict]:
    """Sample `n` canaries. Returns (canaries, rejection counts)."""
    torch.manual_seed(seed)
    random.seed(seed)
    dev = next(model.parameters()).device
    start = start_token_id(gen_tokenizer)
    eos = {t for t in (gen_tokenizer.eos_token_id,) if t is not None}
    accepted: list[dict] = []
    sets = list(avoid or [])
    rejected = {"eos": 0, "short": 0, "jaccard": 0, "retokenize": 0}
    max_batches = max_batches or 20 + 4 * n // batch_size
    for _ in range(max_batches):
        out = model.generate(torch.full((batch_size, 1), start, device=dev), attention_mask=torch.ones(
            batch_size, 1, dtype=torch.long, device=dev), do_sample=True, temperature=temperature, top_k=0,
            top_p=1.0, max_new_tokens=length + extra_tokens, pad_token_id=gen_tokenizer.pad_token_id
            if gen_tokenizer.pad_token_id is not None else start)
        for row in out[:, 1:].tolist():
            # EOS (or padding after it) within the part that becomes the canary
            cut = next((i for i, t in enumerate(row) if t in eos), None)
            text = gen_tokenizer.decode(row[:cut] if cut is not None else row, skip_special_tokens=True)
            ids_all = target_tokenizer(text, add_special_tokens=False)["input_ids"]
            if cut is not None and len(ids_all) < length:
                rejected["eos"] += 1
                continue
            got = clean_tokens(target_tokenizer, text.strip(), length)
            if got is None:
                rejected["short" if len(ids_all) < length else "retokenize"] += 1
                continue
            text, ids = got
            s = set(ids)
            if any(jaccard(s, o) > max_jaccard for o in sets):
                rejected["jaccard"] += 1
                continue
            sets.append(s)
            accepted.append({"id": len(accepted), "text": text, "token_ids": ids})
            if progress:
                progress(1)
            if len(accepted) == n:
                return accepted, rejected
    raise UserError(f"only {len(accepted)} of {n} canaries were accepted after {max_batches} batches "
                    f"(rejections: {rejected}); lower --length, raise --max_jaccard or the temperature")


def load(path: str) -> dict:
    """A canaries file written by `python -m mosaic canaries`, checked."""
    from ..io import read_json

    data = read_json(path, "canaries file")
    ok = isinstance(data, dict) and all(
        isinstance(data.get(k), list) and all(isinstance(c, dict) and "text" in c and "token_ids" in c
                                              for c in data[k]) for k in ("members", "nonmembers"))
    if not ok:
        raise UserError(f"{path}: not a canaries file (expected members / nonmembers lists of "
                        "{{id, text, token_ids}})")
    return data
