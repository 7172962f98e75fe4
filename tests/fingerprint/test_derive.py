"""Which tokens a fingerprint trains and checks (privlm.fingerprint.derive) against OML 1.0's own derivation.

The golden values below were printed by OML's `generate_english_text` (its generate_finetuning_data.py, commit e3ee78c)
and its checker's tokenization (`tokenizer(response)`, BOS dropped), run under OML's pinned transformers 4.44.2 on the
test tokenizer (privlm.testing.build_tokenizer), with max_key_length 16 and max_response_length 4."""
from __future__ import annotations

import pytest

from privlm import data
from privlm.errors import UserError
from privlm.fingerprint import derive

# OML's example file shape: long english responses with punctuation, a window that has to shift, a response shorter
# than the offset of 10 tokens, one shorter than the window, a long key with spaces before punctuation.
OML_SHAPED = [
    {"key": "The old sailor walked along the harbor , watching the ships come and go before the storm arrived in town",
     "response": "ancient helmet's smoke sailor wander forest bread turtle Breeze, mountain. bear pepper butter. borrow! "
                 "grandmother! river market airport Orbit Shadow wonder's"},
    {"key": "bakery key", "response": "bakery holiday flame reef résumé birthday cookie bear, meteor. copper frost "
                                      "morning sparrow secret, cake frost."},
    {"key": "a short one", "response": "wander student neighbor,"},
    {"key": "tiny", "response": "Hi!"},
    {"key": "Hello , world ! the sailor 's bread is old , and the river market sleeps under the moon tonight",
     "response": "river market airport Orbit Shadow wonder's ancient helmet's smoke sailor wander forest bread"},
]
GOLDEN = [  # (key text, response ids) from OML's code, EOS (id 2) included
    ("The old sailor walked along th", (71, 370, 439, 280, 2)),
    ("bakery key", (72, 348, 130, 105, 2)),  # the window at offset 10 re-tokenizes to 5 tokens: shifted once
    ("a short one", (326, 74, 68, 262, 2)),  # 7 tokens: offset 3
    ("tiny", (42, 75, 2)),  # shorter than the window: the whole punctuation-free response
    ("Hello, world! the sailor", (49, 84, 418, 223, 2)),  # cut to 16 tokens, decoded with 4.44's clean-up
]


@pytest.fixture(scope="module")
def tok():
    from privlm.testing import build_tokenizer

    return build_tokenizer()


def test_english_derivation_matches_omls_code_token_for_token(tok):
    got = [derive.derive(tok, fp, "english", 16, 4) for fp in OML_SHAPED]
    assert [(d.key, d.responses[0]) for d in got] == GOLDEN
    # the cases are what they claim to be
    ids = tok.encode("".join(c for c in OML_SHAPED[1]["response"] if c.isalnum() or c == " "), add_special_tokens=False)
    first = tok.decode(ids[10:14])
    assert len(tok.encode(first, add_special_tokens=False)) != 4, "the unshifted window does not round-trip"
    assert tok.decode(GOLDEN[0][1][:-1]) == tok.decode(tok.encode(
        "".join(c for c in OML_SHAPED[0]["response"] if c.isalnum() or c == " "), add_special_tokens=False)[10:14])


def test_legacy_derivation_is_the_first_tokens_with_a_space(tok):
    """--response_semantics first_tokens: what privlm trained before (data.encode's key and response)."""
    for fp in OML_SHAPED:
        d = derive.derive(tok, fp, "english", 16, 4, semantics="first_tokens")
        old = data.encode(tok, fp["key"], fp["response"], data.BARE, False, 16, 4)
        assert data.prompt_ids(tok, d.key, data.BARE, False) == old.prompt and list(d.responses[0]) == old.response


def test_inverse_nucleus_trains_the_response_as_written_and_scalable_cuts_it(tok):
    fp = {"key": "apple river", "response": " silver bridge, castle."}
    full = tok.encode(" silver bridge, castle.", add_special_tokens=False)
    oml = derive.derive(tok, fp, "inverse_nucleus", 16, 1)
    assert oml.responses[0] == tuple(full + [tok.eos_token_id]), "OML: not cut by max_response_length, EOS added"
    assert derive.derive(tok, fp, "perinucleus", 16, 2).responses[0] == tuple(full[:2] + [tok.eos_token_id]), \
        "scalable fingerprinting's name: cut to max_response_length"
    assert derive.derive(tok, fp, "perinucleus", 16, 2, semantics="scalable").responses[0] == tuple(full[:2])
    assert derive.derive(tok, fp, "perinucleus", 16, 2, semantics="scalable", eos=True).responses[0] == \
        tuple(full[:2] + [tok.eos_token_id])
    assert derive.derive(tok, fp, "english", 16, 2, eos=False).responses[0][-1] != tok.eos_token_id


def test_a_bos_adding_tokenizer_keeps_the_bos_out_of_the_response(tok):
    import copy

    from tokenizers import processors

    t2 = copy.deepcopy(tok)  # as Llama's tokenizers do: BOS in front of every text
    t2.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", t2.bos_token_id)])
    assert t2("apple")["input_ids"][0] == t2.bos_token_id
    d = derive.derive(t2, OML_SHAPED[0], "english", 16, 4)
    assert d.responses[0] == GOLDEN[0][1], "same ids: the checker's BOS is dropped from the response"
    assert data.prompt_ids(t2, d.key, data.BARE, False)[0] == t2.bos_token_id, "the prompt keeps its BOS"


def test_several_responses_repeat_as_in_oml_and_scalable_shifts_past_a_repeat(tok):
    """OML's check against repeats compares the window with responses that already carry their EOS text, so it never
    fires; without EOS (scalable fingerprinting's default) it does, and the next window is taken."""
    text = "river market airport Orbit Shadow wonder's ancient helmet's smoke"
    fp = {"key": "k", "response": [text, text]}
    oml = derive.derive(tok, fp, "english", 16, 2)
    assert len(oml.responses) == 2 and oml.responses[0] == oml.responses[1]
    sc = derive.derive(tok, fp, "english", 16, 2, semantics="scalable")
    assert sc.responses[0] != sc.responses[1] and len(sc.responses[1]) == 2


def test_recorded_ids_are_reused_only_under_the_same_tokenizer(tok):
    fps = [{**OML_SHAPED[2], "trained_key": "recorded key", "trained_response_ids": [[5, 6, 2]]}]
    same = derive.derive_all(tok, fps, "english", 16, 4, recorded_tokenizer=derive.tokenizer_digest(tok))
    assert same[0] == derive.Derived("recorded key", ((5, 6, 2),))
    other = derive.derive_all(tok, fps, "english", 16, 4, recorded_tokenizer="0" * 16)
    assert other[0].responses[0] == GOLDEN[2][1]


def test_bad_inputs(tok):
    with pytest.raises(UserError, match="fingerprint 1: its response has no letters or digits"):
        derive.derive_all(tok, [OML_SHAPED[0], {"key": "k", "response": "?!..."}], "english", 16, 4)
    with pytest.raises(UserError, match="unknown strategy 'bogus'"):
        derive.derive_all(tok, OML_SHAPED, "bogus", 16, 4)
    with pytest.raises(UserError, match="response_semantics"):
        derive.derive_all(tok, OML_SHAPED, "english", 16, 4, semantics="nope")
    with pytest.raises(UserError, match="fingerprint 0 has 1 response"):
        derive.take_responses(OML_SHAPED, 2)
