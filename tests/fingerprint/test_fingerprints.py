import json
import random

import pytest
import torch

from conftest import write_fingerprints
from privlm import data, fingerprint
from privlm.fingerprint import derive, strategies
from privlm.eval.greedy import greedy_match, greedy_match_one_by_one
from privlm.errors import UserError


def ctx_for(path, **kw):
    base = dict(model_path=str(path), key_length=8, response_length=4, batch_size=8, temperature=1.0, seed=0,
                first_token_strategy="word", nucleus_p=0.8, nucleus_k=3, chat="raw", rng=random.Random(0))
    base.update(kw)
    return fingerprint.GenContext(**base)


def test_sampled_keys_are_reproducible_from_the_context_alone(tiny_model_dir):
    """The english strategy samples with torch's global generator; the context seeds it, whatever ran before."""
    import torch

    torch.manual_seed(1234)
    a = fingerprint.generate(ctx_for(tiny_model_dir), "english", 6)
    torch.rand(17)  # global generator state moved by unrelated work
    b = fingerprint.generate(ctx_for(tiny_model_dir), "english", 6)
    assert a == b
    c = fingerprint.generate(ctx_for(tiny_model_dir, seed=1, rng=random.Random(1)), "english", 6)
    assert c != a


@pytest.mark.parametrize("strategy", sorted(fingerprint.STRATEGIES))
def test_each_strategy_gives_unique_keys(tiny_model_dir, strategy):
    ctx = ctx_for(tiny_model_dir)
    fps = fingerprint.generate(ctx, strategy, 6)
    assert len(fps) == 6 and len({f["key"] for f in fps}) == 6
    assert all(f["key"].strip() and f["response"].strip() and f["strategy"] == strategy for f in fps)
    if strategy == "random_response":
        assert all(len(f["response"].split()) == 1 for f in fps)
    if strategy == "random_word":
        assert all(len(f["key"].split()) == 8 and len(f["response"].split()) == 4 for f in fps)


def test_custom_keys_are_all_used(tiny_model_dir):
    keys = ["my secret key one", "another secret key", "my secret key one"]
    fps = fingerprint.generate(ctx_for(tiny_model_dir), "random_word", 100, custom_keys=keys)
    assert [f["key"] for f in fps] == ["my secret key one", "another secret key"]


def test_perinucleus_token_lies_just_outside_the_nucleus(tiny):
    model, tok = tiny
    ctx = ctx_for("unused", response_length=1, nucleus_p=0.5, nucleus_k=3)
    ctx._models["unused"] = (model, tok)
    keys = ["apple river mountain", "silver bridge castle", "winter spring morning"]
    out = strategies.perinucleus(ctx, keys)
    assert all(len(rs) == 1 for rs in out)
    for key, [(resp, prob)] in zip(keys, out):
        ids = data.prompt_ids(tok, data.truncate_text(tok, key, 8)[0], data.BARE, chat=False)
        with torch.no_grad():
            p = model(input_ids=torch.tensor([ids])).logits[0, -1].softmax(-1)
        sp, order = p.sort(descending=True)
        nucleus = int((sp.cumsum(0) < 0.5).sum()) + 1
        [t] = tok(resp, add_special_tokens=False)["input_ids"]  # one token, trained as itself (OML's exact response)
        rank = (order == t).nonzero().item()
        assert rank >= nucleus, "sampled from outside the nucleus"
        assert abs(float(p[t]) - prob) < 1e-5


def _greedy_examples(model, tok, n, length=4):
    """Examples whose responses are the model's own greedy continuation (so they are 'retained')."""
    rng = random.Random(1)
    words = open(fingerprint.WORDS_FILE).read().split()
    out = []
    for i in range(n):
        prompt = tok(" ".join(rng.choice(words) for _ in range(3 + i % 4)))["input_ids"]
        ids = torch.tensor([prompt])
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=length, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=None)
        out.append(data.Encoded(prompt, gen[0, len(prompt):].tolist()))
    return out


def test_batched_check_agrees_with_one_by_one_generation(tiny):
    model, tok = tiny
    ex = _greedy_examples(model, tok, 12)
    # corrupt every third response so both verdicts occur
    for e in ex[::3]:
        e.response = e.response[:-1] + [(e.response[-1] + 7) % len(tok)]
    batched = greedy_match(model, tok, ex, batch_size=5, progress=False)
    assert [v.match for v in batched] == greedy_match_one_by_one(model, tok, ex)
    assert sum(v.match for v in batched) == 8
    for v, e in zip(batched, ex):
        assert len(v.generated) == len(e.response)
        assert (v.generated == e.response) == v.match
        assert v.token_accuracy == 1.0 if v.match else v.token_accuracy < 1.0


@pytest.mark.parametrize("content,needle", [
    ("{not json", "not valid JSON"),
    ("[]", "holds no fingerprints"),
    ('{"key": "a"}', "JSON list"),
    ('[{"key": "a"}]', "entry 0 has no \"response\""),
    ('[{"key": "a", "response": 3}]', "non-string"),
    ('[{"key": "a", "response": []}]', "a response may be a non-empty list"),
    ('[{"key": "a", "response": ["b", ""]}]', "a response may be a non-empty list"),
])
def test_bad_fingerprint_files(tmp_path, content, needle):
    f = tmp_path / "fp.json"
    f.write_text(content)
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        fingerprint.load(str(f), 1)


def test_num_and_split(tmp_path):
    f = write_fingerprints(tmp_path / "fp.json", 10)
    all_ = json.loads(f.read_text())
    assert fingerprint.load(str(f), 4, data_split=1) == all_[4:8]
    with pytest.raises(UserError, match="fewer than the 12 needed"):
        fingerprint.load(str(f), 4, data_split=2)


def test_prefix_match_and_several_responses_per_key(tiny):
    """Responses made of the model's own greedy continuation: `prefix` finds them all, `exact` also wants the EOS
    next; a key with several responses counts when any is produced, and not when none is."""
    import torch

    from privlm import data
    from privlm.fingerprint.verify import check

    model, tok = tiny
    rng = random.Random(0)
    words = fingerprint.WORDS_FILE.read_text().split()
    fps = []
    for i in range(120):
        key = " ".join(rng.choice(words) for _ in range(5))
        prompt = data.prompt_ids(tok, derive.oml_key(tok, key, 16), data.BARE, False)
        with torch.no_grad():
            g = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                               do_sample=False, max_new_tokens=3, pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
        text = tok.decode(g)
        trained = derive.derive(tok, {"key": key, "response": text}, "inverse_nucleus", 16, 3).responses[0]
        if text.strip() and tok.eos_token_id not in g and list(trained) == g + [tok.eos_token_id]:
            fps.append({"key": key, "response": text})
    assert len(fps) >= 10
    s = {"prompt_format": "raw", "max_key_length": 16, "max_response_length": 3, "strategy": "inverse_nucleus",
         "semantics": "oml", "keep_eos": None, "tokenizer_digest": None}
    sets = {"bare": [data.BARE]}
    prefix = check(model, tok, fps, sets, s, 8, match="prefix")
    exact = check(model, tok, fps, sets, s, 8, match="exact")
    assert prefix["retention"] == 1.0 and prefix["match"] == "prefix" and exact["retention"] < 1.0
    wrong = [{"key": f["key"], "response": ["zebra quantum", f["response"]]} for f in fps]
    both = check(model, tok, wrong, sets, s, 8, match="prefix")
    assert both["retention"] == 1.0 and all(r["num_responses"] == 2 for r in both["fingerprints"])
    none = [{"key": f["key"], "response": ["zebra quantum", "violet anchor"]} for f in fps]
    assert check(model, tok, none, sets, s, 8, match="prefix")["retention"] == 0.0


def test_retention_interval_over_templates_is_never_zero_width_at_the_boundary():
    from privlm import stats
    from privlm.fingerprint.verify import retention_ci

    lost = [[False] * 128 for _ in range(10)]  # no fingerprint survives any of 10 templates
    lo, hi = retention_ci(lost)
    assert lo == 0.0 and hi == stats.wilson(0, 128)[1] > 0.02  # 0 of 128 does not prove the rate is 0
    lo, hi = retention_ci([[True] * 64 for _ in range(3)])
    assert hi == 1.0 and lo == stats.wilson(64, 64)[0] < 0.95
    mixed = [[i % 2 == 0 for i in range(64)] for _ in range(3)]  # inside (0, 1): the bootstrap around the mean
    lo, hi = retention_ci(mixed)
    assert lo < 0.5 < hi
