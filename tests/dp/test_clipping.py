"""Per-example clipping for LoRA: equal to Opacus on the same batch, and the clipping invariants."""
import pytest
import torch

from privlm.dp import clipping


def lora_model(tiny_model_dir, r=4):
    from peft import LoraConfig, get_peft_model

    from privlm.models import load_model

    torch.manual_seed(0)
    model = get_peft_model(load_model(str(tiny_model_dir)),
                           LoraConfig(r=r, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj",
                                                                                           "v_proj", "o_proj"]))
    for n, p in model.named_parameters():  # B starts at zero in PEFT; make gradients of A non-trivial too
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    return model


def batch(b=6, t=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 300, (b, t), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100  # prompt masked
    labels[-1, 7:] = -100
    mask = torch.ones_like(ids)
    mask[-1, 7:] = 0  # a padded row
    return ids, mask, labels


def test_per_example_grads_equal_opacus(tiny_model_dir):
    from opacus import GradSampleModule

    ids, mask, labels = batch()
    ours_model = lora_model(tiny_model_dir)
    pe = clipping.PerExampleGrads(ours_model)
    pe.enabled = True
    loss = clipping.per_example_loss(ours_model(input_ids=ids, attention_mask=mask).logits, labels)
    grads = pe.compute(loss)
    ours = {n: grads[p] for n, p in ours_model.named_parameters() if p.requires_grad}

    ref_model = lora_model(tiny_model_dir)
    gsm = GradSampleModule(ref_model, batch_first=True, loss_reduction="sum")
    loss_ref = clipping.per_example_loss(gsm(input_ids=ids, attention_mask=mask).logits, labels)
    loss_ref.sum().backward()
    ref = {n: p.grad_sample for n, p in ref_model.named_parameters() if p.requires_grad}
    assert sorted(ours) == sorted(k.replace("_module.", "") for k in ref)
    for (n, g), (_, r) in zip(sorted(ours.items()), sorted(ref.items())):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6, msg=n)
    # and their flat-clipped sums agree
    C = 0.5
    s_ours, _ = clipping.clipped_sum({k: v for k, v in sorted(ours.items())}, C)
    s_ref, _ = clipping.clipped_sum({k: v for k, v in sorted(ref.items())}, C)
    for a, b in zip(s_ours.values(), s_ref.values()):
        assert (a - b).abs().max() < 1e-5


def test_clipped_norms_at_most_c_and_equal_c_above(tiny_model_dir):
    model = lora_model(tiny_model_dir)
    pe = clipping.PerExampleGrads(model)
    pe.enabled = True
    ids, mask, labels = batch(b=8, seed=3)
    grads = pe.compute(clipping.per_example_loss(model(input_ids=ids, attention_mask=mask).logits, labels))
    norms = clipping.per_example_norms(grads)
    C = float(norms.median())
    c = clipping.clip_factors(norms, C)
    clipped = clipping.per_example_norms({p: torch.einsum("b,b...->...b", c, g).movedim(-1, 0)
                                          for p, g in grads.items()})
    assert (clipped <= C * (1 + 1e-5)).all()
    above = norms > C
    assert above.any() and (~above).any()
    torch.testing.assert_close(clipped[above], torch.full_like(clipped[above], C), rtol=1e-4, atol=0)
    torch.testing.assert_close(clipped[~above], norms[~above])


def test_huge_c_gives_the_plain_gradient(tiny_model_dir):
    model = lora_model(tiny_model_dir)
    pe = clipping.PerExampleGrads(model)
    pe.enabled = True
    ids, mask, labels = batch()
    loss = clipping.per_example_loss(model(input_ids=ids, attention_mask=mask).logits, labels)
    summed, _ = clipping.clipped_sum(pe.compute(loss), 1e9)
    pe.enabled = False
    loss = clipping.per_example_loss(model(input_ids=ids, attention_mask=mask).logits, labels)
    plain = torch.autograd.grad(loss.sum(), pe.params)
    for p, g in zip(pe.params, plain):
        torch.testing.assert_close(summed[p], g, rtol=1e-4, atol=1e-6)


def test_only_linear_trainables_supported(tiny_model_dir):
    from privlm.errors import UserError
    from privlm.models import load_model

    with pytest.raises(UserError, match="embed_tokens"):
        clipping.PerExampleGrads(load_model(str(tiny_model_dir)))


def test_full_fine_tuning_per_example_grads_equal_one_at_a_time(tiny_model_dir):
    """Full fine-tuning (embeddings tied to lm_head, RMSNorm): Opacus's samplers give each example's own gradient."""
    from privlm.models import load_model

    model = load_model(str(tiny_model_dir)).train()  # Opacus records activations in training mode only
    pe = clipping.OpacusPerExampleGrads(model)
    ids, mask, labels = batch(b=4, seed=2)
    grads = pe.compute(clipping.per_example_loss(model(input_ids=ids, attention_mask=mask).logits, labels))
    params = [p for p in model.parameters() if p.requires_grad]
    for i in range(4):
        loss = clipping.per_example_loss(model(input_ids=ids[i:i + 1], attention_mask=mask[i:i + 1]).logits,
                                         labels[i:i + 1])
        ref = torch.autograd.grad(loss.sum(), params)
        for p, r in zip(params, ref):
            torch.testing.assert_close(grads[p][i], r, rtol=1e-3, atol=1e-6)
