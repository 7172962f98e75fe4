"""The held-out utility set: size and content of the shipped text, perplexity against a direct computation, the
paired ratio and KL, and their intervals."""
import math

import pytest
import torch

from privlm.eval import heldout, heldout_source


def test_shipped_text_is_at_least_50k_tokens_of_distinct_prose():
    from privlm import models

    text = heldout.HELDOUT_ENGLISH.read_text()
    assert len(text.split()) >= 40_000
    tokens = sum(len(w) - 1 for w in heldout.windows(models.load_tokenizer("default"), text))
    assert tokens >= 50_000, tokens
    assert ">>>" not in text
    paras = text.split("\n\n")
    assert len(paras) == len(set(paras))  # no paragraph twice
    assert all(len(p.split()) >= 8 for p in paras)


def test_prose_filter_drops_code_rules_and_fragments():
    doc = ("Assignment statements bind names to values and modify attributes of mutable objects.\n\n"
           "   x = 1\n   y = 2\n\n>>> print(x)\n\n========\n\nToo short here.\n\n"
           "The second paragraph goes on\nover two lines and is kept whole.")
    assert heldout_source.prose(doc) == [
        "Assignment statements bind names to values and modify attributes of mutable objects.",
        "The second paragraph goes on over two lines and is kept whole."]


def test_windows_predict_every_token_once(tiny):
    _, tok = tiny
    text = "one two three four five six seven eight nine ten " * 20
    ids = tok(text, add_special_tokens=False)["input_ids"]
    wins = heldout.windows(tok, text, window=16)
    assert sum(len(w) - 1 for w in wins) == len(ids) - 1
    assert [t for w in wins for t in w[1:]] == ids[1:]


def test_perplexity_is_exp_of_token_mean_nll(tiny):
    model, tok = tiny
    text = "the cat sat on the mat and the dog sat on the log " * 6
    ids = tok(text, add_special_tokens=False)["input_ids"]
    nll, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, 16):
            chunk = torch.tensor([ids[s:s + 17]])
            logp = torch.log_softmax(model(input_ids=chunk[:, :-1]).logits[0].double(), -1)
            nll -= logp.gather(-1, chunk[0, 1:, None]).sum().item()
            n += chunk.shape[1] - 1
    got = heldout.summary(heldout.score(model, heldout.windows(tok, text, 16), batch_size=3))
    assert got["heldout_ppl_after"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    lo, hi = got["heldout_ppl_after_ci"]
    assert lo <= got["heldout_ppl_after"] <= hi and got["heldout_tokens"] == n


def test_kl_and_ratio_against_the_base(tiny, tiny_model_dir):
    import copy

    model, tok = tiny
    text = "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 8
    wins = heldout.windows(tok, text, 16)
    base_scores = heldout.score(model, wins)
    same = heldout.summary(heldout.score(model, wins, base=model), base_scores)
    assert same["heldout_ppl_ratio"] == pytest.approx(1.0) and same["kl_base_tuned"] == pytest.approx(0, abs=1e-6)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    s = heldout.summary(heldout.score(other, wins, base=model, kl_windows=2), base_scores)
    assert s["kl_base_tuned"] > 1e-4 and s["kl_tokens"] == 32
    # KL by hand on the first two windows
    x = torch.tensor(wins[:2])
    with torch.no_grad():
        p = model(input_ids=x[:, :-1]).logits.double().log_softmax(-1)
        q = other(input_ids=x[:, :-1]).logits.double().log_softmax(-1)
    want = (p.exp() * (p - q)).sum(-1).mean().item()
    assert s["kl_base_tuned"] == pytest.approx(want, rel=1e-4)
    assert s["heldout_ppl_ratio"] == pytest.approx(s["heldout_ppl_after"] / s["heldout_ppl_base"], rel=1e-9)
    lo, hi = s["heldout_ppl_ratio_ci"]
    assert lo <= s["heldout_ppl_ratio"] <= hi


def _perturbed(model, scale=0.05, seed=0):
    import copy

    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return other


def test_pooled_kl_is_exact_with_every_token_and_a_lower_bound_with_fewer():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(5, 40, generator=g).log_softmax(-1), (2 * torch.randn(5, 40, generator=g)).log_softmax(-1)
    exact = (p.exp() * (p - q)).sum(-1).double()
    lp, ix = p.topk(40, -1)
    torch.testing.assert_close(heldout.pooled_kl(lp, ix, q), exact)
    for k in (1, 5, 20):
        lp, ix = p.topk(k, -1)
        got = heldout.pooled_kl(lp, ix, q)
        assert (got <= exact + 1e-9).all() and (got >= -1e-12).all()


def test_compare_runs_the_base_once_then_reads_it_from_the_cache(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("PRIVLM_CACHE", str(tmp_path))
    model, tok = tiny
    wins = heldout.windows(tok, "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 8, 16)
    other, loads = _perturbed(model), []

    def load():
        loads.append(1)
        return model

    a1, b1, cached1 = heldout.compare(other, wins, "tiny-base", load, top_k=8, batch_size=3)
    a2, b2, cached2 = heldout.compare(other, wins, "tiny-base", load, top_k=8, batch_size=3)
    assert (cached1, cached2, len(loads)) == (False, True, 1)
    s1, s2 = heldout.summary(a1, b1), heldout.summary(a2, b2)
    assert s1 == s2  # the same numbers from the cache as from the base itself
    # against the three-pass path: the base's perplexity and the ratio agree; the pooled KL bounds the exact one
    exact = heldout.summary(heldout.score(other, wins, base=model), heldout.score(model, wins))
    for k in ("heldout_ppl_base", "heldout_ppl_after", "heldout_ppl_ratio"):
        assert s1[k] == pytest.approx(exact[k], rel=1e-5), k
    assert 0 < s1["kl_base_tuned"] <= exact["kl_base_tuned"] * (1 + 1e-6)
    # another top_k, other windows or another model id: a different entry
    heldout.compare(other, wins[:-1], "tiny-base", load, top_k=8, batch_size=3)
    heldout.compare(other, wins, "tiny-other", load, top_k=8, batch_size=3)
    assert len(loads) == 3 and len(list((tmp_path / "heldout").glob("*.npz"))) == 3


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_corrupt_or_partial_cache_entry_is_recomputed(tiny, monkeypatch, tmp_path, capsys, damage):
    monkeypatch.setenv("PRIVLM_CACHE", str(tmp_path))
    model, tok = tiny
    wins = heldout.windows(tok, "one two three four five six seven eight nine ten " * 10, 16)
    other = _perturbed(model, seed=1)
    first = heldout.summary(*heldout.compare(other, wins, "m", lambda: model, top_k=4)[:2])
    (entry,) = (tmp_path / "heldout").glob("*.npz")
    raw = bytearray(entry.read_bytes())
    if damage == "truncate":
        raw = raw[:len(raw) // 2]
    else:
        raw[-200] ^= 0xFF  # inside the last array's data: the digest no longer matches
    entry.write_bytes(bytes(raw))
    after, before, cached = heldout.compare(other, wins, "m", lambda: model, top_k=4)
    assert cached is False and "corrupt or partial" in capsys.readouterr().err
    assert heldout.summary(after, before) == first
    assert heldout.compare(other, wins, "m", lambda: model, top_k=4)[2] is True  # rewritten whole


def test_model_digest_follows_the_weights_not_the_folder(tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert heldout.model_digest(copy) == heldout.model_digest(tiny_model_dir)
    w = next(f for f in copy.iterdir() if f.suffix == ".safetensors")
    raw = bytearray(w.read_bytes())
    raw[-1] ^= 1
    w.write_bytes(bytes(raw))
    assert heldout.model_digest(copy) != heldout.model_digest(tiny_model_dir)
