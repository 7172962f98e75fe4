"""GPU paths (`make test-gpu`, i.e. `pytest -m gpu`): skipped without CUDA, so `make test` never needs a GPU.

bf16 fingerprinting under ZeRO-2 and ZeRO-3 with the regularizer landing in the saved weights, the DP-LoRA
per-example gradients equal to a one-example-at-a-time reference, and batched MIA scoring equal to one at a time."""
import json
from pathlib import Path

import pytest
import torch

from conftest import run_script, write_fingerprints

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(str(model_dir / "model.safetensors")).items()
            if k != "lm_head.weight"}


@pytest.mark.parametrize("stage", [2, 3])
def test_bf16_zero_fingerprinting_regularizer_lands_in_saved_weights(tmp_path, tiny_model_dir, stage):
    """lambda = 1 after the last epoch gives back the base weights (to bf16 precision) although training moved
    them: the averaging reached DeepSpeed's fp32 master weights under ZeRO-2/3 in bf16."""
    fp = write_fingerprints(tmp_path / "fp.json", 8)
    base = _weights(tiny_model_dir)
    ranks = min(2, torch.cuda.device_count())
    out = {}
    for lam in ("0.0", "1.0"):
        proc = run_script("finetune_multigpu.py", "--model_path", str(tiny_model_dir), "--fingerprints_file_path",
                          str(fp), "--num_fingerprints", "8", "--max_key_length", "8", "--max_response_length", "3",
                          "--batch_size", "2", "--learning_rate", "5e-3", "--num_train_epochs", "2", "--bf16",
                          "--deepspeed_stage", str(stage), "--forgetting_regularizer_strength", lam,
                          "--prompt_format", "raw", "--output_dir", str(tmp_path / f"lam{lam}"),
                          launcher="deepspeed", ranks=ranks)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out[lam] = _weights(tmp_path / f"lam{lam}" / "final_model")
        cfg = json.loads((tmp_path / f"lam{lam}" / "final_model" / "config.json").read_text())
        assert cfg.get("torch_dtype", cfg.get("dtype")) == "bfloat16"
    assert max((out["0.0"][k] - base[k]).abs().max().item() for k in base) > 1e-2, "training moved the weights"
    for k in base:
        torch.testing.assert_close(out["1.0"][k], base[k].bfloat16().float(), rtol=0, atol=1e-2)


def test_dp_lora_per_example_grads_equal_one_at_a_time_on_cuda(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from privlm.dp import clipping
    from privlm.models import load_model

    torch.manual_seed(0)
    model = get_peft_model(load_model(str(tiny_model_dir)), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])).cuda()
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 300, (6, 12), generator=g).cuda()
    labels = ids.clone()
    labels[:, :4] = -100
    mask = torch.ones_like(ids)
    pe = clipping.PerExampleGrads(model)
    pe.enabled = True
    grads = pe.compute(clipping.per_example_loss(model(input_ids=ids, attention_mask=mask).logits, labels))
    pe.enabled = False
    params = [p for p in model.parameters() if p.requires_grad]
    for i in range(ids.shape[0]):
        loss = clipping.per_example_loss(model(input_ids=ids[i:i + 1], attention_mask=mask[i:i + 1]).logits,
                                         labels[i:i + 1]).sum()
        ref = torch.autograd.grad(loss, params)
        for p, r in zip(params, ref):
            torch.testing.assert_close(grads[p][i], r, rtol=1e-3, atol=1e-5)


def test_batched_mia_scoring_equals_one_at_a_time_on_cuda(tiny_model_dir):
    import numpy as np

    from privlm import models
    from privlm.mia.scoring import token_stats

    model = models.load_model(str(tiny_model_dir), dtype="float32", device="cuda").eval()
    tok = models.load_tokenizer(str(tiny_model_dir))
    texts = ["the cat sat on the mat", "a much longer sentence about nothing at all and more", "x", "hello world"]
    batched = token_stats(model, tok, texts, batch_size=4)
    for text, st in zip(texts, batched):
        single = token_stats(model, tok, [text], batch_size=1)[0]
        np.testing.assert_allclose(st.logp, single.logp, atol=1e-4)
        np.testing.assert_allclose(st.mu, single.mu, atol=1e-4)
