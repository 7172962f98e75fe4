"""LoRA through PEFT: the merged state dict equals PEFT's own merge, the forgetting regularizer scales a LoRA
delta by exactly (1 - lambda), and LoRA fingerprinting saves a plain model that holds what it learned."""
import types

import torch

from conftest import run_script, write_fingerprints
from privlm import lora
from privlm.training import ForgettingRegularizer


def peft_tiny(tiny_model_dir, r=4):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)  # A's initialisation draws from it too
    model = lora.wrap(r, 2 * r)(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.05)  # B starts at zero; give the adapter something to merge
    return model


def test_merged_state_matches_peft_merge_and_unload(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = peft_tiny(tiny_model_dir)
    merged = lora.merged_state(model, model.state_dict())
    assert not any("lora_" in k or "base_layer" in k or k.startswith("base_model") for k in merged)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    missing, unexpected = plain.load_state_dict(merged, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    reference = peft_tiny(tiny_model_dir).merge_and_unload()
    x = torch.randint(0, 100, (2, 7))
    torch.testing.assert_close(plain(x).logits, reference(x).logits, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain(x).logits, AutoModelForCausalLM.from_pretrained(tiny_model_dir)(x).logits)


def test_regularizer_scales_the_lora_delta_by_one_minus_lambda(tiny_model_dir):
    model = lora.wrap(4, 8)(__import__("transformers").AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    reg = ForgettingRegularizer(types.SimpleNamespace(module=model))  # registered at the start: B = 0
    assert not any(".lora_A." in k for k in reg.base) and any(".lora_B." in k for k in reg.base)
    torch.manual_seed(1)
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.data.normal_(0, 0.05)  # "training" moved A and B
    base = {k: v for k, v in lora.merged_state(model, {k: torch.zeros_like(v) if ".lora_B." in k else v
                                                         for k, v in model.state_dict().items()}).items()}
    before = lora.merged_state(model, model.state_dict())
    reg.apply(0.3)
    after = lora.merged_state(model, model.state_dict())
    for k in before:
        torch.testing.assert_close(after[k] - base[k], 0.7 * (before[k] - base[k]), rtol=1e-4, atol=1e-6)


def test_lora_fingerprinting_saves_a_merged_plain_model(tmp_path, tiny_model_dir):
    """Two CPU ranks, ZeRO-2: the saved folder is a plain model (no adapter files) in which exactly the adapted
    Linear weights moved; embeddings and norms are the base's."""
    from safetensors.torch import load_file

    fp = write_fingerprints(tmp_path / "fp.json", 8)
    out = tmp_path / "run"
    proc = run_script("finetune_multigpu.py", "--model_path", str(tiny_model_dir), "--fingerprints_file_path",
                      str(fp), "--num_fingerprints", "8", "--max_response_length", "3", "--prompt_format", "raw",
                      "--batch_size", "4", "--num_train_epochs", "3", "--learning_rate", "1e-2",
                      "--use_lora", "--lora_r", "8", "--output_dir", str(out), launcher="deepspeed", ranks=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = out / "final_model"
    assert not (final / "adapter_config.json").exists() and (final / "config.json").is_file()
    base, got = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(final / "model.safetensors"))
    assert set(got) == set(base)
    linear = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    for k in base:
        moved = (got[k].float() - base[k].float()).abs().max().item()
        if any(f".{m}." in k for m in linear):
            assert moved > 1e-4, k
        else:
            assert moved == 0, k
    check = run_script("check_fingerprints.py", "--model_path", str(final), "--prompt_templates", "trained")
    assert check.returncode == 0 and "retention (trained)" in check.stdout, check.stderr[-3000:]
