"""Crafted canaries: token sequences from the base model's least likely tokens, each token one that decodes and
re-encodes to itself, the sequence redrawn until its text re-tokenizes to it, drawn by the auditor's generator."""
import numpy as np

from privlm import models
from privlm.audit.crafted import RARE_FRACTION, crafted_texts, token_prior, usable_tokens


def test_crafted_canaries_come_from_the_rarest_usable_tokens(tiny_model_dir):
    tok = models.load_tokenizer(str(tiny_model_dir))
    usable = usable_tokens(tok)
    assert usable and not set(usable) & set(tok.all_special_ids)
    prior = token_prior(str(tiny_model_dir), tok)
    cut = max(8 * 4, int(RARE_FRACTION * len(usable)))
    pool = set(sorted(usable, key=lambda i: prior[i])[:cut])
    texts = crafted_texts(str(tiny_model_dir), tok, 50, 8, "rare", np.random.default_rng(0))
    assert len(texts) == 50 and len(set(texts)) == 50
    exact = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    exact = [ids for ids in exact if len(ids) == 8]
    assert len(exact) >= 45  # redrawn until the text re-tokenizes to the 8 drawn tokens (BPE merges neighbours)
    assert all(set(ids) <= pool for ids in exact)
    # rare means rare: the pool's mean prior is below the vocabulary's
    assert np.mean([prior[i] for i in pool]) < np.mean([prior[i] for i in usable])
    assert crafted_texts(str(tiny_model_dir), tok, 5, 8, "rare", np.random.default_rng(0)) == texts[:5]
