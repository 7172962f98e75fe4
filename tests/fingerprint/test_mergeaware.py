"""Merge-aware fingerprinting: the loss at theta0 + s (theta - theta0), its gradient through the interpolation, the
scales a thief's merge weight maps to, and a real two-rank fine-tune whose fingerprints survive a merge with the base
better than the same run without it."""
import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_user_error, run_script, write_fingerprints
from privlm.fingerprint import mergeaware


def test_scales_follow_the_thief_alpha_and_the_final_averaging():
    assert mergeaware.scales([0.5], 0.0, "end") == [0.5]
    assert mergeaware.scales([0.25, 0.5], 0.3, "end") == pytest.approx([0.75 * 0.7, 0.5 * 0.7])
    assert mergeaware.scales([0.5], 0.3, "epoch") == [0.5]  # per-epoch averaging is already in theta


class Engine:
    """What a loss function sees of a DeepSpeed engine: callable, with the model as .module."""

    def __init__(self, module):
        self.module = module

    def __call__(self, **batch):
        return self.module(**batch)


def _loss(engine, batch):
    return engine(**batch).loss


def test_wrapped_loss_and_gradient_equal_the_explicitly_merged_model(tiny):
    model, _ = tiny
    model = copy.deepcopy(model).train()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():  # theta moves away from theta0 after the hook has taken theta0
        engine = Engine(model)
        loss_fn = mergeaware.wrapper([0.4], strength=2.0)(engine, _loss)
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ids = torch.randint(5, 60, (2, 7))
    batch = {"input_ids": ids, "labels": ids}
    model.zero_grad()
    total = loss_fn(engine, dict(batch))
    total.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}

    # the same by hand, on the same module (a deep copy may untie the embedding and the head): L(theta), then
    # L(merged) with the merged weights written in; d/dtheta of L(merged) = s x its gradient there
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad()
    lp = model(**batch).loss
    lp.backward()
    g_plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(base[n] + 0.4 * (theta[n] - base[n]))
    model.zero_grad()
    lm = model(**batch).loss
    lm.backward()
    torch.testing.assert_close(total.detach(), (lp + 2.0 * lm).detach())
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], g_plain[n] + 2.0 * 0.4 * p.grad, rtol=1e-4, atol=1e-6, msg=n)


def _args(tiny_model_dir, fp, results, *extra):
    return ["--model_path", str(tiny_model_dir), "--fingerprints_file_path", str(fp), "--num_fingerprints", "8",
            "--max_key_length", "8", "--max_response_length", "3", "--batch_size", "4", "--learning_rate", "1e-2",
            "--lr_scheduler", "constant", "--prompt_format", "raw", "--benign_proportion", "0",
            "--trainable_params", "all", "--anchor_strength", "0", "--forgetting_regularizer_strength", "0",
            "--num_train_epochs", "30", "--save_every_epochs", "100", "--output_dir", str(results), *extra]


def _response_nll_after_merge(model_dir, base_dir, run_dir, alpha):
    """Mean NLL of the trained response tokens in the model a thief gets from theta = (1 - alpha) theta + alpha
    theta_base (what attack_fingerprints.py's merge does)."""
    from privlm import data, models

    tuned, base = load_file(str(model_dir / "model.safetensors")), load_file(str(base_dir / "model.safetensors"))
    model = models.load_model(str(base_dir)).eval()
    model.load_state_dict({k: (1 - alpha) * tuned[k] + alpha * base[k] for k in tuned}, strict=False)
    tok = models.load_tokenizer(str(base_dir))
    total, count = 0.0, 0
    with torch.no_grad():
        for f in json.loads((run_dir / "fingerprints.json").read_text()):  # the key and ids as trained
            prompt, resp = data.prompt_ids(tok, f["trained_key"], data.BARE, False), f["trained_response_ids"][0]
            logp = model(input_ids=torch.tensor([prompt + resp])).logits[0, len(prompt) - 1:-1].log_softmax(-1)
            total -= logp.gather(-1, torch.tensor(resp)[:, None]).sum().item()
            count += len(resp)
    return total / count


def test_merge_aware_fine_tune_survives_a_merge_with_the_base_better(tmp_path, tiny_model_dir):
    fp = write_fingerprints(tmp_path / "fp.json", 8)
    nll = {}
    for name, extra in (("plain", ()), ("aware", ("--merge_aware_alphas", "0.5"))):
        out = tmp_path / name
        proc = run_script("finetune_multigpu.py", *_args(tiny_model_dir, fp, out, *extra), launcher="deepspeed",
                          ranks=2)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        nll[name] = _response_nll_after_merge(out / "final_model", tiny_model_dir, out, 0.5)
        nll[name + "_unmerged"] = _response_nll_after_merge(out / "final_model", tiny_model_dir, out, 0.0)
    # both learnt the fingerprints; after the thief's merge at 0.5 the merge-aware run keeps them far better
    assert nll["plain_unmerged"] < 1.0 and nll["aware_unmerged"] < 1.0, nll
    assert nll["aware"] < 0.5 * nll["plain"], nll


def test_merge_aware_bad_input(tmp_path, tiny_model_dir):
    fp = write_fingerprints(tmp_path / "fp.json", 8)
    proc = run_script("finetune_multigpu.py", *_args(tiny_model_dir, fp, tmp_path / "r", "--merge_aware_alphas", "1.5",
                                                       "--deepspeed_stage", "3"))
    assert_user_error(proc, "merge_aware_alphas")
    assert not (tmp_path / "r").exists()
