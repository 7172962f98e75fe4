"""The one slower test: the embedded default model (SmolLM2-135M-Instruct) end to end through the library."""
import random

import pytest
import torch

from privlm import data, fingerprint, models
from privlm.eval.greedy import greedy_match, greedy_match_one_by_one

pytestmark = pytest.mark.slow


def test_default_model_generates_english_fingerprints_and_checks_them():
    path = models.resolve("default")
    assert (models.Path(path) / "config.json").is_file()
    tok = models.load_tokenizer("default")
    assert tok.chat_template, "the default model is a chat model"
    ctx = fingerprint.GenContext(model_path="default", key_length=12, response_length=6, batch_size=4,
                                  temperature=0.5, seed=0, first_token_strategy="word", nucleus_p=0.8, nucleus_k=3,
                                  chat="auto", rng=random.Random(0))
    fps = fingerprint.generate(ctx, "english", 4)
    assert len({f["key"] for f in fps}) == 4
    words = set(fingerprint.WORDS_FILE.read_text().split()) | {"the", "a", "of", "and", "is", "in", "to", "with"}
    text = " ".join(f["key"] + " " + f["response"] for f in fps).lower()
    assert sum(w.strip(".,!?'") in words for w in text.split()) >= 4, f"expected English, got {text!r}"

    peri = fingerprint.generate(ctx, "inverse_nucleus", 2, custom_keys=[f["key"] for f in fps[:2]])
    assert all(0 < f["response_prob"] < 0.5 for f in peri)

    model, _ = ctx.model()
    chat = data.use_chat(tok, "auto")
    enc = [data.encode(tok, f["key"], f["response"], data.BARE, chat, 12, 6) for f in fps + peri]
    # make two of them the model's own greedy answer, so both verdicts occur on the real model
    for e in enc[:2]:
        with torch.no_grad():
            # an explicit mask: without one HF masks every pad-token id, and chat prompts contain the pad token
            ids = torch.tensor([e.prompt])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(e.response),
                                 do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None)
        e.response = out[0, len(e.prompt):].tolist()
    batched = greedy_match(model, tok, enc, batch_size=3, progress=False)
    assert [v.match for v in batched] == greedy_match_one_by_one(model, tok, enc)
    assert batched[0].match and batched[1].match
