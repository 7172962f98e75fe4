import pytest
import torch

from privlm import data
from privlm.dp import synthetic
from privlm.eval import loss as loss_lib
from privlm.eval import pii as pii_eval


def test_probes_are_prefix_and_pii(tiny):
    _, tok = tiny
    recs = synthetic.records(4)
    probes = pii_eval.pii_probes(tok, recs)
    assert len(probes) == 4 * 6
    kind, e = probes[0]
    text = tok.decode(e.prompt[1:] + e.response)
    rec = recs[0]
    assert text.strip() in rec["text"] and text.rstrip().endswith(str(rec["pii"][kind]))


def test_extraction_counts_what_greedy_reproduces(tiny, monkeypatch):
    """Probes whose PII tokens are what the model says greedily after the prefix count as extracted."""
    model, tok = tiny
    real = pii_eval.pii_probes(tok, synthetic.records(2))
    rigged = []
    for i, (kind, e) in enumerate(real):
        if i % 2 == 0:  # every other probe: replace the PII by the model's own greedy continuation
            # an explicit mask: without one HF masks every pad-token id, and chat prompts contain the pad token
            ids = torch.tensor([e.prompt])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(e.response),
                                 do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None)
            e = data.Encoded(e.prompt, out[0, len(e.prompt):].tolist())
        rigged.append((kind, e))
    monkeypatch.setattr(pii_eval, "pii_probes", lambda tok, recs: rigged)
    res = pii_eval.extraction(model, tok, [])
    assert res["n"] == len(real) == 12
    assert res["extracted"] == 6 and res["rate"] == 0.5
    assert res["rate_ci"] == pytest.approx([0.2109, 0.7891], abs=1e-4)  # Clopper-Pearson, 6 of 12


def test_heldout_loss_matches_hf_loss(tiny):
    model, tok = tiny
    enc = [data.encode_record(tok, r, "uncond_generation", 40) for r in synthetic.records(3)]
    b = data.collate(enc[:1], tok.pad_token_id)
    with torch.no_grad():
        ref = model(**b).loss.item()
    assert abs(loss_lib.token_loss(model, tok, enc[:1]) - ref) < 1e-4
