"""Anchoring to the base model: which positions are anchored, the teacher table against a direct forward pass, the
KL against its definition, the loss against Hugging Face's at strength 0, and a real two-rank run."""
import copy
import json

import pytest
import torch

from conftest import assert_user_error, run_script, write_fingerprints
from privlm import data
from privlm.fingerprint import anchor, benign


def test_anchored_positions_are_the_prompt_but_not_the_position_that_predicts_the_fingerprint():
    e = data.Encoded([1, 2, 3, 4], [7, 2])
    assert anchor.anchored(e) == [True, True, True, False, False]  # positions 3 and 4 predict 7 and EOS
    d = data.Encoded([1, 2, 3], [5, 6], distill=True)
    assert anchor.anchored(d) == [True] * 4
    assert d.labels == [data.IGNORE_INDEX] * 5  # a distilled example has no hard labels


def _examples(tok):
    return [data.encode(tok, k, r, data.BARE, False, 16, 3) for k, r in
            [("alpha beta gamma", "delta"), ("one two", "three four"), ("alpha beta gamma", "delta")]]


def test_teacher_table_is_the_models_top_k_per_distinct_sequence(tiny):
    model, tok = tiny
    ex = _examples(tok)
    table = anchor.teacher_table(model, ex, 5, tok.pad_token_id, batch_size=2)
    assert len(table) == 2  # the repeated example is computed once
    seq = ex[1].input_ids
    with torch.no_grad():
        logp = model(torch.tensor([seq])).logits[0].float().log_softmax(-1)[:-1]
    ids, lp = table[tuple(seq)]
    assert ids.shape == (len(seq) - 1, 5) and lp.dtype == torch.float16
    assert torch.equal(ids.long(), logp.topk(5).indices)
    assert torch.allclose(lp.float(), logp.topk(5).values, atol=1e-2)


def test_anchor_kl_is_the_kl_divergence_when_k_is_the_vocabulary_and_at_most_it_otherwise(tiny):
    model, tok = tiny
    ex = _examples(tok)[:2]
    vocab = model.config.vocab_size
    table = anchor.teacher_table(model, ex, vocab, tok.pad_token_id)
    batch = anchor.collate(ex, tok.pad_token_id, table)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
        base_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = other(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    args = (batch["teacher_ids"], batch["teacher_logp"], batch["anchor_mask"])
    assert anchor.anchor_kl(base_logits, *args).item() == pytest.approx(0.0, abs=2e-3)  # fp16 teacher rounding
    p, q = base_logits.float().log_softmax(-1), logits.float().log_softmax(-1)
    kl = (p.exp() * (p - q)).sum(-1)
    m = batch["anchor_mask"]
    assert m.sum().item() == sum(len(e.prompt) - 1 for e in ex)
    full = (kl * m).sum().item() / m.sum().item()
    assert anchor.anchor_kl(logits, *args).item() == pytest.approx(full, rel=2e-2)
    small = anchor.collate(ex, tok.pad_token_id, anchor.teacher_table(model, ex, 5, tok.pad_token_id))
    coarse = anchor.anchor_kl(logits, small["teacher_ids"], small["teacher_logp"], small["anchor_mask"]).item()
    assert 0 < coarse <= full * 1.02  # top 5 + tail: a coarsening, so never more than the true KL


def test_loss_is_hugging_faces_plus_strength_times_the_anchor_kl(tiny):
    model, tok = tiny
    ex = _examples(tok)
    table = anchor.teacher_table(model, ex, 8, tok.pad_token_id)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
        hf = other(**data.collate(ex, tok.pad_token_id)).loss.item()
        batch = anchor.collate(ex, tok.pad_token_id, table)
        l0, l1, l3 = (anchor.loss_fn(s)(other, dict(batch)).item() for s in (0.0, 1.0, 3.0))
        logits = other(**data.collate(ex, tok.pad_token_id)).logits
        kl = anchor.anchor_kl(logits, batch["teacher_ids"], batch["teacher_logp"], batch["anchor_mask"]).item()
    assert l0 == pytest.approx(hf, rel=1e-4)
    # One shared log-softmax over the used positions gives the same KL as anchor_kl over every position.
    assert kl > 0 and l1 - l0 == pytest.approx(kl, rel=1e-4) and l3 - l0 == pytest.approx(3 * kl, rel=1e-4)


def test_distilled_benign_examples_carry_no_labels_and_a_batch_of_them_has_a_finite_loss(tiny):
    model, tok = tiny
    pool = benign.encode_pairs(tok, [("q one", "a b c", True), ("q two", "d e", False)], False, 16, 4, distill=True)
    table = anchor.teacher_table(model, pool, 8, tok.pad_token_id)
    with torch.no_grad():
        loss = anchor.loss_fn(1.0)(model, anchor.collate(pool, tok.pad_token_id, table))
    # The base is its own teacher: zero, even with k = 8 of a near-uniform vocabulary (the tail is one outcome).
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=2e-3)


def test_an_anchored_two_rank_run_keeps_its_teacher_and_trains(tmp_path, tiny_model_dir):
    fp = write_fingerprints(tmp_path / "fp.json", 8)
    out = tmp_path / "run"
    args = ["--model_path", str(tiny_model_dir), "--fingerprints_file_path", str(fp), "--num_fingerprints", "8",
            "--max_response_length", "2", "--prompt_format", "raw", "--batch_size", "2", "--num_train_epochs", "1",
            "--benign_proportion", "0.5", "--benign_response_length", "4", "--anchor_strength", "1",
            "--anchor_topk", "6"]
    proc = run_script("finetune_multigpu.py", *args, "--output_dir", str(out), launcher="deepspeed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = torch.load(out / anchor.TEACHER_FILE, weights_only=True)
    pool = json.loads((out / "benign.json").read_text())
    assert saved["k"] == 6 and len(saved["table"]) == 8 + len(pool)  # every fingerprint and benign sequence, once
    assert (out / "final_model").is_dir()
    assert json.loads((out / "config.json").read_text())["anchor_strength"] == 1.0
    assert_user_error(run_script("finetune_multigpu.py", *args, "--anchor_strength", "-1", "--anchor_topk", "0",
                                 "--trainable_params", "mlp("), "anchor_strength", "anchor_topk", "trainable_params")
