"""Fuzzy duplicates: R replacements, spread positions, insertion counts, Kendall-tau targets, mlm candidates."""
import random

import pytest

from privlm.mosaic import variations as V


@pytest.fixture
def canary(tiny):
    _, tok = tiny
    ids = tok("red blue green yellow black white orange purple pink brown grey gold", add_special_tokens=False)["input_ids"]
    return {"id": 0, "text": tok.decode(ids), "token_ids": ids}


@pytest.mark.parametrize("name", ["random", "mlm", "mlm_random"])
@pytest.mark.parametrize("r", [1, 3, 7])
def test_replacement_count_equals_r(tiny, canary, name, r):
    model, tok = tiny
    spec = V.VarSpec(num_variations=5, num_injection_points=r, replace_same_indices=False, topk=5)
    out = V.make([canary], name, spec, V.Context(tokenizer=tok, model=model, cand_tokenizer=tok), seed=1)[0]
    assert len(out["variations"]) == 5
    for v in out["variations"]:
        assert len(v["token_ids"]) == len(canary["token_ids"])  # same tokenizer: one token per replacement
        changed = [i for i, (a, b) in enumerate(zip(v["token_ids"], canary["token_ids"])) if a != b]
        assert changed == v["replaced_indices"] and len(changed) == r


def test_mlm_candidates_are_the_models_top_k_without_the_original(tiny, canary):
    import torch

    from privlm.eval.batching import start_token_id

    model, tok = tiny
    cands = V.model_candidates(model, tok, tok, canary["token_ids"], topk=4)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[start_token_id(tok)] + canary["token_ids"]])).logits[0]
    ok = set(V.ordinary_ids(tok))
    assert not set(tok.all_special_ids) & ok
    for pos, orig in enumerate(canary["token_ids"]):
        ranked = [t for t in logits[pos].argsort(descending=True).tolist() if t != orig and t in ok][:4]
        assert [c[0] for c in cands[pos]] == ranked


def test_positions_spread_over_variations_or_shared():
    rng = random.Random(0)
    spread = V.choose_positions(20, 4, 5, same=False, rng=rng)
    assert sorted(p for pos in spread for p in pos) == list(range(20))  # 4 x 5 = 20: every index exactly once
    same = V.choose_positions(20, 4, 5, same=True, rng=rng)
    assert all(p == same[0] for p in same) and len(set(same[0])) == 4


@pytest.mark.parametrize("n,x", [(1, 1), (2, 3), (5, 2)])
def test_insertion_count(tiny, canary, n, x):
    _, tok = tiny
    spec = V.VarSpec(num_variations=3, ngram=n, insert_tokens=x)
    L = len(canary["token_ids"])
    blocks = -(-L // n)
    for v in V.make([canary], "insertion", spec, V.Context(tokenizer=tok), 0)[0]["variations"]:
        assert v["inserted"] == x * (blocks - 1) and len(v["token_ids"]) == L + x * (blocks - 1)
        kept = [v["token_ids"][j * (n + x) + k] for j in range(blocks) for k in range(n) if j * n + k < L]
        assert kept == canary["token_ids"]  # the n-grams stay in order, X tokens between them


@pytest.mark.parametrize("tau", [0.1, 0.3, 0.6, 0.9])
def test_shuffle_meets_the_kendall_tau_target(tiny, canary, tau):
    _, tok = tiny
    spec = V.VarSpec(num_variations=4, ngram=1, kendall_tau=tau, tau_tolerance=0.05)
    for v in V.make([canary], "shuffle", spec, V.Context(tokenizer=tok), 0)[0]["variations"]:
        assert abs(V.kendall_tau_distance(v["block_order"]) - tau) <= 0.05
        assert sorted(v["token_ids"]) == sorted(canary["token_ids"])


def test_kendall_tau_distance():
    assert V.kendall_tau_distance([0, 1, 2, 3]) == 0
    assert V.kendall_tau_distance([3, 2, 1, 0]) == 1
    assert V.kendall_tau_distance([1, 0, 2, 3]) == pytest.approx(1 / 6)


def test_batched_causal_candidates_equal_one_at_a_time(tiny, canary):
    model, tok = tiny
    short = {"id": 1, "token_ids": canary["token_ids"][:5], "text": ""}
    batched = V.causal_candidates_batched(model, tok, [canary, short], topk=6)
    for c in (canary, short):
        assert batched[c["id"]] == V.model_candidates(model, tok, tok, c["token_ids"], topk=6)
