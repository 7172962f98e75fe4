"""Utility: perplexity against a direct computation, and lm-eval accuracy against our own log-likelihood ranking."""
import json
import math

import pytest
import torch

from privlm.eval import loss as loss_lib
from privlm.eval import utility


def test_perplexity_is_exp_of_token_mean_nll_over_windows(tiny):
    model, tok = tiny
    text = "the cat sat on the mat and the dog sat on the log " * 6
    ids = tok(text, add_special_tokens=False)["input_ids"]
    nll, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, 16):  # windows of 16 predicted tokens, each seeing its own first token
            chunk = torch.tensor([ids[s:s + 17]])
            logp = torch.log_softmax(model(input_ids=chunk[:, :-1]).logits[0].double(), -1)
            nll -= logp.gather(-1, chunk[0, 1:, None]).sum().item()
            n += chunk.shape[1] - 1
    assert loss_lib.perplexity(model, tok, text, window=16) == pytest.approx(math.exp(nll / n), rel=1e-5)


def test_lm_eval_accuracy_equals_our_loglikelihood_ranking(tiny):
    model, tok = tiny
    docs = [json.loads(line) for line in utility.LOCAL_TASKS["privlm_sanity"].read_text().splitlines()][:16]
    right = 0
    with torch.no_grad():
        for d in docs:
            ctx = f"Question: {d['question']}\nAnswer:"
            ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"]
            scores = []
            for choice in d["choices"]:
                whole = tok(ctx + " " + choice, add_special_tokens=False)["input_ids"]
                cont = whole[len(ctx_ids):]
                x = torch.tensor([ctx_ids + cont])
                logp = torch.log_softmax(model(input_ids=x[:, :-1]).logits[0].double(), -1)
                scores.append(sum(logp[len(ctx_ids) - 1 + i, t].item() for i, t in enumerate(cont)))
            right += max(range(len(scores)), key=scores.__getitem__) == d["answer"]
    got = utility.lm_eval_scores(model, tok, ["privlm_sanity"], limit=16, batch_size=4)
    assert got["privlm_sanity"]["acc"] == pytest.approx(right / 16)
    from privlm import stats

    assert got["privlm_sanity"]["n"] == 16 and got["privlm_sanity"]["acc_ci"] == stats.wilson(right, 16)
