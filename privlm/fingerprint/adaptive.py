"""Attacks that know what fingerprints look like (arXiv 2509.26598, 2601.04261): a thief who serves the stolen model
behind a filter that uses a public reference model (the base model the fingerprint was trained into).

* Input filtering: a prompt whose perplexity under the reference is unusually high is refused. Fingerprint keys made
  of random words read as gibberish and are caught; keys written by the model itself read as text.
* Output suppression: when the served model is unusually sure of its first token, more sure than the reference
  model is of the same token (`relative`, the default) or simply very sure (`confidence`), that token is banned and
  decoding goes on greedily from the runner-up. A key whose first token is banned counts as lost (even in the rare
  case that another of its responses begins with the runner-up).

Each threshold is calibrated as a thief would: on normal prompts (a thief's instruction prompts and sentences of
human-written English of key length, neither seen by the fingerprinting), set to pass 99% of the calibration half.
The thief's cost is the share of the other half it rejects (or alters), with a Wilson interval; the model is left
as it is, so the held-out perplexity ratio is 1.0."""
from __future__ import annotations

import itertools
import random

import numpy as np
import torch

from .. import data, stats
from ..eval import heldout
from . import benign

PASS = 0.99  # the share of normal prompts a thief's filter lets through
SCORES = ("relative", "confidence")


def normal_prompts(tokenizer, thief_tasks, key_tokens: int = 16, num_text: int = 240) -> tuple[list[str], list[str]]:
    """(calibration, evaluation) halves of normal prompts: the thief's instruction prompts, and `num_text` chunks
    of `key_tokens` tokens of held-out English taken from the end of the text (the utility cost scores its start)."""
    prompts = [q.format(s) for q, s in itertools.product(thief_tasks, benign.SUBJECTS)]
    ids = tokenizer(heldout.HELDOUT_ENGLISH.read_text(), add_special_tokens=False)["input_ids"]
    tail = ids[len(ids) // 2:]
    step = max(key_tokens, len(tail) // num_text)
    chunks = [tokenizer.decode(tail[s:s + key_tokens]).strip() for s in range(0, len(tail) - key_tokens, step)]
    prompts += [c for c in chunks[:num_text] if c]
    random.Random("normal-prompts").shuffle(prompts)
    return prompts[::2], prompts[1::2]


@torch.no_grad()
def text_perplexity(model, tokenizer, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Per text: exp(mean NLL of its tokens after the first) under `model`, the text on its own (no template)."""
    dev = next(model.parameters()).device
    out = []
    for s in range(0, len(texts), batch_size):
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:256] or [tokenizer.eos_token_id]
               for t in texts[s:s + batch_size]]
        batch = data.right_padded(ids, tokenizer.pad_token_id, dev)
        logp = model(**batch).logits.float().log_softmax(-1)
        for r, x in enumerate(ids):
            if len(x) < 2:
                out.append(float("inf"))
                continue
            tgt = torch.tensor(x[1:], device=dev)
            out.append(float(torch.exp(-logp[r, :len(x) - 1].gather(-1, tgt[:, None]).mean())))
    return np.array(out)


@torch.no_grad()
def first_token_scores(model, reference, prompts: list[list[int]], pad_id: int, score: str = "relative",
                       batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(score, argmax token) of the first generated token per prompt (left-padded). `relative`: log p_model(top) -
    log p_reference(top); `confidence`: log p_model(top)."""
    dev = next(model.parameters()).device
    scores, tops = [], []
    for s in range(0, len(prompts), batch_size):
        batch = data.left_padded(prompts[s:s + batch_size], pad_id, dev)
        lp = model(**batch).logits[:, -1].float().log_softmax(-1)
        top = lp.argmax(-1)
        sc = lp.gather(-1, top[:, None])[:, 0]
        if score == "relative":
            ref = reference(**batch).logits[:, -1].float().log_softmax(-1)
            sc = sc - ref.gather(-1, top[:, None])[:, 0]
        scores += sc.tolist()
        tops += top.tolist()
    return np.array(scores), np.array(tops)


def threshold(calibration: np.ndarray, share: float = PASS) -> float:
    """The smallest value that passes `share` of the calibration scores (those <= it pass)."""
    finite = calibration[np.isfinite(calibration)]
    return float(np.quantile(finite, share, method="higher")) if len(finite) else float("inf")


def rejected(scores: np.ndarray, tau: float) -> dict:
    k = int((scores > tau).sum())
    return {"share": k / len(scores), "ci": stats.wilson(k, len(scores)), "n": len(scores)}
