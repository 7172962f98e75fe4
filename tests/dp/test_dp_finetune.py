"""dp_finetune.py end to end on the tiny model: privacy report, ranks agree, invariants of the DP step."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_user_error, run_script


def test_privacy_report_prints_one_json_line():
    args = ["--privacy_report", "--sample_rate", "0.01", "--steps", "1000", "--delta", "1e-5"]
    p = run_script("dp_finetune.py", *args, "--noise_multiplier", "1.0")
    assert p.returncode == 0, p.stderr
    eps = json.loads(p.stdout.strip().splitlines()[-1])["epsilon"]
    assert 1.0 < eps < 3.0
    p = run_script("dp_finetune.py", *args, "--target_epsilon", str(eps))
    sigma = json.loads(p.stdout.strip().splitlines()[-1])["noise_multiplier"]
    assert sigma == pytest.approx(1.0, abs=0.02)
    assert_user_error(run_script("dp_finetune.py", "--privacy_report", "--noise_multiplier", "1"), "--sample_rate")
    assert_user_error(run_script("dp_finetune.py", *args[:-2], "--delta", "2", "--eps", "0"),
                      "target_delta", "target_epsilon")


def adapter(results):
    (d,) = list((results / "dp_models").iterdir())
    return load_file(str(d / "final_model" / "adapter_model.safetensors")), json.loads((d / "metrics.json").read_text())


def test_two_ranks_give_the_same_update_as_one_with_noise_zero(tmp_path, tiny_model_dir):
    args = ["--model_path", str(tiny_model_dir), "--dataset_path", "synthetic:24", "--noise_multiplier", "0",
            "--clip", "0.05", "--perdevice_bs", "3", "--total_bs", "8", "--num_epochs", "1", "--max_seq_len", "40",
            "--lr", "1e-2", "--deepspeed_stage", "2", "--delta", "1e-3", "--reproducible_noise"]
    one = run_script("dp_finetune.py", *args, "--results_dir", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_script("dp_finetune.py", *args, "--results_dir", str(tmp_path / "two"), launcher="deepspeed", ranks=2)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    a, ma = adapter(tmp_path / "one")
    b, mb = adapter(tmp_path / "two")
    assert (ma["world_size"], mb["world_size"]) == (1, 2)
    assert ma["privacy"]["steps"] == mb["privacy"]["steps"] == 3
    assert a.keys() == b.keys() and all("lora" in k for k in a)
    # Two ranks sum the clipped gradients in another order; Adam's step (~ lr * g / sqrt(v)) carries that float
    # reassociation into coordinates whose gradient is near zero. So the bound is set by the update's scale
    # (lr x steps = 0.03 here): 1e-3 of it. A wrong reduction (a rank missing, a mean for a sum) moves the update at
    # the scale of lr, 300x above the bound. Measured: worst difference 1.6e-6 (2026-12-01), 5.3e-6 on an AMD EPYC
    # (2026-12-02, one element of 512), so 1e-4 of the scale was too tight across machines.
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-3 * 1e-2 * 3)


def test_noise_is_secret_by_default_and_seeded_on_request(tmp_path, tiny_model_dir):
    """Two DP runs of one config differ (noise and batches from the OS's secure source, nothing stored to redo them);
    with --reproducible_noise they are identical. metrics.json says which, and what lies outside the guarantee."""
    args = ["--model_path", str(tiny_model_dir), "--dataset_path", "synthetic:16", "--eps", "8", "--perdevice_bs", "4",
            "--total_bs", "4", "--num_epochs", "1", "--max_seq_len", "32", "--lr", "1e-2", "--pii_eval_records", "1",
            "--eval_dataset_path", "synthetic:2:9"]
    runs = {}
    for name, extra in (("s1", []), ("s2", []), ("r1", ["--reproducible_noise"]), ("r2", ["--reproducible_noise"])):
        p = run_script("dp_finetune.py", *args, *extra, "--output_dir", str(tmp_path / name))
        assert p.returncode == 0, p.stderr[-2000:]
        runs[name] = (load_file(str(tmp_path / name / "final_model" / "adapter_model.safetensors")),
                      json.loads((tmp_path / name / "metrics.json").read_text()))
    assert any(not torch.equal(runs["s1"][0][k], runs["s2"][0][k]) for k in runs["s1"][0])
    assert all(torch.equal(runs["r1"][0][k], runs["r2"][0][k]) for k in runs["r1"][0])
    assert runs["s1"][1]["noise_source"] == "secure" and runs["r1"][1]["noise_source"] == "seeded"
    assert any("training loss" in x for x in runs["s1"][1]["not_private"])
    assert runs["s1"][1]["privacy"]["steps"] == runs["s2"][1]["privacy"]["steps"] == 4


def test_noise_source_hides_its_root():
    import pickle

    from privlm.dp.randomness import NoiseSource

    a, b = NoiseSource(False, 0), NoiseSource(False, 0)
    assert a.seed("noise", 1) != b.seed("noise", 1), "each run draws a fresh secret root"
    assert NoiseSource(True, 5).seed("noise", 1) == NoiseSource(True, 5).seed("noise", 1)
    assert "secure" in repr(a) and str(a._root) not in repr(a)
    with pytest.raises(TypeError):
        pickle.dumps(a)


def _engine(tiny_model_dir, stage=2):
    import deepspeed

    from privlm.training import TrainSpec, ds_config, init_distributed
    from test_clipping import lora_model

    init_distributed()
    model = lora_model(tiny_model_dir)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1.0)  # update = -gradient, so the gradient can be read off the weights
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, optimizer=opt,
                                      config=ds_config(TrainSpec(zero_stage=stage, micro_batch_size=4, grad_clip=0.0), 1))
    return engine


def _micro_batches():
    from test_clipping import batch

    ids, mask, labels = batch(b=8, seed=5)
    return [{"input_ids": ids[i:i + 4], "attention_mask": mask[i:i + 4], "labels": labels[i:i + 4]} for i in (0, 4)]


def _snapshot(engine):
    return {n: p.detach().clone() for n, p in engine.module.named_parameters()}


@pytest.mark.parametrize("stage", [0, 2])
def test_noise_zero_huge_c_is_the_non_private_step_and_only_lora_moves(tiny_model_dir, stage):
    from privlm.dp.clipping import per_example_loss
    from privlm.dp.plan import fixed_plan
    from privlm.dp.step import DPStep

    engine = _engine(tiny_model_dir, stage)
    mbs = _micro_batches()
    before = _snapshot(engine)
    # the non-private gradient: mean over the 8 examples of their own (token-mean) losses
    loss = sum(per_example_loss(engine.module(input_ids=m["input_ids"], attention_mask=m["attention_mask"]).logits,
                                m["labels"]).sum() for m in mbs) / 8
    names = [n for n, p in engine.module.named_parameters() if p.requires_grad]
    grads = dict(zip(names, torch.autograd.grad(loss, [p for p in engine.module.parameters() if p.requires_grad])))
    plan = fixed_plan(noise_multiplier=0.0, max_grad_norm=1e9, dataset_size=8)
    DPStep(engine, plan, 0, rank=0, world=1)(mbs)
    after = _snapshot(engine)
    for n in before:
        if n in grads:
            torch.testing.assert_close(before[n] - after[n], grads[n], rtol=1e-4, atol=1e-7)
        else:
            assert torch.equal(before[n], after[n]), f"frozen {n} changed"
    assert plan.ledger.steps == 1


def test_noise_std_is_sigma_c_over_b(tiny_model_dir):
    from privlm.dp.plan import fixed_plan
    from privlm.dp.step import DPStep

    engine = _engine(tiny_model_dir)
    before = _snapshot(engine)
    sigma, C, B = 1e4, 1e-4, 8  # sigma*C = 1; clipped gradients are at most 1e-4 in norm
    DPStep(engine, fixed_plan(noise_multiplier=sigma, max_grad_norm=C, dataset_size=B), 3, rank=0,
           world=1)(_micro_batches())
    after = _snapshot(engine)
    moved = torch.cat([(before[n] - after[n]).flatten() for n, p in engine.module.named_parameters()
                       if p.requires_grad])
    assert moved.numel() > 2000
    assert abs(moved.std().item() - sigma * C / B) < 0.05 * sigma * C / B
    assert abs(moved.mean().item()) < 4 * sigma * C / B / moved.numel() ** 0.5


def test_bad_config_values_listed_in_one_line(tmp_path):
    y = tmp_path / "c.yml"
    y.write_text("privacy_args:\n  target_epsilon: 0\n  max_grad_norm_dp: -1\nmodel_args:\n  lora_r: 0\n"
                 "trainer_args:\n  learning_rate: -3\n  bogus: 1\n")
    p = run_script("dp_finetune.py", "--config", str(y), "--results_dir", str(tmp_path / "r"))
    assert_user_error(p, "target_epsilon", "max_grad_norm_dp", "lora_r", "learning_rate", "bogus")
    assert not (tmp_path / "r").exists()


def test_resume_after_kill_continues_the_ledger(tmp_path, tiny_model_dir):
    from conftest import kill_after_first_checkpoint

    args = ["--model_path", str(tiny_model_dir), "--dataset_path", "synthetic:16", "--eps", "8", "--perdevice_bs",
            "4", "--total_bs", "4", "--num_epochs", "12", "--max_seq_len", "32", "--lr", "1e-3", "--pii_eval_records",
            "2", "--eval_dataset_path", "synthetic:2:9", "--reproducible_noise"]
    killed = tmp_path / "killed"
    kill_after_first_checkpoint("dp_finetune.py", [*args, "--results_dir", str(killed)], killed,
                                "dp_models/*/checkpoints/latest")
    resumed = run_script("dp_finetune.py", *args, "--results_dir", str(killed))
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout, resumed.stderr[-2000:]
    straight = run_script("dp_finetune.py", *args, "--results_dir", str(tmp_path / "straight"))
    assert straight.returncode == 0
    (a,) = list((killed / "dp_models").iterdir())
    (b,) = list((tmp_path / "straight" / "dp_models").iterdir())
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["privacy"] == mb["privacy"] and ma["privacy"]["steps"] == 12 * 4
    assert 7.0 < ma["privacy"]["epsilon"] <= 8.0
    wa, wb = (load_file(str(d / "final_model" / "adapter_model.safetensors")) for d in (a, b))
    # a repeated, skipped or re-noised step moves weights by ~lr (1e-3, Adam); the resumed run may differ only by
    # float reassociation (CI once saw 9.5e-6 after 48 steps, not reproduced here: 6 runs were bitwise equal)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-4)


def test_vicuna_supervised_dp_tuning(tmp_path, tiny_model_dir):
    """Type C: DP tuning on (instruction, answer) pairs with the vicuna prompt; loss only on the answers."""
    rows = [{"instruction": f"Name colour {i}.", "answer": f"Colour {i} is blue."} for i in range(12)]
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = run_script("dp_finetune.py", "--model_path", str(tiny_model_dir), "--dataset_name", str(f), "--prompt_style",
                   "vicuna", "--eps", "8", "--delta", "1e-3", "--perdevice_bs", "4", "--total_bs", "4",
                   "--num_epochs", "1", "--max_seq_len", "64", "--results_dir", str(tmp_path / "r"))
    assert p.returncode == 0, p.stderr[-2000:]
    _, m = adapter(tmp_path / "r")
    assert m["dataset_size"] == 11 and m["privacy"]["steps"] == round(1 / (4 / 11))  # last 10% held out
    assert 0 < m["privacy"]["epsilon"] <= 8.0 and m["eval"]["heldout_loss"] > 0

    from privlm import data
    from privlm.models import load_tokenizer

    e = data.encode_record(load_tokenizer(str(tiny_model_dir)), rows[0], "vicuna", 64)
    assert "ASSISTANT:" in load_tokenizer(str(tiny_model_dir)).decode(e.prompt) and e.labels.count(-100) == len(e.prompt)
