"""The teacher-forced greedy check must give generation's verdicts: on a tiny model trained on fingerprints whose
responses end in EOS or not, are tokenized canonically or not, and come several to a key."""
import random

import pytest
import torch

from privlm import data
from privlm.eval.greedy import greedy_match, greedy_match_one_by_one
from privlm.fingerprint import derive
from privlm.fingerprint.verify import encode_all, verdicts_any
from privlm.testing import WORDS_FILE, build_model, build_tokenizer


def _bytes_ids(tok, text: str) -> list[int]:
    """`text` one byte-level token per character: decodes to the same string, but is not how the tokenizer
    would encode it."""
    return [tok.convert_tokens_to_ids(t) for t in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)[0][0]]


@pytest.fixture(scope="module")
def trained():
    """A tiny model taught 8 of 14 fingerprints (80 Adam steps): the rest are misses of every kind."""
    tok = build_tokenizer()
    eos = tok.eos_token_id
    rng = random.Random(3)
    words = WORDS_FILE.read_text().split()
    phrase = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    keys = [phrase(4) for _ in range(14)]
    canon = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    targets, taught = [], []
    for i, k in enumerate(keys):
        r = phrase(2)
        if i % 4 == 0:  # canonical, EOS
            resp = (canon(r) + [eos],)
        elif i % 4 == 1:  # re-tokenizes differently: taught one token per character
            resp = (_bytes_ids(tok, r) + [eos], canon(r) + [eos])
        elif i % 4 == 2:  # no EOS
            resp = (canon(r),)
        else:  # several responses; only the second is taught
            resp = (canon(phrase(2)) + [eos], canon(r) + [eos])
        assert i % 4 != 1 or list(resp[0][:-1]) != canon(r)  # really a different tokenization
        targets.append(derive.Derived(k, resp))
        if i < 8:
            taught.append(data.Encoded(data.prompt_ids(tok, k, data.BARE, False), list(resp[-1 if i % 4 == 3 else 0])))
    model = build_model(len(tok), seed=1)
    seqs = [e.prompt + e.response for e in taught]
    L = max(map(len, seqs))
    ids = torch.full((len(seqs), L), eos)
    labels = torch.full((len(seqs), L), -100)
    for r, (e, s) in enumerate(zip(taught, seqs)):
        ids[r, :len(s)] = torch.tensor(s)
        labels[r, len(e.prompt):len(s)] = torch.tensor(e.response)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(80):
        loss = model(input_ids=ids, attention_mask=(labels != -100) | (ids != eos), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok, targets


def _generated_verdict(model, tok, encs: list[data.Encoded]) -> bool:
    """Generation's verdict for one fingerprint: does greedy decoding reproduce any of its responses?"""
    return any(greedy_match_one_by_one(model, tok, encs))


@pytest.mark.parametrize("match", ["exact", "prefix"])
def test_forced_verdicts_equal_generation(trained, match):
    model, tok, targets = trained
    encs = encode_all(tok, targets, data.BARE, False, match)
    expected = [_generated_verdict(model, tok, e) for e in encs]
    assert 6 <= sum(expected) <= 11, expected  # the model learnt most of what it was taught, and only that
    for decode in (False, True):
        got = [v.match for _, v in verdicts_any(model, tok, encs, batch_size=4, decode_misses=decode)]
        assert got == expected, (match, decode)
    # the re-tokenized fingerprints are retained through their taught (non-canonical) ids, not the canonical ones
    forced = greedy_match(model, tok, [e for i, enc in enumerate(encs) if i % 4 == 1 and i < 8 for e in enc],
                          progress=False, decode_misses=False)
    assert [v.match for v in forced] == [True, False, True, False]


def test_miss_reports_what_greedy_decoding_says(trained):
    """Without decoding, a miss's `generated` is greedy's output up to its first wrong token; with decoding it
    is the whole greedy output, of which that is a prefix."""
    model, tok, targets = trained
    flat = [e for enc in encode_all(tok, targets, data.BARE, False, "exact") for e in enc]
    short = greedy_match(model, tok, flat, batch_size=5, progress=False, decode_misses=False)
    full = greedy_match(model, tok, flat, batch_size=3, progress=False, decode_misses=True)
    assert [v.match for v in short] == [v.match for v in full]
    assert any(not v.match for v in short)
    for e, s, f in zip(flat, short, full):
        prompt = torch.tensor([e.prompt])
        gen = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=len(e.response), eos_token_id=None,
                             pad_token_id=tok.pad_token_id)[0, len(e.prompt):].tolist()
        assert f.generated == gen
        assert gen[:len(s.generated)] == s.generated
        if not s.match:
            assert s.generated[-1] != e.response[len(s.generated) - 1]  # ends at the first wrong token
        assert s.token_accuracy == f.token_accuracy


def test_empty_response_is_refused(trained):
    model, tok, _ = trained
    with pytest.raises(ValueError, match="empty response"):
        greedy_match(model, tok, [data.Encoded([5, 6], [])], progress=False)
