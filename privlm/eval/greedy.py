"""Greedy matching, batched: does greedy decoding after a prompt reproduce a target (fingerprint responses, PII
strings)? One teacher-forced pass decides every verdict; misses are decoded further only on request."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..data import Encoded


@dataclass
class Verdict:
    match: bool
    generated: list[int]
    token_accuracy: float


def batches(examples: list[Encoded], batch_size: int, pad: int):
    """The check's batches, shortest first: (example indices, ids, attention mask, position ids, P, K), each with
    prompts left-padded to a common end P and responses right-padded after it, K the longest response."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i].prompt), len(examples[i].response)))
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        prompts, resps = [examples[i].prompt for i in idx], [examples[i].response for i in idx]
        P, K = max(map(len, prompts)), max(map(len, resps))
        ids = torch.full((len(idx), P + K), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, (p, q) in enumerate(zip(prompts, resps)):
            ids[r, P - len(p):P], ids[r, P:P + len(q)] = torch.tensor(p), torch.tensor(q)
            mask[r, P - len(p):P + len(q)] = 1
        yield idx, ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), P, K


@torch.no_grad()
def greedy_match(model, tokenizer, examples: list[Encoded], batch_size: int = 64, progress: bool = True,
                 decode_misses: bool = True) -> list[Verdict]:
    """Greedy retention check, batched. A fingerprint is retained when greedy decoding after the prompt reproduces
    the response tokens (EOS included). That holds exactly when the argmax at every response position, given the
    true prefix, is the true next token, so one teacher-forced pass per batch over prompt + response decides every
    verdict: no generation. Logits are computed only at the K response positions.

    A miss's `generated` is what greedy decoding really says: the forced argmaxes up to and including the first
    wrong token are exactly the greedy output so far (the prefix before it is the true one). With `decode_misses`
    the pass keeps its KV cache, which for the misses is cut back to the prompts, and greedy decoding continues
    from there to the response's length, without recomputing the prompts (for listings a person reads)."""
    if any(not e.response for e in examples):
        raise ValueError("greedy_match: an example with an empty response")
    model.eval()
    dev = next(model.parameters()).device
    verdicts: list[Verdict | None] = [None] * len(examples)
    n = math.ceil(len(examples) / batch_size)
    for idx, ids, mask, pos, P, K in tqdm(batches(examples, batch_size, tokenizer.pad_token_id), total=n,
                                          desc="check", disable=not progress, leave=False):
        ids, mask, pos = ids.to(dev), mask.to(dev), pos.to(dev)
        # positions P-1 .. P+K-2 predict the K response tokens; the last token predicts nothing
        out = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1],
                    use_cache=decode_misses, logits_to_keep=K)
        pred = out.logits.argmax(-1).cpu()
        misses = []
        for r, i in enumerate(idx):
            q = torch.tensor(examples[i].response)
            hits = pred[r, :len(q)] == q
            wrong = (~hits).nonzero()
            cut = len(q) if len(wrong) == 0 else int(wrong[0]) + 1
            verdicts[i] = Verdict(len(wrong) == 0, pred[r, :cut].tolist(), float(hits.float().mean()))
            if decode_misses and cut < len(q):  # a miss before the last token: decode the rest
                misses.append(r)
        if misses:
            _continue(model, out.past_key_values, pred, mask, pos, P, K, misses, [examples[i] for i in idx],
                      [verdicts[i] for i in idx], dev)
    return verdicts  # type: ignore[return-value]


def _continue(model, cache, pred, mask, pos, P: int, K: int, misses: list[int], examples, verdicts, dev):
    """Greedy decoding of the missed rows from the end of their prompts, on the pass's KV cache."""
    rows = torch.tensor(misses, device=dev)
    if K > 1:
        cache.crop(-(K - 1))  # back to the prompts (this cache type only takes negative counts)
    cache.batch_select_indices(rows)
    tok, m, p_ = pred[misses, 0].to(dev), mask[rows, :P], pos[rows, P - 1]
    steps = [tok]
    for _ in range(max(len(examples[r].response) for r in misses) - 1):
        m = torch.cat([m, torch.ones_like(m[:, :1])], 1)
        p_ = p_ + 1
        tok = model(input_ids=tok[:, None], attention_mask=m, position_ids=p_[:, None], past_key_values=cache,
                    use_cache=True).logits[:, -1].argmax(-1)
        steps.append(tok)
    gen = torch.stack(steps, 1).cpu()
    for j, r in enumerate(misses):
        v, q = verdicts[r], examples[r].response
        v.generated = gen[j, :len(q)].tolist()


@torch.no_grad()
def greedy_match_one_by_one(model, tokenizer, examples: list[Encoded]) -> list[bool]:
    """How the seed checks: `generate` for each fingerprint alone. Used by the benchmark and tests as reference."""
    dev = next(model.parameters()).device
    out = []
    for e in examples:
        ids = torch.tensor([e.prompt], device=dev)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=len(e.response), pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
        out.append(gen[0, ids.shape[1]:].tolist() == e.response)
    return out


def summarize(verdicts: list[Verdict]) -> dict:
    n = len(verdicts)
    return {"retention": sum(v.match for v in verdicts) / n if n else math.nan,
            "token_accuracy": sum(v.token_accuracy for v in verdicts) / n if n else math.nan,
            "num_fingerprints": n}
