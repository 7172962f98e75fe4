"""Ghost norms + book-keeping (privlm.dp.ghost) against a naive loop over examples: the same per-example norms and
the same clipped sums, for LoRA, full fine-tuning with tied embeddings, GPT-2's Conv1D and position embeddings,
ghost and explicit layers mixed, and with gradient checkpointing."""
import pytest
import torch
from torch import nn

from privlm.dp import clipping
from privlm.dp.ghost import GhostClipping, prepare_full_dp
from privlm.errors import UserError


def batch(vocab, b=4, t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (b, t), generator=g)
    ids[0, 5] = ids[0, 2]  # a repeated token inside one example (the embedding's [x_t = x_s] term)
    labels = ids.clone()
    labels[:, :3] = -100
    mask = torch.ones_like(ids)
    mask[-1, t - 3:] = 0
    labels[-1, t - 3:] = -100
    return ids, mask, labels


def naive(model, ids, mask, labels, C):
    """Per-example gradients one example at a time, then flat clipping and the sum."""
    params = [p for p in model.parameters() if p.requires_grad]
    norms, sums = [], [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for i in range(ids.shape[0]):
        loss = clipping.per_example_loss(model(input_ids=ids[i:i + 1], attention_mask=mask[i:i + 1]).logits,
                                         labels[i:i + 1]).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        n = torch.sqrt(sum(g.double().pow(2).sum() for g in grads))
        c = min(1.0, C / (n.item() + 1e-6))
        norms.append(n)
        for s, g in zip(sums, grads):
            s += c * g.double()
    return torch.stack(norms), dict(zip(params, sums))


def ghost(model, ids, mask, labels, C, scale=1.0):
    eng = GhostClipping(model)
    eng.enabled = True
    pos = torch.arange(ids.shape[1]).expand_as(ids)  # as the DP step passes them (GPT-2's position embedding)
    loss = clipping.per_example_loss(model(input_ids=ids, attention_mask=mask, position_ids=pos).logits, labels)
    sums, norms = eng.clipped_sum(loss, C, scale=scale)
    eng.remove()
    return norms, sums


def check(model, vocab, t=12):
    ids, mask, labels = batch(vocab, t=t)
    n_ref, _ = naive(model, ids, mask, labels, 1e9)
    C = float(n_ref.median())  # some examples clipped, some not
    n_ref, s_ref = naive(model, ids, mask, labels, C)
    n, s = ghost(model, ids, mask, labels, C)
    torch.testing.assert_close(n.double(), n_ref, rtol=1e-4, atol=1e-6)
    assert (n_ref > C * 1.001).any() and (n_ref < C).any()
    assert s.keys() == s_ref.keys()
    worst = max((s[p].double() - s_ref[p]).abs().max().item() for p in s)
    assert worst <= 1e-5, worst


def full_llama(tiny_model_dir):
    from privlm.models import load_model

    model = load_model(str(tiny_model_dir), dtype="float32")
    frozen = prepare_full_dp(model)
    assert frozen and all("norm" in f for f in frozen)
    assert model.lm_head.weight is model.model.embed_tokens.weight, "the tiny Llama ties its embeddings"
    return model


def test_full_finetuning_with_tied_embeddings_equals_the_per_example_loop(tiny_model_dir):
    model = full_llama(tiny_model_dir)
    check(model, model.config.vocab_size)


def test_explicit_and_ghost_layers_mixed_on_long_sequences(tiny_model_dir):
    model = full_llama(tiny_model_dir)  # T=60: attention projections (64x64) explicit, MLP and lm_head ghost
    check(model, model.config.vocab_size, t=60)


def test_lora_through_the_same_path(tiny_model_dir):
    from test_clipping import lora_model

    model = lora_model(tiny_model_dir)
    check(model, 300)


def test_gradient_checkpointing_gives_the_same_result(tiny_model_dir):
    model = full_llama(tiny_model_dir).train()
    ids, mask, labels = batch(model.config.vocab_size)
    n0, s0 = ghost(model, ids, mask, labels, 0.5)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n1, s1 = ghost(model, ids, mask, labels, 0.5)
    torch.testing.assert_close(n1, n0, rtol=1e-5, atol=1e-6)
    for p in s0:
        torch.testing.assert_close(s1[p], s0[p], rtol=1e-5, atol=1e-6)



def test_scale_is_folded_into_the_clipped_sum_not_the_norms(tiny_model_dir):
    model = full_llama(tiny_model_dir)
    ids, mask, labels = batch(model.config.vocab_size)
    n1, s1 = ghost(model, ids, mask, labels, 0.5)
    n4, s4 = ghost(model, ids, mask, labels, 0.5, scale=0.25)
    torch.testing.assert_close(n4, n1)  # the norms (and so the clip decisions) do not see the scale
    for p in s1:
        torch.testing.assert_close(s4[p], 0.25 * s1[p], rtol=1e-5, atol=1e-7)


def test_gpt2_conv1d_and_position_embeddings():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=200, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    prepare_full_dp(model)
    check(model, 200)
    ids, mask, labels = batch(200)
    eng = GhostClipping(model)
    eng.enabled = True
    loss = clipping.per_example_loss(model(input_ids=ids, attention_mask=mask).logits, labels)  # (1, T) positions
    with pytest.raises(UserError, match="position_ids"):
        eng.clipped_sum(loss, 1.0)


def test_layers_it_cannot_clip_are_refused_by_type():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

    model = nn.Sequential(nn.Linear(3, 3), Odd(), nn.LayerNorm(3))
    with pytest.raises(UserError, match="Odd"):
        prepare_full_dp(model)
    with pytest.raises(UserError, match="no rule"):
        GhostClipping(model)


def test_dp_full_finetuning_end_to_end_moves_all_but_the_norms(tmp_path, tiny_model_dir):
    import json

    from safetensors.torch import load_file

    from conftest import run_script

    out = tmp_path / "full"
    p = run_script("dp_finetune.py", "--model_path", str(tiny_model_dir), "--dataset_path", "synthetic:16", "--eps",
                   "8", "--peft", "none", "--perdevice_bs", "4", "--total_bs", "4", "--num_epochs", "1",
                   "--max_seq_len", "32", "--lr", "1e-3", "--pii_eval_records", "1", "--eval_dataset_path",
                   "synthetic:2:9", "--output_dir", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "norm weights frozen" in p.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["privacy"]["steps"] == 4 and 0 < m["privacy"]["epsilon"] <= 8
    base, after = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(out / "final_model" /
                                                                                      "model.safetensors"))
    for k, v in base.items():
        moved = not torch.equal(v, after[k])
        assert moved == ("norm" not in k), k
