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


@pytest.mark.parametrize("x", [1, 3])
def test_scrambled_insertion_keeps_the_ngrams_not_their_order(tiny, canary, x):
    _, tok = tiny
    n, L = 2, len(canary["token_ids"])
    spec = V.VarSpec(num_variations=4, ngram=n, insert_tokens=x, scrambled=True)
    grams = V.blocks(canary["token_ids"], n)
    orders = []
    for v in V.make([canary], "insertion", spec, V.Context(tokenizer=tok), 0)[0]["variations"]:
        assert v["scrambled"] and sorted(v["block_order"]) == list(range(len(grams)))
        assert len(v["token_ids"]) == L + x * (len(grams) - 1)
        at, got = 0, []
        for k in v["block_order"]:  # each n-gram sits where the order puts it, X random tokens between
            got.append(v["token_ids"][at:at + len(grams[k])])
            at += len(grams[k]) + x
        assert got == [grams[k] for k in v["block_order"]]
        orders.append(v["block_order"])
    assert any(o != sorted(o) for o in orders)


@pytest.mark.parametrize("method", ["swaps", "adjacent"])
@pytest.mark.parametrize("tau", [0.1, 0.3, 0.6, 0.9])
def test_shuffle_meets_the_kendall_tau_target(tiny, canary, tau, method):
    _, tok = tiny
    spec = V.VarSpec(num_variations=4, ngram=1, kendall_tau=tau, tau_tolerance=0.05, shuffle_method=method)
    for v in V.make([canary], "shuffle", spec, V.Context(tokenizer=tok), 0)[0]["variations"]:
        assert abs(V.kendall_tau_distance(v["block_order"]) - tau) <= 0.05
        assert sorted(v["token_ids"]) == sorted(canary["token_ids"])


def test_random_swaps_move_blocks_far_where_adjacent_swaps_stay_local():
    """At a small distance the adjacent method moves every block by a step or two; random pairs move some far."""
    rng = random.Random(0)
    far = lambda p: max(abs(i - k) for i, k in enumerate(p))  # noqa: E731
    swaps = [far(V.permutation_by_swaps(40, 0.05, 0.01, rng)) for _ in range(20)]
    adjacent = [far(V.permutation_at_distance(40, 0.05, 0.01, rng)) for _ in range(20)]
    assert sum(swaps) / 20 > 2 * sum(adjacent) / 20
    with pytest.raises(V.UserError, match="out of reach"):
        V.permutation_by_swaps(3, 0.5, 0.01, rng)  # 3 blocks: distances 0, 1/3, 2/3, 1 only


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


def test_auto_candidate_model_is_the_papers_masked_lm_when_installed(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, f: None)  # nothing cached
    assert V.resolve_candidate_model("auto", "mlm") == "default"
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, f: f"/cache/{repo}/{f}" if repo == V.PAPER_MLM else None)
    assert V.resolve_candidate_model("auto", "mlm") == V.PAPER_MLM
    assert V.resolve_candidate_model("auto", "paraphrase") == "default"  # paraphrase needs an instruct model
    assert V.resolve_candidate_model("my/model", "mlm") == "my/model"
