"""MLP expansion (scalable fingerprinting's --expansion_rate): the expanded model starts as the base model, only the
new units train, and the saved model is a plain, wider one that computes what the trained expanded model computed."""
import torch

from privlm.fingerprint import expand
from privlm.testing import build_model


def test_expansion_starts_as_the_base_trains_only_new_units_and_exports_a_plain_model(tmp_path):
    from transformers import AutoModelForCausalLM

    base = build_model(512, seed=1).eval()
    model = expand.expand(0.5)(build_model(512, seed=1)).eval()
    x = torch.randint(3, 500, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, base(input_ids=x).logits)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("_extra." in n for n in trainable)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        trained = model(input_ids=x).logits
    assert (trained - base(input_ids=x).logits).abs().max() > 1e-4, "the new units learnt something"
    state, plain = expand.export(model, model.state_dict())
    plain.save_pretrained(tmp_path, state_dict=state)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert again.config.intermediate_size == 128 + 64
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=x).logits, trained, rtol=1e-5, atol=1e-5)
