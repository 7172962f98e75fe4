"""MIA: metrics against brute force, token statistics against direct computation, every attack on a tiny model."""
import numpy as np
import pytest
import torch

from privlm.mia import ATTACKS, metrics
from privlm.eval.batching import encode_texts
from privlm.mia.scoring import Stats, token_stats

TEXTS = ["the cat sat on the mat.", "Alpha Beta Gamma delta", "a", "some longer text with several words in it",
         "Numbers 123 and UPPER case"]


def brute_auc(m, n):
    return np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a in m for b in n])


def test_auc_equals_pairwise_probability_and_members_are_positive():
    rng = np.random.default_rng(0)
    m, n = rng.normal(0.5, 1, 40).round(1), rng.normal(0, 1, 60).round(1)  # rounding makes ties
    r = metrics.roc(m, n)
    assert r["auc"] == pytest.approx(brute_auc(m, n))
    assert metrics.roc(n, m)["auc"] == pytest.approx(1 - r["auc"])


def test_tpr_at_low_fpr():
    m = np.array([10, 9, 8, 1, 0.5])
    n = np.arange(100) / 100  # all non-members below 1.0; the top one is 0.99
    r = metrics.roc(m, n)
    assert r["tpr@0.01fpr"] == pytest.approx(0.8)  # 4 of 5 members above every non-member... 1.0 > 0.99
    assert r["tpr@0.001fpr"] == pytest.approx(0.8)
    assert r["tpr@0.1fpr"] == pytest.approx(0.8)
    m2 = np.array([0.995, 0.5, 0.2])
    r2 = metrics.roc(m2, n)
    assert r2["tpr@0.001fpr"] == pytest.approx(1 / 3) and r2["tpr@0.1fpr"] == pytest.approx(1 / 3)


def test_token_stats_match_a_direct_computation_and_do_not_depend_on_batching(tiny):
    model, tok = tiny
    batched = token_stats(model, tok, TEXTS, batch_size=4)
    for text, st, ids in zip(TEXTS, batched, encode_texts(tok, TEXTS)):
        single = token_stats(model, tok, [text], batch_size=1)[0]
        np.testing.assert_allclose(st.logp, single.logp, atol=1e-4)
        with torch.no_grad():
            x = torch.tensor([ids])
            out = model(input_ids=x, labels=x)
            logp = torch.log_softmax(out.logits[0, :-1].double(), -1)
        assert st.loss == pytest.approx(out.loss.item(), abs=1e-4)  # HF's mean token loss
        mu = (logp.exp() * logp).sum(-1)
        sd = ((logp.exp() * logp ** 2).sum(-1) - mu ** 2).sqrt()
        np.testing.assert_allclose(st.mu, mu.numpy(), atol=1e-3)
        np.testing.assert_allclose(st.sigma, sd.numpy(), atol=1e-3)


def test_every_attack_on_a_tiny_model(tiny):
    model, tok = tiny
    stats = Stats(TEXTS, token_stats(model, tok, TEXTS))
    stats.reference = token_stats(model, tok, TEXTS, moments=False)
    stats.lowercase = token_stats(model, tok, [t.lower() for t in TEXTS], moments=False)
    assert set(ATTACKS) >= {"loss", "ratio", "zlib", "lowercase", "min_k", "min_k_pct", "min_kpp"}
    scores = {name: np.asarray(a.score(stats, k=3, k_pct=0.5)) for name, a in ATTACKS.items()}
    for name, s in scores.items():
        assert s.shape == (len(TEXTS),) and np.isfinite(s).all(), name
    losses = np.array([s.loss for s in stats.target])
    np.testing.assert_allclose(scores["loss"], -losses)
    np.testing.assert_allclose(scores["ratio"], 0, atol=1e-5)  # reference == target
    assert scores["lowercase"][0] == pytest.approx(0, abs=1e-5)  # already lowercase
    for st, v in zip(stats.target, scores["min_k"]):  # mean of the 3 lowest log-probs
        assert v == pytest.approx(np.sort(st.logp)[:3].mean(), abs=1e-6)
    assert scores["min_k"][2] == pytest.approx(stats.target[2].logp.mean())  # "a": fewer tokens than k
    assert (scores["min_k"] <= -losses + 1e-6).all()  # the lowest tokens average below the mean


def test_a_model_trained_on_members_is_detected(tiny_model_dir):
    """Fine-tune the tiny model on half the texts; the loss and min-k attacks should then separate them."""
    from privlm import models

    model = models.load_model(str(tiny_model_dir))
    tok = models.load_tokenizer(str(tiny_model_dir))
    rng = np.random.default_rng(1)
    words = ["red", "blue", "cat", "dog", "sun", "moon", "tree", "rock", "fish", "bird", "rain", "snow"]
    texts = [" ".join(rng.choice(words, 8)) for _ in range(16)]
    members, nonmembers = texts[:8], texts[8:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = encode_texts(tok, members)
    for _ in range(30):
        for x in ids:
            x = torch.tensor([x])
            model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    stats = Stats(texts, token_stats(model, tok, texts))
    for name in ("loss", "min_k", "min_kpp"):
        s = ATTACKS[name].score(stats, k=4, k_pct=0.5)
        assert metrics.roc(s[:8], s[8:])["auc"] > 0.9, name
