"""Utility: lm-eval accuracy against our own log-likelihood ranking."""
import json

import pytest
import torch

from privlm.eval import utility


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
