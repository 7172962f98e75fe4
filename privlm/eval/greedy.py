"""Greedy matching, batched: does greedy decoding after a prompt reproduce a target (fingerprint responses, PII
strings)? One teacher-forced pass decides every verdict; only misses are decoded further."""
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


@torch.no_grad()
def greedy_match(model, tokenizer, examples: list[Encoded], batch_size: int = 64, progress: bool = True
           ) -> list[Verdict]:
    """Greedy retention check, batched. A fingerprint is retained when greedy decoding after the prompt reproduces
    the response tokens (EOS included). That holds exactly when the argmax at every response position, given the
    true prefix, is the true next token, so one teacher-forced pass per batch decides every verdict.

    Each batch puts prompts left-padded to a common end P and responses right-padded after it. The prompts are run
    once with a KV cache; the responses are scored on top of it; for the misses the cache is cut back to P and
    greedy decoding continues from there to report what the model says instead, without recomputing the prompts.
    """
    model.eval()
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    verdicts: list[Verdict | None] = [None] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i].prompt), len(examples[i].response)))
    for s in tqdm(range(0, len(order), batch_size), desc="check", disable=not progress, leave=False):
        idx = order[s:s + batch_size]
        prompts, resps = [examples[i].prompt for i in idx], [examples[i].response for i in idx]
        P, K = max(map(len, prompts)), max(map(len, resps))
        ids = torch.full((len(idx), P + K), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, (p, q) in enumerate(zip(prompts, resps)):
            ids[r, P - len(p):P], ids[r, P:P + len(q)] = torch.tensor(p), torch.tensor(q)
            mask[r, P - len(p):P + len(q)] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids[:, :P], attention_mask=mask[:, :P], position_ids=pos[:, :P], use_cache=True,
                    logits_to_keep=1)
        cache, first = out.past_key_values, out.logits[:, -1].argmax(-1)
        pred = first[:, None]
        if K > 1:
            rest = model(input_ids=ids[:, P:P + K - 1], attention_mask=mask[:, :P + K - 1],
                         position_ids=pos[:, P:P + K - 1], past_key_values=cache, use_cache=True).logits
            pred = torch.cat([pred, rest.argmax(-1)], 1)
        pred = pred.cpu()
        misses = []
        for r, (i, q) in enumerate(zip(idx, resps)):
            hits = pred[r, :len(q)] == torch.tensor(q)
            verdicts[i] = Verdict(bool(hits.all()), list(q), float(hits.float().mean()))
            if not verdicts[i].match:
                misses.append(r)
        if misses:
            rows = torch.tensor(misses, device=dev)
            if K > 1:
                cache.crop(-(K - 1))  # drop the response positions (this cache type only takes negative counts)
            cache.batch_select_indices(rows)
            tok, m, p_ = first[rows], mask[rows, :P], pos[rows, P - 1]
            steps = [tok]
            for _ in range(max(len(resps[r]) for r in misses) - 1):
                m = torch.cat([m, torch.ones_like(m[:, :1])], 1)
                p_ = p_ + 1
                tok = model(input_ids=tok[:, None], attention_mask=m, position_ids=p_[:, None], past_key_values=cache,
                            use_cache=True).logits[:, -1].argmax(-1)
                steps.append(tok)
            gen = torch.stack(steps, 1).cpu()
            for j, r in enumerate(misses):
                v = verdicts[idx[r]]
                v.generated = gen[j, :len(resps[r])].tolist()
                v.match = v.generated == resps[r]  # equal to the forced verdict; kept honest
    return verdicts  # type: ignore[return-value]


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
